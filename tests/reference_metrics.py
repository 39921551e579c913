"""Independent, literal implementation of docs/method.md §9, used only by tests (bench/bench_metrics.py times the
real DAVIS/VISA code instead).

Written the way the reference scripts do it (DAVIS `db_eval_iou` / `f_measure` / `seg2bmap`, VISA's
`get_r2vos_accuracy` / `get_r2vos_robustness`, the ReVOS evaluation loop): whole-frame arrays, whole-frame disk
dilation of each boundary map per frame, whole-video stacks. Deliberately shares no code with veason_r1.eval.

Two whole-frame dilations are offered: `ndimage` (scipy.ndimage.binary_dilation with the disk, which is what
skimage's binary_dilation in the original DAVIS code runs) and `rows` (the same dilation computed as an OR of
shifted whole-frame horizontal runs, quicker to run in tests). Both give the same map, as the DAVIS/VISA code's
cv2.dilate with skimage's disk does.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as cocomask
from scipy import ndimage


def disk(radius: int) -> np.ndarray:
    """skimage.morphology.disk: offsets with x^2 + y^2 <= r^2."""
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return (x * x + y * y) <= radius * radius


def seg2bmap(seg: np.ndarray) -> np.ndarray:
    seg = seg.astype(bool)
    e = np.zeros_like(seg)
    s = np.zeros_like(seg)
    se = np.zeros_like(seg)
    e[:, :-1] = seg[:, 1:]
    s[:-1, :] = seg[1:, :]
    se[:-1, :-1] = seg[1:, 1:]
    b = seg ^ e | seg ^ s | seg ^ se
    b[-1, :] = seg[-1, :] ^ e[-1, :]
    b[:, -1] = seg[:, -1] ^ s[:, -1]
    b[-1, -1] = 0
    return b


def dilate_ndimage(bmap: np.ndarray, radius: int) -> np.ndarray:
    return ndimage.binary_dilation(bmap, structure=disk(radius))


def dilate_rows(bmap: np.ndarray, radius: int) -> np.ndarray:
    """Whole-frame disk dilation as OR over dy of the row dilated by |dx| <= floor(sqrt(r^2 - dy^2))."""
    h, _w = bmap.shape
    out = np.zeros_like(bmap, dtype=bool)
    for dy in range(-radius, radius + 1):
        if abs(dy) >= h:
            continue
        half = math.floor(math.sqrt(radius * radius - dy * dy))
        while (half + 1) ** 2 + dy * dy <= radius * radius:  # guard against sqrt rounding
            half += 1
        while half * half + dy * dy > radius * radius:
            half -= 1
        run = ndimage.maximum_filter1d(bmap.astype(np.uint8), size=2 * half + 1, axis=1, mode="constant") > 0
        if dy >= 0:
            out[dy:, :] |= run[:h - dy, :] if dy else run
        else:
            out[:h + dy, :] |= run[-dy:, :]
    return out


DILATIONS = {"ndimage": dilate_ndimage, "rows": dilate_rows}


def f_measure(pred: np.ndarray, gt: np.ndarray, bound_th: float = 0.008, dilation: str = "ndimage") -> float:
    bound_pix = bound_th if bound_th >= 1 else np.ceil(bound_th * np.linalg.norm(pred.shape))
    fg_boundary = seg2bmap(pred)
    gt_boundary = seg2bmap(gt)
    dil = DILATIONS[dilation]
    fg_dil = dil(fg_boundary, int(bound_pix))
    gt_dil = dil(gt_boundary, int(bound_pix))
    gt_match = gt_boundary * fg_dil
    fg_match = fg_boundary * gt_dil
    n_fg = np.sum(fg_boundary)
    n_gt = np.sum(gt_boundary)
    if n_fg == 0 and n_gt > 0:
        precision, recall = 1, 0
    elif n_fg > 0 and n_gt == 0:
        precision, recall = 0, 1
    elif n_fg == 0 and n_gt == 0:
        precision, recall = 1, 1
    else:
        precision = np.sum(fg_match) / float(n_fg)
        recall = np.sum(gt_match) / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return float(2 * precision * recall / (precision + recall))


def db_eval_iou(annotation: np.ndarray, segmentation: np.ndarray) -> np.ndarray:
    annotation = annotation.astype(bool)
    segmentation = segmentation.astype(bool)
    inters = np.sum(segmentation & annotation, axis=(-2, -1))
    union = np.sum(segmentation | annotation, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        j = inters / union
    if j.ndim == 0:
        return np.float64(1) if np.isclose(union, 0) else j
    j[np.isclose(union, 0)] = 1
    return j


def db_eval_boundary(annotation: np.ndarray, segmentation: np.ndarray, dilation: str = "ndimage") -> np.ndarray:
    if annotation.ndim == 2:
        return np.array(f_measure(segmentation, annotation, dilation=dilation))
    return np.array([f_measure(segmentation[t], annotation[t], dilation=dilation) for t in range(annotation.shape[0])])


def r2vos_accuracy(gt_masks, pred_masks) -> np.ndarray:
    return np.array([np.mean(g == p) for g, p in zip(gt_masks, pred_masks)])


def r2vos_robustness(gt_masks, pred_masks, foreground_masks) -> np.ndarray:
    out = []
    for g, p, fg in zip(gt_masks, pred_masks, foreground_masks):
        neg = ((1 - g) * p).sum()
        pos = fg.sum()
        out.append(max(1 - neg / (pos + 1e-6), 0.0))
    return np.array(out)


# --------------------------------------------------------------------------------------------------------------
# The ReVOS evaluation loop, literally (whole-video stacks), with results in the CLI's format.


def _decode(rle):
    if isinstance(rle.get("counts"), list):
        rle = cocomask.frPyObjects(rle, *rle["size"])
    elif isinstance(rle["counts"], str):
        rle = {"size": rle["size"], "counts": rle["counts"].encode()}
    return cocomask.decode(rle)


def revos_reference(root: Path, pred: Path, split: str = "valid", dilation: str = "ndimage") -> dict:
    """Score a ReVOS-format folder as docs/method.md §9 says: per expression (missing -> 0 for every metric),
    means per type_id 0/1, overall = plain mean of the two; x100; also A and R on the union GT and binarised
    predictions (the scale-free variants)."""
    root, pred = Path(root), Path(pred)
    meta = json.loads((root / f"meta_expressions_{split}_.json").read_text())["videos"]
    mask_dict = json.loads((root / "mask_dict.json").read_text())
    fg_dict = json.loads((root / "mask_dict_foreground.json").read_text())
    rows = {0: [], 1: [], 2: []}
    missing = 0
    for vid, v in meta.items():
        h, w = int(v["height"]), int(v["width"])
        n = len(v["frames"])
        for exp_id, e in v["expressions"].items():
            folder = pred / vid / exp_id
            paths = [folder / f"{f}.png" for f in v["frames"]]
            if not all(p.is_file() for p in paths):
                missing += 1
                rows[int(e["type_id"])].append([0.0] * 6)
                continue
            gt = np.zeros((n, h, w), np.uint8)
            pr = np.zeros((n, h, w), np.uint8)
            fg = np.zeros((n, h, w), np.uint8)
            for t in range(n):
                for a in e["anno_id"]:
                    rle = mask_dict[str(a)][t]
                    if rle:
                        gt[t] += _decode(rle)  # VISA: uint8 sum, overlapping objects give 2
                fg[t] = _decode(fg_dict[vid]["masks_rle"][t])
                pr[t] = np.asarray(Image.open(paths[t]))
            j = db_eval_iou(gt, pr).mean()
            f = db_eval_boundary(gt, pr, dilation=dilation).mean()
            a = r2vos_accuracy(gt, pr).mean()
            r = r2vos_robustness(gt, pr, fg).mean()
            g1, p1 = (gt > 0).astype(np.uint8), (pr > 0).astype(np.uint8)  # union GT, binarised prediction
            a_sf = r2vos_accuracy(g1, p1).mean()
            r_sf = r2vos_robustness(g1, p1, fg).mean()
            rows[int(e["type_id"])].append([j, f, a, r, a_sf, r_sf])
    keys = ("J", "F", "A", "R", "A_scale_free", "R_scale_free")

    def split_means(items):
        arr = np.array(items, dtype=np.float64).reshape(-1, len(keys))
        d = {k: float(100 * arr[:, i].mean()) for i, k in enumerate(keys)}
        d["JF"] = (d["J"] + d["F"]) / 2
        return d

    ref, rea = split_means(rows[0]), split_means(rows[1])
    out = {"referring": ref, "reasoning": rea,
           "overall": {k: (ref[k] + rea[k]) / 2 for k in ref},
           "num_expressions": {"referring": len(rows[0]), "reasoning": len(rows[1])},
           "missing_predictions": missing}
    if rows[2]:
        out["no_target"] = split_means(rows[2])
    return out
