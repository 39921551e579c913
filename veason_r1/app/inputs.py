"""What a request brings in: the query and the upload, checked and decoded under the app's limits.

An upload is one video file (anything PyAV reads: mp4, webm, mov, mkv, ...), one zip of frame images, or several
image files (a folder's frames, ordered by name); of several files that are not all images, the last video or zip
is used (the page's upload box keeps adding files), and the page says so. Videos are decoded in one sequential
pass that stops at `max_frames` (a 1,000-frame video never decodes past the cap) and frames larger than `max_side`
are downscaled while decoding (a 4K video never sits in memory at 4K); each change is stated in
`DecodedVideo.notes`. Every refusal is a `UserInputError` whose message names the file and the limit, for the page.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from veason_r1.data.video import IMAGE_SUFFIXES, ArraySource

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov", ".mkv", ".avi", ".m4v", ".mpg", ".mpeg", ".ogv")
ZIP_SUFFIX = ".zip"


class UserInputError(ValueError):
    """A request the app refuses; the message is shown in the page as it is."""


@dataclass(frozen=True)
class Limits:
    """Per-request limits (each one a flag of `veason-r1 app`)."""

    max_frames: int = 300  # frames used from a video (the first ones); longer videos are cut, and the page says so
    max_side: int = 1280  # longer frame side after decoding; larger frames are downscaled, and the page says so
    max_upload_mb: float = 200.0  # per uploaded file (Gradio refuses larger uploads too)
    max_query_chars: int = 1000
    min_frames: int = 2  # a "video" of one frame is refused
    max_shown_frames: int = 16  # the most frames a request may show the policy

    def __post_init__(self) -> None:
        if self.max_frames < self.min_frames:
            raise ValueError(f"--max-frames must be >= {self.min_frames}, got {self.max_frames}")
        if self.max_side < 32:
            raise ValueError(f"--max-side must be >= 32 pixels, got {self.max_side}")
        if self.max_upload_mb <= 0:
            raise ValueError(f"--max-upload-mb must be > 0, got {self.max_upload_mb}")
        if self.max_query_chars < 1:
            raise ValueError(f"--max-query-chars must be >= 1, got {self.max_query_chars}")


@dataclass
class DecodedVideo:
    """An upload as frames in memory, plus what was changed on the way in."""

    source: ArraySource
    name: str  # a file-name-safe video name (the upload's stem)
    fps: float  # for the overlay video
    original_size: tuple[int, int]  # (H, W) before any downscaling
    notes: list[str] = field(default_factory=list)


def check_query(query: str | None, limits: Limits) -> str:
    """The query without surrounding blanks, or a UserInputError saying why it cannot be used."""
    text = (query or "").strip()
    if not text:
        raise UserInputError("The query is empty: type what to segment, e.g. \"the dog that jumps first\".")
    if len(text) > limits.max_query_chars:
        raise UserInputError(
            f"The query is {len(text):,} characters long; the limit is {limits.max_query_chars:,} characters "
            "(--max-query-chars)."
        )
    return text


def decode_upload(files: Sequence[str | Path] | str | Path | None, work_dir: Path, limits: Limits) -> DecodedVideo:
    """Decode an upload (see the module docstring). `work_dir` receives extracted zip members and is the caller's
    to delete."""
    if files is None or files == "" or (not isinstance(files, (str, Path)) and len(files) == 0):
        raise UserInputError("No video: upload a video (mp4, webm, mov), a zip of frames or image files, "
                             "or pick an example.")
    paths = [Path(files)] if isinstance(files, (str, Path)) else [Path(f) for f in files]
    if len(paths) > 1 and not {p.suffix.lower() for p in paths} <= set(IMAGE_SUFFIXES):
        # The upload box keeps adding files: a second video uploaded after a first one is the one meant.
        chosen = [p for p in paths if p.suffix.lower() not in IMAGE_SUFFIXES][-1]
        decoded = decode_upload([chosen], work_dir, limits)
        decoded.notes.insert(0, f"{len(paths)} files are uploaded; the last video or zip, {chosen.name}, is used "
                                "(remove the others with the upload box's x).")
        return decoded
    for p in paths:
        _check_file(p, limits)
    if len(paths) == 1 and paths[0].suffix.lower() == ZIP_SUFFIX:
        return _decode_images(_extract_zip(paths[0], work_dir / "frames", limits), paths[0].stem, limits)
    if paths[0].suffix.lower() in IMAGE_SUFFIXES:
        return _decode_images(paths, "frames" if len(paths) > 1 else paths[0].stem, limits)
    return _decode_video_file(paths[0], limits)


def _check_file(path: Path, limits: Limits) -> None:
    if not path.is_file():
        raise UserInputError(f"The upload {path.name} is gone from the server; upload it again.")
    size = path.stat().st_size
    if size == 0:
        raise UserInputError(f"The upload {path.name} is empty (0 bytes).")
    if size > limits.max_upload_mb * 1e6:
        raise UserInputError(f"The upload {path.name} is {size / 1e6:,.1f} MB; the limit is "
                             f"{limits.max_upload_mb:g} MB (--max-upload-mb).")
    suffix = path.suffix.lower()
    if suffix not in VIDEO_SUFFIXES + IMAGE_SUFFIXES + (ZIP_SUFFIX,):
        raise UserInputError(
            f"The upload {path.name} is not a video: give a video file ({', '.join(VIDEO_SUFFIXES)}), a zip of frames "
            f"or image files ({', '.join(IMAGE_SUFFIXES)})."
        )


def _safe_name(stem: str) -> str:
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem).strip("._")
    return name or "video"


def _target_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(H, W) after downscaling so the longer side is at most max_side; even sides for the video encoder."""
    if max(height, width) <= max_side:
        return height, width
    scale = max_side / max(height, width)
    return max(2, round(height * scale / 2) * 2), max(2, round(width * scale / 2) * 2)


def _size_notes(decoded: DecodedVideo, total: int | None, truncated: bool, limits: Limits) -> None:
    h0, w0 = decoded.original_size
    h, w = decoded.source.size
    if (h, w) != (h0, w0):
        decoded.notes.append(f"Frames were downscaled from {w0}x{h0} to {w}x{h} (--max-side {limits.max_side}); "
                             "the masks are at that size.")
    if truncated:
        total_text = f"{total:,} frames" if total else f"more than {limits.max_frames:,} frames"
        decoded.notes.append(f"The video has {total_text}; only the first {limits.max_frames:,} are used "
                             f"(--max-frames {limits.max_frames}).")


def _decode_video_file(path: Path, limits: Limits) -> DecodedVideo:
    import av

    frames: list[np.ndarray] = []
    truncated = False
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserInputError(f"The upload {path.name} has no video stream.")
            stream = container.streams.video[0]
            total = int(stream.frames or 0) or None
            rate = stream.average_rate or stream.guessed_rate
            height, width = int(stream.codec_context.height), int(stream.codec_context.width)
            for frame in container.decode(stream):
                if len(frames) == limits.max_frames:
                    truncated = True
                    break
                if not frames:  # the stream header may lie about the size; the first frame does not
                    height, width = frame.height, frame.width
                    out_h, out_w = _target_size(height, width, limits.max_side)
                if (frame.height, frame.width) != (height, width):
                    raise UserInputError(f"The upload {path.name} changes frame size at frame {len(frames)} "
                                         f"({width}x{height} -> {frame.width}x{frame.height}).")
                if (out_h, out_w) == (height, width):
                    frames.append(frame.to_ndarray(format="rgb24"))
                else:  # scaled by the decoder's scaler: the full-size frame is never converted to RGB
                    frames.append(frame.to_ndarray(format="rgb24", width=out_w, height=out_h))
    except UserInputError:
        raise
    except (av.FFmpegError, OSError, ValueError, IndexError) as e:
        if len(frames) < limits.min_frames:
            raise UserInputError(f"The upload {path.name} could not be read as a video ({type(e).__name__}).") from e
        truncated = False  # a damaged tail: keep the frames decoded so far and say so
        note = f"Decoding stopped at frame {len(frames)} ({type(e).__name__}); the frames before it are used."
    else:
        note = None
    _check_count(len(frames), path.name, limits)
    fps = float(rate) if rate else 10.0
    decoded = DecodedVideo(ArraySource(frames), _safe_name(path.stem), min(max(fps, 1.0), 60.0), (height, width))
    _size_notes(decoded, total, truncated, limits)
    if note:
        decoded.notes.append(note)
    return decoded


def _check_count(count: int, name: str, limits: Limits) -> None:
    if count == 0:
        raise UserInputError(f"The upload {name} contains no video frames.")
    if count < limits.min_frames:
        raise UserInputError(f"The upload {name} has only {count} frame; a video needs at least "
                             f"{limits.min_frames} frames.")


def _extract_zip(path: Path, out_dir: Path, limits: Limits) -> list[Path]:
    """The zip's image members written flat into out_dir (names made unique and safe; nothing else extracted)."""
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserInputError(f"The upload {path.name} is not a readable zip file ({type(e).__name__}).") from e
    with archive:
        members = sorted((m for m in archive.infolist()
                          if not m.is_dir() and Path(m.filename).suffix.lower() in IMAGE_SUFFIXES
                          and not Path(m.filename).name.startswith(".")), key=lambda m: m.filename)
        if not members:
            raise UserInputError(f"The zip {path.name} holds no frame images ({', '.join(IMAGE_SUFFIXES)}).")
        if len(members) > limits.max_frames:
            members = members[: limits.max_frames]
        budget = limits.max_upload_mb * 1e6 * 4  # uncompressed bytes: a zip bomb stops here
        if sum(m.file_size for m in members) > budget:
            raise UserInputError(f"The zip {path.name} unpacks to more than {budget / 1e6:,.0f} MB.")
        out_dir.mkdir(parents=True, exist_ok=True)
        seen: set[str] = set()
        paths = []
        for m in members:
            stem = _safe_name(Path(m.filename).stem)
            if stem in seen:
                raise UserInputError(f"The zip {path.name} holds two frames named {stem!r}; frame names must be "
                                     "unique (they name the mask PNGs).")
            seen.add(stem)
            target = out_dir / f"{stem}{Path(m.filename).suffix.lower()}"
            try:
                target.write_bytes(archive.read(m))
            except (zipfile.BadZipFile, OSError, RuntimeError) as e:  # damaged or encrypted member
                raise UserInputError(f"The zip {path.name}: {m.filename} cannot be read ({type(e).__name__}).") from e
            paths.append(target)
    return paths


def _decode_images(paths: Sequence[Path], name: str, limits: Limits) -> DecodedVideo:
    from PIL import Image

    ordered = sorted(paths, key=lambda p: p.name)
    truncated = len(ordered) > limits.max_frames
    total = len(ordered)
    ordered = ordered[: limits.max_frames]
    _check_count(len(ordered), f"{name} (frame images)", limits)
    frames, names = [], []
    first: tuple[int, int] | None = None  # (H, W) of the first frame, before any downscaling
    for p in ordered:
        try:
            with Image.open(p) as im:
                size = (im.height, im.width)
                if first is None:
                    first = size
                    out_h, out_w = _target_size(*first, limits.max_side)
                if size != first:
                    raise UserInputError(f"The frame {p.name} is {size[1]}x{size[0]} but the first frame is "
                                         f"{first[1]}x{first[0]}: all frames must share one size.")
                im.draft("RGB", (out_w, out_h))  # JPEG: decode at a reduced scale when the frame is large
                rgb = im.convert("RGB")
        except UserInputError:
            raise
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            raise UserInputError(f"The frame {p.name} is not a readable image ({type(e).__name__}).") from e
        if (rgb.height, rgb.width) != (out_h, out_w):
            rgb = rgb.resize((out_w, out_h), Image.BILINEAR)
        frames.append(np.asarray(rgb))
        names.append(_safe_name(p.stem))
    if len(set(names)) != len(names):
        raise UserInputError("Two frame images have the same name; frame names must be unique.")
    decoded = DecodedVideo(ArraySource(frames, names), _safe_name(name), 10.0, first)
    _size_notes(decoded, total, truncated, limits)
    return decoded
