"""Per-frame segmentation metrics, exactly as the reference scripts compute them (docs/method.md §9), but fast.

- J (region similarity): |G & P| / |G | P|, 1 when both are empty (DAVIS `db_eval_iou`).
- F (contour accuracy): boundary maps by the DAVIS `seg2bmap` rule; a boundary pixel of one mask is matched when a
  boundary pixel of the other lies inside a disk of radius ceil(0.008 * diagonal) around it (DAVIS/VISA dilate
  with skimage's disk through cv2.dilate); P, R = matched fractions; F = 2PR / (P + R); both boundaries empty -> 1,
  one empty -> 0 (DAVIS `f_measure`). A full-frame mask has no boundary.
- A (ReVOS accuracy, VISA `get_r2vos_accuracy`): mean of (gt == pred) on the uint8 values.
- R (ReVOS robustness, VISA `get_r2vos_robustness`): max(1 - sum((1 - gt) * pred) / (|fg| + 1e-6), 0), the product
  taken per pixel in uint8 as numpy does (1 - 2 -> 255, 255 * 255 -> 1). A 0/255 prediction makes a false-positive
  pixel count 255 times; where a multi-object GT holds 2 (overlapping objects, see veason_r1.eval.packed), a
  predicted pixel counts 1 (0/255) or 255 (0/1) times.
- A_scale_free, R_scale_free: the same on the boolean masks (GT = union of the objects, prediction binarised), so
  the value scale of the PNGs and overlaps between objects do not matter.

Why fast: the masks are packed 64 pixels per word (veason_r1.eval.packed); J and the single-valued A/R are popcounts,
the boundary maps are a few word operations per row, and the boundary match visits only boundary pixels, testing
for each the disk's rows (|dx| <= isqrt(r^2 - dy^2), the offsets of skimage's disk) nearest first. The counts are
the reference's counts, so every float is identical (tests/test_metrics.py; bench/bench_metrics.py times the real
reference code).
"""

from __future__ import annotations

import functools
import math
import threading
from dataclasses import dataclass

import numpy as np

from veason_r1.data.masks import iou_from_counts
from veason_r1.eval import kernels
from veason_r1.eval.packed import MaskBits, pack_mask

BOUND_TH = 0.008
R_EPS = 1e-6  # the reference's denominator guard in R


@dataclass(frozen=True)
class FrameScore:
    """Scores of one frame (fractions in [0, 1]); A/R terms are None where they were not asked for."""

    J: float
    F: float
    A: float | None = None
    R: float | None = None
    A_scale_free: float | None = None
    R_scale_free: float | None = None


def boundary_radius(shape: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Tolerance radius in pixels: bound_th itself when >= 1, else ceil(bound_th * diagonal) (DAVIS)."""
    return _radius(int(shape[0]), int(shape[1]), float(bound_th))


@functools.lru_cache(maxsize=64)
def _radius(h: int, w: int, bound_th: float) -> int:
    if bound_th >= 1:
        return int(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm((h, w))))


def f_from_counts(n_gt: int, n_pred: int, gt_matched: int, pred_matched: int) -> float:
    """DAVIS f_measure from boundary counts, with its edge cases (same float operations as the reference)."""
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = pred_matched / float(n_pred)
        recall = gt_matched / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


# ---------------------------------------------------------------------------------------------------------------
# Scratch buffers (per thread, per frame size): boundary maps are written and cleared row range by row range


class _Scratch:
    def __init__(self, h: int, nw: int, radius: int):
        self.bg = np.zeros((h, nw), np.uint64)
        self.bp = np.zeros((h, nw), np.uint64)
        self.ext = np.empty((4, h), np.int64)
        self.stats = np.empty(5, np.int64)
        self.half = np.array([math.isqrt(radius * radius - d * d) for d in range(radius + 1)], np.int64)
        self.order = np.array([0] + [s * d for d in range(1, radius + 1) for s in (1, -1)], np.int64)


_LOCAL = threading.local()


def _scratch(h: int, nw: int, radius: int) -> _Scratch:
    cache = getattr(_LOCAL, "cache", None)
    if cache is None:
        cache = _LOCAL.cache = {}
    key = (h, nw, radius)
    if key not in cache:
        if len(cache) > 8:
            cache.clear()
        cache[key] = _Scratch(h, nw, radius)
    return cache[key]


def boundary_counts(g: MaskBits, p: MaskBits, radius: int) -> tuple[int, int, int, int]:
    """(gt boundary pixels, pred boundary pixels, gt ones matched within the disk, pred ones matched)."""
    h, w = g.shape
    s = _scratch(h, g.bits.shape[1], radius)
    gmin, gmax, pmin, pmax = s.ext
    n_g = kernels.boundary(g.bits, w, g.rows[0], g.rows[1], s.bg, gmin, gmax)
    n_p = kernels.boundary(p.bits, w, p.rows[0], p.rows[1], s.bp, pmin, pmax)
    try:
        if n_g and n_p:
            gm = kernels.matched(s.bg, gmin, s.bp, pmin, pmax, w, s.half, s.order)
            pm = kernels.matched(s.bp, pmin, s.bg, gmin, gmax, w, s.half, s.order)
        else:
            gm = pm = 0
    finally:
        kernels.clear_rows(s.bg, g.rows[0], g.rows[1])
        kernels.clear_rows(s.bp, p.rows[0], p.rows[1])
    return int(n_g), int(n_p), int(gm), int(pm)


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """DAVIS/BSDS boundary map: a pixel is boundary when it differs from its right, lower or lower-right neighbour;
    in the last row only the right neighbour counts, in the last column only the lower one, and the bottom-right
    pixel never is a boundary."""
    m = pack_mask(np.asarray(seg) != 0, "seg")
    h, w = m.shape
    out = np.zeros_like(m.bits)
    ext = np.empty((2, h), np.int64)
    kernels.boundary(m.bits, w, m.rows[0], m.rows[1], out, ext[0], ext[1])
    bits = np.unpackbits(out.view(np.uint8), axis=1, bitorder="little")[:, :w]
    return bits.astype(bool)


# ---------------------------------------------------------------------------------------------------------------
# Scores


def score_masks(g: MaskBits, p: MaskBits, foreground_area: int | None = None, *, with_accuracy: bool = False,
                bound_th: float = BOUND_TH) -> FrameScore:
    """J and F of one frame, plus A (with_accuracy or foreground_area given) and R (foreground_area given), each
    with its scale-free variant. `foreground_area`: pixels of the video's foreground in this frame (R's |fg|)."""
    if g.shape != p.shape:
        raise ValueError(f"GT mask {g.shape} and prediction {p.shape} must be 2-D masks of the same size")
    radius = boundary_radius(g.shape, bound_th)
    s = _scratch(g.shape[0], g.bits.shape[1], radius)
    kernels.overlap_counts(g.bits, p.bits, s.stats)
    n_g, n_p, n_i = int(s.stats[0]), int(s.stats[1]), int(s.stats[2])
    union = n_g + n_p - n_i
    j = iou_from_counts(n_i, union)  # 1 when both are empty (the one rule, data.masks)
    f = 1.0 if union == 0 else f_from_counts(*boundary_counts(g, p, radius))
    if not (with_accuracy or foreground_area is not None):
        return FrameScore(J=float(j), F=float(f))
    total = g.shape[0] * g.shape[1]
    diff, neg = _literal_terms(g, p, n_p, n_i)
    a = float(np.float64(total - diff) / total)
    a_sf = float(np.float64(total - (union - n_i)) / total)
    r = r_sf = None
    if foreground_area is not None:
        denom = int(foreground_area) + R_EPS
        r = max(1 - neg / denom, 0.0)
        r_sf = max(1 - (n_p - n_i) / denom, 0.0)
    return FrameScore(J=float(j), F=float(f), A=a, R=r, A_scale_free=a_sf, R_scale_free=r_sf)


def _literal_terms(g: MaskBits, p: MaskBits, n_p: int, n_i: int) -> tuple[int, int]:
    """(#pixels with gt != pred, sum of ((1 - gt) * pred) in uint8 per pixel), VISA's A and R numerators."""
    if g.value is not None and p.value is not None:  # 0 and one value each: counts give both
        vg, vp = g.value, p.value
        n_g = g.area
        both_equal = n_i if vg == vp else 0
        diff = n_g + n_p - 2 * n_i + (n_i - both_equal)
        neg = vp * (n_p - n_i) + ((((1 - vg) * vp) & 0xFF) * n_i)
        return diff, neg
    if g.layers is not None and p.value is not None:  # VISA's summed GT of overlapping objects, binary prediction
        m_hist = np.zeros(256, np.int64)
        n_hist = np.zeros(256, np.int64)
        outside = int(kernels.level_counts(g.layers, p.bits, m_hist, n_hist))
        vp = p.value
        levels = np.flatnonzero(m_hist)
        diff = outside + sum(int(n_hist[c]) * (vp != c) + int(m_hist[c] - n_hist[c]) * (c != 0) for c in levels)
        neg = outside * vp + sum(int(n_hist[c]) * (((1 - int(c)) * vp) & 0xFF) for c in levels)
        return diff, neg
    rows = [r for r in (g.rows, p.rows) if r[0] >= 0]
    y0 = min(r[0] for r in rows)
    y1 = max(r[1] for r in rows)
    out = np.empty(2, np.int64)
    kernels.literal_accuracy_robustness(g.as_values(), p.as_values(), y0, y1, out)
    return int(out[0]), int(out[1])


def frame_scores(gt: np.ndarray, pred: np.ndarray, foreground_area: int | None = None, *,
                 with_accuracy: bool = False, bound_th: float = BOUND_TH) -> FrameScore:
    """`score_masks` on arrays. `gt`: the GT as VISA holds it (bool, 0/1, or the uint8 sum of overlapping objects);
    `pred`: the prediction's uint8 values as read (0/255, 0/1, or bool). J and F use the non-zero pixels."""
    g = pack_mask(gt, "GT mask")
    p = pack_mask(pred, "prediction")
    return score_masks(g, p, foreground_area, with_accuracy=with_accuracy, bound_th=bound_th)


def jaccard(gt: np.ndarray, pred: np.ndarray) -> float:
    """Region similarity J of one frame (any non-zero value is foreground)."""
    return frame_scores(gt, pred).J


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Contour accuracy F of one frame (DAVIS rules, exact)."""
    return frame_scores(gt, pred, bound_th=bound_th).F


def accuracy(gt: np.ndarray, pred: np.ndarray, scale_free: bool = False) -> float:
    """ReVOS A of one frame: mean of (gt == pred) on the values (scale_free: on the binarised masks)."""
    s = frame_scores(gt, pred, with_accuracy=True)
    return s.A_scale_free if scale_free else s.A  # type: ignore[return-value]


def robustness(gt: np.ndarray, pred: np.ndarray, foreground: np.ndarray | int, scale_free: bool = False) -> float:
    """ReVOS R of one frame; `foreground` is the foreground mask or its pixel count."""
    area = int(np.count_nonzero(foreground)) if isinstance(foreground, np.ndarray) else int(foreground)
    s = frame_scores(gt, pred, foreground_area=area)
    return s.R_scale_free if scale_free else s.R  # type: ignore[return-value]


def mean(values) -> float:
    """Mean of per-frame or per-expression values the way the reference takes it (numpy float64 mean)."""
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return float("nan")
    return float(arr.mean())


def video_scores(gts, preds, foreground_areas=None, *, with_accuracy: bool = False,
                 bound_th: float = BOUND_TH) -> dict[str, float]:
    """Per-expression means over frames of J, F (and A, R and their scale-free variants): one reference row."""
    fgs = foreground_areas if foreground_areas is not None else [None] * len(gts)
    if not (len(gts) == len(preds) == len(fgs)):
        raise ValueError(f"frame counts differ: {len(gts)} GT, {len(preds)} predictions, {len(fgs)} foregrounds")
    frames = [frame_scores(g, p, fg, with_accuracy=with_accuracy, bound_th=bound_th)
              for g, p, fg in zip(gts, preds, fgs)]
    return aggregate_frames(frames)


SCORE_KEYS = ("J", "F", "A", "R", "A_scale_free", "R_scale_free")


def aggregate_frames(frames: list[FrameScore]) -> dict[str, float]:
    out = {"J": mean(s.J for s in frames), "F": mean(s.F for s in frames)}
    for key in SCORE_KEYS[2:]:
        vals = [getattr(s, key) for s in frames]
        if vals and all(v is not None for v in vals):
            out[key] = mean(vals)
    return out
