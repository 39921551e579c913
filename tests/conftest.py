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


_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Leave with pytest's own exit status once everything is reported, skipping interpreter finalisation.

    Why: after a full run (480 tests, with Ray workers, numba kernels, torch and Gradio threads loaded in one
    process) the interpreter's shutdown segfaulted once in three runs here (exit 139 after "480 passed"), which would
    fail CI on a run whose every test passed. The status is pytest's; nothing is reported after this hook.
    """
    if _EXIT_STATUS and os.environ.get("VEASON_PYTEST_NORMAL_EXIT") != "1":
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_EXIT_STATUS[-1])


@pytest.fixture(scope="session")
def llamafactory_sft():
    """LLaMA-Factory's own SFT data path (arguments -> tokenizer -> template -> `get_dataset`), as a function of its
    argument dict: (the tokenized train split, the tokenizer)."""

    def load(args: dict):
        from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
        from llamafactory.hparams import get_train_args
        from llamafactory.model import load_tokenizer

        model_args, data_args, training_args, _, _ = get_train_args(args)
        tok_module = load_tokenizer(model_args)
        template = get_template_and_fix_tokenizer(tok_module["tokenizer"], data_args)
        dataset = get_dataset(template, model_args, data_args, training_args, stage="sft", **tok_module)
        return dataset["train_dataset"], tok_module["tokenizer"]

    return load


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    """A small synthetic ReVOS-format benchmark shared by the whole session (12 videos, seed 0)."""
    from veason_r1.data.synthetic import SynthConfig, write_benchmark

    out = tmp_path_factory.mktemp("synth")
    write_benchmark(out, SynthConfig(num_videos=12, seed=0))
    return out
