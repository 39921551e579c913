"""SAM2 box-prompt propagation from in-memory frames, shared by the GRPO reward and inference.

What it does (docs/method.md §7): box prompts on one keyframe, propagate forward to the last frame and then
backward to the first (one state, so the backward pass sees the forward pass's memories, exactly as stock
`SAM2VideoPredictor.propagate_in_video` then `propagate_in_video(reverse=True)`), threshold logits > 0, and return
union or per-object masks at the frames' own resolution.

Why not the stock predictor API: it reads frames from a JPEG folder or an mp4, encodes them again for every
inference state, and (sam2 1.1.0) tracks the objects of one state one at a time. Here:
- frames come from memory (arrays, PIL images, a `FrameSource`), preprocessed like sam2's loader (PIL resize to
  the model size, /255, ImageNet mean/std);
- each frame's image features are computed once per video and reused by every prompt on that video (all rollouts
  of one GRPO prompt see the same frames);
- objects are independent in stock SAM2 1.1.0 (each object has its own memory bank and is tracked alone), so all
  objects of all prompts, across videos too, that share (number of frames, keyframe) advance in lock step as ONE
  batch through the model's own `track_step`; identical (video, keyframe, box) objects are tracked once.
The conditioning frame is handled as the stock code does it (prompt -> SAM heads without memory encoding, hole
filling, then the memory encoder on the upsampled low-res mask with binarisation), and memories are rounded to
bf16 as the stock state stores them. `propagate_reference` runs the stock API itself (used by tests and the
benchmark as the ground truth for agreement).

Devices: bf16 autocast on CUDA, fp32 on CPU. Stock sam2 stores `maskmem_features` as bf16 even in fp32 runs; when
a frame's memory holds only those bf16 memories and no fp32 object pointer (prompts on different frames: an object
tracked before its own conditioning frame) the fp32 CPU run fails with a dtype mismatch. We keep the bf16 rounding
but store the values in the compute dtype, and `propagate_reference` patches the same cast into the stock path.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

_log = logging.getLogger(__name__)

SAM2_CONFIGS = {
    "sam2_hiera_t": "configs/sam2/sam2_hiera_t.yaml",
    "sam2_hiera_s": "configs/sam2/sam2_hiera_s.yaml",
    "sam2_hiera_b+": "configs/sam2/sam2_hiera_b+.yaml",
    "sam2_hiera_l": "configs/sam2/sam2_hiera_l.yaml",
    "sam2.1_hiera_t": "configs/sam2.1/sam2.1_hiera_t.yaml",
    "sam2.1_hiera_s": "configs/sam2.1/sam2.1_hiera_s.yaml",
    "sam2.1_hiera_b+": "configs/sam2.1/sam2.1_hiera_b+.yaml",
    "sam2.1_hiera_l": "configs/sam2.1/sam2.1_hiera_l.yaml",
}

# The post-processing overrides `build_sam2_video_predictor` applies (kept identical so results match stock).
VIDEO_PREDICTOR_OVERRIDES: dict[str, Any] = {
    "model._target_": "sam2.sam2_video_predictor.SAM2VideoPredictor",
    "model.sam_mask_decoder_extra_args.dynamic_multimask_via_stability": True,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_delta": 0.05,
    "model.sam_mask_decoder_extra_args.dynamic_multimask_stability_thresh": 0.98,
    "model.binarize_mask_from_pts_for_mem_enc": True,
    "model.fill_hole_area": 8,
}

# A ~1M-parameter SAM2.1 (hiera_t config shrunk): 128 px input, 32-d features, one memory-attention layer.
TINY_OVERRIDES: dict[str, Any] = {
    "model.image_size": 128,
    "model.image_encoder.trunk.embed_dim": 8,
    "model.image_encoder.trunk.num_heads": 1,
    "model.image_encoder.trunk.stages": [1, 1, 2, 1],
    "model.image_encoder.trunk.global_att_blocks": [3],
    "model.image_encoder.trunk.window_spec": [4, 4, 4, 2],
    "model.image_encoder.trunk.window_pos_embed_bkg_spatial_size": [4, 4],
    "model.image_encoder.neck.d_model": 32,
    "model.image_encoder.neck.backbone_channel_list": [64, 32, 16, 8],
    "model.image_encoder.neck.position_encoding.num_pos_feats": 32,
    "model.memory_attention.d_model": 32,
    "model.memory_attention.num_layers": 1,
    "model.memory_attention.layer.d_model": 32,
    "model.memory_attention.layer.dim_feedforward": 64,
    "model.memory_attention.layer.self_attention.embedding_dim": 32,
    "model.memory_attention.layer.self_attention.feat_sizes": [8, 8],
    "model.memory_attention.layer.cross_attention.embedding_dim": 32,
    "model.memory_attention.layer.cross_attention.feat_sizes": [8, 8],
    "model.memory_attention.layer.cross_attention.kv_in_dim": 16,
    "model.memory_encoder.out_dim": 16,
    "model.memory_encoder.in_dim": 32,
    "model.memory_encoder.position_encoding.num_pos_feats": 16,
    "model.memory_encoder.mask_downsampler.embed_dim": 32,
    "model.memory_encoder.fuser.layer.dim": 32,
    "model.memory_encoder.fuser.num_layers": 1,
}

IMG_MEAN = (0.485, 0.456, 0.406)
IMG_STD = (0.229, 0.224, 0.225)


def _config_path(name: str) -> tuple[Path, dict[str, Any]]:
    """(yaml path, extra overrides) for "tiny", a known SAM2/SAM2.1 config name, or a yaml path."""
    import sam2

    root = Path(sam2.__path__[0])
    if name == "tiny":
        return root / SAM2_CONFIGS["sam2.1_hiera_t"], dict(TINY_OVERRIDES)
    key = name[:-5] if name.endswith(".yaml") else name
    key = key.rsplit("/", 1)[-1] if key.rsplit("/", 1)[-1] in SAM2_CONFIGS else key
    if key in SAM2_CONFIGS:
        return root / SAM2_CONFIGS[key], {}
    for candidate in (Path(name), root / name, root / f"{name}.yaml"):
        if candidate.is_file():
            return candidate, {}
    raise ValueError(f"unknown SAM2 config {name!r}: use 'tiny', one of {sorted(SAM2_CONFIGS)} or a yaml path")


def build_sam2_model(name: str, checkpoint: str | None = None, device: str = "cpu", seed: int = 0):
    """A `SAM2VideoPredictor` from a config (Hydra-style overrides applied with OmegaConf, no global Hydra state).

    `name` has no default: "tiny" (the random-weight test model) only where a caller asks for it. Without a
    checkpoint the weights are the model's random init under `seed` (tests, benchmarks), and a warning says so
    every time: a reward or a prediction with random SAM2 weights is noise.
    """
    import torch
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    path, overrides = _config_path(name)
    cfg = OmegaConf.load(path)
    for key, value in {**overrides, **VIDEO_PREDICTOR_OVERRIDES}.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = instantiate(cfg.model, _recursive_=True)
    if checkpoint is None:
        _log.warning("SAM2 %r runs WITHOUT A CHECKPOINT: random weights (seed %d); its masks and the consistency "
                     "reward are noise. Give the checkpoint (e.g. --sam2-ckpt / reward.sam2_checkpoint) for real runs.",
                     name, seed)
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"SAM2 checkpoint not found: {ckpt}")
        state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
        state = state.get("model", state) if isinstance(state, dict) else state
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"checkpoint {ckpt} does not fit config {name!r}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    return model.to(device).eval()


def load_sam2(
    name: str,
    checkpoint: str | None = None,
    device: str | None = None,
    *,
    offload: bool = False,
    progress: bool = False,
    seed: int = 0,
    max_batch_objects: int = 64,
    precision: str = "auto",
) -> "SAM2Propagator":
    """A ready propagator: CUDA when visible (bf16 autocast), else CPU (fp32). `precision`: "auto" | "fp32" (no
    autocast, the release's setting) | "bf16" (CUDA autocast)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build_sam2_model(name, checkpoint, device, seed)
    return SAM2Propagator(
        model, offload=offload, progress=progress, max_batch_objects=max_batch_objects, precision=precision
    )


# ----------------------------------------------------------------------------------------------------------------
# Frames and their features


def _as_frame_list(frames) -> list[np.ndarray]:
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

        arrays = _as_frame_list(frames)
        self.model = model
        self.num_frames = len(arrays)
        self.height, self.width = arrays[0].shape[:2]
        self.device = model.device
        self.storage = torch.device("cpu") if offload else self.device
        self._autocast = autocast or contextlib.nullcontext
        self._sdpa = sdpa or contextlib.nullcontext
        size = int(model.image_size)
        resized = _resized if _resized is not None else _resize_frames(arrays, size)
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
    def _images(self) -> list:
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


def _resize_frames(arrays: list[np.ndarray], size: int) -> list[np.ndarray]:
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


# ----------------------------------------------------------------------------------------------------------------
# Batched tracking


@dataclass
class _Object:
    video: EncodedVideo
    keyframe: int
    box: tuple[float, float, float, float]  # in the video's pixel coordinates
    masks: Any = None  # (K, H, W) bool tensor on the compute device, filled by tracking


def _fill_holes(model, masks):
    if getattr(model, "fill_hole_area", 0) <= 0:
        return masks
    from sam2.utils.misc import fill_holes_in_mask_scores

    with warnings.catch_warnings():  # without sam2's CUDA extension this is a (warned) no-op, as in stock
        warnings.simplefilter("ignore")
        return fill_holes_in_mask_scores(masks, model.fill_hole_area)


class SAM2Propagator:
    """Box prompts on a keyframe -> masks on every frame (forward then backward), batched over objects.

    Thread safe: one lock guards the model (verl runs reward functions in a thread pool).
    """

    def __init__(
        self,
        model,
        *,
        offload: bool = False,
        progress: bool = False,
        max_batch_objects: int = 64,
        precision: str = "auto",
    ):
        import torch

        if precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"precision: {precision!r} is not one of 'auto', 'fp32', 'bf16'")
        self.bf16 = model.device.type == "cuda" and precision != "fp32"

        self.model = model
        self.device = model.device
        self.offload = offload
        self.progress = progress
        self.max_batch_objects = max(1, int(max_batch_objects))
        self.encode_batch = 32  # frames per backbone call when a whole step's frames are encoded up front
        self.profile: dict[str, float] | None = None  # a dict -> per-stage seconds are added to it (`_stage`)
        self.avoid_cudnn_attention = True  # see `_sdpa`
        self.compute_dtype = torch.float32
        self.lock = threading.RLock()

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    def _autocast(self):
        import torch

        if self.bf16:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def encode(self, frames, *, offload: bool | None = None, cache_frames: int = 64, _resized=None) -> EncodedVideo:
        """Preprocess a video once; pass the result to `propagate*` to reuse its features across calls."""
        if isinstance(frames, EncodedVideo):
            return frames
        return EncodedVideo(
            self.model,
            frames,
            offload=self.offload if offload is None else offload,
            cache_frames=cache_frames,
            autocast=self._autocast,
            sdpa=self._sdpa,
            _resized=_resized,
        )

    def encode_many(self, videos: Sequence[Any]) -> list[EncodedVideo]:
        """`encode` for several videos with all their frames resized in one thread-pool pass."""
        arrays = [None if isinstance(v, EncodedVideo) else _as_frame_list(v) for v in videos]
        flat = [f for a in arrays if a is not None for f in a]
        resized = _resize_frames(flat, self.image_size) if flat else []
        out, i = [], 0
        for v, a in zip(videos, arrays):
            if a is None:
                out.append(v)
                continue
            out.append(self.encode(a, _resized=resized[i : i + len(a)]))
            i += len(a)
        return out

    def _sdpa(self):
        """SDPA backends for our batched calls on CUDA: flash / memory-efficient / math, not cuDNN. cuDNN attention
        builds an execution plan per new shape (~0.1 s each), and the batch sizes of a GRPO step change every step."""
        if self.device.type != "cuda" or not self.avoid_cudnn_attention:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])

    # -- public API ----------------------------------------------------------------------------------------------

    def propagate(
        self,
        frames,
        keyframe_index: int,
        boxes: np.ndarray,
        per_object: bool = False,
        *,
        offload: bool | None = None,
        progress: bool | None = None,
    ) -> np.ndarray:
        """(K, H, W) bool union masks, or (N, K, H, W) per object, of boxes (N, 4) prompted on `keyframe_index`."""
        import torch

        video = self.encode(frames, offload=offload, cache_frames=64 if offload is None else 16)
        boxes = self._check_boxes(boxes, video)
        self._check_keyframe(keyframe_index, video)
        objects = [_Object(video, int(keyframe_index), tuple(b)) for b in boxes.tolist()]
        self._run(objects, progress=self.progress if progress is None else progress)
        if not objects:
            per = np.zeros((0, video.num_frames, video.height, video.width), dtype=bool)
            return per if per_object else per.any(axis=0)
        stacked = torch.stack([o.masks for o in objects])
        if per_object:
            return stacked.cpu().numpy()
        return stacked.any(dim=0).cpu().numpy()

    def propagate_many(self, frames, prompts: Sequence[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        """Union masks (K, H, W) for each (keyframe_index, boxes) prompt on one video: features encoded once,
        all prompts' objects tracked as one batch, identical objects tracked once."""
        return self.propagate_groups([(frames, prompts)])[0]

    def propagate_groups(self, groups: Sequence[tuple[Any, Sequence[tuple[int, np.ndarray]]]]) -> list[list[np.ndarray]]:
        """`propagate_many` over several videos at once: tracking is batched across videos too."""
        _, unions = self._propagate_unions(groups)
        with self._stage("download"):
            flat = [u for group in unions for u in group]
            host = [u.cpu().numpy() for u in flat]
        out, i = [], 0
        for group in unions:
            out.append(host[i : i + len(group)])
            i += len(group)
        return out

    def frame_ious_groups(
        self, groups: Sequence[tuple[Any, Sequence[tuple[int, np.ndarray]]]], gt_masks: Sequence[np.ndarray]
    ) -> list[list[np.ndarray]]:
        """Per prompt, the (K,) float64 IoU of its union masks with the group's GT masks (K, H, W) on each frame
        (1 when both are empty): `propagate_groups` + `terms.mask_iou` with the masks never leaving the device
        (intersection and union pixel counts are computed there, exactly, and divided here in float64)."""
        import torch

        if len(gt_masks) != len(groups):
            raise ValueError(f"gt_masks: {len(gt_masks)} arrays for {len(groups)} groups")
        videos, unions = self._propagate_unions(groups)
        with self._stage("iou"):
            counts = []
            for video, group, gt in zip(videos, unions, gt_masks):
                gt_arr = np.asarray(gt, dtype=bool)
                if gt_arr.shape != (video.num_frames, video.height, video.width):
                    raise ValueError(f"gt_masks: shape {gt_arr.shape} does not fit the frames "
                                     f"{(video.num_frames, video.height, video.width)}")
                if not group:
                    continue
                if self.device.type == "cpu":  # numpy counts bool pixels ~10x faster than torch on CPU
                    pred_np = torch.stack(group).numpy().reshape(len(group), video.num_frames, -1)
                    target_np = gt_arr.reshape(1, video.num_frames, -1)
                    inter = np.count_nonzero(pred_np & target_np, axis=-1)
                    union = np.count_nonzero(pred_np | target_np, axis=-1)
                    counts.append(torch.from_numpy(np.stack([inter, union], axis=-1).astype(np.int64)).reshape(-1))
                    continue
                target = torch.from_numpy(gt_arr).to(self.device, non_blocking=True)
                pred = torch.stack(group)  # (P, K, H, W)
                inter = torch.count_nonzero((pred & target).flatten(2), dim=-1)
                union = torch.count_nonzero((pred | target).flatten(2), dim=-1)
                counts.append(torch.stack([inter, union], dim=-1).reshape(-1))  # (P, K, 2) flattened
            # groups may show different frame counts K: one flat transfer (one sync), split per group below
            host = torch.cat(counts).cpu().numpy() if counts else np.zeros(0, np.int64)
        out, i = [], 0
        for video, group in zip(videos, unions):
            size = len(group) * video.num_frames * 2
            rows = host[i : i + size].reshape(len(group), video.num_frames, 2)
            i += size
            ious = []
            for r in rows:
                inter, union = r[:, 0], r[:, 1]
                ious.append(np.array([1.0 if u == 0 else float(n / u) for n, u in zip(inter, union)]))
            out.append(ious)
        return out

    def _propagate_unions(self, groups):
        """Encode, plan (identical objects once), track; per group, per prompt the (K, H, W) bool union mask on the
        compute device."""
        import torch

        with self._stage("preprocess"):
            videos = self.encode_many([frames for frames, _ in groups])
        with self.lock, self._stage("encode"):
            encode_batched(list({id(v): v for v in videos}.values()), self.encode_batch)
        unique: dict[tuple, _Object] = {}
        plans: list[list[list[tuple]]] = []
        for video, (_, prompts) in zip(videos, groups):
            plan = []
            for keyframe, boxes in prompts:
                boxes = self._check_boxes(boxes, video)
                self._check_keyframe(keyframe, video)
                keys = []
                for b in boxes.tolist():
                    key = (id(video), video.key, int(keyframe), tuple(b))
                    if key not in unique:
                        unique[key] = _Object(video, int(keyframe), tuple(b))
                    keys.append(key)
                plan.append(keys)
            plans.append(plan)
        self._run(list(unique.values()), progress=self.progress)
        unions = []
        with self._stage("union"):
            for video, plan in zip(videos, plans):
                out = []
                for keys in plan:
                    if not keys:
                        out.append(torch.zeros((video.num_frames, video.height, video.width), dtype=torch.bool,
                                               device=video.storage))
                    elif len(keys) == 1:
                        out.append(unique[keys[0]].masks)
                    else:
                        out.append(functools.reduce(torch.logical_or, [unique[k].masks for k in keys]))
                unions.append(out)
        return videos, unions

    @contextlib.contextmanager
    def _stage(self, name: str):
        """Adds the stage's wall time (CUDA synchronised on both ends) to `self.profile` when that is a dict."""
        if self.profile is None:
            yield
            return
        import time

        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.profile[name] = self.profile.get(name, 0.0) + time.perf_counter() - start

    # -- checks --------------------------------------------------------------------------------------------------

    @staticmethod
    def _check_boxes(boxes, video: EncodedVideo) -> np.ndarray:
        arr = np.asarray(boxes, dtype=np.float64)
        if arr.size == 0:
            return arr.reshape(0, 4)
        if arr.ndim != 2 or arr.shape[1] != 4:
            raise ValueError(f"boxes: expected an (N, 4) array, got shape {arr.shape}")
        if not np.isfinite(arr).all():
            raise ValueError("boxes: NaN or infinite coordinates")
        return arr

    @staticmethod
    def _check_keyframe(keyframe: int, video: EncodedVideo) -> None:
        if not 0 <= int(keyframe) < video.num_frames:
            raise ValueError(f"keyframe_index {keyframe} outside [0, {video.num_frames})")

    # -- engine --------------------------------------------------------------------------------------------------

    def _run(self, objects: list[_Object], progress: bool = False) -> None:
        """Track every object; objects sharing (num_frames, keyframe) advance in lock step as one batch."""
        buckets: dict[tuple[int, int], list[_Object]] = {}
        for obj in objects:
            buckets.setdefault((obj.video.num_frames, obj.keyframe), []).append(obj)
        with self.lock:
            for (num_frames, keyframe), objs in sorted(buckets.items(), key=lambda kv: kv[0]):
                for start in range(0, len(objs), self.max_batch_objects):
                    self._track_batch(objs[start : start + self.max_batch_objects], num_frames, keyframe, progress)

    def _batched_features(self, objs: list[_Object], t: int, rows):
        """Vision features of frame t for every object (gathered from each object's video), SAM2 layout."""
        import torch

        videos: dict[int, EncodedVideo] = {}
        for o in objs:
            videos.setdefault(id(o.video), o.video)
        order = list(videos)
        per_video = [videos[v].features(t) for v in order]
        first = videos[order[0]]
        if len(order) == 1:
            levels = [f.expand(len(objs), -1, -1, -1) for f in per_video[0]]
        else:
            levels = [torch.cat([pv[lvl] for pv in per_video]).index_select(0, rows) for lvl in range(len(per_video[0]))]
        pos = [p.to(self.device).expand(len(objs), -1, -1, -1) for p in first.pos]
        feats = [x.flatten(2).permute(2, 0, 1) for x in levels]
        pos = [x.flatten(2).permute(2, 0, 1) for x in pos]
        return feats, pos, list(first.feat_sizes)

    def _store(self, out: dict, pred_masks) -> dict:
        import torch

        storage = torch.device("cpu") if self.offload else self.device
        mem = out["maskmem_features"]
        if mem is not None:  # stock rounds memories to bf16; keep the rounding in the compute dtype
            mem = mem.to(torch.bfloat16).to(self.compute_dtype).to(storage)
        return {
            "maskmem_features": mem,
            "maskmem_pos_enc": out["maskmem_pos_enc"],
            "pred_masks": pred_masks.to(storage),
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"],
        }

    def _emit(self, outputs: list[tuple[Any, Any, Any]], t: int, pred_masks) -> None:
        """Low-res logits (B, 1, h, w) -> masks at each object's video resolution (bilinear, > 0, as stock), written
        into the batch's per-size mask tensors on the device (no host copy, no sync)."""
        import torch.nn.functional as F

        with self._stage("upsample_threshold"):
            for idx, (h, w), target in outputs:
                logits = (pred_masks if idx is None else pred_masks.index_select(0, idx)).float()
                if logits.shape[-2:] != (h, w):
                    logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
                target[:, t] = (logits[:, 0] > 0).to(target.device)

    def _track_batch(self, objs: list[_Object], num_frames: int, keyframe: int, progress: bool) -> None:
        import torch
        import torch.nn.functional as F

        model = self.model
        size = model.image_size
        output_dict: dict[str, dict] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        window = max(model.num_maskmem, model.max_obj_ptrs_in_encoder) + 1
        steps = [(t, False) for t in range(keyframe, num_frames)] + [(t, True) for t in range(keyframe - 1, -1, -1)]
        iterator: Iterator = iter(steps)
        if progress:
            from tqdm import tqdm

            iterator = iter(tqdm(steps, desc=f"SAM2 propagate ({len(objs)} objects)", leave=False))
        # per-object output masks (K, H, W) bool: one tensor per video size, objects are row views. On the device
        # (no host copy, no sync per step), except for offloaded videos: a long video's masks (1,000 frames of 1080p = 2 GB
        # per object) then live in host memory, so GPU memory stays bounded whatever the length.
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, o in enumerate(objs):
            by_size.setdefault((o.video.height, o.video.width), []).append(i)
        outputs = []
        for (h, w), idx in by_size.items():
            target = torch.zeros((len(idx), num_frames, h, w), dtype=torch.bool, device=objs[idx[0]].video.storage)
            rows = None if len(idx) == len(objs) else torch.tensor(idx, device=self.device)
            outputs.append((rows, (h, w), target))
            for j, i in enumerate(idx):
                objs[i].masks = target[j]
        video_ids: dict[int, int] = {}
        rows = torch.tensor([video_ids.setdefault(id(o.video), len(video_ids)) for o in objs], device=self.device)
        boxes = torch.tensor(
            [[o.box[0] / o.video.width, o.box[1] / o.video.height, o.box[2] / o.video.width,
              o.box[3] / o.video.height] for o in objs],
            dtype=torch.float32,
        ).reshape(-1, 2, 2) * size
        labels = torch.tensor([[2, 3]] * len(objs), dtype=torch.int32)
        with torch.inference_mode(), self._autocast(), self._sdpa():
            for t, reverse in iterator:
                feats, pos, feat_sizes = self._batched_features(objs, t, rows)
                if t == keyframe:  # conditioning frame: stock add_new_points_or_box + propagate preflight
                    with self._stage("keyframe_step"):
                        point_inputs = {"point_coords": boxes.to(self.device), "point_labels": labels.to(self.device)}
                        out = model.track_step(
                            frame_idx=t, is_init_cond_frame=True, current_vision_feats=feats,
                            current_vision_pos_embeds=pos, feat_sizes=feat_sizes, point_inputs=point_inputs,
                            mask_inputs=None, output_dict=output_dict, num_frames=num_frames, track_in_reverse=False,
                            run_mem_encoder=False,
                        )
                        pred = _fill_holes(model, out["pred_masks"])
                        high = F.interpolate(pred.to(self.device), size=(size, size), mode="bilinear",
                                             align_corners=False)
                        mem, mem_pos = model._encode_new_memory(
                            current_vision_feats=feats, feat_sizes=feat_sizes, pred_masks_high_res=high,
                            object_score_logits=out["object_score_logits"], is_mask_from_pts=True,
                        )
                        out["maskmem_features"], out["maskmem_pos_enc"] = mem, mem_pos
                        output_dict["cond_frame_outputs"][t] = self._store(out, pred)
                else:
                    with self._stage("track_steps"):
                        out = model.track_step(
                            frame_idx=t, is_init_cond_frame=False, current_vision_feats=feats,
                            current_vision_pos_embeds=pos, feat_sizes=feat_sizes, point_inputs=None,
                            mask_inputs=None, output_dict=output_dict, num_frames=num_frames,
                            track_in_reverse=reverse, run_mem_encoder=True,
                        )
                        pred = _fill_holes(model, out["pred_masks"])
                        output_dict["non_cond_frame_outputs"][t] = self._store(out, pred)
                    stale = [f for f in output_dict["non_cond_frame_outputs"]
                             if abs(f - t) > window and abs(f - keyframe) > window]
                    for f in stale:  # bounded memory on long videos: outputs no later step can attend to
                        del output_dict["non_cond_frame_outputs"][f]
                self._emit(outputs, t, pred)

    # -- stock reference -----------------------------------------------------------------------------------------

    def propagate_reference(self, frames, keyframe_index: int, boxes: np.ndarray, per_object: bool = False):
        """The stock sam2 API on one fresh inference state (add_new_points_or_box per object, then
        propagate_in_video forward and reverse): the authors' way, for agreement tests and the benchmark."""
        import torch

        video = self.encode(frames)
        boxes = self._check_boxes(boxes, video)
        model = self.model
        per = np.zeros((len(boxes), video.num_frames, video.height, video.width), dtype=bool)
        with self.lock, torch.inference_mode(), self._autocast(), _stock_fp32_memory_patch(model, self.device), _quiet():
            state = stock_inference_state(model, video)
            for i, b in enumerate(boxes.tolist()):
                model.add_new_points_or_box(state, frame_idx=int(keyframe_index), obj_id=i, box=np.asarray(b, np.float32))
            for reverse in (False, True):
                for t, _, masks in model.propagate_in_video(state, reverse=reverse):
                    per[:, t] = (masks[:, 0] > 0).cpu().numpy()
        return per if per_object else per.any(axis=0)


def stock_inference_state(model, video: EncodedVideo) -> dict:
    """The dict `SAM2VideoPredictor.init_state` builds (sam2 1.1.0), from in-memory frames instead of a folder."""
    import torch

    state: dict[str, Any] = {
        "images": [img for img in video._images],
        "num_frames": video.num_frames,
        "offload_video_to_cpu": False,
        "offload_state_to_cpu": False,
        "video_height": video.height,
        "video_width": video.width,
        "device": model.device,
        "storage_device": model.device,
        "point_inputs_per_obj": {},
        "mask_inputs_per_obj": {},
        "cached_features": {},
        "constants": {},
        "obj_id_to_idx": OrderedDict(),
        "obj_idx_to_id": OrderedDict(),
        "obj_ids": [],
        "output_dict_per_obj": {},
        "temp_output_dict_per_obj": {},
        "frames_tracked_per_obj": {},
    }
    with torch.inference_mode():
        model._get_image_feature(state, frame_idx=0, batch_size=1)
    return state


@contextlib.contextmanager
def _quiet():
    """Silence stock tqdm bars and the missing-CUDA-extension warning of hole filling."""
    import functools

    import sam2.sam2_video_predictor as svp

    original = svp.tqdm
    svp.tqdm = functools.partial(original, disable=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        svp.tqdm = original


@contextlib.contextmanager
def _stock_fp32_memory_patch(model, device):
    """On CPU (no autocast) make the stock path cast stored bf16 memories back to fp32 when it reads them."""
    import torch

    if device.type == "cuda" and torch.is_autocast_enabled("cuda"):
        yield
        return
    original = model.memory_attention.forward

    def forward(curr, memory, curr_pos=None, memory_pos=None, num_obj_ptr_tokens=0, **kw):
        dtype = curr[0].dtype if isinstance(curr, list) else curr.dtype
        return original(curr=curr, memory=memory.to(dtype), curr_pos=curr_pos,
                        memory_pos=memory_pos.to(dtype) if memory_pos is not None else None,
                        num_obj_ptr_tokens=num_obj_ptr_tokens, **kw)

    model.memory_attention.forward = forward
    try:
        yield
    finally:
        del model.memory_attention.forward
