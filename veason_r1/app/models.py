"""Model resolution for the app: ONE function, `resolve_models`, turns the command-line names into loaded models.

A policy is a name from `NAMED_POLICIES` (built or found in the cache folder, so a fresh CPU machine needs no
download) or a local Qwen2.5-VL folder (a merged SFT/RL checkpoint on a GPU node). The propagator is a name from `NAMED_SAM2`
(its config and, when it has one, its checkpoint) or a SAM2 config name / yaml / tracker with `--sam2-checkpoint`
(a SAM2 config without it has random weights). Both come as the `PolicyConfig` / `PropagatorConfig` of
models/config.py. Changing the default models is the one line `DEFAULT_MODEL = ...` (a named policy and the named
SAM2 of the same name go together).
The models are loaded once per process; `Models.lock` makes every request use them one at a time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from veason_r1.config import RESPONSE_BUDGET
from veason_r1.models.config import POLICY_FLAGS, PolicyConfig, PropagatorConfig
from veason_r1.models.families import DEFAULT_FAMILY, family_of_folder
from veason_r1.models.registry import POLICIES, PROPAGATORS, TINY, TINY_IMAGE_SIZE  # noqa: F401 - re-exported

DEFAULT_MODEL = TINY  # the policy `veason-r1 app` loads without --model
DEFAULT_SAM2 = DEFAULT_MODEL  # and the SAM2 without --sam2: the named SAM2 that goes with the named policy


# The names come from the one registry (models/registry.py): every command resolves them the same way.
NAMED_POLICIES = POLICIES
NAMED_SAM2 = PROPAGATORS


@dataclass
class Models:
    """What a request needs from the loaded models, and what the page says about them."""

    engine: Any  # HFEngine / VLLMEngine (or any object with `generate(requests, sampling)`)
    propagator: Any  # a `models.propagator.Propagator` (SAM2Propagator)
    image_size: int  # the policy's square frame side
    description: str  # one line for the page
    random_weights: bool  # True when either model has random weights: the page then says so
    max_new_tokens: int = RESPONSE_BUDGET
    lock: threading.Lock = field(default_factory=threading.Lock)  # one generation / propagation at a time


def resolve_models(
    policy: PolicyConfig | None = None,
    propagator: PropagatorConfig | None = None,
    *,
    cache_dir: str | Path,
    image_size: int | None = None,
    max_new_tokens: int = RESPONSE_BUDGET,
    max_shown_frames: int = 16,
) -> Models:
    """Load the policy and propagator the app serves (default: the named `DEFAULT_MODEL` pair). `policy.model`: a
    name in `NAMED_POLICIES` (built in `cache_dir`) or a local folder.

    `max_shown_frames` bounds the frames per prompt a request may ask for (vLLM reserves room for them).
    Raises a `UserError` naming the flag and the value when a model is missing or wrong.
    """
    from veason_r1.errors import BadInput
    from veason_r1.inference.pipeline import build_engine

    policy = policy or PolicyConfig(model=DEFAULT_MODEL)
    propagator = propagator or PropagatorConfig(name=DEFAULT_SAM2)
    propagator.check()  # before the policy loads (minutes on a GPU node): a known name, a complete checkpoint
    named = NAMED_POLICIES.get(policy.model)
    if named is not None:
        folder = named.folder(Path(cache_dir))
        size = image_size or named.image_size
        policy_label, policy_random = f"{named.label}, {folder}", named.random_weights
    else:
        folder = Path(policy.model or "").expanduser()
        if not policy.model or not folder.is_dir():
            raise BadInput(POLICY_FLAGS["model"], f"{policy.model!r} is neither a known name "
                           f"({', '.join(sorted(NAMED_POLICIES))}) nor a local policy folder")
        row = family_of_folder(folder) or DEFAULT_FAMILY  # the folder's own frame side (560 for Qwen2.5-VL)
        size = image_size or row.default_image_size
        policy_label, policy_random = f"{row.name} from {folder}", False
    policy_engine = build_engine(replace(policy, model=str(folder)), size, batch_size=1, num_frames=max_shown_frames)
    return Models(
        engine=policy_engine,
        propagator=propagator.load(policy.device),
        image_size=size,
        description=f"policy: {policy_label}; {propagator.describe()}; frames shown at {size}x{size}",
        random_weights=policy_random or propagator.random_weights,
        max_new_tokens=max_new_tokens,
    )
