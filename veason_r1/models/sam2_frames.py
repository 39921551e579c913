"""SAM2's view of a video: frames from memory resized and normalised as sam2's loader does, and a per-video cache
of image features, so every prompt on one video (all rollouts of a GRPO prompt) reuses one encoding.

Used by `veason_r1.models.sam2.SAM2Propagator` (batched tracking) and `veason_r1.models.sam2_reference` (the stock
API on the same frames).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)


def as_frame_list(frames) -> list[np.ndarray]:
    """(H, W, 3) uint8 arrays of one size from a (K, H, W, 3) array, a list of arrays / PIL images / tensors, or a
    `FrameSource`; a ValueError naming the frame otherwise."""
    from PIL import Image

    from veason_r1.data.video import FrameSource

    if isinstance(frames, FrameSource):
        frames = frames.get_many(range(len(frames)))
    elif isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames: expected a (K, H, W, 3) array, got shape {frames.shape}")
        frames = list(frames)
    out = []
    for i, f in enumerate(frames):
        if isinstance(f, Image.Image):
            f = np.asarray(f.convert("RGB"))
        elif hasattr(f, "detach"):  # torch tensor (H, W, 3) uint8
            f = f.detach().cpu().numpy()
        f = np.asarray(f)
        if f.ndim != 3 or f.shape[2] != 3:
            raise ValueError(f"frame {i}: expected (H, W, 3), got {f.shape}")
        if f.dtype != np.uint8:
            raise ValueError(f"frame {i}: expected uint8, got {f.dtype}")
        out.append(f)
    if not out:
        raise ValueError("frames: empty video")
    if len({f.shape for f in out}) != 1:
        raise ValueError(f"frames: all frames must share one size, got {sorted({f.shape for f in out})}")
    return out


class EncodedVideo:
    """One video's frames resized to the model size (uint8) and a cache of per-frame image features.

    Resizing is PIL's (as sam2's loader), done in a thread pool; the resized uint8 frames are kept (4x smaller than
    fp32, pinned when the model is on CUDA) and normalised (/255, ImageNet mean/std, fp32) on the compute device
    right before the backbone, so a GRPO step uploads 3 MB instead of 12 MB per frame. Features are computed lazily
    (one frame at a time) or for many videos at once (`encode_batched`), cached up to `cache_frames` frames (LRU),
    so a group's 5 frames are encoded once for all its rollouts while a 1000-frame video keeps a bounded window.
    Positional encodings are the same for every frame and stored once.
    """

    def __init__(self, model, frames, *, offload: bool = False, cache_frames: int = 64, autocast=None,
                 sdpa=None, _resized: list[np.ndarray] | None = None):
        import torch

        arrays = as_frame_list(frames)
        self.model = model
        self.num_frames = len(arrays)
        self.height, self.width = arrays[0].shape[:2]
        self.device = model.device
        self.storage = torch.device("cpu") if offload else self.device
        self._autocast = autocast or contextlib.nullcontext
        self._sdpa = sdpa or contextlib.nullcontext
        size = int(model.image_size)
        resized = _resized if _resized is not None else resize_frames(arrays, size)
        self._pixels = torch.from_numpy(np.stack(resized)).to(self.storage)  # (K, S, S, 3) uint8
        digest = hashlib.sha1()
        for f in arrays:
            digest.update(np.ascontiguousarray(f).tobytes())
        self.key = digest.hexdigest()  # identical frames -> identical features
        self._cache: OrderedDict[int, list] = OrderedDict()
        self._cache_frames = max(1, cache_frames)
        self.pos: list | None = None  # per-level positional encodings (1, C, h, w), frame independent
        self.feat_sizes: list | None = None

    def images(self, indices, device=None):
        """Normalised fp32 frames (N, 3, S, S) on `device` (default: the compute device), as sam2's loader makes."""
        return normalize_pixels(self._pixels[list(indices)], device or self.device)

    @property
    def stock_images(self) -> list:
        """Per-frame normalised (3, S, S) fp32 tensors on the storage device (the stock inference state's list)."""
        return list(self.images(range(self.num_frames), self.storage))

    def features(self, index: int) -> list:
        """Per-level backbone features (1, C, h, w) of frame `index` on the compute device (the SAM levels)."""
        import torch

        feats = self._cache.get(index)
        if feats is None:
            image = self.images([index])
            with torch.inference_mode(), self._autocast(), self._sdpa():
                out = self.model.forward_image(image)
            self._store_features(index, out, 0)
            while len(self._cache) > self._cache_frames:
                self._cache.popitem(last=False)
            feats = self._cache[index]
        else:
            self._cache.move_to_end(index)
        return [x.to(self.device, non_blocking=True) for x in feats]

    def _store_features(self, index: int, out: dict, row: int) -> None:
        levels = self.model.num_feature_levels
        self._cache[index] = [x[row : row + 1].to(self.storage) for x in out["backbone_fpn"][-levels:]]
        if self.pos is None:
            self.pos = [x[row : row + 1].to(self.storage) for x in out["vision_pos_enc"][-levels:]]
            self.feat_sizes = [(x.shape[-2], x.shape[-1]) for x in self.pos]


_RESIZE_POOL = None


def resize_frames(arrays: list[np.ndarray], size: int) -> list[np.ndarray]:
    """PIL resize (default filter, as sam2's loader) of every frame to size x size, uint8; threads (PIL releases
    the GIL) when there are several frames."""
    import os
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def one(f: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(f).resize((size, size)))

    if len(arrays) < 4:
        return [one(f) for f in arrays]
    global _RESIZE_POOL
    if _RESIZE_POOL is None:
        _RESIZE_POOL = ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1), thread_name_prefix="sam2-resize")
    return list(_RESIZE_POOL.map(one, arrays))


def normalize_pixels(pixels, device):
    """uint8 (N, S, S, 3) -> fp32 (N, 3, S, S): /255 then ImageNet mean/std, the same fp32 operations (and so the
    same values on CPU) as sam2's `load_video_frames`."""
    import torch

    x = pixels.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMG_MEAN, dtype=torch.float32, device=x.device)[:, None, None]
    std = torch.tensor(IMG_STD, dtype=torch.float32, device=x.device)[:, None, None]
    return (x - mean) / std


def encode_batched(videos: Sequence[EncodedVideo], batch: int = 32) -> None:
    """Encode every frame of short videos (those fully cacheable) in image batches: one GRPO step's frames in a
    few backbone calls instead of one call per frame."""
    import torch

    todo = [(v, t) for v in videos if v.num_frames <= v._cache_frames for t in range(v.num_frames) if t not in v._cache]
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        model = chunk[0][0].model
        first = chunk[0][0]
        pixels = torch.cat([v._pixels[t : t + 1].to(first.device, non_blocking=True) for v, t in chunk])
        images = normalize_pixels(pixels, first.device)
        with torch.inference_mode(), first._autocast(), first._sdpa():
            out = model.forward_image(images)
        for row, (v, t) in enumerate(chunk):
            v._store_features(t, out, row)


def check_boxes(boxes) -> np.ndarray:
    """Box prompts as an (N, 4) float64 array in the video's pixels (N may be 0), or a ValueError saying what is off."""
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes: expected an (N, 4) array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("boxes: NaN or infinite coordinates")
    return arr


def check_keyframe(keyframe: int, video: EncodedVideo) -> None:
    if not 0 <= int(keyframe) < video.num_frames:
        raise ValueError(f"keyframe_index {keyframe} outside [0, {video.num_frames})")
