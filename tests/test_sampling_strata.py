"""Stratified sampling of the training pool (docs/method.md §3): quotas, top-up, trim, seeds, output format."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from veason_r1.data.revos import ReVOSDataset, parse_meta
from veason_r1.datacon.stratified import (
    STRATA,
    StratifiedConfig,
    sample_meta_file,
    select_meta,
    stratified_sample,
    stratum_of,
)


def make_meta(groups: dict[tuple[int, int], int], per_video: int = 7, seed: int = 0) -> dict:
    """A meta with `count` expressions of each (type_id, number of objects), spread over videos of `per_video`."""
    items = [(t, n) for (t, n), c in groups.items() for _ in range(c)]
    random.Random(seed).shuffle(items)
    videos: dict = {}
    for i, (type_id, n_obj) in enumerate(items):
        v = videos.setdefault(f"vid{i // per_video:03d}", {"vid_id": i // per_video, "height": 10, "width": 20,
                                                          "frames": ["00000", "00001"], "expressions": {},
                                                          "extra": "kept"})
        ids = list(range(n_obj))
        v["expressions"][str(i % per_video)] = {"exp": f"expression {i}", "obj_id": ids,
                                                "anno_id": [str(100 * i + k) for k in ids], "type_id": type_id}
    return {"videos": videos}


def stratum_counts(meta: dict, keys) -> Counter:
    c: Counter = Counter()
    for video, exp_id in keys:
        e = meta["videos"][video]["expressions"][exp_id]
        c[stratum_of(e["type_id"], len(e["obj_id"])) or "other"] += 1
    return c


def test_quotas_follow_marginal_ratios():
    # 80 referring / 20 reasoning; singles 70, multis 30 (no-target with no obj_id counts in neither)
    meta = make_meta({(0, 1): 56, (0, 2): 24, (1, 1): 14, (1, 3): 6, (2, 0): 9})
    r = stratified_sample(meta, StratifiedConfig(target_size=50, seed=0))
    assert r.r_ref == pytest.approx(0.8) and r.r_single == pytest.approx(0.7)
    assert r.quotas == {"ref_single": 28, "ref_multi": 12, "reason_single": 7, "reason_multi": 3}
    assert len(r.selected) == len(set(r.selected)) == 50
    assert stratum_counts(meta, r.selected) == Counter(r.quotas)
    assert r.topped_up == 0 and r.trimmed == 0 and r.final["other"] == 0


def test_single_ratio_counts_every_expression_as_the_release():
    # no-target expressions with one obj_id count as "single" for r_single, but belong to no stratum
    meta = make_meta({(0, 1): 10, (1, 2): 10, (2, 1): 20})
    r = stratified_sample(meta, StratifiedConfig(target_size=10))
    assert r.r_single == pytest.approx(30 / 40)
    assert r.quotas == {"ref_single": round(0.5 * 0.75 * 10), "ref_multi": round(0.5 * 0.25 * 10),
                        "reason_single": round(0.5 * 0.75 * 10), "reason_multi": round(0.5 * 0.25 * 10)}


def test_short_stratum_is_topped_up_never_with_no_target():
    # reason_multi has 1 candidate for a quota of 3; the rest is mostly no-target expressions
    meta = make_meta({(0, 1): 40, (0, 2): 15, (1, 1): 10, (1, 2): 1, (2, 0): 200})
    for seed in range(10):
        r = stratified_sample(meta, StratifiedConfig(target_size=40, seed=seed))
        assert r.taken["reason_multi"] == 1 and r.quotas["reason_multi"] > 1
        assert r.topped_up == 40 - sum(r.taken.values()) > 0
        assert len(r.selected) == 40
        types = {meta["videos"][v]["expressions"][e]["type_id"] for v, e in r.selected}
        assert 2 not in types
    # the release's behaviour, behind the switch: the top-up may then draw no-target expressions
    drew_no_target = False
    for seed in range(10):
        r = stratified_sample(meta, StratifiedConfig(target_size=40, seed=seed, topup_no_target=True))
        drew_no_target |= stratum_counts(meta, r.selected)["other"] > 0
    assert drew_no_target


def test_overshooting_quotas_are_trimmed_to_exactly_t():
    meta = make_meta({(0, 1): 10, (0, 2): 10, (1, 1): 10, (1, 2): 10})
    r = stratified_sample(meta, StratifiedConfig(target_size=6, seed=3))
    assert r.quotas == dict.fromkeys(STRATA, 2)  # round(0.25 * 6) = round(1.5) = 2, four times: 8 > 6
    assert r.trimmed == 2 and len(r.selected) == 6


def test_exactly_t_for_many_sizes_and_seeds():
    meta = make_meta({(0, 1): 33, (0, 2): 7, (1, 1): 21, (1, 4): 5, (2, 0): 4})
    for t in (1, 5, 17, 40, 66):
        for seed in range(3):
            r = stratified_sample(meta, StratifiedConfig(target_size=t, seed=seed))
            assert len(r.selected) == len(set(r.selected)) == t


def test_seed_reproduces_and_input_order_does_not_matter():
    groups = {(0, 1): 50, (0, 2): 20, (1, 1): 25, (1, 2): 5, (2, 0): 5}
    meta = make_meta(groups)
    a = stratified_sample(meta, StratifiedConfig(target_size=30, seed=7)).selected
    b = stratified_sample(meta, StratifiedConfig(target_size=30, seed=7)).selected
    c = stratified_sample(meta, StratifiedConfig(target_size=30, seed=8)).selected
    assert a == b and a != c
    # same expressions, videos and expressions listed in reverse order
    rev = {"videos": {v: {**d, "expressions": dict(reversed(list(d["expressions"].items())))}
                      for v, d in reversed(list(meta["videos"].items()))}}
    assert stratified_sample(rev, StratifiedConfig(target_size=30, seed=7)).selected == a


def test_select_meta_keeps_the_input_format():
    meta = make_meta({(0, 1): 10, (1, 2): 10})
    r = stratified_sample(meta, StratifiedConfig(target_size=5, seed=1))
    out = select_meta(meta, r.selected)
    assert sum(len(v["expressions"]) for v in out["videos"].values()) == 5
    for video, v in out["videos"].items():
        src = meta["videos"][video]
        fields = {k: x for k, x in v.items() if k != "expressions"}
        assert fields == {k: x for k, x in src.items() if k != "expressions"}
        assert v["expressions"]  # videos without a selected expression are dropped
        for exp_id, e in v["expressions"].items():
            assert e == src["expressions"][exp_id] and (video, exp_id) in r.selected
        assert list(v["expressions"]) == [k for k in src["expressions"] if k in v["expressions"]]
    parse_meta(out, "out")  # readable by the project's reader


def test_errors_name_the_problem(tmp_path):
    meta = make_meta({(0, 1): 3})
    meta["videos"]["vid000"]["expressions"]["1"].pop("type_id")
    with pytest.raises(ValueError, match=r"in\.json: videos\['vid000'\]\.expressions\['1'\]: 'type_id'"):
        stratified_sample(meta, StratifiedConfig(target_size=2), source="in.json")
    with pytest.raises(ValueError, match="only 4 eligible"):
        stratified_sample(make_meta({(0, 1): 4, (2, 0): 5}), StratifiedConfig(target_size=5))
    with pytest.raises(ValueError, match="r_ref"):
        stratified_sample(make_meta({(2, 1): 4}), StratifiedConfig(target_size=1, topup_no_target=True))


def test_cli_on_hand_built_meta(tmp_path, capsys):
    from veason_r1.cli import main

    meta = make_meta({(0, 1): 56, (0, 2): 24, (1, 1): 14, (1, 3): 6, (2, 0): 9})
    src = tmp_path / "meta_expressions_train_.json"
    src.write_text(json.dumps(meta))
    assert main(["sample", "--meta", str(src), "--target-size", "50", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    assert "ref_single" in printed and "r_ref = 0.8000" in printed and "selected 50" in printed
    out = json.loads((tmp_path / "meta_expressions_train_select.json").read_text())
    keys = [(v, e) for v, d in out["videos"].items() for e in d["expressions"]]
    assert len(keys) == 50
    assert main(["sample", "--meta", str(src), "--target-size", "500"]) == 2
    assert "eligible" in capsys.readouterr().err


def test_synthetic_benchmark_sampling(synth_root, tmp_path):
    src = synth_root / "meta_expressions_train_.json"
    meta = json.loads(src.read_text())
    entries = [e for v in meta["videos"].values() for e in v["expressions"].values()]
    n0 = sum(e["type_id"] == 0 for e in entries)
    n1 = sum(e["type_id"] == 1 for e in entries)
    ns = sum(len(e["obj_id"]) == 1 for e in entries)
    nm = sum(len(e["obj_id"]) > 1 for e in entries)
    t = min(24, n0 + n1)
    out = tmp_path / "select.json"
    r = sample_meta_file(src, out, StratifiedConfig(target_size=t, seed=0))
    r_ref, r_single = n0 / (n0 + n1), ns / (ns + nm)
    assert r.quotas["ref_single"] == round(r_ref * r_single * t)
    assert r.quotas["reason_multi"] == round((1 - r_ref) * (1 - r_single) * t)
    ds = ReVOSDataset(synth_root, "train", meta_file=out)
    assert len(ds.expressions) == t
    assert all(e.type_id in (0, 1) for e in ds.expressions)
    assert {e.key for e in ds.expressions} <= {f"{v}/{k}" for v, d in meta["videos"].items() for k in d["expressions"]}
    again = tmp_path / "again.json"
    sample_meta_file(src, again, StratifiedConfig(target_size=t, seed=0))
    assert again.read_bytes() == out.read_bytes()


def test_entry_script_help():
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for script, words in (("data_sampling.py", "--target-size"), ("seed_cot_generation.py", "--teacher")):
        proc = subprocess.run([sys.executable, str(root / "training_data_construction" / script), "--help"],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and words in proc.stdout, proc.stderr
