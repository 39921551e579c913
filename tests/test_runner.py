"""veason_r1.runner.StageRunner: stages skipped when done, redone when their outputs are gone or they failed, other
settings refused naming the key, --force only on its own folders."""

from __future__ import annotations

import json

import pytest

from veason_r1.errors import BadInput
from veason_r1.runner import StageRunner

STAGES = (("a", "first"), ("b", "second"))


def test_done_stages_are_skipped_failed_and_missing_ones_redone(tmp_path):
    calls = []

    def stage(name, fail=False):
        def fn():
            calls.append(name)
            if fail:
                raise RuntimeError("disk full")
            (tmp_path / "out" / name).write_text(name)
            return f"{name} done", {"n": len(calls)}
        return fn

    def exists(name):
        return lambda: (tmp_path / "out" / name).is_file()

    r = StageRunner(tmp_path / "out", STAGES, {"x": 1}, verbose=False).open()
    r.run("a", stage("a"), exists("a"))
    with pytest.raises(RuntimeError, match="disk full"):
        r.run("b", stage("b", fail=True), exists("b"))
    state = json.loads((tmp_path / "out" / "state.json").read_text())
    assert state["stages"]["a"]["status"] == "ran" and state["stages"]["b"]["status"] == "failed"
    assert state["stages"]["a"]["summary"] == "a done" and state["config"] == {"x": 1}

    again = StageRunner(tmp_path / "out", STAGES, {"x": 1}, verbose=False).open()
    assert again.run("a", stage("a"), exists("a")).status == "reused"
    assert again.run("b", stage("b"), exists("b")).status == "ran"
    assert calls == ["a", "b", "b"]
    (tmp_path / "out" / "a").unlink()  # outputs gone: redone
    third = StageRunner(tmp_path / "out", STAGES, {"x": 1}, verbose=False).open()
    assert third.run("a", stage("a"), exists("a")).status == "ran" and calls[-1] == "a"


def test_other_settings_and_foreign_folders_are_refused(tmp_path):
    StageRunner(tmp_path / "run", STAGES, {"sft.max_steps": 4, "seed": 0}, verbose=False).open()
    with pytest.raises(BadInput, match=r"other settings \(sft.max_steps: 4 -> 5\)"):
        StageRunner(tmp_path / "run", STAGES, {"sft.max_steps": 5, "seed": 0}, verbose=False).open()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("keep")
    with pytest.raises(BadInput, match="not a run output folder"):
        StageRunner(tmp_path / "mine", STAGES, {}, verbose=False).open()
    with pytest.raises(BadInput, match="would delete"):
        StageRunner(tmp_path / "mine", STAGES, {}, force=True, verbose=False).open()
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "keep"
    fresh = StageRunner(tmp_path / "run", STAGES, {"sft.max_steps": 5}, force=True, verbose=False).open()
    assert json.loads(fresh.state.read_text())["config"] == {"sft.max_steps": 5}
