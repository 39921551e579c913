"""Evaluation: exact, fast per-frame metrics (`metrics`) and benchmark evaluators (ReVOS, MeViS, ReasonVOS, ViCaS).

Public API: `frame_scores`, `score_masks`, `jaccard`, `boundary_f`, `accuracy`, `robustness`, `seg2bmap`,
`boundary_radius`, `video_scores` (veason_r1.eval.metrics); `pack_mask`, `mask_from_png`, `mask_from_rles`
(veason_r1.eval.packed); `evaluate_revos`, `evaluate_mevis`, `evaluate_reasonvos`, `EvalConfig`
(veason_r1.eval.evaluators); `evaluate_vicas` (veason_r1.eval.vicas); `build_submission_zip`
(veason_r1.eval.submission).
"""

from veason_r1.eval.metrics import (
    FrameScore,
    accuracy,
    boundary_f,
    boundary_radius,
    frame_scores,
    jaccard,
    robustness,
    score_masks,
    seg2bmap,
    video_scores,
)
from veason_r1.eval.packed import MaskBits, mask_from_png, mask_from_rles, pack_mask

__all__ = ["FrameScore", "MaskBits", "accuracy", "boundary_f", "boundary_radius", "frame_scores", "jaccard",
           "mask_from_png", "mask_from_rles", "pack_mask", "robustness", "score_masks", "seg2bmap", "video_scores"]
