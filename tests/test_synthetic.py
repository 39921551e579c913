"""The synthetic benchmark: layout, determinism, GT consistency, and unambiguous expressions of every kind."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from veason_r1.data.revos import ReVOSDataset
from veason_r1.data.synthetic import COLORS, SynthConfig, make_video, split_of, write_benchmark


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout(synth_root):
    for name in ("mask_dict.json", "mask_dict_foreground.json", "meta_expressions_train_.json",
                 "meta_expressions_valid_.json", "synthetic_facts.json"):
        assert (synth_root / name).is_file(), name
    train = json.loads((synth_root / "meta_expressions_train_.json").read_text())["videos"]
    valid = json.loads((synth_root / "meta_expressions_valid_.json").read_text())["videos"]
    assert len(train) == 9 and len(valid) == 3 and not set(train) & set(valid)
    for name, v in {**train, **valid}.items():
        assert list(v) == ["vid_id", "height", "width", "frames", "expressions"]
        assert 8 <= len(v["frames"]) <= 40 and v["frames"][0] == "00000"
        assert (v["height"], v["width"]) == (192, 256)
        for f in (v["frames"][0], v["frames"][-1]):
            with Image.open(synth_root / "JPEGImages" / name / f"{f}.jpg") as im:
                assert im.size == (256, 192)
        assert len(list((synth_root / "JPEGImages" / name).iterdir())) == len(v["frames"])
        for e in v["expressions"].values():
            assert list(e) == ["exp", "obj_id", "anno_id", "type_id"]
            assert e["exp"] == e["exp"].lower().strip() and not e["exp"].endswith(".")


def test_deterministic_byte_identical(tmp_path, synth_root):
    again = write_benchmark(tmp_path / "again", SynthConfig(num_videos=12, seed=0))
    a, b = _files(synth_root), _files(again)
    assert list(a) == list(b)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]][:5]
    other = _files(write_benchmark(tmp_path / "other", SynthConfig(num_videos=12, seed=1)))
    assert other["mask_dict.json"] != a["mask_dict.json"]


def test_fast(tmp_path):
    start = time.perf_counter()
    write_benchmark(tmp_path / "b", SynthConfig(num_videos=12, seed=3))
    assert time.perf_counter() - start < 10  # ~0.5 s on one core; generous for a shared machine


def test_split_is_deterministic_and_never_empty():
    for n in (2, 3, 4, 5, 12, 101):
        cfg = SynthConfig(num_videos=n)
        splits = [split_of(i, cfg) for i in range(n)]
        assert "train" in splits and "valid" in splits
        if n >= 8:
            assert abs(splits.count("valid") / n - 0.25) < 0.06
    with pytest.raises(ValueError, match="num_videos"):
        SynthConfig(num_videos=1).validate()
    with pytest.raises(ValueError, match="min_frames"):
        SynthConfig(min_frames=10, max_frames=5).validate()
    with pytest.raises(ValueError, match="unknown format"):
        write_benchmark(Path("/nonexistent"), SynthConfig(), fmt="coco")


def test_gt_matches_facts_and_expressions_have_targets(synth_root):
    facts = json.loads((synth_root / "synthetic_facts.json").read_text())["videos"]
    mask_dict = json.loads((synth_root / "mask_dict.json").read_text())
    types = set()
    for split in ("train", "valid"):
        ds = ReVOSDataset(synth_root, split)
        for name, vm in ds.videos.items():
            objs = facts[name]["objects"]
            assert facts[name]["split"] == split and 1 <= len(objs) <= 4
            for o in objs.values():
                rles = mask_dict[o["anno_id"]]
                present = [t for t, r in enumerate(rles) if r is not None]
                assert len(rles) == len(vm.frames) == len(o["positions"])
                assert (o["first_frame"], o["last_frame"]) == (present[0], present[-1])
                assert [p is not None for p in o["positions"]] == [r is not None for r in rles]
            assert set(facts[name]["expressions"]) == set(vm.expressions)
            for exp_id, e in vm.expressions.items():
                f = facts[name]["expressions"][exp_id]
                assert f["type_id"] == e.type_id and tuple(f["obj_ids"]) == e.obj_ids and f["rationale"].strip()
                types.add((e.type_id, len(e.obj_ids) > 1))
                areas = ds.gt_areas(e)
                if e.type_id == 2:
                    assert e.obj_ids == () and e.anno_ids == () and max(areas) == 0
                else:
                    assert max(areas) > 0, e.key
    assert {(0, False), (0, True), (1, False), (1, True), (2, False)} <= types


def test_gt_masks_cover_the_object_colour(synth_root):
    """The visible-pixel masks must lie on the object's colour in the JPEG (no offset / transposition bugs)."""
    from scipy.ndimage import binary_erosion

    facts = json.loads((synth_root / "synthetic_facts.json").read_text())["videos"]
    ds = ReVOSDataset(synth_root, "train")
    checked = 0
    for name in list(ds.videos)[:5]:
        for oid, o in facts[name]["objects"].items():
            t = o["first_frame"]
            m = ds.object_mask(o["anno_id"], t)
            inner = binary_erosion(m, iterations=2)
            if inner.sum() < 20:
                continue
            frame = ds.frames(name).get(t).astype(float)
            mean = frame[inner].mean(axis=0)
            assert np.abs(mean - np.array(COLORS[o["color"]])).max() < 45, (name, oid, mean, o["color"])
            checked += 1
    assert checked >= 5


# ---------------------------------------------------------------------------------------------- expression logic
@pytest.fixture(scope="module")
def many_videos():
    cfg = SynthConfig(num_videos=40, seed=5)
    return [make_video(i, cfg) for i in range(cfg.num_videos)]


def _first_last(v, k):
    idx = [t for t, m in enumerate(v.visible[k]) if m.any()]
    return idx[0], idx[-1]


def test_every_kind_appears(many_videos):
    kinds = {e.kind for v in many_videos for e in v.expressions}
    for needed in ("appearance", "appearance_multi", "enters_last", "leaves_first", "overtakes", "direction",
                   "no_target"):
        assert needed in kinds, (needed, sorted(kinds))
    assert kinds & {"occluded", "occludes"}
    assert any(_first_last(v, o.obj_id)[0] > 0 for v in many_videos for o in v.objects)  # objects enter
    assert any(_first_last(v, o.obj_id)[1] < v.num_frames - 1 for v in many_videos for o in v.objects)  # and leave
    sizes = {(v.num_frames, len(v.objects)) for v in many_videos}
    assert {n for _, n in sizes} == {1, 2, 3, 4} and min(s for s, _ in sizes) < 20 < max(s for s, _ in sizes)


def test_expressions_are_unambiguous(many_videos):
    """Re-derive the targets of appearance and temporal expressions from the objects and masks."""
    for v in many_videos:
        objs = v.objects
        texts = [e.text for e in v.expressions]
        assert len(texts) == len(set(texts)) and len(texts) <= 8
        assert any(e.type_id in (0, 1) for e in v.expressions)
        for e in v.expressions:
            words = e.text.split()
            if e.kind == "appearance" and words[-1] != "shape":
                # "the [size] [color] shape-name": exactly the targets carry those attributes
                attrs = words[1:]
                match = [o.obj_id for o in objs
                         if o.shape == attrs[-1] and all(a in (o.color, o.size) for a in attrs[:-1])]
                assert tuple(match) == e.obj_ids, (e.text, e.obj_ids, match)
            elif e.kind == "appearance" and words[-1] == "shape":  # "the <color> shape"
                assert tuple(o.obj_id for o in objs if o.color == words[1]) == e.obj_ids
            elif e.kind == "no_target":
                color = words[1]
                assert not any(o.color == color for o in objs) and e.obj_ids == ()
            elif e.kind == "enters_last":
                (k,) = e.obj_ids
                first = {o.obj_id: _first_last(v, o.obj_id)[0] for o in objs}
                assert all(first[k] >= first[j] + 2 for j in first if j != k)
            elif e.kind == "leaves_first":
                (k,) = e.obj_ids
                last = {o.obj_id: _first_last(v, o.obj_id)[1] for o in objs}
                assert all(last[k] + 2 <= last[j] for j in last if j != k)
            elif e.kind == "appearance_multi":
                assert len(e.obj_ids) >= 2
            elif e.kind == "ends_right":
                (k,) = e.obj_ids
                xs = {o.obj_id: o.centers[-1, 0] for o in objs}
                assert all(xs[k] > xs[j] for j in xs if j != k)


def test_mevis_and_reasonvos_layouts(tmp_path):
    cfg = SynthConfig(num_videos=4, seed=2)
    mevis = write_benchmark(tmp_path / "mevis", cfg, fmt="mevis")
    for split in ("train", "valid_u"):
        meta = json.loads((mevis / split / "meta_expressions.json").read_text())["videos"]
        assert meta and (mevis / split / "mask_dict.json").is_file()
        for name, v in meta.items():
            assert list(v) == ["vid_id", "frames", "expressions"] and "/" not in name
            assert (mevis / split / "JPEGImages" / name / "00000.jpg").is_file()
            assert all("type_id" not in e and e["anno_id"] for e in v["expressions"].values())
    rv = write_benchmark(tmp_path / "rv", cfg, fmt="reasonvos-original")  # first release (dict form)
    meta = json.loads((rv / "meta_expressions.json").read_text())["videos"]
    assert len(meta) == 4
    for name, v in meta.items():
        assert v["source"] == "synthetic" and v["is_sent"] is True
        for e in v["expressions"].values():
            assert list(e) == ["exp_text", "obj_id"]
            gt = rv / "Annotations" / f"synthetic_{name}_{e['obj_id']}"
            assert sorted(p.stem for p in gt.iterdir()) == v["frames"]


def test_cli_synth(tmp_path, capsys):
    from veason_r1.cli import main

    assert main(["synth", "--out", str(tmp_path / "c"), "--videos", "3", "--seed", "4", "--height", "96",
                 "--width", "128", "--no-progress"]) == 0
    assert '"videos": 3' in capsys.readouterr().out
    meta = json.loads((tmp_path / "c" / "meta_expressions_train_.json").read_text())["videos"]
    assert all((v["height"], v["width"]) == (96, 128) for v in meta.values())
    assert main(["synth", "--out", str(tmp_path / "d"), "--videos", "1", "--no-progress"]) == 2


def test_synth_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    """Issue 26 item 3: `synth --out` on an existing dataset overwrote its meta, masks and frames."""
    from veason_r1.cli import main

    other = tmp_path / "dataset"
    (other / "JPEGImages").mkdir(parents=True)
    (other / "meta_expressions_train.json").write_text('{"videos": {}}')
    args = ["synth", "--videos", "4", "--max-frames", "8", "--no-progress"]
    assert main([*args, "--out", str(other)]) == 2
    err = capsys.readouterr().err
    assert "not empty" in err and len(err.strip().splitlines()) == 2
    assert (other / "meta_expressions_train.json").read_text() == '{"videos": {}}'
    assert sorted(p.name for p in other.iterdir()) == ["JPEGImages", "meta_expressions_train.json"]
    mine = tmp_path / "mine"
    assert main([*args, "--out", str(mine)]) == 0 and main([*args, "--out", str(mine)]) == 0  # its own: reused
    assert main([*args, "--out", str(mine), "--seed", "3"]) == 2  # other settings would mix two datasets
    assert "other settings" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main([*args, "--out", str(tmp_path / "file")]) == 2
    assert "is a file" in capsys.readouterr().err
