"""Oracle switches for error attribution: replace the policy's keyframe and/or boxes with ground truth.

Running the same benchmark four ways shows how much J&F each stage loses:

| run                                    | keyframe | boxes              | what the gap to the row above measures |
|----------------------------------------|----------|--------------------|----------------------------------------|
| policy                                 | policy   | policy             | -                                      |
| `--oracle-boxes`                       | policy   | GT at that frame   | the policy's box error                 |
| `--oracle-keyframe --oracle-boxes`     | GT       | GT at that frame   | the policy's keyframe choice           |
| (J&F = 100)                            |          |                    | what SAM2 propagation loses            |

`--oracle-keyframe` alone keeps the policy's boxes but puts them on the oracle keyframe (a cheap check of how much a
better keyframe alone would buy). The oracle keyframe is the *shown* frame with the largest GT union area (ties: the
earliest), i.e. the best the policy could have picked (the keyframe reward's maximum). Oracle boxes are the GT boxes
of each object visible in that frame, in policy space (`size` x `size`), the same boxes the spatial reward compares
against (docs/method.md §5); absent objects are left out because a [0,0,0,0] box is no prompt for SAM2.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from veason_r1.data.masks import EMPTY_BOX, gt_boxes_in_square


def oracle_keyframe(dataset: Any, expression: Any, frame_ids: Sequence[int]) -> int:
    """The shown frame with the largest GT union area (earliest on ties; the first shown frame if all are empty)."""
    if not frame_ids:
        raise ValueError(f"oracle_keyframe: no shown frames for {expression.key}")
    areas = dataset.gt_areas(expression)
    return max((int(t) for t in frame_ids), key=lambda t: (areas[t] if t < len(areas) else 0, -t))


def oracle_boxes(dataset: Any, expression: Any, frame_index: int, size: int) -> list[list[float]]:
    """GT boxes (policy space, `size` x `size`) of the expression's objects visible in frame `frame_index`."""
    height, width = dataset.size(expression.video)
    boxes = gt_boxes_in_square(dataset.object_masks(expression, int(frame_index)), height, width, size)
    return [b for b in boxes if b != EMPTY_BOX]  # prompts only for the visible objects
