"""One name registry (lerobot-style): a name on any command line -> a model, for every command.

Policies: `toy` (the shipped toy base, models/toy.py), `tiny` (a random-weight tiny Qwen2.5-VL built into a cache
folder on first use), `tiny-<family>` (the same for another family of models/families.py), or a local folder.
Propagators: `toy` (shipped checkpoint), `tiny` (random weights), the SAM2/SAM2.1 config names (their checkpoint is
required), a yaml path, or a transformers tracker `hf-sam2` / `sam3` / `edgetam` (its weights folder is required;
`tiny-<name>`: random weights). Each entry answers "needs a checkpoint?" and "random weights?"; commands, configs and the
app ask here instead of comparing names themselves.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from veason_r1.models.families import DEFAULT_FAMILY, FAMILIES

TOY = "toy"
TINY = "tiny"


def default_cache_dir() -> Path:
    """Where named models that are built on first use go: $VEASON_R1_CACHE, else ~/.cache/veason-r1."""
    return Path(os.environ.get("VEASON_R1_CACHE") or Path.home() / ".cache" / "veason-r1").expanduser()


@dataclass(frozen=True)
class NamedPolicy:
    """A policy known by name: how to find (or build) its folder, its frame side, what the page says about it."""

    folder: Callable[[Path], Path]  # cache folder -> model folder (built there on first use)
    image_size: int
    random_weights: bool
    label: str


def _tiny_policy(family_name: str) -> Callable[[Path], Path]:
    def build(cache_dir: Path) -> Path:
        from veason_r1.models.families import family, make_tiny

        suffix = "" if family_name == DEFAULT_FAMILY.name else f"_{family_name}"
        folder = cache_dir / "models" / f"tiny_qwen{suffix}_seed0"
        if not (folder / "config.json").is_file():  # the builder moves a finished folder in, never half of one
            make_tiny(family(family_name), folder, seed=0)
        return folder

    return build


def _toy_policy(cache_dir: Path) -> Path:
    from veason_r1.models.toy import toy_policy_dir

    return toy_policy_dir()  # shipped in the package (veason_r1/assets/toy/policy)


TINY_IMAGE_SIZE = 112  # the tiny/toy Qwen2.5-VL frame side: 16 visual tokens per frame (as in `veason-r1 demo`)

POLICIES: dict[str, NamedPolicy] = {
    TINY: NamedPolicy(_tiny_policy(DEFAULT_FAMILY.name), TINY_IMAGE_SIZE, True, "tiny Qwen2.5-VL (random weights)"),
    TOY: NamedPolicy(_toy_policy, TINY_IMAGE_SIZE, False,
                     "toy base Qwen2.5-VL (trained on synthetic shapes only, not Veason-trained)"),
    # `tiny-<family>`: every other family with a tiny builder
    **{f"{TINY}-{row.name}": NamedPolicy(_tiny_policy(row.name), row.factor * 4, True,
                                          f"tiny {row.name} (random weights)")
       for row in FAMILIES.values() if row.tiny_builder and row is not DEFAULT_FAMILY},
}


def is_named_policy(name: str | Path | None) -> bool:
    return isinstance(name, str) and name in POLICIES


def resolve_policy(name: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The policy folder for `name`: a named policy's folder (built into `cache_dir` when it must be), or the
    path itself (checked by `models.policy.check_model_dir`)."""
    named = POLICIES.get(name) if isinstance(name, str) else None
    if named is not None:
        return named.folder(Path(cache_dir) if cache_dir is not None else default_cache_dir())
    return Path(name).expanduser()


def policy_random_weights(name: str | Path) -> bool:
    named = POLICIES.get(name) if isinstance(name, str) else None
    return bool(named and named.random_weights)


# ----------------------------------------------------------------------------------------------------------------
# Propagators


@dataclass(frozen=True)
class NamedPropagator:
    """A propagator known by name: its config (a `load_sam2` name) and its shipped checkpoint, if any."""

    config: str
    checkpoint: Callable[[], Path | None]  # None: random weights
    label: str


def _toy_sam2_checkpoint() -> Path:
    from veason_r1.models.toy import toy_sam2_checkpoint

    return toy_sam2_checkpoint()


PROPAGATORS: dict[str, NamedPropagator] = {
    TINY: NamedPropagator(TINY, lambda: None, "tiny SAM2.1 (random weights)"),
    TOY: NamedPropagator(TOY, _toy_sam2_checkpoint, "toy SAM2.1 (trained on synthetic shapes only)"),
}


# transformers' video trackers (models/hf_tracker.py): `hf-sam2`, `sam3`, `edgetam` take their weights folder as
# the checkpoint (--sam2-checkpoint / reward.propagator.checkpoint); `tiny-<name>` is a random-weight folder built on first use.
HF_TRACKERS = ("hf-sam2", "sam3", "edgetam")
TINY_TRACKERS = {f"{TINY}-{n}": n for n in HF_TRACKERS}
TOY_HF_SAM2 = f"{TOY}-hf-sam2"  # the shipped toy SAM2 converted for `hf-sam2` (models/hf_sam2_convert.py)


def _tiny_tracker(name: str) -> Callable[[], Path]:
    def build() -> Path:
        from veason_r1.models.hf_tiny import tiny_tracker_folder

        return tiny_tracker_folder(name, default_cache_dir())

    return build


def _toy_hf_sam2() -> Path:
    from veason_r1.models.hf_sam2_convert import cached_conversion

    return cached_conversion(TOY, default_cache_dir())


PROPAGATORS.update({
    tiny: NamedPropagator(tiny, _tiny_tracker(n), f"tiny {n} through transformers (random weights)")
    for tiny, n in TINY_TRACKERS.items()
})
PROPAGATORS[TOY_HF_SAM2] = NamedPropagator(TOY_HF_SAM2, _toy_hf_sam2,
                                           "toy SAM2.1 through transformers (hf-sam2; trained on synthetic shapes only)")


def tracker_of(name: str | None) -> str | None:
    """The transformers tracker a propagator name runs on (`hf-sam2`, `sam3`, `edgetam`), or None (the sam2 package)."""
    if name in HF_TRACKERS:
        return name
    if name == TOY_HF_SAM2:
        return "hf-sam2"
    return TINY_TRACKERS.get(name) if isinstance(name, str) else None


def propagator_needs_checkpoint(name: str | None) -> bool:
    """A propagator by this name must be given its checkpoint: every name but the named ones (`tiny` has random
    weights and is asked for by name in tests and the demo; `toy` ships its checkpoint)."""
    return name not in PROPAGATORS


def propagator_checkpoint(name: str, checkpoint: str | Path | None) -> Path | None:
    """The checkpoint to load for `name`: the one given, else a named propagator's own (None: random weights)."""
    if checkpoint is not None:
        return Path(checkpoint)
    named = PROPAGATORS.get(name)
    return named.checkpoint() if named is not None else None


def propagator_random_weights(name: str, checkpoint: str | Path | None) -> bool:
    if checkpoint is None and name in TINY_TRACKERS:
        return True
    return propagator_checkpoint(name, checkpoint) is None


def propagator_name_problem(name: str) -> tuple[str, str] | None:
    """(what is wrong, hint) when no propagator answers to `name`; None when one does."""
    from veason_r1.models.sam2 import SAM2_CONFIGS, _config_path

    if tracker_of(name) is not None:
        return None
    try:
        _config_path(name)
    except ValueError:
        return (f"unknown SAM2 config {name!r}",
                f"use tiny, toy, one of {', '.join(sorted(SAM2_CONFIGS) + sorted(HF_TRACKERS))}, or a yaml path")
    return None


def load_propagator(name: str, checkpoint: str | Path | None = None, device: str | None = None, **options):
    """A ready `Propagator` by name: a transformers tracker (`hf-sam2`, `sam3`, `edgetam`, their `tiny-` builds)
    from its weights folder, else a SAM2/SAM2.1 config of the sam2 package."""
    from veason_r1.models.sam2 import load_sam2

    tracker = tracker_of(name)
    if tracker is not None:
        from veason_r1.errors import BadInput
        from veason_r1.models.hf_tracker import load_hf_tracker

        folder = propagator_checkpoint(name, checkpoint)
        if folder is None:
            raise BadInput("--sam2", f"{name} needs its weights folder",
                           hint="pass it as --sam2-checkpoint / reward.propagator.checkpoint (docs/models.md)")
        return load_hf_tracker(tracker, folder, device, **options)
    ckpt = propagator_checkpoint(name, checkpoint)
    return load_sam2(name, None if ckpt is None else str(ckpt), device, **options)


__all__ = [
    "FAMILIES",
    "HF_TRACKERS",
    "POLICIES",
    "PROPAGATORS",
    "TINY",
    "TINY_IMAGE_SIZE",
    "TINY_TRACKERS",
    "TOY",
    "TOY_HF_SAM2",
    "NamedPolicy",
    "NamedPropagator",
    "default_cache_dir",
    "is_named_policy",
    "load_propagator",
    "policy_random_weights",
    "propagator_checkpoint",
    "propagator_needs_checkpoint",
    "propagator_random_weights",
    "resolve_policy",
    "tracker_of",
]
