"""The four reward terms as pure functions (docs/method.md §7). No model, no I/O: easy to table-test.

Release-faithful details kept on purpose: the +1 pixel IoU convention, dummy [0,0,0,0] GT boxes for absent objects
(they take part in the matching and in max(M, N)), no IoU threshold, at most 120 boxes per side, and the two
different JSON parses (format term vs the other terms). Edge cases the release would crash on (zero or negative
union, NaN from huge coordinates) score 0 instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from veason_r1.config import MAX_BOXES
from veason_r1.data.masks import mask_iou
from veason_r1.prompting import FORMAT_PATTERN, answer_payload, boxes_array, format_json, release_int

VARIANTS = ("faithful", "strict")


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def format_reward(response: str) -> float:
    """[0, 2]: +1 when the whole response is <think>...</think> <answer>...</answer>; plus 1/n for each of the n
    `bbox_2d_list` elements that is a 4-number list, when the answer JSON is a dict with an int timestamp."""
    score = 1.0 if FORMAT_PATTERN.fullmatch(response) else 0.0
    obj = format_json(response)
    if obj is None:
        return score
    ts, boxes = obj.get("keyframe_timestamp"), obj.get("bbox_2d_list")
    if not (isinstance(ts, int) and not isinstance(ts, bool)) or not isinstance(boxes, list) or not boxes:
        return score
    good = sum(1 for b in boxes if isinstance(b, list) and len(b) == 4 and all(_is_number(v) for v in b))
    return score + good / len(boxes)


@dataclass
class ParsedAnswer:
    """What the keyframe/spatial/consistency terms read from a response (release parsing)."""

    position: int | None = None  # index into frame_ids of the predicted keyframe
    boxes: np.ndarray | None = None  # (M, 4) predicted boxes, at most MAX_BOXES
    failure: str = ""


def parse_answer(response: str, frame_ids: Sequence[int], max_boxes: int = MAX_BOXES) -> ParsedAnswer:
    out = ParsedAnswer()
    payload = answer_payload(response)
    if not isinstance(payload, dict):
        out.failure = "no <answer> JSON object" if payload is None else "answer JSON is not an object"
        return out
    ts = release_int(payload.get("keyframe_timestamp"))
    shown = [int(t) for t in frame_ids]
    if ts is None:
        out.failure = "keyframe_timestamp missing or not an int"
    elif ts not in shown:
        out.failure = f"keyframe_timestamp {ts} is not a shown frame"
    else:
        out.position = shown.index(ts)
    out.boxes = boxes_array(payload.get("bbox_2d_list"), max_boxes)
    if out.boxes is None and not out.failure:
        out.failure = "bbox_2d_list is not a non-empty (M, 4) list of numbers"
    return out


def keyframe_reward(position: int | None, areas: Sequence[float]) -> float:
    """[0, 1]: GT union area at the predicted frame / the largest area over the shown frames."""
    if position is None or not len(areas):
        return 0.0
    top = float(max(areas))
    if top <= 0 or not 0 <= position < len(areas):
        return 0.0
    return float(areas[position]) / top


def iou_matrix(pred: np.ndarray, gt: np.ndarray, plus_one: bool = True) -> np.ndarray:
    """(M, N) box IoUs; with `plus_one` inter = max(0, xB-xA+1) * max(0, yB-yA+1), area = (x2-x1+1)(y2-y1+1).

    A zero or negative union, or a NaN from overflowing coordinates, gives 0; values are clipped to [0, 1]."""
    one = 1.0 if plus_one else 0.0
    p = np.asarray(pred, dtype=np.float64).reshape(-1, 1, 4)
    g = np.asarray(gt, dtype=np.float64).reshape(1, -1, 4)
    with np.errstate(all="ignore"):
        iw = np.maximum(0.0, np.minimum(p[..., 2], g[..., 2]) - np.maximum(p[..., 0], g[..., 0]) + one)
        ih = np.maximum(0.0, np.minimum(p[..., 3], g[..., 3]) - np.maximum(p[..., 1], g[..., 1]) + one)
        inter = iw * ih
        area_p = (p[..., 2] - p[..., 0] + one) * (p[..., 3] - p[..., 1] + one)
        area_g = (g[..., 2] - g[..., 0] + one) * (g[..., 3] - g[..., 1] + one)
        union = area_p + area_g - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    iou = np.nan_to_num(iou, nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(iou, 0.0, 1.0)


@dataclass
class SpatialResult:
    reward: float = 0.0
    matched_pred: list[int] = field(default_factory=list)  # ascending prediction indices of matched boxes
    ious: list[float] = field(default_factory=list)  # matched IoUs, in the order of matched_pred


def spatial_reward(pred: np.ndarray | None, gt: np.ndarray | None, plus_one: bool = True) -> SpatialResult:
    """[0, 1]: Hungarian matching on 1 - IoU; sum of matched IoUs / max(M, N)."""
    if pred is None or gt is None or len(pred) == 0 or len(gt) == 0:
        return SpatialResult()
    iou = iou_matrix(pred, gt, plus_one)
    rows, cols = linear_sum_assignment(1.0 - iou)
    order = np.argsort(rows)
    rows, cols = rows[order], cols[order]
    matched = [float(iou[r, c]) for r, c in zip(rows, cols)]
    return SpatialResult(sum(matched) / max(len(pred), len(gt)), [int(r) for r in rows], matched)


def consistency_reward(pred_masks: np.ndarray, gt_masks: np.ndarray) -> float:
    """[0, 1]: mean over the K frames of IoU(predicted union mask, GT union mask)."""
    if pred_masks.shape != gt_masks.shape or len(gt_masks) == 0:
        raise ValueError(f"consistency: predicted masks {pred_masks.shape} vs GT masks {gt_masks.shape}")
    return float(np.mean([mask_iou(p, g) for p, g in zip(pred_masks, gt_masks)]))


def gt_boxes_at(gt_boxes: dict, position: int, max_boxes: int = MAX_BOXES) -> np.ndarray | None:
    """The GT boxes of one shown frame (key "position"), at most 120; None when missing or malformed."""
    value = gt_boxes.get(str(position), gt_boxes.get(position)) if isinstance(gt_boxes, dict) else None
    if not isinstance(value, (list, tuple)) or not value:
        return None
    rows = [list(b) for b in value[:max_boxes]]
    if any(len(b) != 4 or not all(_is_number(v) and math.isfinite(v) for v in b) for b in rows):
        return None
    return np.asarray(rows, dtype=np.float64).reshape(-1, 4)


def strict_boxes(boxes: np.ndarray, size: int) -> np.ndarray:
    """`strict` variant: corners ordered and clipped to the size x size frame."""
    b = np.clip(np.asarray(boxes, dtype=np.float64), 0.0, float(size))
    return np.stack([np.minimum(b[:, 0], b[:, 2]), np.minimum(b[:, 1], b[:, 3]),
                     np.maximum(b[:, 0], b[:, 2]), np.maximum(b[:, 1], b[:, 3])], axis=1)


def drop_dummy_gt(gt: np.ndarray) -> np.ndarray:
    """`strict` variant: [0,0,0,0] placeholders of absent objects do not count as targets."""
    keep = ~np.all(gt == 0, axis=1)
    return gt[keep]
