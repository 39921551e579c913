"""Overlay drawing: masks tinted over frames, boxes outlined, the keyframe marked; written as mp4 or GIF.

The one-video pipeline writes `overlay.mp4` with these helpers and the demo reuses them for an overlay GIF, so a
prediction always looks the same wherever a person inspects it. Only numpy, PIL and PyAV/imageio are used.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MASK_COLOR = (255, 64, 64)  # tint of the predicted mask
BOX_COLOR = (64, 255, 64)  # the policy's boxes (on the keyframe)
KEYFRAME_COLOR = (255, 215, 0)  # border and label of the keyframe


@dataclass(frozen=True)
class OverlayStyle:
    """How an overlay looks and how big it is. `max_side` downsizes large videos so writing stays cheap."""

    alpha: float = 0.5
    mask_color: tuple[int, int, int] = MASK_COLOR
    box_color: tuple[int, int, int] = BOX_COLOR
    keyframe_color: tuple[int, int, int] = KEYFRAME_COLOR
    max_side: int | None = 640
    show_index: bool = True


def _scale_for(height: int, width: int, max_side: int | None) -> float:
    if not max_side or max(height, width) <= max_side:
        return 1.0
    return max_side / max(height, width)


def draw_overlay(
    frame: np.ndarray,
    mask: np.ndarray | None = None,
    boxes: Sequence[Sequence[float]] | None = None,
    is_keyframe: bool = False,
    label: str | None = None,
    style: OverlayStyle = OverlayStyle(),
) -> np.ndarray:
    """One overlay frame (H', W', 3) uint8: `mask` tinted, `boxes` (original pixels) outlined, keyframe bordered.

    The result is downsized so its longer side is at most `style.max_side`; boxes are scaled along with it.
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"draw_overlay: expected an (H, W, 3) frame, got {frame.shape}")
    h, w = frame.shape[:2]
    out = frame.astype(np.float32)
    if mask is not None:
        mask = np.asarray(mask).astype(bool)
        if mask.shape != (h, w):
            raise ValueError(f"draw_overlay: mask {mask.shape} does not match frame {(h, w)}")
        color = np.asarray(style.mask_color, dtype=np.float32)
        out[mask] = (1 - style.alpha) * out[mask] + style.alpha * color
    img = Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))
    scale = _scale_for(h, w, style.max_side)
    if scale != 1.0:
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    thick = max(2, round(min(img.size) / 160))
    for b in boxes or []:
        x1, y1, x2, y2 = (float(v) * scale for v in b)
        draw.rectangle([x1, y1, x2, y2], outline=style.box_color, width=thick)
    if is_keyframe:
        draw.rectangle([0, 0, img.size[0] - 1, img.size[1] - 1], outline=style.keyframe_color, width=2 * thick)
        _text(draw, (3 * thick, 3 * thick), "KEYFRAME", style.keyframe_color)
    if label and style.show_index:
        _text(draw, (3 * thick, img.size[1] - 14 - 3 * thick), label, (255, 255, 255))
    return np.asarray(img)


def _text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, color: tuple[int, int, int]) -> None:
    x, y = xy
    draw.text((x + 1, y + 1), text, fill=(0, 0, 0))  # shadow keeps it readable on bright frames
    draw.text((x, y), text, fill=color)


def overlay_frames(
    frames: Iterable[np.ndarray],
    masks: Iterable[np.ndarray | None],
    keyframe_index: int | None = None,
    keyframe_boxes: Sequence[Sequence[float]] | None = None,
    names: Sequence[str] | None = None,
    style: OverlayStyle = OverlayStyle(),
) -> Iterable[np.ndarray]:
    """Lazily yield overlay frames; the boxes are drawn on the keyframe only (that is where the policy put them)."""
    for i, (frame, mask) in enumerate(zip(frames, masks, strict=True)):
        is_key = keyframe_index is not None and i == keyframe_index
        label = names[i] if names is not None else str(i)
        yield draw_overlay(frame, mask, keyframe_boxes if is_key else None, is_key, label, style)


def _even(img: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: drop a last row/column when odd."""
    h, w = img.shape[:2]
    return img[: h - h % 2, : w - w % 2]


def write_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 10.0) -> int:
    """Write frames to an H.264 mp4 (mpeg4 when libx264 is missing) via a temp file and rename. Returns #frames."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    count = 0
    try:
        with av.open(str(tmp), mode="w") as container:
            stream = None
            for img in frames:
                img = _even(np.ascontiguousarray(img))
                if stream is None:
                    stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1000))
                    stream.width, stream.height = img.shape[1], img.shape[0]
                    stream.pix_fmt = "yuv420p"
                    if codec == "libx264":
                        stream.options = {"crf": "23", "preset": "veryfast"}
                container_frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                for packet in stream.encode(container_frame):
                    container.mux(packet)
                count += 1
            if stream is None:
                raise ValueError(f"write_mp4: no frames to write to {path}")
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


def write_gif(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float = 5.0, max_frames: int = 120) -> int:
    """Write frames to an animated GIF (at most `max_frames`, evenly thinned) atomically. Returns #frames written."""
    import io

    from veason_r1.io_utils import atomic_write_bytes

    frames = list(frames)
    if not frames:
        raise ValueError(f"write_gif: no frames to write to {path}")
    if len(frames) > max_frames:
        keep = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        frames = [frames[i] for i in keep]
    images = [Image.fromarray(f) for f in frames]
    buf = io.BytesIO()
    images[0].save(buf, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    atomic_write_bytes(path, buf.getvalue())
    return len(images)


def read_video_frames(path: str | os.PathLike) -> list[np.ndarray]:
    """Decode every frame of a video file (used by tests and to check written overlays)."""
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
