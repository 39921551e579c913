"""Evaluators and the `veason-r1 eval` CLI: numbers equal an independent literal implementation of docs/method.md
section 9 (tests/reference_metrics.py) on a ReVOS-format set with perturbed predictions; hand-built cases for the
splits, missing predictions, size errors, MeViS zip, ReasonVOS and ViCaS."""

from __future__ import annotations

import csv
import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from veason_r1.cli import main as cli_main
from veason_r1.data.masks import encode_rle
from veason_r1.eval.evaluators import EvalConfig, evaluate_mevis, evaluate_reasonvos, evaluate_revos
from veason_r1.eval.submission import build_submission_zip
from veason_r1.eval.vicas import evaluate_vicas


def _load_reference():
    spec = importlib.util.spec_from_file_location("reference_metrics", Path(__file__).with_name("reference_metrics.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()


def save_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path)


def perturb(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible wrong prediction: shifted, sometimes with a stray blob, sometimes emptied."""
    u = rng.random()
    if u < 0.1:
        return np.zeros_like(mask)
    out = np.roll(mask, (int(rng.integers(-4, 5)), int(rng.integers(-4, 5))), axis=(0, 1))
    if u < 0.4:
        r, c = int(rng.integers(0, mask.shape[0] - 8)), int(rng.integers(0, mask.shape[1] - 8))
        out[r:r + 6, c:c + 6] = True
    return out


@pytest.fixture(scope="module")
def synth_revos(tmp_path_factory):
    from veason_r1.data.synthetic import SynthConfig, write_benchmark

    out = tmp_path_factory.mktemp("synth_revos")
    write_benchmark(out, SynthConfig(num_videos=8, seed=1, max_frames=16), fmt="revos")
    return out


def write_perturbed_predictions(root: Path, pred: Path, seed: int = 0) -> list[str]:
    """Perturbed predictions for every expression of the valid split (0/255 and 0/1 PNGs mixed); the last
    referring/reasoning expression is left without its last frame (a missing prediction)."""
    from veason_r1.data.revos import ReVOSDataset

    ds = ReVOSDataset(root, "valid")
    rng = np.random.default_rng(seed)
    missing = []
    for k, e in enumerate(ds.expressions):
        scale = 255 if k % 3 else 1
        frames = ds.videos[e.video].frames
        for t, name in enumerate(frames):
            save_png(pred / e.video / e.exp_id / f"{name}.png", perturb(ds.gt_mask(e, t), rng) * scale)
    last = [e for e in ds.expressions if e.type_id in (0, 1)][-1]
    (pred / last.video / last.exp_id / f"{ds.videos[last.video].frames[-1]}.png").unlink()
    missing.append(last.key)
    return missing


def test_revos_cli_equals_literal_reference(synth_revos, tmp_path):
    pred = tmp_path / "pred"
    missing = write_perturbed_predictions(synth_revos, pred)
    out = tmp_path / "res" / "results.json"
    rc = cli_main(["eval", "revos", "--data", str(synth_revos), "--pred", str(pred), "--out", str(out),
                   "--workers", "2", "--no-progress"])
    assert rc == 0
    got = json.loads(out.read_text())
    want = ref.revos_reference(synth_revos, pred, "valid", dilation="rows")
    assert got["missing_predictions"] == len(missing) == want["missing_predictions"]
    assert got["num_expressions"]["referring"] == want["num_expressions"]["referring"] > 0
    assert got["num_expressions"]["reasoning"] == want["num_expressions"]["reasoning"] > 0
    for split in ("referring", "reasoning", "overall"):
        for k in ("J", "F", "JF", "A", "R", "A_scale_free", "R_scale_free"):
            assert got[split][k] == pytest.approx(want[split][k], abs=1e-9), (split, k)
    assert 0 < got["overall"]["JF"] < 100
    # A 0/255 prediction's false positives weigh 255 times in the literal R: scale-free R is never lower
    assert got["overall"]["R_scale_free"] >= got["overall"]["R"]
    # per-expression CSV beside results.json, one row per expression incl. the missing one
    rows = list(csv.DictReader((out.parent / "results_per_expression.csv").open()))
    from veason_r1.data.revos import ReVOSDataset

    assert len(rows) == len(ReVOSDataset(synth_revos, "valid").expressions)
    assert sum(r["status"] == "missing_zero" for r in rows) == 1


def test_revos_skip_and_single_worker_agree(synth_revos, tmp_path):
    pred = tmp_path / "pred"
    write_perturbed_predictions(synth_revos, pred, seed=3)
    s_zero, _ = evaluate_revos(synth_revos, pred, EvalConfig(workers=1, progress=False))
    s_par, _ = evaluate_revos(synth_revos, pred, EvalConfig(workers=2, progress=False))
    assert s_zero == s_par  # parallel == serial, bit for bit
    s_skip, _ = evaluate_revos(synth_revos, pred, EvalConfig(workers=1, progress=False, missing="skip"))
    n0 = s_zero["num_expressions"]
    n1 = s_skip["num_expressions"]
    assert sum(n0.values()) - sum(n1.values()) == 1 and s_skip["missing_predictions"] == 1
    # skipping a zero-scored expression can only raise the mean of its split
    assert max(s_skip[s]["J"] - s_zero[s]["J"] for s in ("referring", "reasoning")) > 0


# ---------------------------------------------------------------------------------------------------------------
# A hand-built ReVOS folder: one 10x10 video, 3 frames, one expression per type


def build_tiny_revos(root: Path) -> None:
    sq = np.zeros((10, 10), np.uint8)
    sq[2:6, 2:6] = 1
    other = np.zeros((10, 10), np.uint8)
    other[7:9, 7:9] = 1
    frames = ["00000", "00001", "00002"]
    mask_dict = {"1": [None, encode_rle(sq), encode_rle(sq)], "2": [encode_rle(other)] * 3}
    fg = {"vid/a": {"masks_rle": [encode_rle(other), encode_rle(sq | other), encode_rle(sq | other)]}}
    meta = {"videos": {"vid/a": {"vid_id": 0, "height": 10, "width": 10, "frames": frames, "expressions": {
        "0": {"exp": "the square", "obj_id": [1], "anno_id": ["1"], "type_id": 0},
        "1": {"exp": "the thing that appears", "obj_id": [1], "anno_id": ["1"], "type_id": 1},
        "2": {"exp": "the unicorn", "obj_id": [], "anno_id": [], "type_id": 2}}}}}
    root.mkdir(parents=True, exist_ok=True)
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    (root / "mask_dict_foreground.json").write_text(json.dumps(fg))
    (root / "meta_expressions_valid_.json").write_text(json.dumps(meta))


def test_tiny_revos_by_hand(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    build_tiny_revos(root)
    sq = np.zeros((10, 10), np.uint8)
    sq[2:6, 2:6] = 255
    v8 = np.zeros((10, 10), np.uint8)
    v8[2:6, 3:7] = 255
    empty = np.zeros((10, 10), np.uint8)
    # referring: V16 -> J 0.533333, F 0.666667 ; reasoning: perfect ; no-target: empty predictions (perfect)
    for name, m in zip(["00000", "00001", "00002"], [empty, v8, empty]):
        save_png(pred / "vid/a" / "0" / f"{name}.png", m)
    for name, m in zip(["00000", "00001", "00002"], [empty, sq, sq]):
        save_png(pred / "vid/a" / "1" / f"{name}.png", m)
        save_png(pred / "vid/a" / "2" / f"{name}.png", empty)
    s, _ = evaluate_revos(root, pred, EvalConfig(progress=False))
    assert s["referring"]["J"] == pytest.approx(53.3333333, abs=1e-5)
    assert s["referring"]["F"] == pytest.approx(66.6666667, abs=1e-5)
    assert s["referring"]["JF"] == pytest.approx(60.0, abs=1e-5)
    assert s["reasoning"]["JF"] == 100.0 and s["reasoning"]["A"] == pytest.approx(100 * (1 + 0.84 + 0.84) / 3)
    assert s["overall"]["JF"] == pytest.approx(80.0, abs=1e-5)  # plain mean of the two splits
    assert s["no_target"]["J"] == 100.0 and s["num_expressions"] == {"referring": 1, "reasoning": 1,
                                                                     "no_target": 1}
    # referring R: frame 1 has 4 FP pixels of value 255 over fg area 20 -> 0; frames 0, 2 -> 1
    assert s["referring"]["R"] == pytest.approx(100 * 2 / 3, abs=1e-5)
    assert s["referring"]["R_scale_free"] == pytest.approx(100 * (2 + (1 - 4 / 20)) / 3, abs=1e-5)


def test_size_mismatch_names_the_file(tmp_path):
    root, pred = tmp_path / "data", tmp_path / "pred"
    build_tiny_revos(root)
    for exp in "012":
        for name in ["00000", "00001", "00002"]:
            save_png(pred / "vid/a" / exp / f"{name}.png", np.zeros((10, 10), np.uint8))
    bad = pred / "vid/a" / "1" / "00001.png"
    save_png(bad, np.zeros((10, 12), np.uint8))
    with pytest.raises(ValueError, match=r"00001\.png.*10x12"):
        evaluate_revos(root, pred, EvalConfig(progress=False))
    with pytest.raises(ValueError, match=r"vid/a/1/00001\.png"):
        evaluate_revos(root, pred, EvalConfig(progress=False, workers=2))


def test_all_missing_counts_and_zero(tmp_path, capsys):
    root, pred = tmp_path / "data", tmp_path / "pred"
    build_tiny_revos(root)
    pred.mkdir()
    rc = cli_main(["eval", "revos", "--data", str(root), "--pred", str(pred), "--no-progress", "--workers", "1"])
    assert rc == 0
    s = json.loads((pred / "results.json").read_text())
    assert s["missing_predictions"] == 3 and s["overall"]["JF"] == 0.0 and s["referring"]["R"] == 0.0
    assert "missing predictions: 3" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------
# MeViS, ReasonVOS, ViCaS


def test_mevis_valid_u_and_submission_zip(tmp_path):
    from veason_r1.data.revos import MeViSDataset
    from veason_r1.data.synthetic import SynthConfig, write_benchmark

    root = tmp_path / "mevis"
    write_benchmark(root, SynthConfig(num_videos=4, seed=2, max_frames=10), fmt="mevis")
    ds = MeViSDataset(root, "valid_u")
    pred = tmp_path / "pred"
    for e in ds.expressions:
        for t, name in enumerate(ds.videos[e.video].frames):
            save_png(pred / e.video / e.exp_id / f"{name}.png", ds.gt_mask(e, t) * 255)
    s, _ = evaluate_mevis(root, pred, EvalConfig(progress=False))
    assert s["J"] == s["F"] == s["JF"] == 100.0 and s["missing_predictions"] == 0
    e0 = ds.expressions[0]
    (pred / e0.video / e0.exp_id / f"{ds.videos[e0.video].frames[0]}.png").unlink()
    s, _ = evaluate_mevis(root, pred, EvalConfig(progress=False))
    n = len(ds.expressions)
    assert s["missing_predictions"] == 1 and s["J"] == pytest.approx(100 * (n - 1) / n)
    # the server zip refuses holes, and packs Annotations/<video>/<exp_id>/<frame>.png otherwise
    (root / "valid").mkdir()
    (root / "valid" / "meta_expressions.json").write_text((root / "valid_u" / "meta_expressions.json").read_text())
    with pytest.raises(FileNotFoundError, match="1 prediction PNG"):
        build_submission_zip(root, pred, tmp_path / "sub.zip", split="valid")
    save_png(pred / e0.video / e0.exp_id / f"{ds.videos[e0.video].frames[0]}.png", np.zeros(ds.size(e0.video)))
    rc = cli_main(["eval", "mevis", "--data", str(root), "--pred", str(pred), "--split", "valid",
                   "--submission-zip", str(tmp_path / "sub.zip"), "--no-progress"])
    assert rc == 0
    names = zipfile.ZipFile(tmp_path / "sub.zip").namelist()
    assert f"Annotations/{e0.video}/{e0.exp_id}/{ds.videos[e0.video].frames[0]}.png" in names
    assert len(names) == sum(len(ds.videos[e.video].frames) for e in ds.expressions)


def test_reasonvos_layouts_and_skip(tmp_path):
    from veason_r1.data.reasonvos import ReasonVOSDataset
    from veason_r1.data.synthetic import SynthConfig, write_benchmark

    root = tmp_path / "rvos"
    write_benchmark(root, SynthConfig(num_videos=4, seed=4, max_frames=10), fmt="reasonvos")
    ds = ReasonVOSDataset(root)
    pred, pred_obj = tmp_path / "pred", tmp_path / "pred_obj"
    rng = np.random.default_rng(0)
    literal = []
    for e in ds.expressions:
        gts, prs = [], []
        for t in ds.annotated_frames(e):
            name = ds.videos[e.video].frames[t]
            g = ds.gt_mask(e, t)
            p = perturb(g, rng)
            save_png(pred.joinpath(*ds.prediction_folder(e)) / f"{name}.png", p * 255)  # current layout
            gts.append(g)
            prs.append(p)
        literal.append((ref.db_eval_iou(np.array(gts), np.array(prs)).mean(),
                        ref.db_eval_boundary(np.array(gts), np.array(prs), dilation="rows").mean()))
    s, _ = evaluate_reasonvos(root, pred, EvalConfig(benchmark="reasonvos", missing="skip", progress=False))
    assert s["J"] == pytest.approx(100 * np.mean([j for j, _ in literal]), abs=1e-9)
    assert s["F"] == pytest.approx(100 * np.mean([f for _, f in literal]), abs=1e-9)
    # skip (the reference's choice): a missing expression leaves the mean of the others
    e0 = ds.expressions[0]
    import shutil

    shutil.rmtree(pred.joinpath(*ds.prediction_folder(e0)))
    s2, _ = evaluate_reasonvos(root, pred, EvalConfig(benchmark="reasonvos", missing="skip", progress=False))
    assert s2["missing_predictions"] == 1 and s2["num_expressions"] == len(literal) - 1
    assert s2["J"] == pytest.approx(100 * np.mean([j for j, _ in literal[1:]]), abs=1e-9)
    # VideoLISA's original layout: PRED/<video>/<obj_id>/, each (video, obj_id) once
    for e in ds.expressions:
        for t in ds.annotated_frames(e):
            name = ds.videos[e.video].frames[t]
            save_png(pred_obj / e.video / ds.expression_info[e.key].obj_id / f"{name}.png", ds.gt_mask(e, t) * 255)
    s3, _ = evaluate_reasonvos(root, pred_obj, EvalConfig(benchmark="reasonvos", missing="skip",
                                                          pred_layout="obj_id", progress=False))
    assert s3["JF"] == 100.0 and s3["missing_predictions"] == 0
    assert s3["num_expressions"] == len({(e.video, e.obj_ids) for e in ds.expressions})


def build_vicas(root: Path) -> None:
    h, w = 20, 30
    a = np.zeros((h, w), np.uint8)
    a[2:8, 3:12] = 1
    b = np.zeros((h, w), np.uint8)
    b[10:18, 15:28] = 1
    segs = []
    for k in range(3):
        segs.append({"filename": f"{k:05d}.jpg", "is_gt": k != 1, "track_ids": [1, 2],
                     "mask_rles": [encode_rle(a), encode_rle(b)]})
    gt = {"video_id": 7, "image_size": [h, w], "segmentations": segs, "all_track_ids": [1, 2],
          "object_referrals": [{"prompt": "the left box", "track_ids": [1]},
                               {"prompt": "the right box", "track_ids": [2]}]}
    (root / "annotations" / "v0.1").mkdir(parents=True)
    (root / "annotations" / "v0.1" / "000007.json").write_text(json.dumps(gt))
    (root / "splits" / "v0.1").mkdir(parents=True)
    (root / "splits" / "v0.1" / "val.json").write_text("[7]")


def test_vicas_track_map_by_hand(tmp_path):
    root, pred = tmp_path / "vicas", tmp_path / "pred"
    build_vicas(root)
    a = np.zeros((20, 30), np.uint8)
    a[2:8, 3:12] = 255
    for name in ("00000", "00002"):  # only the is_gt frames are read
        save_png(pred / "000007" / "0" / f"{name}.png", a)
        save_png(pred / "000007" / "1" / f"{name}.png", np.zeros((20, 30)))  # nothing found: no track
    s, rows = evaluate_vicas(root, pred, split="val", progress=False)
    # 2 GT tracks, 1 prediction matching at every threshold: precision 1 at recall 0.5 -> AP 50
    assert s["mAP"] == pytest.approx(50.0) and s["AP@50"] == pytest.approx(50.0) and s["AP@90"] == pytest.approx(50)
    assert [r.num_pred for r in rows] == [1, 0] and rows[0].best_iou == 1.0
    # a wrong prediction for referral 1 is a false positive; equal scores keep the reference's (stable) order,
    # TP first, so precision stays 1 up to recall 0.5 and AP is unchanged
    save_png(pred / "000007" / "1" / "00000.png", a)
    save_png(pred / "000007" / "1" / "00002.png", a)
    s2, rows2 = evaluate_vicas(root, pred, split="val", progress=False)
    assert s2["mAP"] == pytest.approx(50.0) and rows2[1].num_pred == 1 and rows2[1].best_iou == 0.0
    # missing -> zero (no predicted track) or skip (referral left out)
    (pred / "000007" / "1" / "00002.png").unlink()
    s3, _ = evaluate_vicas(root, pred, split="val", missing="zero", progress=False)
    assert s3["mAP"] == pytest.approx(50.0) and s3["missing_predictions"] == 1
    s4, _ = evaluate_vicas(root, pred, split="val", missing="skip", progress=False)
    assert s4["mAP"] == pytest.approx(100.0) and s4["num_referrals"] == 1
