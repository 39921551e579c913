"""Inference: one video (`pipeline`), benchmark prediction with cached stages, shards and resume (`predict`),
overlays (`overlay`), and ground-truth oracles for error attribution (`oracle`).

Heavy libraries (torch, transformers, sam2) are imported inside functions, so importing this package is cheap.
"""

from veason_r1.inference.pipeline import (
    Answer,
    InferenceConfig,
    VideoResult,
    boxes_to_original,
    make_answer,
    segment_video,
    write_result,
)
from veason_r1.inference.predict import PredictConfig, Shard, merge_predictions, run_stage1, run_stage2

__all__ = [
    "Answer",
    "InferenceConfig",
    "PredictConfig",
    "Shard",
    "VideoResult",
    "boxes_to_original",
    "make_answer",
    "merge_predictions",
    "run_stage1",
    "run_stage2",
    "segment_video",
    "write_result",
]
