"""The mask propagator seam: what reward, prediction, inference and the app call on SAM2 (or any replacement).

Callers call these methods and never probe with `hasattr` or inspect signatures. A new propagator subclasses
`PropagatorBase` and writes `propagate` only (the rest has exact, slower defaults), or overrides the batched methods
for speed as `SAM2Propagator` does; then it gets a name in `models/registry.py` (docs/extending.md).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

Prompt = tuple[int, np.ndarray]  # (keyframe index in the video, boxes (N, 4) in original pixels)


@runtime_checkable
class Propagator(Protocol):
    """Box prompts on a keyframe -> masks on every frame of the video (forward to the end, then backward)."""

    profile: dict | None  # a dict -> seconds per stage are added to it (benchmarks); None -> nothing recorded

    def encode(self, frames: Any, *, cache_frames: int = 64) -> Any:
        """Preprocess a video once; the result may be passed wherever `frames` is taken."""

    def propagate(self, frames: Any, keyframe_index: int, boxes: np.ndarray, *, progress: bool = False) -> np.ndarray:
        """(K, H, W) bool union masks of `boxes` (N, 4) prompted on `keyframe_index`."""

    def propagate_many(self, frames: Any, prompts: Sequence[Prompt]) -> list[np.ndarray]:
        """One union mask stack per prompt on one video (the video encoded once)."""

    def propagate_groups(self, groups: Sequence[tuple[Any, Sequence[Prompt]]]) -> list[list[np.ndarray]]:
        """`propagate_many` over several videos."""

    def frame_ious_groups(self, groups: Sequence[tuple[Any, Sequence[Prompt]]],
                          gt_masks: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        """Per group, per prompt: the (K,) IoU of its union masks with the group's GT masks (the reward's term)."""


class PropagatorBase:
    """Exact defaults built on `propagate`, so a new propagator needs one method."""

    profile: dict | None = None

    @contextlib.contextmanager
    def _stage(self, name: str):
        """Adds the stage's wall time (CUDA synchronised on both ends) to `self.profile` when that is a dict;
        subclasses with a CUDA device set `self.device` (a torch.device)."""
        if self.profile is None:
            yield
            return
        import time

        import torch

        cuda = getattr(getattr(self, "device", None), "type", None) == "cuda"
        if cuda:
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if cuda:
                torch.cuda.synchronize(self.device)
            self.profile[name] = self.profile.get(name, 0.0) + time.perf_counter() - start

    def encode(self, frames: Any, *, cache_frames: int = 64) -> Any:
        return frames

    def propagate(self, frames: Any, keyframe_index: int, boxes: np.ndarray, *, progress: bool = False) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__}.propagate")

    def propagate_many(self, frames: Any, prompts: Sequence[Prompt]) -> list[np.ndarray]:
        return [np.asarray(self.propagate(frames, int(k), np.asarray(b, np.float32).reshape(-1, 4)), dtype=bool)
                for k, b in prompts]

    def propagate_groups(self, groups: Sequence[tuple[Any, Sequence[Prompt]]]) -> list[list[np.ndarray]]:
        return [self.propagate_many(frames, prompts) for frames, prompts in groups]

    def frame_ious_groups(self, groups: Sequence[tuple[Any, Sequence[Prompt]]],
                          gt_masks: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
        from veason_r1.data.masks import mask_iou

        if len(gt_masks) != len(groups):
            raise ValueError(f"gt_masks: {len(gt_masks)} arrays for {len(groups)} groups")
        out = []
        for masks, gt in zip(self.propagate_groups(groups), gt_masks):
            gt = np.asarray(gt, dtype=bool)
            rows = []
            for m in masks:
                m = np.asarray(m, dtype=bool)
                if m.shape != gt.shape:
                    raise ValueError(f"gt_masks: shape {gt.shape} does not fit the masks {m.shape}")
                rows.append(np.asarray([mask_iou(p, g) for p, g in zip(m, gt)], dtype=np.float64))
            out.append(rows)
        return out


__all__ = ["Prompt", "Propagator", "PropagatorBase"]
