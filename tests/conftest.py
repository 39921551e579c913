"""Shared fixtures. Tests run single-threaded torch (tiny models are 60x slower with thread contention here)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # our packages first: verl's wheel ships top-level `tests`/`scripts`
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")

try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover
    pass


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic ReVOS-format benchmark shared by the whole session (12 videos, seed 0)."""
    from veason_r1.data.synthetic import SynthConfig, write_benchmark

    out = tmp_path_factory.mktemp("synth")
    write_benchmark(out, SynthConfig(num_videos=12, seed=0))
    return out
