"""SAM2 box-prompt propagation from in-memory frames, shared by the GRPO reward and inference.

What it does (METHOD.md section 7): box prompts on one keyframe, propagate forward to the last frame and then
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
import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

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


def build_sam2_model(name: str = "tiny", checkpoint: str | None = None, device: str = "cpu", seed: int = 0):
    """A `SAM2VideoPredictor` from a config (Hydra-style overrides applied with OmegaConf, no global Hydra state).

    Without a checkpoint the weights are the model's random init under `seed` (tests, benchmarks).
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
    name: str = "tiny",
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
    """One video's preprocessed frames and a cache of per-frame image features.

    Features are computed lazily (one frame at a time) and cached up to `cache_frames` frames (LRU), so a group's
    5 frames are encoded once for all its rollouts, while a 1000-frame video keeps a bounded window. Positional
    encodings are the same for every frame and stored once.
    """

    def __init__(self, model, frames, *, offload: bool = False, cache_frames: int = 64, autocast=None):
        import torch
        from PIL import Image

        arrays = _as_frame_list(frames)
        self.model = model
        self.num_frames = len(arrays)
        self.height, self.width = arrays[0].shape[:2]
        self.device = model.device
        self.storage = torch.device("cpu") if offload else self.device
        self._autocast = autocast or contextlib.nullcontext
        size = model.image_size
        mean = torch.tensor(IMG_MEAN, dtype=torch.float32)[:, None, None]
        std = torch.tensor(IMG_STD, dtype=torch.float32)[:, None, None]
        self._images = []
        for f in arrays:  # as sam2's loader: PIL resize (default filter), /255, normalise
            img = np.asarray(Image.fromarray(f).resize((size, size)), dtype=np.float32) / 255.0
            t = (torch.from_numpy(img).permute(2, 0, 1) - mean) / std
            self._images.append(t.to(self.storage))
        digest = hashlib.sha1()
        for f in arrays:
            digest.update(np.ascontiguousarray(f).tobytes())
        self.key = digest.hexdigest()  # identical frames -> identical features
        self._cache: OrderedDict[int, list] = OrderedDict()
        self._cache_frames = max(1, cache_frames)
        self.pos: list | None = None  # per-level positional encodings (1, C, h, w), frame independent
        self.feat_sizes: list | None = None

    def features(self, index: int) -> list:
        """Per-level backbone features (1, C, h, w) of frame `index` on the compute device (the SAM levels)."""
        import torch

        feats = self._cache.get(index)
        if feats is None:
            image = self._images[index].to(self.device).unsqueeze(0)
            with torch.inference_mode(), self._autocast():
                out = self.model.forward_image(image)
            levels = self.model.num_feature_levels
            feats = [x.to(self.storage) for x in out["backbone_fpn"][-levels:]]
            if self.pos is None:
                self.pos = [x.to(self.storage) for x in out["vision_pos_enc"][-levels:]]
                self.feat_sizes = [(x.shape[-2], x.shape[-1]) for x in self.pos]
            self._cache[index] = feats
            while len(self._cache) > self._cache_frames:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(index)
        return [x.to(self.device, non_blocking=True) for x in feats]

    def _store_features(self, index: int, out: dict, row: int) -> None:
        levels = self.model.num_feature_levels
        self._cache[index] = [x[row : row + 1].to(self.storage) for x in out["backbone_fpn"][-levels:]]
        if self.pos is None:
            self.pos = [x[row : row + 1].to(self.storage) for x in out["vision_pos_enc"][-levels:]]
            self.feat_sizes = [(x.shape[-2], x.shape[-1]) for x in self.pos]


def encode_batched(videos: Sequence[EncodedVideo], batch: int = 16) -> None:
    """Encode every frame of short videos (those fully cacheable) in image batches: one GRPO step's frames in a
    few backbone calls instead of one call per frame."""
    import torch

    todo = [(v, t) for v in videos if v.num_frames <= v._cache_frames for t in range(v.num_frames) if t not in v._cache]
    for start in range(0, len(todo), batch):
        chunk = todo[start : start + batch]
        model = chunk[0][0].model
        images = torch.stack([v._images[t].to(v.device) for v, t in chunk])
        with torch.inference_mode(), chunk[0][0]._autocast():
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
    masks: dict[int, Any] = field(default_factory=dict)  # frame -> (H, W) bool array


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
        self.encode_batch = 16  # frames per backbone call when a whole step's frames are encoded up front
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

    def encode(self, frames, *, offload: bool | None = None, cache_frames: int = 64) -> EncodedVideo:
        """Preprocess a video once; pass the result to `propagate*` to reuse its features across calls."""
        if isinstance(frames, EncodedVideo):
            return frames
        return EncodedVideo(
            self.model,
            frames,
            offload=self.offload if offload is None else offload,
            cache_frames=cache_frames,
            autocast=self._autocast,
        )

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
        video = self.encode(frames, offload=offload, cache_frames=64 if offload is None else 16)
        boxes = self._check_boxes(boxes, video)
        self._check_keyframe(keyframe_index, video)
        objects = [_Object(video, int(keyframe_index), tuple(b)) for b in boxes.tolist()]
        self._run(objects, progress=self.progress if progress is None else progress)
        per = np.zeros((len(objects), video.num_frames, video.height, video.width), dtype=bool)
        for i, obj in enumerate(objects):
            for t, m in obj.masks.items():
                per[i, t] = m
        return per if per_object else per.any(axis=0)

    def propagate_many(self, frames, prompts: Sequence[tuple[int, np.ndarray]]) -> list[np.ndarray]:
        """Union masks (K, H, W) for each (keyframe_index, boxes) prompt on one video: features encoded once,
        all prompts' objects tracked as one batch, identical objects tracked once."""
        return self.propagate_groups([(frames, prompts)])[0]

    def propagate_groups(self, groups: Sequence[tuple[Any, Sequence[tuple[int, np.ndarray]]]]) -> list[list[np.ndarray]]:
        """`propagate_many` over several videos at once: tracking is batched across videos too."""
        videos = [self.encode(frames) for frames, _ in groups]
        with self.lock:
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
        results = []
        for video, plan in zip(videos, plans):
            out = []
            for keys in plan:
                union = np.zeros((video.num_frames, video.height, video.width), dtype=bool)
                for key in keys:
                    for t, m in unique[key].masks.items():
                        union[t] |= m
                out.append(union)
            results.append(out)
        return results

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

    def _batched_features(self, objs: list[_Object], t: int):
        """Vision features of frame t for every object (gathered from each object's video), SAM2 layout."""
        import torch

        videos: dict[int, EncodedVideo] = {}
        for o in objs:
            videos.setdefault(id(o.video), o.video)
        order = list(videos)
        per_video = [videos[v].features(t) for v in order]
        first = videos[order[0]]
        index = torch.tensor([order.index(id(o.video)) for o in objs], device=self.device)
        if len(order) == 1:
            levels = [f.expand(len(objs), -1, -1, -1) for f in per_video[0]]
        else:
            levels = [torch.cat([pv[lvl] for pv in per_video]).index_select(0, index) for lvl in range(len(per_video[0]))]
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

    def _emit(self, objs: list[_Object], t: int, pred_masks) -> None:
        """Low-res logits (B, 1, h, w) -> masks at each object's video resolution (bilinear, > 0), as stock."""
        import torch.nn.functional as F

        sizes: dict[tuple[int, int], list[int]] = {}
        for i, o in enumerate(objs):
            sizes.setdefault((o.video.height, o.video.width), []).append(i)
        for (h, w), idx in sizes.items():
            logits = pred_masks[idx].float()
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            masks = (logits[:, 0] > 0).cpu().numpy()
            for j, i in enumerate(idx):
                objs[i].masks[t] = masks[j]

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
        with torch.inference_mode(), self._autocast():
            for t, reverse in iterator:
                feats, pos, feat_sizes = self._batched_features(objs, t)
                if t == keyframe:  # conditioning frame: stock add_new_points_or_box + propagate preflight
                    boxes = torch.tensor(
                        [[o.box[0] / o.video.width, o.box[1] / o.video.height, o.box[2] / o.video.width,
                          o.box[3] / o.video.height] for o in objs],
                        dtype=torch.float32,
                    ).reshape(-1, 2, 2) * size
                    labels = torch.tensor([[2, 3]] * len(objs), dtype=torch.int32)
                    point_inputs = {"point_coords": boxes.to(self.device), "point_labels": labels.to(self.device)}
                    out = model.track_step(
                        frame_idx=t, is_init_cond_frame=True, current_vision_feats=feats,
                        current_vision_pos_embeds=pos, feat_sizes=feat_sizes, point_inputs=point_inputs,
                        mask_inputs=None, output_dict=output_dict, num_frames=num_frames, track_in_reverse=False,
                        run_mem_encoder=False,
                    )
                    pred = _fill_holes(model, out["pred_masks"])
                    high = F.interpolate(pred.to(self.device), size=(size, size), mode="bilinear", align_corners=False)
                    mem, mem_pos = model._encode_new_memory(
                        current_vision_feats=feats, feat_sizes=feat_sizes, pred_masks_high_res=high,
                        object_score_logits=out["object_score_logits"], is_mask_from_pts=True,
                    )
                    out["maskmem_features"], out["maskmem_pos_enc"] = mem, mem_pos
                    output_dict["cond_frame_outputs"][t] = self._store(out, pred)
                else:
                    out = model.track_step(
                        frame_idx=t, is_init_cond_frame=False, current_vision_feats=feats,
                        current_vision_pos_embeds=pos, feat_sizes=feat_sizes, point_inputs=None, mask_inputs=None,
                        output_dict=output_dict, num_frames=num_frames, track_in_reverse=reverse,
                        run_mem_encoder=True,
                    )
                    pred = _fill_holes(model, out["pred_masks"])
                    output_dict["non_cond_frame_outputs"][t] = self._store(out, pred)
                    stale = [f for f in output_dict["non_cond_frame_outputs"]
                             if abs(f - t) > window and abs(f - keyframe) > window]
                    for f in stale:  # bounded memory on long videos: outputs no later step can attend to
                        del output_dict["non_cond_frame_outputs"][f]
                self._emit(objs, t, pred)

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
