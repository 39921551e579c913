"""Benchmark prediction: shards, blocks, cache, resume after interruption, atomic mask folders, merge, oracles, and
the tiny models end to end on the synthetic benchmark (predict then eval)."""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from veason_r1.data.masks import encode_rle
from veason_r1.data.revos import ReVOSDataset
from veason_r1.inference.pipeline import InferenceConfig
from veason_r1.inference.predict import (
    MERGED_FILE,
    PredictConfig,
    Shard,
    load_stage1,
    make_blocks,
    merge_predictions,
    owned_blocks,
    run_stage1,
    run_stage2,
    stage1_dir,
)
from veason_r1.models.config import PolicyConfig, PropagatorConfig

SIZE = 112  # policy square side in these tests (a multiple of 28)


# ----------------------------------------------------------------------------------------------------------------
# A small ReVOS-format set: 3 videos of 5-10 frames, a moving square per object, 7 expressions.


def _write_mini_revos(root: Path) -> Path:
    rng = np.random.default_rng(0)
    videos, mask_dict, fg = {}, {}, {}
    specs = [("v0", 10, 48, 64, 2), ("cat/v1", 6, 40, 56, 1), ("v2", 5, 32, 48, 2)]
    anno = 0
    for name, length, h, w, n_obj in specs:
        frames = [f"{i:05d}" for i in range(length)]
        folder = root / "JPEGImages" / name
        folder.mkdir(parents=True)
        ids = []
        for k in range(n_obj):
            rles = []
            for t in range(length):
                if k == 1 and t < 2:
                    rles.append(None)  # object 1 absent in the first frames
                    continue
                m = np.zeros((h, w), bool)
                y, x = 4 + 3 * k + t % 5, 6 + 10 * k + 2 * t
                m[y : y + 10, x : x + 12] = True
                rles.append(encode_rle(m))
            mask_dict[str(anno)] = rles
            ids.append(str(anno))
            anno += 1
        for t, f in enumerate(frames):
            img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
            Image.fromarray(img).save(folder / f"{f}.jpg")
        exps = {"0": {"exp": f"the first object in {name}", "obj_id": [0], "anno_id": ids[:1], "type_id": 0},
                "1": {"exp": "what moves to the right?", "obj_id": list(range(n_obj)), "anno_id": ids, "type_id": 1}}
        if name == "v0":
            exps["2"] = {"exp": "the second one.", "obj_id": [1], "anno_id": ids[1:], "type_id": 1}
        videos[name] = {"vid_id": name, "height": h, "width": w, "frames": frames, "expressions": exps}
        fg[name] = {"masks_rle": [None] * length}
    (root / "meta_expressions_valid_.json").write_text(json.dumps({"videos": videos}))
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    (root / "mask_dict_foreground.json").write_text(json.dumps(fg))
    return root


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory) -> Path:
    return _write_mini_revos(tmp_path_factory.mktemp("mini_revos"))


@pytest.fixture(scope="module")
def mini(mini_root) -> ReVOSDataset:
    return ReVOSDataset(mini_root, "valid")


class BatchSensitiveEngine:
    """A deterministic stand-in for a policy whose outputs depend on the batch it is generated in (as real batched
    generation can), so any change of batch composition between runs shows up as different predictions."""

    def __init__(self, fail_after_calls: int | None = None):
        self.calls: list[list[str]] = []
        self.fail_after_calls = fail_after_calls

    def generate(self, requests, sampling):
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append([r.expression for r in requests])
        batch_tag = zlib.crc32("|".join(r.expression for r in requests).encode()) % 7
        out = []
        for r in requests:
            assert all(img.shape == (SIZE, SIZE, 3) for img in r.images)
            h = zlib.crc32(r.expression.encode())
            x1, y1 = h % 40, (h >> 8) % 40
            key = r.frame_ids[(h >> 4) % len(r.frame_ids)]
            ans = {"keyframe_timestamp": key, "bbox_2d_list": [[x1, y1, x1 + 30 + batch_tag, y1 + 40]]}
            out.append([f"<think>batch {batch_tag}: {r.expression}</think><answer>{json.dumps(ans)}</answer>"])
        return out


def _config(**kw) -> PredictConfig:
    base = dict(benchmark="revos", split="valid", inference=InferenceConfig(SIZE, 8, 64), batch_size=3)
    base.update(kw)
    return PredictConfig(**base)


def _records(pred: Path) -> list[dict]:
    return [json.loads(line) for line in (pred / MERGED_FILE).read_text().splitlines()]


# ----------------------------------------------------------------------------------------------------------------
# Shards and blocks


def test_shard_parse_and_errors():
    assert Shard.parse("1/4") == Shard(1, 4) and Shard.parse(None) == Shard(0, 1)
    assert Shard.parse("2/3").tag == "shard2of3"
    for bad in ("4/4", "-1/2", "1", "a/b", "0/0"):
        with pytest.raises(ValueError, match="--shard"):
            Shard.parse(bad)


def test_blocks_are_disjoint_and_cover_everything(mini):
    blocks = make_blocks(mini.expressions, 3)
    assert [len(b) for b in blocks] == [3, 3, 1]
    owned = [[e.key for _, b in owned_blocks(blocks, Shard(i, 3)) for e in b] for i in range(3)]
    flat = [k for o in owned for k in o]
    assert sorted(flat) == sorted(e.key for e in mini.expressions) and len(set(flat)) == len(flat)
    assert owned[0] == [e.key for e in blocks[0]]  # shard 0 of 3 owns block 0 only
    with pytest.raises(ValueError, match="batch_size"):
        make_blocks(mini.expressions, 0)


# ----------------------------------------------------------------------------------------------------------------
# Stage 1: cache, shards, resume


def test_stage1_records_and_boxes_in_original_pixels(mini, tmp_path):
    engine = BatchSensitiveEngine()
    stats = run_stage1(mini, engine, tmp_path, _config(), progress=False)
    assert stats["written"] == 7 and stats["skipped"] == 0
    assert [len(c) for c in engine.calls] == [3, 3, 1]
    recs = load_stage1(tmp_path)
    r = recs["cat/v1/1"]
    assert r["video"] == "cat/v1" and r["exp_id"] == "1" and r["frame_ids"] == list(range(6))
    assert r["keyframe"] in r["frame_ids"] and r["reasoning"].startswith("batch")
    h, w = 40, 56
    for bp, bo in zip(r["boxes_policy"], r["boxes"]):
        assert bo == [int(bp[0] * w / SIZE + 0.5), int(bp[1] * h / SIZE + 0.5),
                      min(int(bp[2] * w / SIZE + 0.5), w - 1), min(int(bp[3] * h / SIZE + 0.5), h - 1)]
    # a second run does nothing: every expression is cached
    engine2 = BatchSensitiveEngine()
    assert run_stage1(mini, engine2, tmp_path, _config(), progress=False)["skipped"] == 7
    assert engine2.calls == []


def test_shards_merge_to_the_single_run(mini, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    run_stage1(mini, BatchSensitiveEngine(), single, _config(), progress=False)
    for i in (1, 0):  # order does not matter
        run_stage1(mini, BatchSensitiveEngine(), sharded, _config(), Shard(i, 2), progress=False)
    assert sorted(p.name for p in stage1_dir(sharded).glob("*.jsonl")) == [
        "stage1.shard0of2.jsonl", "stage1.shard1of2.jsonl"]
    merge_predictions(mini, single, _config())
    merge_predictions(mini, sharded, _config())
    assert (single / MERGED_FILE).read_bytes() == (sharded / MERGED_FILE).read_bytes()
    assert [r["key"] for r in _records(single)] == [e.key for e in mini.expressions]


def test_resume_after_kill_is_identical(mini, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    run_stage1(mini, BatchSensitiveEngine(), ref, _config(), progress=False)
    with pytest.raises(KeyboardInterrupt):  # killed while generating the second block
        run_stage1(mini, BatchSensitiveEngine(fail_after_calls=1), killed, _config(), progress=False)
    assert len(load_stage1(killed)) == 3
    # and a second kill in the middle of writing a block: one finished record and a torn line
    shard_file = stage1_dir(killed) / "stage1.shard0of1.jsonl"
    full = stage1_dir(ref) / "stage1.shard0of1.jsonl"
    lines = full.read_text().splitlines(keepends=True)
    shard_file.write_text("".join(lines[:4]) + lines[4][:25])
    engine = BatchSensitiveEngine()
    stats = run_stage1(mini, engine, killed, _config(), progress=False)
    assert stats["written"] == 3  # 2 missing from block 1 + block 2
    # the half-done block is regenerated with all its members (same batch -> same outputs)
    assert [len(c) for c in engine.calls] == [3, 1]
    merge_predictions(mini, ref, _config())
    merge_predictions(mini, killed, _config())
    assert _records(ref) == _records(killed)


def test_cache_refuses_other_settings(mini, tmp_path):
    run_stage1(mini, BatchSensitiveEngine(), tmp_path, _config(), progress=False)
    with pytest.raises(ValueError, match="batch_size"):
        run_stage1(mini, BatchSensitiveEngine(), tmp_path, _config(batch_size=4), progress=False)


def test_robust_parsing_in_stage1(mini, tmp_path):
    class Messy:
        def generate(self, requests, sampling):
            outs = ["<think>x</think><answer>{'keyframe_timestamp': 3, 'bbox_2d_list': [[10, 10, 50, 60]]} ok",
                    "garbage", '<answer>{"keyframe_timestamp": 99, "bbox_2d_list": [[1, 2, 3]]}</answer>']
            return [[outs[i % 3]] for i in range(len(requests))]

    run_stage1(mini, Messy(), tmp_path, _config(), progress=False)
    recs = load_stage1(tmp_path)
    a, b, c = recs["v0/0"], recs["v0/1"], recs["v0/2"]
    assert a["keyframe"] == 3 and a["boxes_policy"] == [[10.0, 10.0, 50.0, 60.0]]
    assert b["boxes"] == [] and any("no JSON" in n for n in b["notes"])
    assert c["keyframe"] == 9 and c["boxes"] == [] and any("not shown" in n for n in c["notes"])


# ----------------------------------------------------------------------------------------------------------------
# Oracles


def test_oracles_need_no_policy_and_use_gt(mini, tmp_path):
    from veason_r1.data.masks import box_to_square, mask_to_box

    cfg = _config(oracle_keyframe=True, oracle_boxes=True)
    run_stage1(mini, None, tmp_path, cfg, progress=False)
    recs = load_stage1(tmp_path)
    for e in mini.expressions:
        r = recs[e.key]
        areas = mini.gt_areas(e)
        assert areas[r["keyframe"]] == max(areas[t] for t in r["frame_ids"])
        h, w = mini.size(e.video)
        want = [box_to_square(mask_to_box(m), h, w, SIZE) for m in mini.object_masks(e, r["keyframe"]) if m is not None]
        assert r["boxes_policy"] == want
    # object 1 of v0 is absent in frames 0-1: the oracle never proposes an empty [0,0,0,0] box
    assert all(b != [0, 0, 0, 0] for r in recs.values() for b in r["boxes"])


def test_oracle_boxes_keep_the_policy_keyframe(mini, tmp_path):
    run_stage1(mini, BatchSensitiveEngine(), tmp_path / "p", _config(), progress=False)
    run_stage1(mini, BatchSensitiveEngine(), tmp_path / "o", _config(oracle_boxes=True), progress=False)
    p, o = load_stage1(tmp_path / "p"), load_stage1(tmp_path / "o")
    assert all(p[k]["keyframe"] == o[k]["keyframe"] for k in p)
    assert any(p[k]["boxes"] != o[k]["boxes"] for k in p)


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: SAM2 -> PNG folders


@pytest.fixture(scope="module")
def tiny_sam2():
    from veason_r1.models.sam2 import load_sam2

    return load_sam2("tiny", device="cpu")


def test_stage2_layout_resume_and_atomic_folders(mini, tiny_sam2, tmp_path):
    cfg = _config()
    run_stage1(mini, BatchSensitiveEngine(), tmp_path, cfg, progress=False)
    stats = run_stage2(mini, tiny_sam2, tmp_path, cfg, progress=False)
    assert stats["written"] == 7 and stats["missing_stage1"] == 0
    for e in mini.expressions:
        folder = tmp_path / e.video / e.exp_id
        names = mini.videos[e.video].frames
        assert sorted(p.stem for p in folder.glob("*.png")) == names
        arr = np.asarray(Image.open(folder / f"{names[0]}.png"))
        assert arr.shape == mini.size(e.video) and arr.dtype == np.uint8 and set(np.unique(arr)) <= {0, 255}
    assert not list((tmp_path / ".partial").glob("*/*"))
    # predictions equal a direct propagation of the cached boxes
    rec = load_stage1(tmp_path)["v0/1"]
    direct = tiny_sam2.propagate(mini.frames("v0"), rec["keyframe"], np.asarray(rec["boxes"], np.float32))
    saved = np.stack([np.asarray(Image.open(tmp_path / "v0" / "1" / f"{n}.png")) > 0 for n in mini.videos["v0"].frames])
    assert np.array_equal(direct, saved)

    # resume: a killed run left one incomplete folder and a private partial folder; finished folders are kept
    keep = tmp_path / "v2" / "0" / "00000.png"
    stamp = keep.stat().st_mtime_ns
    (tmp_path / "v0" / "2" / "00007.png").unlink()
    from veason_r1.paths import mark_owned

    mark_owned(tmp_path / ".partial" / "shard0of1", "predict")  # what a killed run leaves: its own marked folder
    (tmp_path / ".partial" / "shard0of1" / "junk").mkdir(parents=True)
    stats = run_stage2(mini, tiny_sam2, tmp_path, cfg, progress=False)
    assert stats == {**stats, "written": 1, "skipped": 6}
    assert (tmp_path / "v0" / "2" / "00007.png").is_file() and keep.stat().st_mtime_ns == stamp
    assert not (tmp_path / ".partial" / "shard0of1").exists()
    report = merge_predictions(mini, tmp_path, cfg)
    assert report.ok and report.complete_masks == 7


def test_stage2_background_writer_failure_surfaces_and_keeps_finished_work(mini, tiny_sam2, tmp_path, monkeypatch):
    from veason_r1.inference import predict as predict_mod

    cfg = _config()
    run_stage1(mini, BatchSensitiveEngine(), tmp_path, cfg, progress=False)
    real = predict_mod.write_expression_masks
    calls = []

    def flaky(pred, video, exp_id, *a, **k):
        calls.append((video, exp_id))
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        return real(pred, video, exp_id, *a, **k)

    monkeypatch.setattr(predict_mod, "write_expression_masks", flaky)
    with pytest.raises(OSError, match="injected"):
        run_stage2(mini, tiny_sam2, tmp_path, cfg, progress=False)
    first = calls[0]
    names = mini.videos[first[0]].frames
    assert predict_mod.is_complete(tmp_path, first[0], first[1], names)  # finished before the failure: kept
    monkeypatch.setattr(predict_mod, "write_expression_masks", real)
    stats = run_stage2(mini, tiny_sam2, tmp_path, cfg, progress=False)
    assert stats["written"] + stats["skipped"] == 7 and stats["skipped"] >= 1
    assert merge_predictions(mini, tmp_path, cfg).ok


def test_stage2_without_boxes_writes_empty_masks(mini, tiny_sam2, tmp_path):
    class NoBoxes:
        def generate(self, requests, sampling):
            return [["<think>?</think><answer>{}</answer>"] for _ in requests]

    cfg = _config(limit=2)
    run_stage1(mini, NoBoxes(), tmp_path, cfg, progress=False)
    run_stage2(mini, tiny_sam2, tmp_path, cfg, progress=False)
    pngs = list((tmp_path / "v0" / "0").glob("*.png"))
    assert len(pngs) == 10 and all(np.asarray(Image.open(p)).max() == 0 for p in pngs)
    report = merge_predictions(mini, tmp_path, cfg)
    assert report.ok and report.expressions == 2


def test_merge_reports_missing(mini, tmp_path):
    cfg = _config()
    run_stage1(mini, BatchSensitiveEngine(), tmp_path, cfg, Shard(0, 2), progress=False)
    report = merge_predictions(mini, tmp_path, cfg)
    assert not report.ok and len(report.missing_stage1) == 3 and len(report.missing_masks) == 4
    assert json.loads((tmp_path / "merge_report.json").read_text())["stage1_records"] == 4


# ----------------------------------------------------------------------------------------------------------------
# Tiny models end to end: CLI predict (two shards) then eval on the synthetic benchmark


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory) -> Path:
    from veason_r1.models.tiny import make_tiny_qwen

    return make_tiny_qwen(tmp_path_factory.mktemp("tiny_qwen"), seed=0)


@pytest.mark.slow
def test_cli_predict_two_shards_equal_one_run_on_synthetic(synth_root, tiny_qwen, tmp_path):
    from veason_r1.cli import main

    common = ["predict", "revos", "--data", str(synth_root), "--model", str(tiny_qwen), "--sam2", "tiny",
              "--image-size", "112", "--max-new-tokens", "24", "--batch-size", "4", "--limit", "8", "--device", "cpu",
              "--no-progress"]
    pred, single = tmp_path / "pred", tmp_path / "single"
    assert main(common + ["--out", str(pred), "--shard", "0/2"]) == 0
    assert main(common + ["--out", str(pred), "--shard", "1/2", "--merge"]) == 0
    assert main(common + ["--out", str(single), "--stage", "1"]) == 0
    assert main(common + ["--out", str(single), "--merge-only"]) == 1  # stage 2 not run: incomplete
    a = [{k: v for k, v in r.items()} for r in _records(pred)]
    b = _records(single)
    assert a == b and len(a) == 8  # two shards == one run, greedy
    # eval reads the layout
    from veason_r1.data.revos import ReVOSDataset

    ds = ReVOSDataset(synth_root, "valid")
    for e in ds.expressions[:8]:
        assert len(list((pred / e.video / e.exp_id).glob("*.png"))) == len(ds.videos[e.video].frames)

def _has_evaluator() -> bool:
    return Path(__file__).resolve().parents[1].joinpath("veason_r1/commands/eval.py").exists()


@pytest.mark.slow
@pytest.mark.skipif(not _has_evaluator(), reason="the evaluator (veason_r1/commands/eval.py) is not there yet")
def test_cli_predict_then_eval_on_synthetic(synth_root, tiny_qwen, tmp_path):
    from veason_r1.cli import main

    pred = tmp_path / "pred"
    assert main(["predict", "revos", "--data", str(synth_root), "--model", str(tiny_qwen), "--sam2", "tiny",
                 "--image-size", "112", "--max-new-tokens", "24", "--device", "cpu", "--no-progress",
                 "--out", str(pred), "--merge"]) == 0
    out = tmp_path / "results.json"
    rc = main(["eval", "revos", "--data", str(synth_root), "--pred", str(pred), "--out", str(out), "--workers", "1",
               "--no-progress"])
    assert rc == 0
    res = json.loads(out.read_text())
    ds = ReVOSDataset(synth_root, "valid")
    n = res["num_expressions"]
    assert res["missing_predictions"] == 0  # every expression of the split predicted, in the layout eval reads
    assert n["referring"] + n["reasoning"] + n["no_target"] == len(ds.expressions)
    assert 0 <= res["overall"]["JF"] <= 100


def test_reasonvos_layout_is_video_then_expression_key(tmp_path, tiny_sam2):
    from veason_r1.data.synthetic import SynthConfig, write_benchmark
    from veason_r1.inference.predict import open_benchmark

    root = write_benchmark(tmp_path / "rvos", SynthConfig(num_videos=4, seed=1, max_frames=10), fmt="reasonvos")
    ds = open_benchmark("reasonvos", root)
    cfg = _config(benchmark="reasonvos", split=None, limit=3)
    run_stage1(ds, BatchSensitiveEngine(), tmp_path / "pred", cfg, progress=False)
    run_stage2(ds, tiny_sam2, tmp_path / "pred", cfg, progress=False)
    assert merge_predictions(ds, tmp_path / "pred", cfg).ok
    for e in ds.expressions[:3]:  # VideoLISA's current layout: PRED/<source>_<video>_<obj_id>/<exp_id>/<frame>.png
        info = ds.expression_info[e.key]
        folder = tmp_path / "pred" / f"synthetic_{e.video}_{info.obj_id}" / info.release_exp_id
        assert sorted(p.stem for p in folder.glob("*.png")) == list(ds.frames(e.video).names)


def test_bench_eval_smoke_on_cpu(tmp_path):
    """The GPU benchmark script at tiny size: both ways run, greedy outputs agree, numbers are recorded."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_eval", Path(__file__).resolve().parents[1] / "bench/bench_eval.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_eval"] = bench  # dataclasses look their module up
    spec.loader.exec_module(bench)
    out = tmp_path / "bench.json"
    assert bench.main(["--device", "cpu", "--tiny", "--out", str(out), "--long-frames", "12"]) == 0
    res = json.loads(out.read_text())
    assert res["authors_way"]["expressions"] == 3 and res["ours"]["expressions"] == 6
    assert res["agreement"]["identical_greedy_token_ids"] == 3  # fp32 on CPU: batching changes nothing
    assert res["agreement"]["mask_mean_iou_fp32_stock_vs_ours"] == 1.0  # our SAM2 path == stock SAM2 (fp32)
    assert res["speedup"] > 0 and res["long_video"]["frames"] == 12 and res["long_video"]["mask_frames_nonempty"] > 0


@pytest.mark.gpu
def test_vllm_engine_predict_matches_hf_on_gpu(synth_root, tiny_qwen, tmp_path):
    """GPU node with vLLM: stage 1 through the real VLLMEngine; greedy answers parse the same way as HF's."""
    from veason_r1.inference.pipeline import build_engine
    from veason_r1.inference.predict import open_benchmark

    ds = open_benchmark("revos", synth_root)
    cfg = _config(model=str(tiny_qwen), limit=4, batch_size=4)
    engine = build_engine(PolicyConfig(str(tiny_qwen), engine="vllm"), SIZE, batch_size=4)
    stats = run_stage1(ds, engine, tmp_path / "vllm", cfg, progress=False)
    assert stats["written"] == 4
    recs = load_stage1(tmp_path / "vllm")
    assert all(r["keyframe"] in r["frame_ids"] for r in recs.values())


@pytest.mark.slow
def test_multi_gpu_script_runs_disjoint_shards_and_merges(synth_root, tiny_qwen, tmp_path):
    """eval/multi_gpu_eval.sh with NUM_GPUS=2 (CPU here): two shard processes, then merge (then eval when present)."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    pred = tmp_path / "pred"
    env = {**os.environ, "NUM_GPUS": "2", "VEASON": f"{sys.executable} -m veason_r1", "OMP_NUM_THREADS": "1",
           "PREFLIGHT_ARGS": "--cpu-ok"}
    extra = ["--sam2", "tiny", "--image-size", "112", "--max-new-tokens", "8", "--batch-size", "2", "--limit", "6",
             "--device", "cpu"]
    proc = subprocess.run(["bash", str(repo / "eval/multi_gpu_eval.sh"), "revos", str(synth_root), str(tiny_qwen),
                           str(pred), *extra], env=env, cwd=repo, capture_output=True, text=True, timeout=300, check=False)
    assert (pred / "logs" / "shard0.log").is_file() and (pred / "logs" / "shard1.log").is_file()
    assert sorted(p.name for p in stage1_dir(pred).glob("*.jsonl")) == ["stage1.shard0of2.jsonl",
                                                                        "stage1.shard1of2.jsonl"]
    report = json.loads((pred / "merge_report.json").read_text())
    assert report["stage1_records"] == 6 and report["complete_masks"] == 6, proc.stderr[-2000:]
    assert "PASS" in proc.stdout and " 0 FAIL - ready" in proc.stdout  # the preflight ran first, and passed
    if (repo / "veason_r1/commands/eval.py").exists():
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (pred / "results.json").is_file()


@pytest.mark.slow
def test_sigkill_mid_stage1_then_resume_is_identical(synth_root, tiny_qwen, tmp_path):
    """A real kill (SIGKILL, no cleanup) of `veason-r1 predict` during stage 1, then the same command again."""
    import os
    import signal
    import subprocess
    import time

    from veason_r1.cli import main

    args = ["predict", "revos", "--data", str(synth_root), "--model", str(tiny_qwen), "--image-size", "112",
            "--max-new-tokens", "48", "--batch-size", "1", "--limit", "10", "--device", "cpu", "--stage", "1",
            "--no-progress"]
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "veason_r1", *args, "--out", str(killed)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shard_file = stage1_dir(killed) / "stage1.shard0of1.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if shard_file.exists() and shard_file.read_text().count("\n") >= 2:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.wait(timeout=60)
    partial = len(load_stage1(killed))
    assert main([*args, "--out", str(killed), "--merge"]) == 1  # resumed stage 1; stage 2 not run yet
    assert main([*args, "--out", str(ref), "--merge"]) == 1
    assert _records(killed) == _records(ref) and len(_records(ref)) == 10
    if proc.returncode == -signal.SIGKILL:
        assert 2 <= partial < 10  # it really was interrupted part-way


def test_video_groups_are_fixed_per_block_and_respect_the_memory_budget(mini):
    from veason_r1.inference.predict import video_groups

    blocks = make_blocks(mini.expressions, 3)
    keys = [[e.key for e in g] for g in video_groups(mini, blocks, Shard())]
    assert keys == [["v0/0", "v0/1", "v0/2"], ["cat/v1/0", "cat/v1/1"], ["v2/0"], ["v2/1"]]
    one_mask_set = 10 * 48 * 64  # v0: 10 frames of 48x64
    small = [[e.key for e in g] for g in video_groups(mini, blocks, Shard(), budget=2 * one_mask_set)]
    assert small[:2] == [["v0/0", "v0/1"], ["v0/2"]]
    assert [[e.key for e in g] for g in video_groups(mini, blocks, Shard(1, 2))] == [["cat/v1/0", "cat/v1/1"], ["v2/0"]]


def _write_mini_vicas(root: Path) -> Path:
    """Two ViCaS videos in the release layout: frames, annotations/v0.1, splits/v0.1/val.json."""
    rng = np.random.default_rng(3)
    (root / "splits" / "v0.1").mkdir(parents=True)
    (root / "splits" / "v0.1" / "val.json").write_text(json.dumps([7, 12]))
    for vid, n in ((7, 6), (12, 4)):
        h, w = 36, 52
        frames = root / "video_frames" / f"{vid:06d}"
        frames.mkdir(parents=True)
        segs = []
        for t in range(n):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(frames / f"{t:05d}.jpg")
            m1 = np.zeros((h, w), bool)
            m1[5 + t : 15 + t, 4 + 3 * t : 16 + 3 * t] = True
            m2 = np.zeros((h, w), bool)
            m2[20:30, 30:44] = True
            segs.append({"filename": f"{t:05d}.jpg", "is_gt": t % 2 == 0, "track_ids": [1, 2],
                         "mask_rles": [encode_rle(m1), encode_rle(m2)]})
        gt = {"video_id": vid, "image_size": [h, w], "segmentations": segs,
              "object_referrals": [{"prompt": "the moving square", "track_ids": [1]},
                                   {"prompt": "both things", "track_ids": [1, 2]}]}
        (root / "annotations" / "v0.1").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / "v0.1" / f"{vid:06d}.json").write_text(json.dumps(gt))
    return root


def test_vicas_predictions_are_read_by_the_vicas_evaluator(tmp_path, tiny_sam2):
    from veason_r1.eval.vicas import evaluate_vicas
    from veason_r1.inference.predict import open_benchmark

    root = _write_mini_vicas(tmp_path / "vicas")
    ds = open_benchmark("vicas", root)
    assert [e.key for e in ds.expressions] == ["000007/0", "000007/1", "000012/0", "000012/1"]
    cfg = _config(benchmark="vicas", split="val", oracle_keyframe=True, oracle_boxes=True)
    run_stage1(ds, None, tmp_path / "pred", cfg, progress=False)
    rec = load_stage1(tmp_path / "pred")["000007/1"]
    assert rec["keyframe"] % 2 == 0 and len(rec["boxes"]) == 2  # GT only on is_gt frames; both tracks boxed
    run_stage2(ds, tiny_sam2, tmp_path / "pred", cfg, progress=False)
    assert merge_predictions(ds, tmp_path / "pred", cfg).ok
    summary, rows = evaluate_vicas(root, tmp_path / "pred", split="val", progress=False)
    assert summary["num_referrals"] == 4 and summary["missing_predictions"] == 0
    assert all(r.missing_frames == 0 for r in rows)


@pytest.mark.slow
def test_multi_gpu_script_sequential_shards_equal_one_process(synth_root, tiny_qwen, tmp_path):
    """SEQUENTIAL=1 NUM_SHARDS=2 on one device: both shards run one after another, cover every expression once,
    and the merged predictions (records and mask PNGs) equal a single-process run."""
    import os
    import subprocess

    from veason_r1.cli import main

    repo = Path(__file__).resolve().parents[1]
    extra = ["--sam2", "tiny", "--image-size", "112", "--max-new-tokens", "8", "--batch-size", "2", "--limit", "6",
             "--device", "cpu"]
    sharded, single = tmp_path / "sharded", tmp_path / "single"
    env = {**os.environ, "NUM_GPUS": "1", "NUM_SHARDS": "2", "SEQUENTIAL": "1",
           "VEASON": f"{sys.executable} -m veason_r1", "OMP_NUM_THREADS": "1", "SKIP_PREFLIGHT": "1"}
    proc = subprocess.run(["bash", str(repo / "eval/multi_gpu_eval.sh"), "revos", str(synth_root), str(tiny_qwen),
                           str(sharded), *extra], env=env, cwd=repo, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "2 shard(s) on 1 GPU(s)" in proc.stdout
    shard_keys = [set(json.loads(line)["key"] for line in f.read_text().splitlines() if line.strip())
                  for f in sorted(stage1_dir(sharded).glob("stage1.shard*of2.jsonl"))]
    assert len(shard_keys) == 2 and not (shard_keys[0] & shard_keys[1]) and len(shard_keys[0] | shard_keys[1]) == 6
    assert main(["predict", "revos", "--data", str(synth_root), "--model", str(tiny_qwen), "--out", str(single),
                 *extra, "--no-progress", "--merge"]) == 0
    assert _records(sharded) == _records(single)
    pngs = sorted(p.relative_to(single) for p in single.rglob("*.png"))
    assert pngs and pngs == sorted(p.relative_to(sharded) for p in sharded.rglob("*.png"))
    assert all((single / p).read_bytes() == (sharded / p).read_bytes() for p in pngs)
    assert (sharded / "results.json").is_file()


def _eval_script_devices(tmp_path, env_extra: dict):
    """eval/multi_gpu_eval.sh with a stub `veason-r1` that records the CUDA_VISIBLE_DEVICES of each shard."""
    import os
    import subprocess

    tmp_path.mkdir(parents=True, exist_ok=True)
    repo = Path(__file__).resolve().parents[1]
    stub = tmp_path / "veason"
    stub.write_text('#!/usr/bin/env bash\ncase "$*" in *"--shard"*) echo "${CUDA_VISIBLE_DEVICES-unset}" >> "$LOG";; esac\n')
    stub.chmod(0o755)
    log = tmp_path / "devices.log"
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_VISIBLE_DEVICES", "NUM_GPUS", "NUM_SHARDS")}
    env.update({"VEASON": str(stub), "LOG": str(log), "SKIP_PREFLIGHT": "1", "SEQUENTIAL": "1", **env_extra})
    proc = subprocess.run(["bash", str(repo / "eval/multi_gpu_eval.sh"), "revos", "d", "m", str(tmp_path / "pred")],
                          env=env, capture_output=True, text=True, timeout=60, check=False)
    return proc, (log.read_text().split() if log.is_file() else [])


def test_multi_gpu_eval_honours_an_inherited_cuda_visible_devices(tmp_path):
    """Issue 23 item 7: the shards used to land on GPUs 0..N-1 whatever CUDA_VISIBLE_DEVICES the user had set."""
    proc, devices = _eval_script_devices(tmp_path, {"CUDA_VISIBLE_DEVICES": "2,5", "NUM_SHARDS": "4"})
    assert proc.returncode == 0, proc.stderr
    assert devices == ["2", "5", "2", "5"] and "4 shard(s) on 2 GPU(s) (CUDA devices 2 5)" in proc.stdout
    proc, devices = _eval_script_devices(tmp_path / "b", {"NUM_GPUS": "2"})  # none inherited: GPUs 0..N-1
    assert proc.returncode == 0 and devices == ["0", "1"]
    proc, devices = _eval_script_devices(tmp_path / "c", {"CUDA_VISIBLE_DEVICES": "GPU-a1b2,GPU-c3d4", "NUM_GPUS": "1"})
    assert proc.returncode == 0 and devices == ["GPU-a1b2"]
    proc, _ = _eval_script_devices(tmp_path / "d", {"CUDA_VISIBLE_DEVICES": "", "NUM_GPUS": "2"})
    assert proc.returncode == 1 and "CUDA_VISIBLE_DEVICES is set but empty" in proc.stderr
    proc, _ = _eval_script_devices(tmp_path / "e", {"CUDA_VISIBLE_DEVICES": "3", "NUM_GPUS": "2"})
    assert proc.returncode == 2 and "lists 1" in proc.stderr


# ----------------------------------------------------------------------------------------------------------------
# Issue 26 item 2: the resume fingerprint covers every byte of the weights, and is cached


def _rewrite_keeping_mtime(path: Path, offset: int) -> None:
    import os

    st = path.stat()
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_fingerprint_sees_a_change_between_sampled_windows(tmp_path, monkeypatch):
    monkeypatch.setenv("VEASON_R1_CACHE", str(tmp_path / "cache"))
    model, ckpt = tmp_path / "model", tmp_path / "sam2.pt"
    model.mkdir()
    weights = model / "model.safetensors"
    rng = np.random.default_rng(0)
    weights.write_bytes(rng.integers(0, 256, 5 << 20, dtype=np.uint8).tobytes())
    (model / "config.json").write_text("{}")
    ckpt.write_bytes(rng.integers(0, 256, 5 << 20, dtype=np.uint8).tobytes())
    config = PredictConfig("revos", policy=PolicyConfig(str(model)), propagator=PropagatorConfig(checkpoint=str(ckpt)),
                           data=str(tmp_path))
    before = config.fingerprint()
    _rewrite_keeping_mtime(weights, (3 << 19))  # 1.5 MiB: outside the first, middle and last MiB
    _rewrite_keeping_mtime(ckpt, (3 << 19))
    after = config.fingerprint()
    assert before["stage1"]["policy.files"] != after["stage1"]["policy.files"]
    assert before["stage2"]["propagator.checkpoint_files"] != after["stage2"]["propagator.checkpoint_files"]


def test_file_digest_is_cached_by_stat(tmp_path, monkeypatch):
    import hashlib

    from veason_r1 import io_utils

    monkeypatch.setenv("VEASON_R1_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "w.bin"
    f.write_bytes(b"x" * 1000)
    first = io_utils.file_identity(f)
    assert (tmp_path / "cache" / io_utils.DIGEST_CACHE_FILE).is_file()
    monkeypatch.setattr(io_utils, "_DIGESTS", {})  # a new process: only the disk cache remains

    def boom(*a, **k):
        raise AssertionError("hashed again")

    monkeypatch.setattr(hashlib, "sha256", boom)
    assert io_utils.file_identity(f) == first
    monkeypatch.undo()
    monkeypatch.setenv("VEASON_R1_CACHE", str(tmp_path / "cache"))
    f.write_bytes(b"y" * 1000)  # same size, new content
    assert io_utils.file_identity(f)["sha256"] == hashlib.sha256(b"y" * 1000).hexdigest()


def test_the_toy_models_by_name_in_predict_and_infer(synth_root, tmp_path):
    """Issue 28: `--model toy --sam2 toy` work in predict and infer (they answered "toy: policy folder not found")."""
    from PIL import Image

    from veason_r1.cli import main
    from veason_r1.models.toy import toy_policy_dir

    pred = tmp_path / "pred"
    assert main(["predict", "revos", "--data", str(synth_root), "--model", "toy", "--sam2", "toy", "--image-size",
                 "112", "--max-new-tokens", "48", "--limit", "2", "--device", "cpu", "--no-progress", "--out",
                 str(pred), "--merge"]) == 0
    records = _records(pred)
    assert len(records) == 2 and all(r.get("response") for r in records)  # the toy policy answered
    assert toy_policy_dir().is_dir()
    ds = ReVOSDataset(synth_root, "valid")
    video = ds.expressions[0].video
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, name in enumerate(ds.videos[video].frames[:8]):
        Image.fromarray(ds.frames(video).get(i)).save(frames / f"{i:03d}.jpg")
    out = tmp_path / "infer"
    assert main(["infer", "--video", str(frames), "--query", ds.expressions[0].text, "--model", "toy", "--sam2",
                 "toy", "--image-size", "112", "--max-new-tokens", "48", "--device", "cpu", "--no-progress",
                 "--no-overlay", "--out", str(out)]) == 0
    assert len(list((out / "masks").glob("*.png"))) == 8
