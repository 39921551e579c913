"""Evaluation: exact, fast per-frame metrics (`metrics`) and benchmark evaluators (ReVOS, MeViS, ReasonVOS, ViCaS).

Public API: `frame_scores`, `jaccard`, `boundary_f`, `accuracy`, `robustness`, `seg2bmap`, `boundary_radius`,
`video_scores` (veason_r1.eval.metrics); `evaluate_revos`, `evaluate_mevis`, `evaluate_reasonvos`, `EvalConfig`
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
    seg2bmap,
    video_scores,
)

__all__ = ["FrameScore", "accuracy", "boundary_f", "boundary_radius", "frame_scores", "jaccard", "robustness",
           "seg2bmap", "video_scores"]
