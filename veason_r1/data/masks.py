"""COCO RLE <-> arrays, unions, boxes from masks and boxes in the policy's 560x560 space (docs/method.md §5)."""

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


def box_to_560(box: Sequence[float], height: int, width: int, size: int = IMAGE_SIZE) -> Box:
    """Original-pixel box -> box in the resized size x size frame (the release's +0.5 rounding offset)."""
    sx, sy = size / width, size / height
    return [box[0] * sx + 0.5, box[1] * sy + 0.5, box[2] * sx + 0.5, box[3] * sy + 0.5]


def box_from_560(box: Sequence[float], height: int, width: int, size: int = IMAGE_SIZE) -> list[int]:
    """Box in the size x size frame -> original pixels, as the release maps it back (x*W/560 + 0.5, then int)."""
    sx, sy = width / size, height / size
    return [int(box[0] * sx + 0.5), int(box[1] * sy + 0.5), int(box[2] * sx + 0.5), int(box[3] * sy + 0.5)]


def gt_boxes_560(object_masks: Sequence[np.ndarray | None], height: int, width: int) -> list[Box]:
    """GT boxes of one frame in 560 space: one per object, [0,0,0,0] for an absent object,
    and [[0,0,0,0]] when no object is visible in the frame at all."""
    boxes: list[Box] = []
    for m in object_masks:
        b = mask_to_box(m)
        boxes.append(list(EMPTY_BOX) if b is None else box_to_560(b, height, width))
    if not boxes or all(b == EMPTY_BOX for b in boxes):
        return [list(EMPTY_BOX)]
    return boxes


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a bool mask (used to bring GT masks into 560 space for the reward)."""
    if mask.shape == (height, width):
        return mask
    rows = (np.arange(height) * mask.shape[0] / height).astype(np.int64)
    cols = (np.arange(width) * mask.shape[1] / width).astype(np.int64)
    return mask[rows[:, None], cols[None, :]]
