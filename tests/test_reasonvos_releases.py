"""Both ReasonVOS releases (VideoLISA's original dict form and the 2024-12-27 list form): the reader detects and
reports the release, the synthetic benchmark exports both, the doctor validates both, the evaluator reads every
prediction layout and counts missing predictions in each, and predict writes the current layout by default."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from veason_r1.cli import main as cli_main
from veason_r1.data.doctor import diagnose
from veason_r1.data.reasonvos import RELEASE_DICT, RELEASE_LIST, ReasonVOSDataset, detect_release
from veason_r1.data.synthetic import SynthConfig, write_benchmark
from veason_r1.eval.evaluators import EvalConfig, evaluate_reasonvos
from veason_r1.eval.metrics import boundary_f, jaccard
from veason_r1.models.propagator import PropagatorBase

H, W = 6, 8


def _frames(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t in range(n):
        Image.fromarray(np.full((H, W, 3), 40 * t, np.uint8)).save(folder / f"{t:05d}.jpg")


def _gt(folder: Path, masks: list[np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for t, m in enumerate(masks):
        Image.fromarray(m.astype(np.uint8) * 255).save(folder / f"{t:05d}.png")


def box(r0, r1, c0, c1):
    m = np.zeros((H, W), bool)
    m[r0:r1 + 1, c0:c1 + 1] = True
    return m


@pytest.fixture()
def list_release(tmp_path) -> Path:
    """2024-12-27 form: obj 3 is the target of two expressions (exp_id 0 and 2), obj 5 of one (exp_id 1)."""
    _frames(tmp_path / "JPEGImages" / "vidA", 3)
    meta = {"videos": {"vidA": {"source": "MOSE", "frames": ["00000", "00001", "00002"], "expressions": [
        {"obj_id": 3, "exp_id": 0, "exp_text": "the dog", "is_sent": False},
        {"obj_id": 5, "exp_id": 1, "exp_text": "what could hurt a child?", "is_sent": True},
        {"obj_id": 3, "exp_id": 2, "exp_text": "which animal is fastest?", "is_sent": True}]}}}
    (tmp_path / "meta_expressions.json").write_text(json.dumps(meta))
    _gt(tmp_path / "Annotations" / "MOSE_vidA_3", [box(1, 3, 1, 3), box(1, 3, 2, 4), box(2, 4, 2, 4)])
    _gt(tmp_path / "Annotations" / "MOSE_vidA_5", [box(0, 1, 5, 7)] * 3)
    return tmp_path


def test_list_release_reader(list_release):
    ds = ReasonVOSDataset(list_release)
    assert ds.release == RELEASE_LIST and "2024-12-27" in ds.release_note
    assert [(e.exp_id, e.text, e.obj_ids, e.anno_ids) for e in ds.expressions] == [
        ("0", "the dog", (3,), ("MOSE_vidA_3",)), ("1", "what could hurt a child?", (5,), ("MOSE_vidA_5",)),
        ("2", "which animal is fastest?", (3,), ("MOSE_vidA_3",))]
    assert [ds.expression_info[e.key].is_sent for e in ds.expressions] == [False, True, True]
    assert ds.video_info["vidA"] == {"source": "MOSE", "is_sent": None}
    _, e1, e2 = ds.expressions
    assert np.array_equal(ds.gt_mask(e2, 1), box(1, 3, 2, 4)) and ds.annotated_frames(e1) == [0, 1, 2]
    assert ds.prediction_folder(e2) == ("MOSE_vidA_3", "2")  # current layout: <source>_<vid>_<obj_id>/<exp_id>
    assert ds.prediction_folder(e2, "obj_id") == ("vidA", "3")
    assert ds.prediction_folder(e2, "exp_id") == ("vidA", "2")
    with pytest.raises(ValueError, match="unknown ReasonVOS prediction layout 'flat'"):
        ds.prediction_folder(e2, "flat")


def test_release_detection_and_errors(list_release, tmp_path):
    meta = json.loads((list_release / "meta_expressions.json").read_text())
    assert detect_release(meta) == RELEASE_LIST
    assert detect_release({"videos": {"v": {"expressions": {"0": {}}}}}) == RELEASE_DICT
    # exp_ids repeated across objects (unique per object only): our keys become <obj_id>-<exp_id>, folders keep
    # the release's ids; the same (obj_id, exp_id) twice is refused
    exps = meta["videos"]["vidA"]["expressions"]
    exps[1]["exp_id"], exps[2]["exp_id"] = 0, 2
    (list_release / "meta_expressions.json").write_text(json.dumps(meta))
    ds = ReasonVOSDataset(list_release)
    assert [e.exp_id for e in ds.expressions] == ["3-0", "5-0", "2"]
    assert ds.prediction_folder(ds.expressions[1]) == ("MOSE_vidA_5", "0")
    exps[2]["obj_id"], exps[2]["exp_id"] = 3, 0
    (list_release / "meta_expressions.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"expressions\[2\]: duplicate expression \(obj_id 3, exp_id 0\)"):
        ReasonVOSDataset(list_release)
    # a file mixing both forms, and a list entry without its fields, name the video and the entry
    bad = {"videos": {"a": {"source": "X", "frames": ["0"], "expressions": [{"obj_id": 1, "exp_id": 0,
                                                                              "exp_text": "t"}]},
                      "b": {"source": "X", "frames": ["0"], "expressions": {"0": {"exp_text": "t", "obj_id": 1}}}}}
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "meta_expressions.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"videos\['b'\]\.expressions: expected a list .*mixes the two"):
        ReasonVOSDataset(tmp_path / "mixed")
    bad = {"videos": {"a": {"source": "X", "frames": ["0"], "expressions": [{"obj_id": 1, "exp_text": "t"}]}}}
    (tmp_path / "mixed" / "meta_expressions.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"videos\['a'\]\.expressions\[0\]: needs 'obj_id', 'exp_id' and 'exp_text'"):
        ReasonVOSDataset(tmp_path / "mixed")


def _save(path: Path, m: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(m.astype(np.uint8) * 255).save(path)


def test_list_release_eval_layouts_and_missing(list_release, tmp_path, capsys):
    ds = ReasonVOSDataset(list_release)
    shift = np.roll  # predictions: GT shifted one column right
    want = {}
    for e in ds.expressions:
        gts = [ds.gt_mask(e, t) for t in range(3)]
        preds = [shift(g, 1, axis=1) for g in gts]
        want[e.exp_id] = (np.mean([jaccard(g, p) for g, p in zip(gts, preds)]),
                          np.mean([boundary_f(g, p) for g, p in zip(gts, preds)]))
        for layout, root in (("current", tmp_path / "cur"), ("exp_id", tmp_path / "exp")):
            for t, p in enumerate(preds):
                _save(root.joinpath(*ds.prediction_folder(e, layout)) / f"{t:05d}.png", p)
    assert (tmp_path / "cur" / "MOSE_vidA_3" / "2" / "00001.png").is_file()
    cfg = EvalConfig(benchmark="reasonvos", missing="skip", progress=False)
    s, _ = evaluate_reasonvos(list_release, tmp_path / "cur", cfg)
    assert s["release"] == RELEASE_LIST and s["pred_layout"] == "current" and s["missing_predictions"] == 0
    assert s["J"] == pytest.approx(100 * np.mean([j for j, _ in want.values()]), abs=1e-12)
    assert s["F"] == pytest.approx(100 * np.mean([f for _, f in want.values()]), abs=1e-12)
    s_exp, _ = evaluate_reasonvos(list_release, tmp_path / "exp", EvalConfig(
        benchmark="reasonvos", missing="skip", progress=False, pred_layout="exp_id"))
    assert {k: s_exp[k] for k in ("J", "F")} == {k: s[k] for k in ("J", "F")}
    # missing: one frame of exp 2 (skip -> left out; zero -> counts 0)
    (tmp_path / "cur" / "MOSE_vidA_3" / "2" / "00001.png").unlink()
    s2, _ = evaluate_reasonvos(list_release, tmp_path / "cur", cfg)
    assert s2["missing_predictions"] == 1 and s2["num_expressions"] == 2
    assert s2["J"] == pytest.approx(100 * np.mean([want["0"][0], want["1"][0]]), abs=1e-12)
    z, _ = evaluate_reasonvos(list_release, tmp_path / "cur", EvalConfig(benchmark="reasonvos", missing="zero",
                                                                         progress=False))
    assert z["num_expressions"] == 3 and z["J"] == pytest.approx(100 * (want["0"][0] + want["1"][0]) / 3)
    # the older obj_id layout: one folder per (video, obj_id), scored once (2 objects)
    for e in ds.expressions[:2]:
        for t in range(3):
            _save(tmp_path / "obj" / "vidA" / ds.expression_info[e.key].obj_id / f"{t:05d}.png", ds.gt_mask(e, t))
    s3, _ = evaluate_reasonvos(list_release, tmp_path / "obj", EvalConfig(
        benchmark="reasonvos", missing="skip", progress=False, pred_layout="obj_id"))
    assert s3["JF"] == 100.0 and s3["num_expressions"] == 2 and s3["missing_predictions"] == 0
    shutil.rmtree(tmp_path / "obj" / "vidA" / "5")
    s4, _ = evaluate_reasonvos(list_release, tmp_path / "obj", EvalConfig(
        benchmark="reasonvos", missing="skip", progress=False, pred_layout="obj_id"))
    assert s4["missing_predictions"] == 1 and s4["num_expressions"] == 1
    # the CLI says which release it read and in which layout
    assert cli_main(["eval", "reasonvos", "--data", str(list_release), "--pred", str(tmp_path / "cur"),
                     "--no-progress", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "ReasonVOS release: VideoLISA's 2024-12-27 release" in out and "current layout" in out
    assert "missing predictions: 1 (--missing skip)" in out


@pytest.mark.parametrize("fmt,release", [("reasonvos", RELEASE_LIST), ("reasonvos-original", RELEASE_DICT)])
def test_synthetic_both_releases_read_doctor_and_evaluate(tmp_path, fmt, release):
    root = write_benchmark(tmp_path / "rv", SynthConfig(num_videos=4, seed=4, max_frames=10), fmt=fmt)
    meta = json.loads((root / "meta_expressions.json").read_text())["videos"]
    ds = ReasonVOSDataset(root)
    assert ds.release == release
    for v in meta.values():
        exps = v["expressions"]
        if release == RELEASE_LIST:
            assert isinstance(exps, list) and "is_sent" not in v
            assert all(set(e) == {"obj_id", "exp_id", "exp_text", "is_sent"} for e in exps)
        else:
            assert isinstance(exps, dict) and v["is_sent"] is True
    if release == RELEASE_LIST:  # expressions of the same target share its obj_id (one GT folder)
        objs = [ds.expression_info[e.key].obj_id for e in ds.expressions]
        assert len(set(zip([e.video for e in ds.expressions], objs))) < len(objs)
    report = diagnose(root, decode=True)
    assert report.ok and not report.issues and report.release == ds.release_note
    assert ds.release_note in report.summary()
    # perfect predictions in the default layout score 100; a missing one is counted
    pred = tmp_path / "pred"
    for e in ds.expressions:
        folder = pred.joinpath(*ds.prediction_folder(e))
        for t in ds.annotated_frames(e):
            _save(folder / f"{ds.videos[e.video].frames[t]}.png", ds.gt_mask(e, t))
    cfg = EvalConfig(benchmark="reasonvos", missing="skip", progress=False, workers=2)
    s, _ = evaluate_reasonvos(root, pred, cfg)
    assert s["JF"] == 100.0 and s["num_expressions"] == len(ds.expressions) and s["release"] == release
    e = ds.expressions[-1]
    shutil.rmtree(pred.joinpath(*ds.prediction_folder(e)))
    s2, _ = evaluate_reasonvos(root, pred, cfg)
    assert s2["missing_predictions"] == 1 and s2["num_expressions"] == len(ds.expressions) - 1


def test_doctor_list_release_problems(list_release):
    meta = json.loads((list_release / "meta_expressions.json").read_text())
    exps = meta["videos"]["vidA"]["expressions"]
    exps[2]["exp_id"] = 0  # (3, 0) twice: both would write the same prediction folder
    exps[1]["exp_text"] = " "
    del exps[1]["is_sent"]
    exps.append({"obj_id": 9, "exp_id": 7, "exp_text": "the cat", "is_sent": False})  # no GT folder
    (list_release / "meta_expressions.json").write_text(json.dumps(meta))
    jpg = list_release / "Annotations" / "MOSE_vidA_5" / "00001.png"
    Image.fromarray(np.zeros((H, W), np.uint8)).save(jpg, "JPEG")  # a JPEG under a PNG name
    report = diagnose(list_release, decode=True)
    msgs = sorted((i.severity, i.key, i.message) for i in report.issues)
    assert ("error", "videos['vidA'].expressions[1].exp_text", "empty expression text") in msgs
    assert ("warning", "videos['vidA'].expressions[1].is_sent", "missing or not true/false") in msgs
    assert ("error", "videos['vidA'].expressions[2]",
            "obj_id 3 and exp_id 0 repeat an earlier expression (they name its prediction folder)") in msgs
    assert ("error", "videos['vidA'].expressions[3]", "missing GT folder") in msgs
    assert any(k == "videos['vidA'].expressions[1][1]" and "not a PNG file (JPEG data)" in m for _, k, m in msgs)
    assert not report.ok and "2024-12-27" in report.summary()


class BoxFill(PropagatorBase):
    """A stand-in propagator: every frame's mask is the prompt boxes filled (enough to test where PNGs go)."""

    def propagate(self, source, keyframe, boxes, *, progress=False):
        h, w = source.size
        m = np.zeros((h, w), bool)
        for x0, y0, x1, y1 in np.asarray(boxes).reshape(-1, 4):
            m[int(y0):int(y1) + 1, int(x0):int(x1) + 1] = True
        return np.repeat(m[None], len(source), axis=0)


def test_predict_writes_each_layout_and_eval_reads_it(list_release, tmp_path):
    from veason_r1.inference.predict import (
        PredictConfig,
        merge_predictions,
        open_benchmark,
        prediction_parts,
        run_stage1,
        run_stage2,
    )

    ds = open_benchmark("reasonvos", list_release)
    scores = {}
    for layout in ("current", "obj_id", "exp_id"):
        cfg = PredictConfig(benchmark="reasonvos", oracle_keyframe=True, oracle_boxes=True, pred_layout=layout)
        fp = cfg.fingerprint()  # stage-1 caches stay valid across layouts; stage 2 records where it wrote
        assert "pred_layout" not in fp["common"] and "pred_layout" not in fp["stage1"]
        assert fp["stage2"]["pred_layout"] == layout
        out = tmp_path / layout
        run_stage1(ds, None, out, cfg, progress=False)
        run_stage2(ds, BoxFill(), out, cfg, progress=False)
        assert merge_predictions(ds, out, cfg).ok
        for e in ds.expressions:
            folder, sub = prediction_parts(ds, e, cfg)
            assert (folder, sub) == ds.prediction_folder(e, layout)
            pngs = sorted(p.name for p in (out / folder / sub).iterdir() if not p.name.startswith("."))
            assert pngs == ["00000.png", "00001.png", "00002.png"]  # beside the folder's hidden manifest
        s, rows = evaluate_reasonvos(list_release, out, EvalConfig(benchmark="reasonvos", missing="skip",
                                                                   progress=False, pred_layout=layout))
        assert s["missing_predictions"] == 0
        scores[layout] = {r.exp_id: r.scores for r in rows}
    assert (tmp_path / "current" / "MOSE_vidA_3" / "2").is_dir() and (tmp_path / "obj_id" / "vidA" / "5").is_dir()
    assert scores["current"] == scores["exp_id"] and len(scores["current"]) == 3
    assert len(scores["obj_id"]) == 2  # one score per (video, obj_id)
