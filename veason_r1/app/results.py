"""The files and pictures one request returns, written with the pipeline's own writers.

`write_result` (the `veason-r1 infer` writer) makes `masks/<frame>.png`, `overlay.mp4` and `result.json`; this module
adds the downloads a person wants from a page: the mask PNGs as one DAVIS-style zip (`<video>/<frame>.png`, 0/255),
the masks as COCO RLE JSON, and a sheet of the shown frames with the keyframe framed and its boxes drawn.
"""

from __future__ import annotations

import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veason_r1.inference.overlay import OverlayStyle, draw_overlay
from veason_r1.inference.pipeline import Answer, VideoResult, write_result
from veason_r1.io_utils import atomic_write_json

SHEET_COLUMNS = 4
SHEET_TILE_SIDE = 320  # longer side of one shown frame on the sheet
SHEET_GAP = 4
OVERLAY_MAX_SIDE = 640


@dataclass
class RequestFiles:
    """Where one request's outputs are (all inside the request's work folder)."""

    overlay: Path
    masks_zip: Path
    masks_rle: Path
    result_json: Path

    @property
    def downloads(self) -> list[Path]:
        return [self.masks_zip, self.masks_rle, self.result_json]


def shown_frames_sheet(source, answer: Answer) -> np.ndarray:
    """The frames the policy saw, in order, on one (H, W, 3) image: the keyframe framed in gold with its boxes."""
    style = OverlayStyle(max_side=SHEET_TILE_SIDE)
    tiles = [
        draw_overlay(frame, None, answer.boxes if t == answer.keyframe else None, t == answer.keyframe,
                     f"frame {t}", style)
        for t, frame in zip(answer.frame_ids, source.get_many(answer.frame_ids), strict=True)
    ]
    h, w = tiles[0].shape[:2]
    cols = min(SHEET_COLUMNS, len(tiles))
    rows = -(-len(tiles) // cols)
    sheet = np.full((rows * h + (rows - 1) * SHEET_GAP, cols * w + (cols - 1) * SHEET_GAP, 3), 32, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * (h + SHEET_GAP) : r * (h + SHEET_GAP) + h, c * (w + SHEET_GAP) : c * (w + SHEET_GAP) + w] = tile
    return sheet


def package_result(result: VideoResult, source, out_dir: Path, video_name: str, fps: float,
                   input_notes: list[str], progress: bool = True) -> RequestFiles:
    """Write every output of one request into out_dir; `result.timings` gains the writing times."""
    from veason_r1.data.masks import encode_rle

    out = write_result(result, source, out_dir, overlay=True, overlay_fps=fps, overlay_max_side=OVERLAY_MAX_SIDE,
                       progress=progress)
    t0 = time.perf_counter()
    masks_zip = out / "masks_png.zip"
    with zipfile.ZipFile(masks_zip, "w", zipfile.ZIP_STORED) as zf:  # PNGs are compressed already
        for name in result.frame_names:
            zf.write(out / "masks" / f"{name}.png", f"{video_name}/{name}.png")
    masks_rle = out / "masks_rle.json"
    atomic_write_json(masks_rle, {
        "video": video_name,
        "height": result.height,
        "width": result.width,
        "frames": {name: encode_rle(mask) for name, mask in zip(result.frame_names, result.masks, strict=True)},
    })
    result.timings["package_s"] = time.perf_counter() - t0
    result_json = out / "result.json"
    atomic_write_json(result_json, {"video": video_name, **result.to_json(), "input_notes": list(input_notes)},
                      indent=2)
    return RequestFiles(out / "overlay.mp4", masks_zip, masks_rle, result_json)
