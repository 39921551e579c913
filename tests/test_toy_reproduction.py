"""bench/toy_reproduction.py at a reduced size (CPU, the shipped toy models): every arm trains from the same SFT
model, the ablated terms are really 0 in the arms' training rewards, the table and JSON agree with the held-out
file, and a rerun reuses every stage."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("llamafactory")
pytest.importorskip("verl")
pytest.importorskip("sam2")

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["demo.synth.num_videos=4", "demo.synth.max_frames=10", "demo.pool_size=6", "demo.threads=null",
         "demo.sft.max_steps=3", "demo.sft.per_device_train_batch_size=2", "demo.sft.cutoff_len=1536",
         "demo.rl.trainer.total_training_steps=2", "demo.rl.data.train_batch_size=1",
         "demo.rl.actor.ppo_mini_batch_size=1", "demo.rl.rollout.n=2", "demo.rl.data.max_response_length=32",
         "demo.eval.max_new_tokens=32", "demo.eval.batch_size=4"]


def _bench():
    spec = importlib.util.spec_from_file_location("toy_reproduction", ROOT / "bench" / "toy_reproduction.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["toy_reproduction"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_arms_share_the_sft_model_and_drop_their_terms(tmp_path, capsys):
    from veason_r1.io_utils import read_jsonl

    bench = _bench()
    out = tmp_path / "repro"
    args = ["--out", str(out), *[x for s in SMALL for x in ("--set", s)]]
    assert bench.main(args) == 0
    result = json.loads((out / "toy_reproduction.json").read_text())
    assert list(result["models"]) == ["sft", "grpo_all", "grpo_no_sam2", "grpo_no_keyframe"]
    held = json.loads((out / "heldout.json").read_text())
    for m, row in result["models"].items():
        assert row["heldout"] == held[m] and 0 <= row["JF"] <= 100
        if m != "sft":
            assert row["diff_vs_sft"] == held["diffs"][m] and row["skipped_steps"] == 0
            steps = [r for r in read_jsonl(out / "rl" / m / "metrics.jsonl") if "reward/overall" in r]
            assert [r["step"] for r in steps] == [1, 2]
            if m == "grpo_no_sam2":
                assert all(r["reward/consistency"] == 0 for r in steps)
            if m == "grpo_no_keyframe":
                assert all(r["reward/keyframe"] == 0 for r in steps)
    # every arm starts from the one SFT model, with the same data, seed and steps; only its reward switch differs
    configs = {m: json.loads((out / "rl" / m / "global_step_2" / "trainer_state.json").read_text())["config"]
               for m in result["models"] if m != "sft"}
    assert {c["model"]["path"] for c in configs.values()} == {str(out / "shared" / "sft" / "merged")}
    rewards = {m: (c["reward"]["use_consistency"], c["reward"]["use_keyframe"]) for m, c in configs.items()}
    assert rewards == {"grpo_all": (True, True), "grpo_no_sam2": (False, True), "grpo_no_keyframe": (True, False)}
    for c in configs.values():
        c.pop("reward"), c["trainer"].pop("default_local_dir")
    assert len({json.dumps(c, sort_keys=True) for c in configs.values()}) == 1
    table = (out / "toy_reproduction.md").read_text()
    assert "| grpo_no_keyframe |" in table and "vs SFT (95% CI)" in table
    capsys.readouterr()
    assert bench.main(args) == 0  # a rerun reuses every stage
    state = json.loads((out / "state.json").read_text())
    assert all(s["status"] == "reused" for s in state["stages"].values())


def test_foreign_folders_and_unknown_arms_are_refused(tmp_path):
    from veason_r1.errors import BadInput

    bench = _bench()
    (tmp_path / "repro").mkdir()
    (tmp_path / "repro" / "notes.txt").write_text("mine")
    with pytest.raises(BadInput, match="not a toy reproduction output folder"):
        bench.main(["--out", str(tmp_path / "repro")])
    with pytest.raises(BadInput, match="unknown arm"):
        bench.main(["--out", str(tmp_path / "other"), "--set", "arms=[grpo_everything]"])
