"""Per-frame segmentation metrics, exactly as the reference scripts compute them (docs/method.md §9), but fast.

- J (region similarity): |G & P| / |G | P|, 1 when both are empty (DAVIS `db_eval_iou`).
- F (contour accuracy): boundary maps by the DAVIS `seg2bmap` rule; a boundary pixel of one mask is matched when a
  boundary pixel of the other lies inside a disk of radius ceil(0.008 * diagonal) around it; P, R = matched
  fractions; F = 2PR / (P + R); both boundaries empty -> 1, one empty -> 0 (DAVIS `f_measure`). A full-frame mask
  has no boundary.
- A (ReVOS accuracy): mean of (gt == pred) on the values as saved (a 0/255 prediction never equals a GT of 1).
- R (ReVOS robustness): max(1 - sum((1 - gt) * pred) / (|fg| + 1e-6), 0) on the values as saved (published numbers
  assume 0/255 PNGs, so a false-positive pixel counts 255 times); `R_scale_free` counts it once.

Why fast: the DAVIS code dilates both whole frames with a disk per frame. Here everything is computed inside the
bounding box of the two masks; the boundary match uses bit-packed rows (64 pixels per word) and the disk as a
union of horizontal runs (|dx| <= isqrt(r^2 - dy^2) for each dy), which is the same set of pixel offsets as the
disk, so the counts and therefore every float are identical to whole-frame dilation
(tests/test_metrics.py checks this against tests/reference_metrics.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from veason_r1.data.masks import iou_from_counts

BOUND_TH = 0.008
R_EPS = 1e-6  # the reference's denominator guard in R


@dataclass(frozen=True)
class FrameScore:
    """Scores of one frame (fractions in [0, 1]); A/R are None where they were not asked for."""

    J: float
    F: float
    A: float | None = None
    R: float | None = None
    R_scale_free: float | None = None


def boundary_radius(shape: tuple[int, int], bound_th: float = BOUND_TH) -> int:
    """Tolerance radius in pixels: bound_th itself when >= 1, else ceil(bound_th * diagonal) (DAVIS)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm(shape)))


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    """DAVIS/BSDS boundary map: a pixel is boundary when it differs from its right, lower or lower-right neighbour;
    in the last row only the right neighbour counts, in the last column only the lower one, and the bottom-right
    pixel never is a boundary."""
    seg = np.asarray(seg).astype(bool, copy=False)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap needs a 2-D mask, got shape {seg.shape}")
    b = np.zeros(seg.shape, dtype=bool)
    h, w = seg.shape
    if h == 0 or w == 0:
        return b
    c = seg[:-1, :-1]
    b[:-1, :-1] = (c ^ seg[:-1, 1:]) | (c ^ seg[1:, :-1]) | (c ^ seg[1:, 1:])
    b[-1, :-1] = seg[-1, :-1] ^ seg[-1, 1:]
    b[:-1, -1] = seg[:-1, -1] ^ seg[1:, -1]
    b[-1, -1] = False
    return b


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(r0, r1, c0, c1) inclusive extents of a bool mask, or None when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    r0, r1 = int(rows[0]), int(rows[-1])
    cols = np.flatnonzero(mask[r0:r1 + 1].any(axis=0))
    return r0, r1, int(cols[0]), int(cols[-1])


def _union_box(a, b):
    if a is None:
        return b
    if b is None:
        return a
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def _shl1(a: np.ndarray) -> np.ndarray:
    """Move every bit one column right (towards higher column index) across 64-bit words."""
    out = a << np.uint64(1)
    out[..., 1:] |= a[..., :-1] >> np.uint64(63)
    return out


def _shr1(a: np.ndarray) -> np.ndarray:
    out = a >> np.uint64(1)
    out[..., :-1] |= a[..., 1:] << np.uint64(63)
    return out


def _pack_rows(bits: np.ndarray) -> np.ndarray:
    """(..., H, W) bool -> (..., H, ceil(W/64)) little-endian uint64 words; bit c%64 of word c//64 is column c."""
    packed = np.packbits(bits, axis=-1, bitorder="little")
    pad = (-packed.shape[-1]) % 8
    if pad:
        packed = np.concatenate([packed, np.zeros(packed.shape[:-1] + (pad,), np.uint8)], axis=-1)
    return np.ascontiguousarray(packed).view("<u8")


def _popcount(words: np.ndarray) -> int:
    return int(np.bitwise_count(words).sum(dtype=np.int64))


def matched_boundary_counts(gt_b: np.ndarray, pred_b: np.ndarray, radius: int) -> tuple[int, int]:
    """(#gt boundary pixels with a pred boundary pixel within the disk, #pred boundary pixels with a gt one).

    Equal to sum(gt_b & dilate(pred_b, disk(radius))) and the converse, for boundary maps given on any crop that
    holds all boundary pixels of both masks (pixels outside the crop are zero)."""
    h, w = gt_b.shape
    r = int(radius)
    canvas = np.zeros((2, h + 2 * r, w + 2 * r), dtype=bool)
    canvas[0, r:r + h, r:r + w] = gt_b
    canvas[1, r:r + h, r:r + w] = pred_b
    packed = _pack_rows(canvas)  # (2, h + 2r, words)
    widths = [math.isqrt(r * r - dy * dy) for dy in range(r + 1)]  # half-width of the disk's row at offset dy
    runs: dict[int, np.ndarray] = {0: packed}
    cur = packed
    needed = set(widths)
    for k in range(1, max(widths) + 1):
        cur = cur | _shl1(cur) | _shr1(cur)
        if k in needed:
            runs[k] = cur
    dil = np.zeros((2, h) + packed.shape[2:], dtype=np.uint64)
    for dy in range(-r, r + 1):
        dil |= runs[widths[abs(dy)]][:, r + dy:r + dy + h]
    core = packed[:, r:r + h]
    gt_matched = _popcount(core[0] & dil[1])
    pred_matched = _popcount(core[1] & dil[0])
    return gt_matched, pred_matched


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


def _as_bool(mask: np.ndarray) -> np.ndarray:
    mask = np.asarray(mask)
    return mask if mask.dtype == bool else mask != 0


def _check_shapes(gt: np.ndarray, pred: np.ndarray) -> None:
    if gt.ndim != 2 or gt.shape != pred.shape:
        raise ValueError(f"GT mask {gt.shape} and prediction {pred.shape} must be 2-D masks of the same size")


def _crop(shape, box, margin: int = 1):
    r0, r1, c0, c1 = box
    return slice(max(r0 - margin, 0), min(r1 + 1 + margin, shape[0])), \
        slice(max(c0 - margin, 0), min(c1 + 1 + margin, shape[1]))


def jaccard(gt: np.ndarray, pred: np.ndarray) -> float:
    """Region similarity J of one frame (any non-zero value is foreground)."""
    g, p = _as_bool(gt), _as_bool(pred)
    _check_shapes(g, p)
    inter = int(np.count_nonzero(g & p))
    union = int(np.count_nonzero(g | p))
    return iou_from_counts(inter, union)


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Contour accuracy F of one frame (DAVIS rules, exact)."""
    return frame_scores(gt, pred, bound_th=bound_th).F


def frame_scores(gt: np.ndarray, pred: np.ndarray, foreground_area: int | None = None, *,
                 with_accuracy: bool = False, bound_th: float = BOUND_TH) -> FrameScore:
    """J and F of one frame, plus A (with_accuracy or foreground_area given) and R, R_scale_free (foreground_area).

    `gt`: the GT mask (bool, or 0/1 values). `pred`: the prediction with its values as saved (0/1 or 0/255 uint8,
    or bool); J and F use pred != 0, A and the literal R use the values. `foreground_area`: number of pixels of the
    video's foreground (union of all annotated objects) in this frame, for R.
    """
    pred = np.asarray(pred)
    g = _as_bool(gt)
    p = _as_bool(pred)
    _check_shapes(g, p)
    shape = g.shape
    box = _union_box(_bbox(g), _bbox(p))
    if box is None:  # both empty
        j, f = 1.0, 1.0
        gs = ps = vs = None
    else:
        rows, cols = _crop(shape, box, margin=1)
        gs, ps = g[rows, cols], p[rows, cols]
        inter = int(np.count_nonzero(gs & ps))
        union = int(np.count_nonzero(gs | ps))
        j = iou_from_counts(inter, union)
        gb, pb = seg2bmap(gs), seg2bmap(ps)
        n_gt, n_pred = int(np.count_nonzero(gb)), int(np.count_nonzero(pb))
        if n_gt and n_pred:
            gm, pm = matched_boundary_counts(gb, pb, boundary_radius(shape, bound_th))
        else:
            gm = pm = 0
        f = f_from_counts(n_gt, n_pred, gm, pm)
        vs = pred[rows, cols]
    a = r = r_sf = None
    if with_accuracy or foreground_area is not None:
        total = shape[0] * shape[1]
        if gs is None:
            equal = total
        else:  # outside the crop both are 0, hence equal
            if vs.dtype == bool:
                eq = np.count_nonzero(gs == vs)
            else:
                eq = np.count_nonzero(gs.astype(vs.dtype) == vs)
            equal = total - gs.size + int(eq)
        a = float(np.float64(equal) / total)
    if foreground_area is not None:
        if gs is None:
            neg = neg_sf = 0
        else:
            outside = ~gs
            vals = vs[outside]
            neg = int(vals.sum(dtype=np.uint64)) if vals.dtype != bool else int(np.count_nonzero(vals))
            neg_sf = int(np.count_nonzero(vals))
        denom = int(foreground_area) + R_EPS
        r = max(1 - neg / denom, 0.0)
        r_sf = max(1 - neg_sf / denom, 0.0)
    return FrameScore(J=float(j), F=float(f), A=a, R=r, R_scale_free=r_sf)


def accuracy(gt: np.ndarray, pred: np.ndarray) -> float:
    """ReVOS A of one frame: mean of (gt == pred) on the values as saved."""
    return frame_scores(gt, pred, with_accuracy=True).A  # type: ignore[return-value]


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
    """Per-expression means over frames of J, F (and A, R, R_scale_free): what one row of the reference holds."""
    frames = []
    fgs = foreground_areas if foreground_areas is not None else [None] * len(gts)
    if not (len(gts) == len(preds) == len(fgs)):
        raise ValueError(f"frame counts differ: {len(gts)} GT, {len(preds)} predictions, {len(fgs)} foregrounds")
    for g, p, fg in zip(gts, preds, fgs):
        frames.append(frame_scores(g, p, fg, with_accuracy=with_accuracy, bound_th=bound_th))
    return aggregate_frames(frames)


def aggregate_frames(frames: list[FrameScore]) -> dict[str, float]:
    out = {"J": mean(s.J for s in frames), "F": mean(s.F for s in frames)}
    for key in ("A", "R", "R_scale_free"):
        vals = [getattr(s, key) for s in frames]
        if vals and all(v is not None for v in vals):
            out[key] = mean(vals)
    return out
