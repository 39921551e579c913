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
Configure through `custom_reward_function.reward_kwargs` (sam2_model, sam2_checkpoint, sam2_device, variant,
use_consistency) or the env vars VEASON_SAM2_MODEL / VEASON_SAM2_CHECKPOINT / VEASON_SAM2_DEVICE.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from veason_r1.reward.scoring import TERMS, RewardConfig, RewardSample, score_groups, score_response

logger = logging.getLogger(__name__)

_LOCK = threading.RLock()
_PROPAGATORS: dict[tuple, Any] = {}
_SAMPLES: OrderedDict[str, RewardSample] = OrderedDict()
_VIDEOS: OrderedDict[str, Any] = OrderedDict()
SAMPLE_CACHE = 256
VIDEO_CACHE = 32


def make_ground_truth(frame_ids, gt_boxes, gt_masks, frames=None, jpeg_quality: int = 95) -> dict:
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
    return RewardSample(list(gt["frame_ids"]), dict(gt["gt_boxes"]), masks, frames)


def get_propagator(name: str | None = None, checkpoint: str | None = None, device: str | None = None):
    """This process's SAM2 propagator (created once per configuration; thread safe)."""
    from veason_r1.models.sam2 import load_sam2

    name = name or os.environ.get("VEASON_SAM2_MODEL", "tiny")
    checkpoint = checkpoint or os.environ.get("VEASON_SAM2_CHECKPOINT") or None
    device = device or os.environ.get("VEASON_SAM2_DEVICE") or None
    key = (name, checkpoint, device)
    with _LOCK:
        if key not in _PROPAGATORS:
            _PROPAGATORS[key] = load_sam2(name, checkpoint, device)
        return _PROPAGATORS[key]


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


def compute_score(data_source=None, solution_str="", ground_truth=None, extra_info=None, **kwargs) -> dict:
    """verl `custom_reward_function`: {"score": overall, "format", "keyframe", "spatial", "consistency",
    "overall"} (floats only: verl averages the extra keys). Never raises because of `solution_str`."""
    extra_info = extra_info if isinstance(extra_info, dict) else {}
    sample = _cached(_SAMPLES, _sample_key(ground_truth, extra_info),
                     lambda: parse_ground_truth(ground_truth, extra_info), SAMPLE_CACHE)
    config = RewardConfig(
        variant=kwargs.get("variant", "faithful"), use_consistency=bool(kwargs.get("use_consistency", True))
    )
    propagate = None
    if config.use_consistency and sample.frames is not None:
        propagator = get_propagator(kwargs.get("sam2_model"), kwargs.get("sam2_checkpoint"), kwargs.get("sam2_device"))

        def propagate(frames, position, boxes):
            from veason_r1.models.sam2 import EncodedVideo  # noqa: F401 - documents the cached type

            key = f"{id(propagator)}:{hash(frames.tobytes())}"
            video = _cached(_VIDEOS, key, lambda: propagator.encode(frames), VIDEO_CACHE)
            return propagator.propagate(video, position, boxes)

    result = score_response(solution_str if isinstance(solution_str, str) else str(solution_str),
                            sample.frame_ids, sample.gt_boxes, sample.gt_masks, sample.frames, propagate, config)
    if result["failure"]:
        logger.debug("reward failure (%s): %s", data_source, result["failure"])
    return {"score": result["overall"], **{k: result[k] for k in (*TERMS, "overall")}}


def compute_score_batch(data_sources, solution_strs, ground_truths, extra_infos, uids=None, **kwargs) -> list[dict]:
    """Batch form of `compute_score` (same dicts, same values): rollouts grouped by prompt (`uids[i]`, else the
    ground truth), then one `score_groups` call, so SAM2 tracks all of them in shared batches. Used by
    `VeasonGroupRewardManager` (verl_manager.py); also fits reward managers that call a function with lists."""
    n = len(solution_strs)
    for name, values in (("data_sources", data_sources), ("ground_truths", ground_truths),
                         ("extra_infos", extra_infos)):
        if len(values) != n:
            raise ValueError(f"compute_score_batch: {name} has {len(values)} items for {n} solution_strs")
    if uids is not None and len(uids) != n:
        raise ValueError(f"compute_score_batch: uids has {len(uids)} items for {n} solution_strs")
    config = RewardConfig(
        variant=kwargs.get("variant", "faithful"), use_consistency=bool(kwargs.get("use_consistency", True))
    )
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
    propagator = None
    if config.use_consistency and any(s.frames is not None for s in samples.values()):
        propagator = get_propagator(kwargs.get("sam2_model"), kwargs.get("sam2_checkpoint"), kwargs.get("sam2_device"))
    texts = [s if isinstance(s, str) else str(s) for s in solution_strs]
    batches = [([texts[i] for i in idx], samples[key]) for key, idx in groups.items()]
    scored = score_groups(batches, propagator, config)
    out: list[dict | None] = [None] * n
    for idx, results in zip(groups.values(), scored):
        for i, result in zip(idx, results):
            if result["failure"]:
                logger.debug("reward failure (%s): %s", data_sources[i], result["failure"])
            out[i] = {"score": result["overall"], **{k: result[k] for k in (*TERMS, "overall")}}
    return out  # type: ignore[return-value]
