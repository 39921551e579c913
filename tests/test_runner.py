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


def _write(name):
    def fn(out):
        (out / name).mkdir(exist_ok=True)
        (out / name / "f.txt").write_text(name)
        return f"{name} done", {}
    return fn


def test_force_deletes_only_what_the_run_wrote(tmp_path):
    """Issue 26 item 3: --force deleted files the user had added inside the run's folder."""
    out = tmp_path / "run"
    r = StageRunner(out, STAGES, {"x": 1}, verbose=False, outputs=["report.md"]).open()
    r.run("a", lambda: _write("a")(out), lambda: True)
    (out / "report.md").write_text("the run's report")
    (out / "notes.txt").write_text("the user's notes")
    (out / "mine").mkdir()
    (out / "mine" / "data.csv").write_text("1,2")
    again = StageRunner(out, STAGES, {"x": 2}, force=True, verbose=False, outputs=["report.md"]).open()
    assert not (out / "a").exists() and not (out / "report.md").exists()
    assert (out / "notes.txt").read_text() == "the user's notes" and (out / "mine" / "data.csv").is_file()
    assert json.loads(again.state.read_text())["config"] == {"x": 2}


def test_force_on_a_symlink_and_a_corrupt_state_are_one_line(tmp_path):
    real = tmp_path / "real"
    StageRunner(real, STAGES, {}, verbose=False).open()
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(BadInput, match="symbolic link"):
        StageRunner(link, STAGES, {}, force=True, verbose=False).open()
    assert (real / "state.json").is_file()
    (real / "state.json").write_text('{"config": {}, "stages": ')  # torn by a full disk, say
    with pytest.raises(BadInput, match="cannot be read as a run state file"):
        StageRunner(real, STAGES, {}, verbose=False).open()
    (real / "state.json").write_text("[]")
    with pytest.raises(BadInput, match="is not a run state file"):
        StageRunner(real, STAGES, {}, verbose=False).open()
    StageRunner(real, STAGES, {}, force=True, verbose=False).open()  # --force starts over
    (tmp_path / "file").write_text("x")
    with pytest.raises(BadInput, match="is a file, not a folder"):
        StageRunner(tmp_path / "file", STAGES, {}, verbose=False).open()


def test_a_link_inside_the_run_folder_leading_outside_is_refused(tmp_path):
    """Issue 26 item 4: one rule for every folder a command writes into (paths.output_dir)."""
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "run"
    StageRunner(out, STAGES, {}, verbose=False, outputs=["pred"]).open()
    (out / "pred").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BadInput, match="outside"):
        StageRunner(out, STAGES, {}, verbose=False, outputs=["pred"]).open()
    assert not any(outside.iterdir())
