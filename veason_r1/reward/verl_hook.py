"""verl hookup: `compute_score` for `custom_reward_function`, the ground-truth format, one SAM2 per process.

Ground truth (what the RL data preparation stores in `reward_model.ground_truth`, built by `make_ground_truth`):
    {"frame_ids": [int] * K, "gt_boxes": {"0": [[x1,y1,x2,y2], ...], ..., "K-1": [...]},   # 560 space
     "gt_masks_rle": [COCO RLE of the 560x560 GT union mask] * K,
     and the shown frames, one of:
     "frames_path": "/abs/path/frames.npy"   # (K, 560, 560, 3) uint8 .npy/.npz written by the data preparation
     "frames_jpeg": [base64 JPEG] * K}       # embedded (quality 95) when no path is given
`ground_truth` may be that dict or its JSON string. `extra_info["frames_path"]` overrides the frames when present.

The SAM2 predictor is created once per process (per verl reward-loop worker), on the GPU when one is visible, and
guarded by a lock: verl runs `compute_score` in a thread pool. Rollouts of one prompt reuse the prompt's encoded
frames through a small per-process cache (keyed by the frames' content), so a group's frames are encoded once.
Configure through `custom_reward_function.reward_kwargs`, one nested mapping of `RewardConfig` (reward/config.py):
{variant, use_consistency, use_keyframe, image_size, propagator: {name, checkpoint, device, offload},
max_sam2_load_failures, group_window_s, max_wait_s}; they are the explicit keyword parameters of `compute_score` and
`compute_score_batch`, checked by `reward_config` (a misspelt key, nested ones included, is an error naming it; there
are no environment-variable fallbacks). A SAM2 that fails to load or to run costs the consistency term of that
batch only (logged); the other three terms are scored as usual, and the next batch tries again. Each result carries
`sam2_ok` (1.0, or 0.0 when SAM2 failed for that rollout), which verl averages into its step metrics, so a lost
SAM2 term is visible there; after `max_sam2_load_failures` failed loads in a row the worker raises `SAM2LoadError`
and the run stops instead of training on a reward without its SAM2 term (issue 23 item 4).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from veason_r1.models.config import PropagatorConfig
from veason_r1.models.families import DEFAULT_FAMILY
from veason_r1.reward.config import FIELDS, RewardConfig, reward_config
from veason_r1.reward.scoring import TERMS, RewardSample, score_groups, score_response

logger = logging.getLogger(__name__)

_LOCK = threading.RLock()
_PROPAGATORS: dict[tuple, Any] = {}
_LOAD_FAILURES = {"in_a_row": 0}  # failed SAM2 loads in a row in this process (reset by a successful load)
_DEFAULT = RewardConfig()  # the defaults of compute_score's keyword options (a test keeps the names equal to the fields)
_SAMPLES: OrderedDict[str, RewardSample] = OrderedDict()
_VIDEOS: OrderedDict[str, Any] = OrderedDict()
SAMPLE_CACHE = 256
VIDEO_CACHE = 32


class SAM2LoadError(RuntimeError):
    """SAM2 failed to load `max_sam2_load_failures` times in a row: the consistency term would be 0 for the rest of
    the run, so the reward worker stops it."""


def make_ground_truth(frame_ids, gt_boxes, gt_masks, frames=None, jpeg_quality: int = 95,
                      family: str | None = None) -> dict:
    """The JSON-ready ground truth of one RL prompt. `frames`: a path to a (K, H, W, 3) uint8 .npy/.npz (stored as
    is: preferred, keeps the parquet small), an array (embedded as base64 JPEG), or None (no consistency term)."""
    from veason_r1.data.masks import encode_rle

    masks = np.asarray(gt_masks).astype(bool)
    if masks.ndim != 3 or len(masks) != len(frame_ids):
        raise ValueError(f"make_ground_truth: gt_masks shape {masks.shape} does not fit {len(frame_ids)} frame ids")
    boxes = {str(k): [[float(v) for v in b] for b in bs] for k, bs in dict(gt_boxes).items()}
    missing = [str(i) for i in range(len(frame_ids)) if str(i) not in boxes]
    if missing:
        raise ValueError(f"make_ground_truth: gt_boxes lacks positions {missing}")
    gt: dict[str, Any] = {
        "frame_ids": [int(t) for t in frame_ids],
        "gt_boxes": boxes,
        "gt_masks_rle": [encode_rle(m) for m in masks],
    }
    if family and family != DEFAULT_FAMILY.name:  # the paper's family writes today's ground truth, byte for byte
        gt["family"] = family
    if isinstance(frames, (str, os.PathLike)):
        gt["frames_path"] = str(Path(frames).resolve())
    elif frames is not None:
        from PIL import Image

        arr = np.asarray(frames)
        if arr.shape != (*masks.shape, 3) or arr.dtype != np.uint8:
            raise ValueError(f"make_ground_truth: frames {arr.shape} {arr.dtype} do not fit gt_masks {masks.shape}")
        encoded = []
        for f in arr:
            buf = io.BytesIO()
            Image.fromarray(f).save(buf, format="JPEG", quality=jpeg_quality)
            encoded.append(base64.b64encode(buf.getvalue()).decode("ascii"))
        gt["frames_jpeg"] = encoded
    return gt


def load_frames(path: str | os.PathLike) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"reward frames not found: {p}")
    data = np.load(p)
    if isinstance(data, np.lib.npyio.NpzFile):
        data = data["frames"] if "frames" in data.files else data[data.files[0]]
    return np.asarray(data, dtype=np.uint8)


def parse_ground_truth(ground_truth: Any, extra_info: dict | None = None) -> RewardSample:
    """RewardSample from verl's ground truth (dict or JSON string); raises ValueError naming the bad field."""
    from PIL import Image

    from veason_r1.data.masks import decode_rle

    gt = json.loads(ground_truth) if isinstance(ground_truth, (str, bytes)) else ground_truth
    if not isinstance(gt, dict):
        raise ValueError(f"ground_truth: expected a dict or JSON object, got {type(gt).__name__}")
    for key in ("frame_ids", "gt_boxes", "gt_masks_rle"):
        if key not in gt:
            raise ValueError(f"ground_truth: missing field {key!r}")
    masks = np.stack([decode_rle(dict(r)) for r in gt["gt_masks_rle"]])
    frames = None
    path = (extra_info or {}).get("frames_path") or gt.get("frames_path")
    if path:
        frames = load_frames(path)
    elif gt.get("frames_jpeg"):
        frames = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(s))).convert("RGB")) for s in gt["frames_jpeg"]])
    return RewardSample(list(gt["frame_ids"]), dict(gt["gt_boxes"]), masks, frames,
                        family=str(gt.get("family") or DEFAULT_FAMILY.name))


def get_propagator(propagator: PropagatorConfig):
    """This process's SAM2 propagator for one configuration (created once; thread safe). A failed load is not
    cached: the next batch tries again."""
    key = dataclasses.astuple(propagator)  # every field: another checkpoint, device or offload is another model
    with _LOCK:
        if key not in _PROPAGATORS:
            _PROPAGATORS[key] = propagator.load()
        return _PROPAGATORS[key]


class _Unavailable:
    """Stands in for a SAM2 that failed to load: every propagation raises the load error, so the batch's scoring
    marks the consistency term of each rollout as failed (0) and keeps the other terms."""

    def __init__(self, error: Exception):
        self.error = error

    def _raise(self, *args, **kwargs):
        raise RuntimeError(f"SAM2 could not be loaded: {type(self.error).__name__}: {self.error}")

    encode = propagate = propagate_groups = frame_ious_groups = _raise


def _propagator(config: RewardConfig):
    """The propagator, or an `_Unavailable` that fails only the consistency term (the error logged loudly); raises
    `SAM2LoadError` at the `max_sam2_load_failures`-th failed load in a row."""
    p = config.propagator
    try:
        propagator = get_propagator(p)
    except Exception as e:  # a SAM2 failure costs the consistency term of this batch only
        with _LOCK:
            _LOAD_FAILURES["in_a_row"] += 1
            failures = _LOAD_FAILURES["in_a_row"]
        if failures >= config.max_sam2_load_failures:
            raise SAM2LoadError(
                f"SAM2 {p.name!r} (checkpoint {p.checkpoint}, device {p.device}) failed to load {failures} times in "
                f"a row in this reward worker ({type(e).__name__}: {e}); stopping rather than training without the "
                "consistency term: fix reward.propagator.checkpoint or .device (or set reward.use_consistency=false "
                "to drop the term; reward.max_sam2_load_failures sets the limit)"
            ) from e
        logger.exception("SAM2 %r (checkpoint %s) failed to load (%d in a row, limit %d): consistency scored 0 for "
                         "this batch: %s", p.name, p.checkpoint, failures, config.max_sam2_load_failures, e)
        return _Unavailable(e)
    with _LOCK:
        _LOAD_FAILURES["in_a_row"] = 0
    return propagator


def _with_sam2_ok(result: dict) -> dict:
    """The reward dict verl sees: the terms, `overall`, and `sam2_ok` (0.0 when SAM2 failed for this rollout)."""
    out = {"score": result["overall"], **{k: result[k] for k in (*TERMS, "overall")}}
    out["sam2_ok"] = 0.0 if "sam2: " in result.get("failure", "") else 1.0
    return out


def release_cuda_cache() -> float | None:
    """After a reward flush: the peak CUDA memory this process reserved since the last flush (GiB, logged), then
    the caching allocator's free blocks returned to the driver. SAM2 runs in the reward worker on GPU 0; without
    this its cache (27.8 GiB measured for a 128-rollout batch) stays reserved through the actor update and vLLM's
    wake-up (issue 23 item 5). None when this process never touched CUDA (nothing to release)."""
    try:
        import torch
    except ImportError:
        return None
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    peak = torch.cuda.max_memory_reserved() / 2**30
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    logger.info("reward flush: SAM2 peak reserved CUDA memory %.2f GiB; cache released (%.2f GiB still reserved)",
                peak, torch.cuda.memory_reserved() / 2**30)
    return peak


def _cached(cache: OrderedDict, key: str, make, limit: int):
    with _LOCK:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = make()
    with _LOCK:
        cache[key] = value
        while len(cache) > limit:
            cache.popitem(last=False)
    return value


def _sample_key(ground_truth: Any, extra_info: dict | None) -> str:
    text = ground_truth if isinstance(ground_truth, str) else json.dumps(ground_truth, sort_keys=True, default=str)
    return f"{hash(text)}:{(extra_info or {}).get('frames_path', '')}"


def _options(params: dict) -> RewardConfig:
    """The RewardConfig of `compute_score`'s keyword options (`params`: its locals; the RewardConfig fields only)."""
    return reward_config(**{name: params[name] for name in FIELDS})


def compute_score(data_source=None, solution_str="", ground_truth=None, extra_info=None, *,
                  variant: str = _DEFAULT.variant, use_consistency: bool = _DEFAULT.use_consistency,
                  use_keyframe: bool = _DEFAULT.use_keyframe, image_size: int | None = _DEFAULT.image_size,
                  propagator: PropagatorConfig | Mapping = _DEFAULT.propagator,
                  max_sam2_load_failures: int = _DEFAULT.max_sam2_load_failures,
                  group_window_s: float = _DEFAULT.group_window_s, max_wait_s: float = _DEFAULT.max_wait_s,
                  reward_router_address=None, reward_model_tokenizer=None) -> dict:
    """verl `custom_reward_function`: {"score": overall, "format", "keyframe", "spatial", "consistency",
    "overall", "sam2_ok"} (floats only: verl averages the extra keys). Never raises because of `solution_str`; a SAM2
    that fails costs only the consistency term. The keyword options are the `RewardConfig` fields (reward/config.py;
    `propagator` a PropagatorConfig or a mapping, e.g. verl's DictConfig): a misspelt one is a TypeError, a bad value
    a ValueError naming `reward_kwargs.<key>`. `group_window_s` / `max_wait_s` are read by the batching manager only;
    `reward_router_address` / `reward_model_tokenizer` are what verl's naive manager may pass, unused here."""
    config = _options(locals())
    extra_info = extra_info if isinstance(extra_info, dict) else {}
    sample = _cached(_SAMPLES, _sample_key(ground_truth, extra_info),
                     lambda: parse_ground_truth(ground_truth, extra_info), SAMPLE_CACHE)
    propagate = None
    if config.use_consistency and sample.frames is not None:
        model = _propagator(config)

        def propagate(frames, position, boxes):
            key = f"{id(model)}:{hash(frames.tobytes())}"
            video = _cached(_VIDEOS, key, lambda: model.encode(frames), VIDEO_CACHE)
            return model.propagate(video, position, boxes)

    result = score_response(solution_str if isinstance(solution_str, str) else str(solution_str),
                            sample.frame_ids, sample.gt_boxes, sample.gt_masks, sample.frames, propagate, config)
    if result["failure"]:
        logger.debug("reward failure (%s): %s", data_source, result["failure"])
    return _with_sam2_ok(result)


def compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos, uids=None, *,
                        variant: str = _DEFAULT.variant, use_consistency: bool = _DEFAULT.use_consistency,
                        use_keyframe: bool = _DEFAULT.use_keyframe, image_size: int | None = _DEFAULT.image_size,
                        propagator: PropagatorConfig | Mapping = _DEFAULT.propagator,
                        max_sam2_load_failures: int = _DEFAULT.max_sam2_load_failures,
                        group_window_s: float = _DEFAULT.group_window_s,
                        max_wait_s: float = _DEFAULT.max_wait_s) -> list[dict]:
    """Batch form of `compute_score` (same dicts, same values, same keyword options): rollouts grouped by prompt
    (`uids[i]`, else the ground truth), then one `score_groups` call, so SAM2 tracks all of them in shared batches.
    Used by `VeasonGroupRewardManager` (verl_manager.py); also fits reward managers that call a function with lists."""
    config = _options(locals())
    n = len(solution_strs)
    for name, values in (("data_sources", data_sources), ("ground_truths", ground_truths),
                         ("extra_infos", extra_infos)):
        if len(values) != n:
            raise ValueError(f"compute_score_batch: {name} has {len(values)} items for {n} solution_strs")
    if uids is not None and len(uids) != n:
        raise ValueError(f"compute_score_batch: uids has {len(uids)} items for {n} solution_strs")
    groups: OrderedDict[tuple, list[int]] = OrderedDict()
    samples: dict[tuple, RewardSample] = {}
    for i in range(n):
        extra = extra_infos[i] if isinstance(extra_infos[i], dict) else {}
        skey = _sample_key(ground_truths[i], extra)
        sample = _cached(_SAMPLES, skey, lambda gt=ground_truths[i], ex=extra: parse_ground_truth(gt, ex), SAMPLE_CACHE)
        uid = None if uids is None or uids[i] is None else str(uids[i])
        key = (uid, skey)
        groups.setdefault(key, []).append(i)
        samples[key] = sample
    model = None
    if config.use_consistency and any(s.frames is not None for s in samples.values()):
        model = _propagator(config)
    texts = [s if isinstance(s, str) else str(s) for s in solution_strs]
    batches = [([texts[i] for i in idx], samples[key]) for key, idx in groups.items()]
    scored = score_groups(batches, model, config)
    out: list[dict | None] = [None] * n
    for idx, results in zip(groups.values(), scored):
        for i, result in zip(idx, results):
            if result["failure"]:
                logger.debug("reward failure (%s): %s", data_sources[i], result["failure"])
            out[i] = _with_sam2_ok(result)
    return out  # type: ignore[return-value]
