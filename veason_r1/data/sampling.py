"""Keyframe and frame grids (docs/method.md §4).

Training: the keyframe is drawn uniformly among the top-k union-area frames and a grid with step ceil(L/(N-1)) is
anchored on it. Evaluation: linspace(0, L-1, N). Timestamps shown to the model are the original frame indices.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import numpy as np

from veason_r1.config import FRAMES


def pick_keyframe(areas: Sequence[float], rng: random.Random, top_k: int = FRAMES.keyframe_top_k) -> int:
    """Uniformly random among the `top_k` frames with the largest GT union area (ties: lower index first)."""
    if len(areas) == 0:
        raise ValueError("pick_keyframe: the video has no frames")
    order = sorted(range(len(areas)), key=lambda i: (-float(areas[i]), i))
    return rng.choice(order[: min(top_k, len(order))])


def anchored_grid(num_frames: int, keyframe: int, n: int) -> list[int]:
    """Frame grid with step ceil(L/(N-1)) that contains `keyframe`; all frames when L <= N-1."""
    if num_frames <= 0:
        raise ValueError("anchored_grid: the video has no frames")
    if not 0 <= keyframe < num_frames:
        raise ValueError(f"anchored_grid: keyframe {keyframe} outside 0..{num_frames - 1}")
    if num_frames <= n - 1:
        return list(range(num_frames))
    step = math.ceil(num_frames / (n - 1))
    return list(range(keyframe % step, num_frames, step))


def training_frames(areas: Sequence[float], n: int, rng: random.Random,
                    top_k: int = FRAMES.keyframe_top_k) -> tuple[list[int], int]:
    """(frame ids, keyframe) for one training sample from the per-frame GT union areas."""
    keyframe = pick_keyframe(areas, rng, top_k)
    return anchored_grid(len(areas), keyframe, n), keyframe


def eval_frames(num_frames: int, n: int = FRAMES.eval_frames) -> list[int]:
    """Evaluation frames: linspace(0, L-1, n) truncated to int, all frames when L <= n."""
    if num_frames <= 0:
        raise ValueError("eval_frames: the video has no frames")
    if num_frames <= n:
        return list(range(num_frames))
    return [int(x) for x in np.linspace(0, num_frames - 1, n)]
