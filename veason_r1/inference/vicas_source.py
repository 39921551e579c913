"""ViCaS LG-VIS as a prediction set: the reader interface `predict.py` needs, over the ViCaS release layout.

Layout (github.com/Ali2500/ViCaS README): `ROOT/video_frames/<video>/00000.jpg ...` (decoded with the repository's
videos_to_frames.sh), `ROOT/annotations/<version>/<video_id:06d>.json` (`image_size`, `segmentations` per frame
with `filename`, `is_gt`, `track_ids`, `mask_rles`; `object_referrals` with `prompt` and `track_ids`), and
`ROOT/splits/<version>/<split>.json` (video ids). One expression per referral: video `<video_id:06d>`, exp_id the
referral's index, so predictions land in `PRED/<video_id:06d>/<index>/<frame stem>.png`, what
`veason_r1.eval.vicas` reads. Every decoded frame is predicted; GT exists only on `is_gt` frames (elsewhere the
oracles see the object as absent).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veason_r1.benchmarks import DEFAULT_SPLITS


@dataclass(frozen=True)
class Referral:
    video: str
    exp_id: str
    text: str
    track_ids: tuple[int, ...]

    @property
    def key(self) -> str:
        return f"{self.video}/{self.exp_id}"


class ViCaSPredictionSet:
    """ViCaS referrals of one split with `.expressions`, `.frames(video)`, `.size(video)` and the oracle hooks."""

    def __init__(self, root: str | os.PathLike, split: str = DEFAULT_SPLITS["vicas"], version: str = "v0.1"):
        from veason_r1.eval.vicas import gt_file, load_split

        self.root = Path(root)
        split = {"valid": "val"}.get(split, split)
        self.expressions: list[Referral] = []
        self._gt: dict[str, dict] = {}
        self._gt_path: dict[str, Path] = {}
        for vid in load_split(self.root, split, version):
            path = gt_file(self.root, version, vid)
            try:
                gt = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: not valid JSON ({e})") from None
            name = f"{vid:06d}"
            self._gt[name], self._gt_path[name] = gt, path
            for i, ref in enumerate(gt.get("object_referrals", [])):
                self.expressions.append(Referral(name, str(i), str(ref["prompt"]), tuple(ref["track_ids"])))

    def frame_dir(self, video: str) -> Path:
        base = self.root / "video_frames"
        for cand in (base / video, base / str(int(video))):
            if cand.is_dir():
                return cand
        matches = sorted(base.glob(f"{video}_*"))
        if len(matches) == 1 and matches[0].is_dir():
            return matches[0]
        raise FileNotFoundError(f"no frame folder for ViCaS video {video} under {base} (decode the videos with "
                                "vicas/preprocess/videos_to_frames.sh)")

    def frames(self, video: str):
        from veason_r1.data.video import JpegFolderSource

        return JpegFolderSource(self.frame_dir(video))

    def size(self, video: str) -> tuple[int, int]:
        h, w = self._gt[video]["image_size"]
        return int(h), int(w)

    def _segmentation(self, video: str, t: int) -> dict | None:
        name = self.frames(video).names[t]
        for s in self._gt[video]["segmentations"]:
            if Path(s["filename"]).stem == name and s.get("is_gt", True):
                return s
        return None

    def object_masks(self, expr: Referral, t: int) -> list[np.ndarray | None]:
        from veason_r1.data.masks import decode_rle

        seg = self._segmentation(expr.video, t)
        out: list[np.ndarray | None] = []
        for track in expr.track_ids:
            if seg is None or track not in seg["track_ids"]:
                out.append(None)
            else:
                out.append(decode_rle(seg["mask_rles"][seg["track_ids"].index(track)]))
        return out

    def gt_areas(self, expr: Referral) -> list[int]:
        areas = []
        for t in range(len(self.frames(expr.video))):
            masks = [m for m in self.object_masks(expr, t) if m is not None]
            areas.append(int(np.logical_or.reduce(masks).sum()) if masks else 0)
        return areas
