"""COCO RLE <-> arrays, unions, boxes from masks, boxes in the policy's square frame (docs/method.md §5) and the
mask IoU rule shared by the reward, SAM2 and the benchmarks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
from pycocotools import mask as mask_utils

from veason_r1.config import IMAGE_SIZE

Box = list[float]
EMPTY_BOX: Box = [0.0, 0.0, 0.0, 0.0]


def coco_rle(rle: dict) -> dict:
    """An RLE as pycocotools' C API takes it: uncompressed list counts compressed, string counts as bytes."""
    h, w = int(rle["size"][0]), int(rle["size"][1])
    counts = rle["counts"]
    if isinstance(counts, list):
        return mask_utils.frPyObjects(rle, h, w)
    return {"size": [h, w], "counts": counts.encode("ascii") if isinstance(counts, str) else counts}


def rle_area(rle: dict | None) -> int:
    """Foreground pixel count of an RLE without decoding it (0 for an absent object)."""
    return 0 if rle is None else int(mask_utils.area(coco_rle(rle)))


def decode_rle(rle: dict | None, shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """Decode one COCO RLE (compressed string or uncompressed list counts) to a (H, W) bool mask.

    `None` (object absent in this frame) stays `None` unless `shape` is given, then it is an empty mask.
    """
    if rle is None:
        return None if shape is None else np.zeros(shape, dtype=bool)
    return mask_utils.decode(coco_rle(rle)).astype(bool)


def encode_rle(mask: np.ndarray) -> dict:
    """Encode a (H, W) mask as a JSON-ready compressed COCO RLE (counts as str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def rle_size(rle: dict) -> tuple[int, int]:
    """(H, W) an RLE declares, without decoding it."""
    return int(rle["size"][0]), int(rle["size"][1])


def rle_counts(rle: dict) -> list[int]:
    """The run lengths of a COCO RLE (list counts, or the compressed string decoded as pycocotools' rleFrString
    does); ValueError when the string is cut short."""
    counts = rle["counts"]
    if not isinstance(counts, (str, bytes)):
        return [int(c) for c in counts]
    s = counts.encode("ascii") if isinstance(counts, str) else counts
    out: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ValueError("RLE counts string cut short")
            c = s[p] - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p, k = p + 1, k + 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def rle_problem(rle: dict, shape: tuple[int, int]) -> str | None:
    """Why `rle` cannot be a mask of `shape` (its declared size, or runs that do not cover the frame), or None.
    Checked before decoding: pycocotools reports a size mismatch as "Invalid RLE mask representation" and pads
    short runs silently. Malformed RLEs return None here and fail in `decode_rle`."""
    try:
        h, w = rle_size(rle)
        covered = sum(rle_counts(rle))
    except (TypeError, KeyError, ValueError, IndexError):
        return None
    if (h, w) != tuple(shape):
        return f"RLE is {h}x{w}, the video's frames are {shape[0]}x{shape[1]}"
    if covered != h * w:
        return f"RLE runs cover {covered} pixels, the frame has {h * w}"
    return None


def union_masks(masks: Iterable[np.ndarray | None], shape: tuple[int, int]) -> np.ndarray:
    """OR of several masks; absent ones (`None`) contribute nothing."""
    out = np.zeros(shape, dtype=bool)
    for m in masks:
        if m is not None:
            out |= m
    return out


def mask_to_box(mask: np.ndarray | None) -> Box | None:
    """Inclusive pixel extents [xmin, ymin, xmax, ymax] of a mask, or None when it is empty or absent."""
    if mask is None or not mask.any():
        return None
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return [float(xs[0]), float(ys[0]), float(xs[-1]), float(ys[-1])]


def box_to_square(box: Sequence[float], height: int, width: int, size: int = IMAGE_SIZE) -> Box:
    """Original-pixel box -> box in the resized size x size frame (the release's +0.5 rounding offset)."""
    sx, sy = size / width, size / height
    return [box[0] * sx + 0.5, box[1] * sy + 0.5, box[2] * sx + 0.5, box[3] * sy + 0.5]


def box_from_square(box: Sequence[float], height: int, width: int, size: int = IMAGE_SIZE) -> list[int]:
    """Box in the size x size frame -> original pixels, as the release maps it back (x*W/size + 0.5, then int)."""
    sx, sy = width / size, height / size
    return [int(box[0] * sx + 0.5), int(box[1] * sy + 0.5), int(box[2] * sx + 0.5), int(box[3] * sy + 0.5)]


def boxes_to_square(object_boxes: Sequence[Sequence[float] | None], height: int, width: int,
                    size: int = IMAGE_SIZE) -> list[Box]:
    """GT boxes of one frame in the size x size square from original-pixel boxes (docs/method.md §5): one per
    object, [0,0,0,0] for an absent object (None), and [[0,0,0,0]] when no object is visible in the frame at all."""
    boxes = [list(EMPTY_BOX) if b is None else box_to_square(b, height, width, size) for b in object_boxes]
    if not boxes or all(b == EMPTY_BOX for b in boxes):
        return [list(EMPTY_BOX)]
    return boxes


def gt_boxes_in_square(object_masks: Sequence[np.ndarray | None], height: int, width: int,
                       size: int = IMAGE_SIZE) -> list[Box]:
    """`boxes_to_square` of the objects' masks in one frame (an empty or absent mask is an absent object)."""
    return boxes_to_square([mask_to_box(m) for m in object_masks], height, width, size)


def iou_from_counts(inter, union):
    """IoU from intersection and union pixel counts, 1 where both masks are empty (union 0), as DAVIS `db_eval_iou`
    and the release's consistency reward score it. Scalars give a float, arrays a float64 array of the same shape."""
    if np.ndim(union) == 0:
        return 1.0 if union == 0 else float(inter / union)
    inter, union = np.asarray(inter), np.asarray(union)
    return np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def mask_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of two bool masks of one frame; 1 when both are empty."""
    inter, union = np.count_nonzero(np.logical_and(pred, gt)), np.count_nonzero(np.logical_or(pred, gt))
    return iou_from_counts(int(inter), int(union))


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask (used to bring GT masks into 560 space for the reward)."""
    if mask.shape == (height, width):
        return mask
    rows = (np.arange(height) * mask.shape[0] / height).astype(np.int64)
    cols = (np.arange(width) * mask.shape[1] / width).astype(np.int64)
    return mask[rows[:, None], cols[None, :]]
