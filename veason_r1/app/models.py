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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from veason_r1.config import IMAGE_SIZE

DEFAULT_MODEL = "tiny"  # the policy `veason-r1 app` loads without --model
DEFAULT_SAM2 = DEFAULT_MODEL  # and the SAM2 without --sam2: the named SAM2 that goes with the named policy
TINY_IMAGE_SIZE = 112  # the tiny policy's frame side: 16 visual tokens per frame (as in `veason-r1 demo`)


@dataclass(frozen=True)
class NamedPolicy:
    """A policy known by name: how to build (or find) its folder in the cache, and what the page says about it."""

    build: Callable[[Path], Path]  # cache folder -> model folder (built there on first use)
    image_size: int
    random_weights: bool
    label: str


def _tiny_policy(cache_dir: Path) -> Path:
    from veason_r1.models.tiny import make_tiny_qwen

    folder = cache_dir / "models" / "tiny_qwen_seed0"
    if not (folder / "config.json").is_file():  # make_tiny_qwen moves a finished folder in, never half of one
        make_tiny_qwen(folder, seed=0)
    return folder


def _toy_policy(cache_dir: Path) -> Path:
    from veason_r1.models.toy import toy_policy_dir

    return toy_policy_dir()  # shipped in the package (veason_r1/assets/toy/policy)


NAMED_POLICIES: dict[str, NamedPolicy] = {
    "tiny": NamedPolicy(_tiny_policy, TINY_IMAGE_SIZE, True, "tiny Qwen2.5-VL (random weights)"),
    "toy": NamedPolicy(_toy_policy, TINY_IMAGE_SIZE, False,
                       "toy base Qwen2.5-VL (trained on synthetic shapes only, not Veason-trained)"),
}


@dataclass(frozen=True)
class NamedSam2:
    """A SAM2 known by name: its config (a `load_sam2` name or yaml) and its checkpoint in the cache, if any."""

    config: str
    checkpoint: Callable[[Path], Path | None]  # cache folder -> checkpoint (None: random weights)
    label: str


def _toy_sam2_checkpoint(cache_dir: Path) -> Path:
    from veason_r1.models.toy import toy_sam2_checkpoint

    return toy_sam2_checkpoint()


NAMED_SAM2: dict[str, NamedSam2] = {
    "tiny": NamedSam2("tiny", lambda cache_dir: None, "tiny SAM2.1 (random weights)"),
    "toy": NamedSam2("toy", _toy_sam2_checkpoint, "toy SAM2.1 (trained on synthetic shapes only)"),
}


@dataclass
class Models:
    """What a request needs from the loaded models, and what the page says about them."""

    engine: Any  # HFEngine / VLLMEngine (or any object with `generate(requests, sampling)`)
    propagator: Any  # SAM2Propagator (or any object with `propagate(frames, keyframe, boxes)`)
    image_size: int  # the policy's square frame side
    description: str  # one line for the page
    random_weights: bool  # True when either model has random weights: the page then says so
    max_new_tokens: int = 1024
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
    max_new_tokens: int = 1024,
    fast_paths: str = "auto",
    offload: bool = False,
    max_shown_frames: int = 16,
) -> Models:
    """Load the policy and SAM2 the app serves. `model`: a name in `NAMED_POLICIES` or a local folder.

    `max_shown_frames` bounds the frames per prompt a request may ask for (vLLM reserves room for them).
    Raises FileNotFoundError / ValueError with a message naming the flag and the value when a model is missing.
    """
    from veason_r1.inference.pipeline import build_engine
    from veason_r1.models.sam2 import load_sam2

    if sam2_ckpt is not None and Path(sam2_ckpt).is_file():  # before the policy loads (minutes on a GPU node)
        from veason_r1.inference.pipeline import check_sam2

        check_sam2(sam2, sam2_ckpt)  # the run's own check: known config, a PyTorch checkpoint (one line if not)
    named = NAMED_POLICIES.get(model)
    if named is not None:
        folder = named.build(Path(cache_dir))
        size = image_size or named.image_size
        policy_label, policy_random = f"{named.label}, {folder}", named.random_weights
    else:
        folder = Path(model).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"--model: {model!r} is neither a known name ({', '.join(sorted(NAMED_POLICIES))}) "
                "nor a local Qwen2.5-VL folder"
            )
        size = image_size or IMAGE_SIZE
        policy_label, policy_random = f"Qwen2.5-VL from {folder}", False
    if sam2_ckpt is not None and not Path(sam2_ckpt).is_file():
        raise FileNotFoundError(f"--sam2-ckpt: no SAM2 checkpoint at {sam2_ckpt}")
    named_sam2 = NAMED_SAM2.get(sam2) if sam2_ckpt is None else None
    if named_sam2 is not None:
        sam2_config, ckpt = named_sam2.config, named_sam2.checkpoint(Path(cache_dir))
        sam2_label = named_sam2.label
    else:
        sam2_config, ckpt = sam2, sam2_ckpt
        sam2_label = f"SAM2 {sam2}, " + (f"checkpoint {sam2_ckpt}" if sam2_ckpt else "random weights")
    policy_engine = build_engine(engine, folder, size, batch_size=1, device=device, dtype=dtype,
                                 num_frames=max_shown_frames, fast_paths=fast_paths)
    propagator = load_sam2(sam2_config, checkpoint=None if ckpt is None else str(ckpt), device=device,
                           offload=offload)
    return Models(
        engine=policy_engine,
        propagator=propagator,
        image_size=size,
        description=f"policy: {policy_label}; {sam2_label}; frames shown at {size}x{size}",
        random_weights=policy_random or ckpt is None,
        max_new_tokens=max_new_tokens,
    )
