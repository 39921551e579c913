"""Model resolution for the app: ONE function, `resolve_models`, turns the command-line names into loaded models.

A policy is a name from `NAMED_POLICIES` (built or found in the cache folder, so a fresh CPU machine needs no
download) or a local Qwen2.5-VL folder (a merged SFT/RL checkpoint on a GPU node). SAM2 is a name from `NAMED_SAM2`
(its config and, when it has one, its checkpoint) or a SAM2 config name / yaml with `--sam2-ckpt` (without it the
weights are random). Changing the default models is the one line `DEFAULT_MODEL = ...` (a named policy and the named
SAM2 of the same name go together).
The models are loaded once per process; `Models.lock` makes every request use them one at a time.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veason_r1.config import RESPONSE_BUDGET
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
    model: str = DEFAULT_MODEL,
    sam2: str = DEFAULT_SAM2,
    sam2_ckpt: str | None = None,
    *,
    cache_dir: str | Path,
    engine: str = "hf",
    device: str | None = None,
    dtype: str = "auto",
    image_size: int | None = None,
    max_new_tokens: int = RESPONSE_BUDGET,
    fast_paths: str = "auto",
    offload: bool = False,
    max_shown_frames: int = 16,
) -> Models:
    """Load the policy and SAM2 the app serves. `model`: a name in `NAMED_POLICIES` or a local folder.

    `max_shown_frames` bounds the frames per prompt a request may ask for (vLLM reserves room for them).
    Raises FileNotFoundError / ValueError with a message naming the flag and the value when a model is missing.
    """
    from veason_r1.inference.pipeline import build_engine
    from veason_r1.models.registry import load_propagator, propagator_random_weights

    if sam2_ckpt is not None and Path(sam2_ckpt).is_file():  # before the policy loads (minutes on a GPU node)
        from veason_r1.inference.pipeline import check_sam2

        check_sam2(sam2, sam2_ckpt)  # the run's own check: known config, a PyTorch checkpoint (one line if not)
    named = NAMED_POLICIES.get(model)
    if named is not None:
        folder = named.folder(Path(cache_dir))
        size = image_size or named.image_size
        policy_label, policy_random = f"{named.label}, {folder}", named.random_weights
    else:
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"--model: {model!r} is neither a known name ({', '.join(sorted(NAMED_POLICIES))}) "
                "nor a local Qwen2.5-VL folder"
            )
        row = family_of_folder(folder) or DEFAULT_FAMILY  # the folder's own frame side (560 for Qwen2.5-VL)
        size = image_size or row.default_image_size
        policy_label, policy_random = f"{row.name} from {folder}", False
    if sam2_ckpt is not None and not Path(sam2_ckpt).exists():  # a file, or a transformers tracker's folder
        raise FileNotFoundError(f"--sam2-ckpt: no SAM2 checkpoint at {sam2_ckpt}")
    named_sam2 = NAMED_SAM2.get(sam2) if sam2_ckpt is None else None
    if named_sam2 is not None:
        sam2_config, ckpt = named_sam2.config, named_sam2.checkpoint()
        sam2_label = named_sam2.label
    else:
        sam2_config, ckpt = sam2, sam2_ckpt
        sam2_label = f"SAM2 {sam2}, " + (f"checkpoint {sam2_ckpt}" if sam2_ckpt else "random weights")
    policy_engine = build_engine(engine, folder, size, batch_size=1, device=device, dtype=dtype,
                                 num_frames=max_shown_frames, fast_paths=fast_paths)
    propagator = load_propagator(sam2_config, checkpoint=None if ckpt is None else str(ckpt), device=device,
                           offload=offload)
    return Models(
        engine=policy_engine,
        propagator=propagator,
        image_size=size,
        description=f"policy: {policy_label}; {sam2_label}; frames shown at {size}x{size}",
        random_weights=policy_random or propagator_random_weights(sam2_config, sam2_ckpt if named_sam2 is None else None),
        max_new_tokens=max_new_tokens,
    )
