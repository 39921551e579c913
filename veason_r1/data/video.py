"""Frame sources read lazily by index: a JPEG folder, an mp4 file, or in-memory arrays.

Every reader and pipeline goes through `FrameSource`, so decoding a few sampled frames never decodes a whole video.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from veason_r1.errors import BadInput, MissingInput

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class FrameSource:
    """A video as an indexable sequence of RGB uint8 (H, W, 3) frames with names."""

    names: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def get(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def get_many(self, indices: Sequence[int]) -> list[np.ndarray]:
        return [self.get(int(i)) for i in indices]

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the frames."""
        h, w = self.get(0).shape[:2]
        return h, w


class JpegFolderSource(FrameSource):
    """Frames stored as images in one folder, ordered by name, or by the given frame names (ReVOS `frames`).

    Every frame must have the video's size: `expected_size` (e.g. the meta's height/width) or else frame 0's. A
    frame of another size, a missing, truncated or unreadable frame is an error naming the video and the frame
    file (masks at the wrong size would otherwise be written or scored).
    """

    def __init__(self, folder: str | os.PathLike, names: Sequence[str] | None = None, suffix: str = ".jpg",
                 expected_size: tuple[int, int] | None = None, video: str | None = None):
        self.folder = Path(folder)
        self.video = video if video is not None else self.folder.name
        if names is None:
            if not self.folder.is_dir():
                raise MissingInput(self.folder, "frame folder not found")
            files = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not files:
                raise MissingInput(self.folder, "no .jpg/.png frames in the folder")
            stems = [p.stem for p in files]
            if len(set(stems)) != len(stems):
                dup = next(n for n in stems if stems.count(n) > 1)
                raise BadInput(self.folder, f"two frame files are named {dup!r} (e.g. .jpg and .png): keep one")
            self.names = stems
            self._paths = files
        else:
            self.names = [str(n) for n in names]
            self._paths = [self.folder / f"{n}{suffix}" for n in self.names]
        self._size: tuple[int, int] | None = tuple(expected_size) if expected_size else None

    def path(self, index: int) -> Path:
        return self._paths[index]

    def _where(self, index: int) -> str:
        return f"video {self.video!r}, frame {index} ({self.names[index]!r})"

    def get(self, index: int) -> np.ndarray:
        path = self._paths[index]
        try:
            with Image.open(path) as im:
                frame = np.asarray(im.convert("RGB"))
        except FileNotFoundError:
            raise MissingInput(path, f"missing frame ({self._where(index)})") from None
        except OSError as e:  # PIL: "image file is truncated", "cannot identify image file", ...
            raise BadInput(path, f"unreadable frame ({self._where(index)}): {e}",
                           hint="re-extract the frame; `veason-r1 doctor ROOT --decode` checks every frame") from None
        if frame.shape[:2] != self.size:
            h, w = self.size
            raise BadInput(path, f"frame is {frame.shape[0]}x{frame.shape[1]}, but {self.video!r} is {h}x{w} "
                                 f"({self._where(index)})",
                           hint="every frame of a video must have one size (and match the meta height/width)")
        return frame

    @property
    def size(self) -> tuple[int, int]:
        if self._size is None:
            path = self._paths[0]
            try:
                with Image.open(path) as im:  # header only: no pixel decode
                    self._size = (im.height, im.width)
            except FileNotFoundError:
                raise MissingInput(path, f"missing frame ({self._where(0)})") from None
            except OSError as e:
                raise BadInput(path, f"unreadable frame ({self._where(0)}): {e}") from None
        return self._size


class Mp4Source(FrameSource):
    """An mp4 (or any container PyAV reads). Frames are decoded once on first access and kept in memory as
    uint8 only if the video is short; longer videos are decoded sequentially up to the requested index."""

    def __init__(self, path: str | os.PathLike, max_cached_frames: int = 4096):
        import av  # local: only needed for containers

        self.path = Path(path)
        if not self.path.is_file():
            raise MissingInput(self.path, "video not found")
        self._av = av
        try:
            with av.open(str(self.path)) as container:
                if not container.streams.video:
                    raise BadInput(self.path, "the file has no video stream")
                stream = container.streams.video[0]
                n = stream.frames
                if not n:  # some containers do not store a frame count: count by demuxing packets
                    n = sum(1 for p in container.demux(stream) if p.size)
                self._height, self._width = stream.codec_context.height, stream.codec_context.width
        except av.error.FFmpegError as e:
            raise BadInput(self.path, f"not a readable video ({e})") from None
        if n == 0:
            raise BadInput(self.path, "the video has no frames")
        self.names = [f"{i:05d}" for i in range(n)]
        self._cache: dict[int, np.ndarray] = {}
        self._max_cached = max_cached_frames

    @property
    def size(self) -> tuple[int, int]:
        return self._height, self._width

    def _decode(self, wanted: set[int]) -> None:
        last = max(wanted)
        try:
            with self._av.open(str(self.path)) as container:
                for i, frame in enumerate(container.decode(video=0)):
                    if i in wanted and i not in self._cache:
                        self._cache[i] = frame.to_ndarray(format="rgb24")
                    if i >= last:
                        break
        except self._av.error.FFmpegError as e:
            raise BadInput(self.path, f"the video does not decode up to frame {last} ({e})") from None
        if len(self._cache) > self._max_cached:  # keep memory bounded on long videos
            for k in sorted(self._cache)[: len(self._cache) - self._max_cached]:
                self._cache.pop(k)

    def get(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self.names):
            raise IndexError(f"frame {index} out of range for {self.path} ({len(self.names)} frames)")
        if index not in self._cache:
            self._decode({index})
        if index not in self._cache:
            raise BadInput(self.path, f"could not decode frame {index} (the file may be truncated)")
        return self._cache[index]

    def get_many(self, indices: Sequence[int]) -> list[np.ndarray]:
        missing = {int(i) for i in indices} - set(self._cache)
        if missing:
            self._decode(missing)  # one sequential pass for all requested frames
        return [self.get(int(i)) for i in indices]


class ArraySource(FrameSource):
    """Frames already in memory: a (T, H, W, 3) array or a list of (H, W, 3) arrays / PIL images."""

    def __init__(self, frames, names: Sequence[str] | None = None):
        self._frames = [np.asarray(f.convert("RGB")) if isinstance(f, Image.Image) else np.asarray(f) for f in frames]
        for i, f in enumerate(self._frames):
            if f.ndim != 3 or f.shape[2] != 3 or f.dtype != np.uint8:
                raise ValueError(f"frame {i}: expected (H, W, 3) uint8, got {f.shape} {f.dtype}")
        self.names = [str(n) for n in names] if names is not None else [f"{i:05d}" for i in range(len(self._frames))]

    def get(self, index: int) -> np.ndarray:
        return self._frames[index]


def open_video(path: str | os.PathLike) -> FrameSource:
    """A JPEG/PNG folder or a video file, by what the path is."""
    p = Path(path)
    if p.is_dir():
        return JpegFolderSource(p)
    if p.is_file():
        return Mp4Source(p)
    raise MissingInput(p, "no video folder or file there")


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize to size x size (aspect not kept), as every frame the policy sees."""
    if frame.shape[:2] == (size, size):
        return frame
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.BILINEAR))
