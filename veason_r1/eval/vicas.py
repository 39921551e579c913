"""ViCaS LG-VIS (language-guided video instance segmentation), scored as the public ViCaS script does
(github.com/Ali2500/ViCaS, vicas/evaluation/main.py + seg_eval.py `TrackMAP`, read for this port):

- GT: `ROOT/annotations/<version>/<video_id:06d>.json` with `image_size`, `segmentations` (per frame: `filename`,
  `is_gt`, `track_ids`, `mask_rles`) and `object_referrals` (`prompt`, `track_ids`); the videos of a split are listed
  in `ROOT/splits/<version>/<split>.json` (copy `splits/` from the ViCaS repository when the HF clone lacks it).
- Only frames with `is_gt` are scored. Per referral, each predicted track is matched to GT tracks by track IoU
  (sum over frames of intersections / sum of unions) at thresholds 0.50:0.05:0.95, greedily in score order
  (at most 10 predicted tracks), with the reference's exact loop (including its re-assignment quirk: a prediction
  that clears several GT tracks keeps the last); AP per threshold over all referrals pooled (COCO-style envelope);
  mAP = mean; AP@50/75/90 reported. Values in percent.

Our predictions: `PRED/<video_id:06d>/<referral index>/<frame stem>.png`, one predicted track per referral (the
union mask the policy + SAM2 produce), score 1. A prediction that is empty in every scored frame counts as no
predicted track. Missing folders/frames: `zero` = no predicted track (its GT tracks stay unmatched), `skip` = the
referral is left out. The official script instead requires every file. What this port cannot settle: whether the
Veason-R1 paper's ViCaS numbers (24.5 val / 18.2 test) are this LG-VIS mAP or a J&F; the paper's text does not say
in the material available here (see docs/evaluation.md).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veason_r1.benchmarks import DEFAULT_SPLITS

THRESHOLDS = np.arange(0.5, 0.95 + 1e-4, 0.05)
REPORTED = (0.5, 0.75, 0.9)
MAX_TRACKS_PER_VIDEO = 10


@dataclass
class ReferralResult:
    video_id: int
    index: int
    prompt: str
    num_gt: int
    missing_frames: int
    num_pred: int
    best_iou: float | None


def _rle(rle: dict) -> dict:
    counts = rle["counts"]
    return {"size": rle["size"], "counts": counts.encode("utf-8") if isinstance(counts, str) else counts}


def load_split(root: Path, split: str, version: str) -> list[int]:
    cands = [root / "splits" / version / f"{split}.json", root / "splits" / f"{split}.json"]
    for c in cands:
        if c.is_file():
            return sorted(int(v) for v in json.loads(c.read_text()))
    raise FileNotFoundError(f"no split file for {split!r}: tried {', '.join(map(str, cands))} "
                            f"(copy splits/ from the ViCaS repository)")


def gt_file(root: Path, version: str, video_id: int) -> Path:
    base = root / "annotations" / version
    path = base / f"{video_id:06d}.json"
    if path.is_file():
        return path
    matches = sorted(base.glob(f"{video_id:06d}_*.json"))
    if len(matches) == 1:
        return matches[0]
    raise FileNotFoundError(f"no GT annotation for video {video_id} under {base}")


def track_ious(pred_tracks: list[list[np.ndarray]], gt_tracks: list[list[np.ndarray]]) -> np.ndarray:
    """[num_pred, num_gt] float32 track IoUs: sum of per-frame intersections / sum of unions (0 if no union)."""
    ious = np.zeros((len(pred_tracks), len(gt_tracks)), np.float32)
    for i, p in enumerate(pred_tracks):
        for j, g in enumerate(gt_tracks):
            inter = sum(int(np.count_nonzero(a & b)) for a, b in zip(p, g))
            union = sum(int(np.count_nonzero(a | b)) for a, b in zip(p, g))
            ious[i, j] = float(inter) / float(union) if union > 0 else 0.0
    return ious


def match_referral(ious: np.ndarray, scores: np.ndarray, num_gt: int) -> dict:
    """TrackMAP.process_video, step for step."""
    num_pred = ious.shape[0]
    n_th = len(THRESHOLDS)
    if num_pred == 0:
        match = np.zeros((n_th, 0), np.int32)
    elif num_gt == 0:
        match = np.full((n_th, num_pred), -1, np.int32)
    else:
        order = np.argsort(-1.0 * scores)[:MAX_TRACKS_PER_VIDEO]
        ious = ious[order]
        scores = scores[order]
        match = np.full((n_th, num_pred), -1, np.int32)
        for lvl, th in enumerate(THRESHOLDS):
            for i in range(ious.shape[0]):
                for j in range(num_gt):
                    if j in match[lvl]:
                        continue
                    if ious[i, j] >= th:
                        match[lvl, i] = j
    return {"match_indices": match, "scores": scores, "num_gt": num_gt}


def combine(per_referral: list[dict]) -> dict[str, float]:
    """TrackMAP.combine_video_results: AP per threshold over all referrals pooled, x100."""
    match = np.concatenate([x["match_indices"] for x in per_referral], 1) if per_referral else np.zeros((10, 0))
    scores = np.concatenate([x["scores"] for x in per_referral]) if per_referral else np.zeros(0)
    num_gt = float(sum(x["num_gt"] for x in per_referral))
    if match.size == 0:
        aps = np.zeros((len(THRESHOLDS),), np.float32)
    elif num_gt == 0:
        aps = np.ones((len(THRESHOLDS),), np.float32)
    else:
        order = np.argsort(-1.0 * scores)
        match = np.stack([m[order] for m in match])
        tp = np.cumsum((match != -1).astype(np.float32), 1)
        fp = np.cumsum((match == -1).astype(np.float32), 1)
        precision = tp / (tp + fp + 1e-8)
        recall = tp / num_gt
        aps = _pr_to_ap(precision, recall)
    aps = aps * 100.0
    out = {"mAP": np.mean(aps).item()}
    for th in REPORTED:
        idx = int(np.flatnonzero(np.abs(THRESHOLDS - th) < 1e-4)[0])
        out[f"AP@{int(th * 100)}"] = aps[idx].item()
    return out


def _pr_to_ap(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    zero = np.zeros_like(precision[:, :1])
    precision = np.concatenate([zero, precision, zero], 1)
    recall = np.concatenate([zero, recall, np.ones_like(zero)], 1)
    aps = np.zeros(len(THRESHOLDS), np.float32)
    for k, (p, r) in enumerate(zip(precision, recall)):
        for i in range(len(p) - 1, 0, -1):
            p[i - 1] = np.maximum(p[i - 1], p[i])
        idx = np.where(r[1:] != r[:-1])[0]
        aps[k] = np.sum((r[idx + 1] - r[idx]) * p[idx + 1])
    return aps


def score_video(gt: dict, pred_root: Path, missing: str) -> tuple[list[dict], list[ReferralResult]]:
    from pycocotools import mask as mask_utils

    from veason_r1.data.mask_png import read_mask_png

    vid = int(gt["video_id"])
    h, w = (int(x) for x in gt["image_size"])
    segs = {s["filename"]: s for s in gt["segmentations"]}
    names = sorted(s["filename"] for s in gt["segmentations"] if s["is_gt"])
    outputs, rows = [], []
    for i, ref in enumerate(gt["object_referrals"]):
        track_ids = list(ref["track_ids"])
        folder = pred_root / f"{vid:06d}" / str(i)
        paths = [folder / f"{Path(n).stem}.png" for n in names]
        n_missing = sum(not p.is_file() for p in paths)
        if n_missing and missing == "skip":
            rows.append(ReferralResult(vid, i, ref.get("prompt", ""), len(track_ids), n_missing, 0, None))
            continue
        gt_tracks: list[list[np.ndarray]] = [[] for _ in track_ids]
        pred_track: list[np.ndarray] = []
        for n, p in zip(names, paths):
            s = segs[n]
            for k, t_id in enumerate(track_ids):
                if t_id in s["track_ids"]:
                    m = mask_utils.decode(_rle(s["mask_rles"][s["track_ids"].index(t_id)])).astype(bool)
                else:
                    m = np.zeros((h, w), bool)
                gt_tracks[k].append(m)
            if not n_missing:
                arr = read_mask_png(p)
                if arr.shape != (h, w):
                    raise ValueError(f"{p}: prediction is {arr.shape[0]}x{arr.shape[1]} (HxW) but the ground truth "
                                     f"is {h}x{w}")
                pred_track.append(arr != 0)
        pred_tracks = [pred_track] if pred_track and any(m.any() for m in pred_track) else []
        ious = track_ious(pred_tracks, gt_tracks)
        outputs.append(match_referral(ious, np.ones(len(pred_tracks), np.float32), len(track_ids)))
        best = float(ious.max()) if ious.size else None
        rows.append(ReferralResult(vid, i, ref.get("prompt", ""), len(track_ids), n_missing, len(pred_tracks), best))
    return outputs, rows


def evaluate_vicas(data: str | os.PathLike, pred: str | os.PathLike, split: str = DEFAULT_SPLITS["vicas"],
                   version: str = "v0.1", missing: str = "zero",
                   progress: bool = True) -> tuple[dict, list[ReferralResult]]:
    """LG-VIS mAP of PNG predictions over the videos of a ViCaS split (one video in memory at a time)."""
    from tqdm import tqdm

    root, pred_root = Path(data), Path(pred)
    split = {"valid": "val"}.get(split, split)
    videos = load_split(root, split, version)
    outputs: list[dict] = []
    rows: list[ReferralResult] = []
    for vid in tqdm(videos, desc="ViCaS", unit="video", disable=not progress):
        path = gt_file(root, version, vid)
        try:
            gt = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        o, r = score_video(gt, pred_root, missing)
        outputs += o
        rows += r
    summary = combine(outputs)
    summary.update(num_referrals=len(outputs), missing_predictions=sum(r.missing_frames > 0 for r in rows),
                   missing_mode=missing, split=split, version=version)
    return summary, rows
