"""Score GRPO rollouts: format + keyframe + spatial + consistency (SAM2), docs/method.md §7.

`score_response` scores one response with any `propagate` callable; `score_group` scores all rollouts of one prompt
with one SAM2 encoding of its frames (`SAM2Propagator.propagate_many`), and `score_groups` batches SAM2 tracking
across several prompts. No function here raises because of a response, whatever the string: a broken answer
scores 0 on the terms it breaks and says why in `failure`. Malformed ground truth (a data bug) raises ValueError.

Options: `RewardConfig` (reward/config.py); the functions here read its SAM2-free fields (variant, use_consistency,
use_keyframe, image_size), the caller brings the propagator. Variants (`RewardConfig.variant`):
- "faithful" (default): the release's behaviour, including the +1 IoU convention and the dummy [0,0,0,0] GT boxes
  of absent objects taking part in the matching.
- "strict": predicted boxes are corner-ordered and clipped to the image before IoU and SAM2, dummy GT boxes are
  dropped (a frame whose objects are all absent then has no spatial target and scores 0), IoU without the +1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from veason_r1.config import MAX_BOXES
from veason_r1.models.families import DEFAULT_FAMILY
from veason_r1.models.families import family as policy_family
from veason_r1.reward import terms
from veason_r1.reward.config import RewardConfig

logger = logging.getLogger(__name__)

TERMS = ("format", "keyframe", "spatial", "consistency")
Propagate = Callable[[np.ndarray, int, np.ndarray], np.ndarray]


@dataclass
class RewardSample:
    """One prompt's ground truth: shown frame ids, per-position GT boxes (560 space), GT union masks (K, H, W)
    and, for the consistency term, the shown frames (K, H, W, 3) uint8 (the 560x560 frames the policy saw)."""

    frame_ids: list[int]
    gt_boxes: dict[str, list[list[float]]]
    gt_masks: np.ndarray
    frames: np.ndarray | None = None
    family: str = DEFAULT_FAMILY.name  # the policy family: its answers and `gt_boxes` follow its box convention

    def __post_init__(self) -> None:
        policy_family(self.family)  # a known family (ValueError naming the choices)
        self.frame_ids = [int(t) for t in self.frame_ids]
        masks = np.asarray(self.gt_masks)
        if masks.ndim != 3 or len(masks) != len(self.frame_ids):
            raise ValueError(f"gt_masks: expected ({len(self.frame_ids)}, H, W), got shape {masks.shape}")
        self.gt_masks = masks.astype(bool, copy=False)
        if not isinstance(self.gt_boxes, dict):
            raise ValueError(f"gt_boxes: expected a dict position -> boxes, got {type(self.gt_boxes).__name__}")
        if self.frames is not None:
            frames = np.asarray(self.frames)
            if frames.shape != (*self.gt_masks.shape, 3) or frames.dtype != np.uint8:
                raise ValueError(
                    f"frames: expected {(*self.gt_masks.shape, 3)} uint8 like gt_masks, got {frames.shape} {frames.dtype}"
                )
            self.frames = frames

    @property
    def areas(self) -> np.ndarray:
        """GT union area per shown frame (cached: every rollout's keyframe term reads it)."""
        cached = self.__dict__.get("_areas")
        if cached is None or cached[0] is not self.gt_masks:
            cached = (self.gt_masks, self.gt_masks.reshape(len(self.gt_masks), -1).sum(axis=1))
            self.__dict__["_areas"] = cached
        return cached[1]


def _empty_result(failure: str = "") -> dict:
    return {**{k: 0.0 for k in TERMS}, "overall": 0.0, "failure": failure}


@dataclass
class _Partial:
    result: dict
    prompt: tuple[int, np.ndarray] | None = None  # (keyframe position, matched boxes) for SAM2


def _score_without_sam2(response: Any, sample: RewardSample, config: RewardConfig) -> _Partial:
    """Format, keyframe and spatial terms, plus the SAM2 prompt the consistency term needs. Never raises."""
    if not isinstance(response, str):
        return _Partial(_empty_result(f"response is {type(response).__name__}, not str"))
    result = _empty_result()
    failures: list[str] = []
    try:
        result["format"] = float(terms.format_reward(response))
    except Exception as e:  # noqa: BLE001 - a response must never crash the reward
        failures.append(f"format: {type(e).__name__}")
    prompt = None
    try:
        parsed = terms.parse_answer(response, sample.frame_ids, MAX_BOXES)
        if parsed.failure:
            failures.append(parsed.failure)
        if config.use_keyframe:
            result["keyframe"] = terms.keyframe_reward(parsed.position, sample.areas)
        if parsed.position is not None and parsed.boxes is not None:
            gt = terms.gt_boxes_at(sample.gt_boxes, parsed.position, MAX_BOXES)
            pred = parsed.boxes
            plus_one = True
            row = policy_family(sample.family)
            if config.variant == "strict":
                pred = terms.strict_boxes(pred, row.answer_extent(config.frame_side))
                gt = terms.drop_dummy_gt(gt) if gt is not None else None
                plus_one = False
            if gt is None or len(gt) == 0:
                failures.append(f"no GT boxes for position {parsed.position}")
            else:
                spatial = terms.spatial_reward(pred, gt, plus_one)
                result["spatial"] = spatial.reward
                if spatial.matched_pred:
                    matched = pred[spatial.matched_pred]
                    if row.box_grid is not None:  # SAM2 takes pixels of the shown S x S frames
                        size = sample.gt_masks.shape[-1]
                        matched = np.asarray(row.from_answer_boxes(matched.tolist(), size), dtype=np.float64)
                    prompt = (parsed.position, matched)
    except Exception as e:  # noqa: BLE001
        failures.append(f"parse: {type(e).__name__}: {e}"[:200])
    result["failure"] = "; ".join(failures)
    return _Partial(result, prompt)


def _finish(partial: _Partial, masks: np.ndarray | None, sample: RewardSample, error: str = "",
            frame_ious: np.ndarray | None = None) -> dict:
    """Adds the consistency term (from the predicted masks, or from per-frame IoUs computed on the SAM2 device,
    the same numbers) and `overall`."""
    result = partial.result
    if frame_ious is not None:
        result["consistency"] = float(np.mean([float(x) for x in frame_ious]))
    elif masks is not None:
        try:
            result["consistency"] = terms.consistency_reward(np.asarray(masks, dtype=bool), sample.gt_masks)
        except Exception as e:  # noqa: BLE001
            error = f"consistency: {e}"[:200]
    if error:
        result["failure"] = "; ".join(x for x in (result["failure"], error) if x)
    result["overall"] = float(sum(result[k] for k in TERMS))
    return result


def _sam2_error(e: Exception) -> str:
    logger.warning("SAM2 propagation failed; consistency scored 0: %s", e, exc_info=True)
    return f"sam2: {type(e).__name__}: {e}"[:200]


def score_response(
    response: str,
    frame_ids: list[int],
    gt_boxes: dict[str, list[list[float]]],
    gt_masks: np.ndarray,
    frames: np.ndarray | None = None,
    propagate: Propagate | None = None,
    config: RewardConfig = RewardConfig(),
) -> dict:
    """Reward terms of one response: float `format`, `keyframe`, `spatial`, `consistency`, `overall` (their sum)
    and `failure` ("" when none). `propagate(frames, position, boxes) -> (K, H, W) bool`; None scores consistency 0.
    """
    sample = RewardSample(frame_ids, gt_boxes, gt_masks, frames)
    partial = _score_without_sam2(response, sample, config)
    masks, error = None, ""
    if partial.prompt is not None and propagate is not None and config.use_consistency and sample.frames is not None:
        try:
            masks = propagate(sample.frames, *partial.prompt)
        except Exception as e:  # noqa: BLE001
            error = _sam2_error(e)
    return _finish(partial, masks, sample, error)


def score_group(
    responses: Sequence[str],
    sample: RewardSample,
    propagator=None,
    config: RewardConfig = RewardConfig(),
) -> list[dict]:
    """All rollouts of one prompt: one SAM2 encoding of the frames, batched tracking, identical prompts once.
    Without a propagator (or frames) the consistency term is 0."""
    return score_groups([(responses, sample)], propagator, config)[0]


def score_groups(
    groups: Sequence[tuple[Sequence[str], RewardSample]],
    propagator=None,
    config: RewardConfig = RewardConfig(),
) -> list[list[dict]]:
    """Several prompts' rollouts at once: SAM2 tracking is batched across prompts too (one GRPO step).

    The propagator (`models.propagator.Propagator`) returns per-frame IoUs (`frame_ious_groups`; SAM2 keeps the
    masks on its device), the same values as `terms.consistency_reward` on the masks."""
    profile = getattr(propagator, "profile", None)
    timer = _Timer(profile)
    with timer("reward_terms"):
        partials = [[_score_without_sam2(r, sample, config) for r in responses] for responses, sample in groups]
    use_sam2 = propagator is not None and config.use_consistency
    jobs, owners = [], []
    for g, ((_, sample), parts) in enumerate(zip(groups, partials)):
        prompts = [p.prompt for p in parts if p.prompt is not None]
        if use_sam2 and sample.frames is not None and prompts:
            jobs.append((sample.frames, prompts))
            owners.append(g)
    masks_by_group: dict[int, list] = {}
    ious_by_group: dict[int, list] = {}
    error = ""
    if jobs:
        try:
            gts = [groups[g][1].gt_masks for g in owners]
            for g, ious in zip(owners, propagator.frame_ious_groups(jobs, gts)):
                ious_by_group[g] = list(ious)
        except Exception as e:  # noqa: BLE001
            error = _sam2_error(e)
    out = []
    with timer("reward_finish"):
        for g, ((_, sample), parts) in enumerate(zip(groups, partials)):
            queue = masks_by_group.get(g)
            iou_queue = ious_by_group.get(g)
            results = []
            for p in parts:
                masks = queue.pop(0) if (queue and p.prompt is not None) else None
                ious = iou_queue.pop(0) if (iou_queue and p.prompt is not None) else None
                err = error if (p.prompt is not None and use_sam2) else ""
                results.append(_finish(p, masks, sample, err, ious))
            out.append(results)
    return out


class _Timer:
    """Adds wall seconds per named block to `profile` (a dict) when given one; free otherwise."""

    def __init__(self, profile: dict | None):
        self.profile = profile if isinstance(profile, dict) else None

    def __call__(self, name: str):
        import contextlib
        import time

        if self.profile is None:
            return contextlib.nullcontext()
        profile = self.profile

        @contextlib.contextmanager
        def block():
            start = time.perf_counter()
            try:
                yield
            finally:
                profile[name] = profile.get(name, 0.0) + time.perf_counter() - start

        return block()
