"""SAM2 box-prompt propagation from in-memory frames, shared by the GRPO reward and inference.

What it does (docs/method.md §7): box prompts on one keyframe, propagate forward to the last frame and then
backward to the first (one state, so the backward pass sees the forward pass's memories, exactly as stock
`SAM2VideoPredictor.propagate_in_video` then `propagate_in_video(reverse=True)`), threshold logits > 0, and return
union or per-object masks at the frames' own resolution.

Public surface: `load_sam2` (a ready `SAM2Propagator`), `SAM2Propagator.encode` (a video's frames and feature cache,
`sam2_frames.EncodedVideo`), `propagate` (one prompt), `propagate_groups` / `propagate_many` (many prompts, many
videos, one batch) and `frame_ious_groups` (the reward's per-frame IoUs, counted on the device by
`sam2_iou.frame_ious`). The stock API itself, the reference these must match, is `sam2_reference.propagate_reference`.

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
bf16 as the stock state stores them.

Devices: bf16 autocast on CUDA, fp32 on CPU. Stock sam2 stores `maskmem_features` as bf16 even in fp32 runs; when
a frame's memory holds only those bf16 memories and no fp32 object pointer (prompts on different frames: an object
tracked before its own conditioning frame) the fp32 CPU run fails with a dtype mismatch. We keep the bf16 rounding
but store the values in the compute dtype (the reference path patches the same cast into stock sam2).

Configs: sam2's own YAMLs by name, or "tiny", a shrunk SAM2.1 for tests and the demo (configs/sam2.1_tiny.yaml).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from veason_r1.models.propagator import PropagatorBase
from veason_r1.models.sam2_frames import (  # noqa: F401 - EncodedVideo is re-exported (the cached type)
    EncodedVideo,
    as_frame_list,
    check_boxes,
    check_keyframe,
    encode_batched,
    resize_frames,
)
from veason_r1.models.sam2_iou import frame_ious

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

TINY_CONFIG = Path(__file__).with_name("configs") / "sam2.1_tiny.yaml"
TOY_CONFIG = Path(__file__).with_name("configs") / "sam2.1_toy.yaml"  # the shipped `--sam2 toy` (models/toy.py)


def _yaml_overrides(config: Path) -> tuple[str, dict[str, Any]]:
    """(base config inside the sam2 package, dotted overrides) of one of our configs (configs/sam2.1_*.yaml): its
    `defaults` entry and every leaf of the rest (lists are leaves), applied as `OmegaConf.update` applies each."""
    from omegaconf import OmegaConf

    doc = OmegaConf.to_container(OmegaConf.load(config))
    (base,) = [d for d in doc.pop("defaults") if d != "_self_"]
    flat: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value

    walk("", doc)
    return base.lstrip("/") + ".yaml", flat


def _config_path(name: str) -> tuple[Path, dict[str, Any]]:
    """(yaml path, extra overrides) for "tiny", "toy", a known SAM2/SAM2.1 config name, or a yaml path."""
    import sam2

    from veason_r1.models.toy import is_toy

    root = Path(sam2.__path__[0])
    if name == "tiny":
        base, overrides = _yaml_overrides(TINY_CONFIG)
        return root / base, overrides
    if is_toy(name):
        base, overrides = _yaml_overrides(TOY_CONFIG)
        return root / base, overrides
    key = name[:-5] if name.endswith(".yaml") else name
    key = key.rsplit("/", 1)[-1] if key.rsplit("/", 1)[-1] in SAM2_CONFIGS else key
    if key in SAM2_CONFIGS:
        return root / SAM2_CONFIGS[key], {}
    for candidate in (Path(name), root / name, root / f"{name}.yaml"):
        if candidate.is_file():
            return candidate, {}
    raise ValueError(f"unknown SAM2 config {name!r}: use 'tiny', one of {sorted(SAM2_CONFIGS)} or a yaml path")


def sam2_config(name: str):
    """(OmegaConf config with our overrides, yaml path) for `--sam2 name`; a missing, unparsable or non-SAM2 yaml
    is a `BadInput` naming the file (checked before any stage by `check_sam2`, and again when the model is built)."""
    from omegaconf import OmegaConf

    from veason_r1.errors import BadInput

    try:
        path, overrides = _config_path(name)
    except ValueError:
        raise BadInput("--sam2", f"unknown SAM2 config {name!r}",
                       hint=f"use tiny, one of {', '.join(sorted(SAM2_CONFIGS))}, or a yaml path") from None
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # noqa: BLE001 - yaml.YAMLError, OmegaConf's own, a folder, unreadable bytes
        raise BadInput(path, f"--sam2 {name}: not a readable YAML file ({type(e).__name__}: "
                             f"{(str(e).strip().splitlines() or [''])[0][:200]})") from None
    model = cfg.get("model") if OmegaConf.is_dict(cfg) else None
    if not OmegaConf.is_dict(model) or "_target_" not in model:
        raise BadInput(path, f"--sam2 {name}: not a SAM2 config (no model._target_)",
                       hint="use one of SAM2's own configs (e.g. sam2.1_hiera_l) or a copy of one")
    for key, value in {**overrides, **VIDEO_PREDICTOR_OVERRIDES}.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    OmegaConf.resolve(cfg)
    return cfg, path


def build_sam2_model(name: str, checkpoint: str | None = None, device: str = "cpu", seed: int = 0):
    """A `SAM2VideoPredictor` from a config (Hydra-style overrides applied with OmegaConf, no global Hydra state).

    `name` has no default: "tiny" (the random-weight test model) only where a caller asks for it. Without a
    checkpoint the weights are the model's random init under `seed` (tests, benchmarks), and a warning says so
    every time: a reward or a prediction with random SAM2 weights is noise.
    """
    import torch
    from hydra.utils import instantiate

    from veason_r1.models.registry import propagator_checkpoint

    ckpt = propagator_checkpoint(name, checkpoint)  # a named propagator's own weights (the shipped `toy`), if any
    checkpoint = None if ckpt is None else str(ckpt)
    cfg, path = sam2_config(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = instantiate(cfg.model, _recursive_=True)
        except Exception as e:  # noqa: BLE001 - Hydra wraps a wrong _target_ or argument in its own error types
            from veason_r1.errors import BadInput

            raise BadInput(path, f"--sam2 {name}: the config does not build a SAM2 model "
                                 f"({type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]})",
                           hint="use one of SAM2's own configs (e.g. sam2.1_hiera_l) or a copy of one") from None
    if checkpoint is None:
        _log.warning("SAM2 %r runs WITHOUT A CHECKPOINT: random weights (seed %d); its masks and the consistency "
                     "reward are noise. Give the checkpoint (e.g. --sam2-checkpoint / reward.propagator.checkpoint) for real runs.",
                     name, seed)
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise FileNotFoundError(f"SAM2 checkpoint not found: {ckpt}")
        import pickle
        import warnings

        from veason_r1.errors import BadInput

        try:
            with warnings.catch_warnings():  # torch warns about the "pickle protocol" of random bytes
                warnings.simplefilter("ignore", UserWarning)
                state = torch.load(str(ckpt), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - truncated zip, random bytes (UnpicklingError), another format
            first = ("its pickle does not parse (random bytes or another format)" if isinstance(e, pickle.UnpicklingError)
                     else f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}")
            raise BadInput(ckpt, f"SAM2 checkpoint does not load ({first})",
                           hint="download it again (e.g. sam2.1_hiera_large.pt from the SAM2 release)") from None
        state = state.get("model", state) if isinstance(state, dict) else state
        if not isinstance(state, dict):
            raise BadInput(ckpt, f"SAM2 checkpoint holds a {type(state).__name__}, not a state dict")
        own = model.state_dict()
        wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items()
                 if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape)]
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if wrong or missing or unexpected:  # e.g. a Hiera-L .pt for a Hiera-T config: torch's 264-line paragraph
            parts = [f"{len(wrong)} tensors of another size (first: {wrong[0]})" if wrong else "",
                     f"missing {missing[:3]}" if missing else "", f"unexpected {unexpected[:3]}" if unexpected else ""]
            raise BadInput(ckpt, f"checkpoint does not fit SAM2 config {name!r}: "
                                 + "; ".join(p for p in parts if p),
                           hint="pass the --sam2 config this checkpoint was trained with (e.g. sam2.1_hiera_l for "
                                "sam2.1_hiera_large.pt)")
        model.load_state_dict(state, strict=True)
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


class SAM2Propagator(PropagatorBase):
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
        arrays = [None if isinstance(v, EncodedVideo) else as_frame_list(v) for v in videos]
        flat = [f for a in arrays if a is not None for f in a]
        resized = resize_frames(flat, self.image_size) if flat else []
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
        boxes = check_boxes(boxes)
        check_keyframe(keyframe_index, video)
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
        (1 when both are empty): `propagate_groups` + `masks.mask_iou` with the masks never leaving the device
        (`sam2_iou.frame_ious`)."""
        if len(gt_masks) != len(groups):
            raise ValueError(f"gt_masks: {len(gt_masks)} arrays for {len(groups)} groups")
        videos, unions = self._propagate_unions(groups)
        with self._stage("iou"):
            return frame_ious(unions, gt_masks, [(v.num_frames, v.height, v.width) for v in videos], self.device)

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
                boxes = check_boxes(boxes)
                check_keyframe(keyframe, video)
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

