"""The doctor on clean synthetic data and on planted errors: each error names its file and key."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from veason_r1.cli import main
from veason_r1.data.doctor import ERROR, WARNING, check_dataset, diagnose, unsafe_name
from veason_r1.data.synthetic import SynthConfig, write_benchmark


@pytest.fixture()
def root(tmp_path, synth_root) -> Path:
    """A private copy of the session's synthetic benchmark, safe to break."""
    return Path(shutil.copytree(synth_root, tmp_path / "ds"))


def _load(p: Path):
    return json.loads(p.read_text())


def _save(p: Path, obj) -> None:
    p.write_text(json.dumps(obj))


def _errors(root, **kw):
    return [i for i in check_dataset(root, **kw) if i.severity == ERROR]


def _first_video(root: Path, split="valid"):
    meta = _load(root / f"meta_expressions_{split}_.json")
    name = next(iter(meta["videos"]))
    return meta, name


def test_synthetic_benchmark_is_clean(synth_root, capsys):
    report = diagnose(synth_root)
    assert report.issues == []
    assert report.splits == ["train", "valid"] and report.videos == 12
    facts = _load(synth_root / "synthetic_facts.json")["videos"]
    assert report.frames_checked == sum(len(o["positions"]) for v in facts.values()
                                        for o in list(v["objects"].values())[:1])
    assert sum(report.expressions.values()) == sum(len(v["expressions"]) for v in facts.values())
    assert set(report.expressions) == {"referring", "reasoning", "no_target"}
    assert main(["doctor", str(synth_root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "12 videos" in out and "0 errors" in out


def test_split_option(synth_root):
    report = diagnose(synth_root, splits=["valid"])
    assert report.splits == ["valid"] and report.videos == 3
    missing = diagnose(synth_root, splits=["test"])
    assert not missing.ok and "no meta_expressions file for split 'test'" in missing.errors[0].message


def test_deleted_frame(root, capsys):
    meta, name = _first_video(root)
    frame = meta["videos"][name]["frames"][3]
    (root / "JPEGImages" / name / f"{frame}.jpg").unlink()
    (err,) = _errors(root)
    assert err.file == f"JPEGImages/{name}/{frame}.jpg" and err.message == "missing frame"
    assert err.key == f"videos[{name!r}].frames[3]"
    assert main(["doctor", str(root), "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"JPEGImages/{name}/{frame}.jpg" in out and "1 errors" in out


def test_unreadable_frame(root):
    meta, name = _first_video(root)
    frame = meta["videos"][name]["frames"][0]
    (root / "JPEGImages" / name / f"{frame}.jpg").write_bytes(b"not a jpeg")
    errs = _errors(root)
    assert [e.file for e in errs] == [f"JPEGImages/{name}/{frame}.jpg"]
    assert "unreadable image" in errs[0].message


def test_wrong_rle_size(root):
    meta, name = _first_video(root)
    anno = meta["videos"][name]["expressions"]["0"]["anno_id"][0]
    masks = _load(root / "mask_dict.json")
    t = next(i for i, r in enumerate(masks[anno]) if r is not None)
    masks[anno][t]["size"] = [100, 100]
    _save(root / "mask_dict.json", masks)
    (err,) = _errors(root)
    assert err.file == "mask_dict.json" and err.key == f"{anno!r}[{t}]"
    assert "RLE size [100, 100] differs from the frame size [192, 256]" in err.message


def test_rle_count_and_malformed_rle(root):
    meta, name = _first_video(root)
    anno = meta["videos"][name]["expressions"]["0"]["anno_id"][0]
    masks = _load(root / "mask_dict.json")
    masks[anno] = masks[anno][:-1]
    masks[anno][0] = {"counts": "xyz"}
    _save(root / "mask_dict.json", masks)
    msgs = {e.message for e in _errors(root) if e.file == "mask_dict.json"}
    n = len(meta["videos"][name]["frames"])
    assert f"{n - 1} RLEs for {n} frames" in msgs
    assert any("malformed RLE" in m for m in msgs)


def test_unknown_anno_id(root):
    meta, name = _first_video(root)
    meta["videos"][name]["expressions"]["0"]["anno_id"][0] = "999999"
    _save(root / "meta_expressions_valid_.json", meta)
    (err,) = _errors(root)
    assert err.file == "meta_expressions_valid_.json"
    assert err.key == f"videos[{name!r}].expressions['0'].anno_id"
    assert "unknown anno_id '999999'" in err.message


@pytest.mark.parametrize("bad", ["../escape", "a/../../b", "/etc/passwd"])
def test_names_that_escape_the_root(root, bad):
    meta, name = _first_video(root)
    meta["videos"][bad] = meta["videos"].pop(name)
    _save(root / "meta_expressions_valid_.json", meta)
    errs = _errors(root)
    assert [(e.file, e.key) for e in errs] == [("meta_expressions_valid_.json", f"videos[{bad!r}]")]
    assert "escapes the root" in errs[0].message


def test_frame_name_with_dotdot(root):
    meta, name = _first_video(root)
    meta["videos"][name]["frames"][2] = "../../x"
    _save(root / "meta_expressions_valid_.json", meta)
    (err,) = _errors(root)
    assert err.key == f"videos[{name!r}].frames[2]" and "'..'" in err.message


def test_empty_expression_and_bad_type(root):
    meta, name = _first_video(root)
    meta["videos"][name]["expressions"]["0"]["exp"] = "   "
    meta["videos"][name]["expressions"]["1"]["type_id"] = 7
    _save(root / "meta_expressions_valid_.json", meta)
    keys = {(e.key, e.message) for e in _errors(root)}
    assert (f"videos[{name!r}].expressions['0'].exp", "empty expression text") in keys
    assert any(k.endswith("expressions['1'].type_id") and "7" in m for k, m in keys)


def test_malformed_json(root):
    (root / "mask_dict.json").write_text('{"1": [')
    errs = _errors(root)
    assert errs and errs[0].file == "mask_dict.json" and errs[0].message.startswith("malformed JSON")
    assert len(errs) == 1  # reported once, not once per split / anno_id


def test_warnings_do_not_fail(tmp_path):
    root = write_benchmark(tmp_path / "m", SynthConfig(num_videos=3, seed=1), fmt="mevis")
    (root / "valid_u" / "mask_dict.json").unlink()  # like MeViS `valid`, scored by a server
    report = diagnose(root)
    assert report.format == "mevis" and report.splits == ["train", "valid_u"]
    assert report.ok and [w.severity for w in report.warnings] == [WARNING]
    assert main(["doctor", str(root), "--no-progress"]) == 0


def test_reasonvos_doctor(tmp_path):
    root = write_benchmark(tmp_path / "rv", SynthConfig(num_videos=3, seed=1), fmt="reasonvos-original")
    report = diagnose(root, decode=True)
    assert report.format == "reasonvos" and report.ok and not report.issues
    meta = _load(root / "meta_expressions.json")
    name = next(iter(meta["videos"]))
    obj = meta["videos"][name]["expressions"]["0"]["obj_id"]
    shutil.rmtree(root / "Annotations" / f"synthetic_{name}_{obj}")
    (err,) = _errors(root)
    assert err.file == f"Annotations/synthetic_{name}_{obj}" and err.message == "missing GT folder"
    assert main(["doctor", str(root), "--no-progress"]) == 1


def test_unsafe_name():
    assert unsafe_name("UVO/all/abc") is None and unsafe_name("00001") is None
    for bad in ("", "..", "a/../b", "/abs", "C:\\x", "a\\..\\b", None):
        assert unsafe_name(bad) is not None, bad
