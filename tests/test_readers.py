"""ReVOS / MeViS / ReasonVOS readers on hand-built datasets (exact values) and on the synthetic benchmark."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from veason_r1.data.masks import encode_rle
from veason_r1.data.reasonvos import ReasonVOSDataset
from veason_r1.data.revos import MeViSDataset, ReVOSDataset

H, W = 6, 8


def _box(x0, y0, x1, y1):
    m = np.zeros((H, W), dtype=bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


A = [_box(0, 0, 1, 1), None, _box(0, 0, 3, 2)]  # object "11": 4 px, absent, 12 px
B = [_box(1, 1, 2, 2), _box(5, 3, 7, 5), None]  # object "12": 4 px (overlaps A by 1), 9 px, absent


def _frames(folder: Path, n: int) -> None:
    folder.mkdir(parents=True)
    for t in range(n):
        Image.fromarray(np.full((H, W, 3), 40 * t, np.uint8)).save(folder / f"{t:05d}.jpg")


def _rles(masks):
    return [None if m is None else encode_rle(m) for m in masks]


@pytest.fixture()
def revos_root(tmp_path) -> Path:
    """Two videos, one with a nested name; multi-object, single-object and no-target expressions."""
    for v in ("UVO/all/abc", "plain"):
        _frames(tmp_path / "JPEGImages" / v, 3)
    meta = {"videos": {
        "UVO/all/abc": {"vid_id": 0, "height": H, "width": W, "frames": ["00000", "00001", "00002"], "expressions": {
            "0": {"exp": "both objects", "obj_id": [0, 1], "anno_id": ["11", "12"], "type_id": 0},
            "1": {"exp": "the one that disappears", "obj_id": [1], "anno_id": [12], "type_id": 1},
            "2": {"exp": "the giraffe", "obj_id": [], "anno_id": [], "type_id": 2},
        }},
        "plain": {"vid_id": 1, "height": H, "width": W, "frames": ["00000", "00001", "00002"], "expressions": {
            "0": {"exp": "the thing", "obj_id": [0], "anno_id": ["21"], "type_id": 0},
        }},
    }}
    (tmp_path / "meta_expressions_valid_.json").write_text(json.dumps(meta))
    mask_dict = {"11": _rles(A), "12": _rles(B),
                 # uncompressed (list) counts are valid COCO RLE too: a 6x8 mask with pixels 2..4 set
                 "21": [{"size": [H, W], "counts": [2, 3, H * W - 5]}, None, None]}
    (tmp_path / "mask_dict.json").write_text(json.dumps(mask_dict))
    zero = np.zeros((H, W), dtype=bool)
    fg = {"UVO/all/abc": {"masks_rle": [encode_rle((A[t] if A[t] is not None else zero)
                                                   | (B[t] if B[t] is not None else zero)) for t in range(3)]}}
    (tmp_path / "mask_dict_foreground.json").write_text(json.dumps(fg))
    return tmp_path


def test_revos_hand_built(revos_root):
    ds = ReVOSDataset(revos_root, "valid")
    assert sorted(ds.videos) == ["UVO/all/abc", "plain"]
    by_key = {e.key: e for e in ds.expressions}
    assert set(by_key) == {"UVO/all/abc/0", "UVO/all/abc/1", "UVO/all/abc/2", "plain/0"}
    both, one, none = by_key["UVO/all/abc/0"], by_key["UVO/all/abc/1"], by_key["UVO/all/abc/2"]
    assert (both.obj_ids, both.anno_ids, both.type_id) == ((0, 1), ("11", "12"), 0)
    assert one.anno_ids == ("12",) and one.type_id == 1  # int anno_ids in the meta become strings
    assert (none.obj_ids, none.anno_ids, none.type_id) == ((), (), 2)
    # multi-object union, per-object masks, absent frames (null RLE)
    assert np.array_equal(ds.gt_mask(both, 0), A[0] | B[0])
    assert np.array_equal(ds.gt_mask(both, 1), B[1])
    assert np.array_equal(ds.gt_mask(both, 2), A[2])
    masks = ds.object_masks(both, 1)
    assert masks[0] is None and np.array_equal(masks[1], B[1])
    assert ds.object_mask("12", 2) is None
    assert ds.gt_areas(both) == [7, 9, 12]  # union, not sum: A and B overlap by one pixel in frame 0
    assert ds.gt_areas(one) == [4, 9, 0]
    assert ds.gt_areas(none) == [0, 0, 0] and not ds.gt_mask(none, 0).any()
    assert ds.gt_mask(none, 0).shape == (H, W)
    # uncompressed counts
    thing = by_key["plain/0"]
    assert ds.gt_areas(thing) == [3, 0, 0] and ds.gt_mask(thing, 0).sum() == 3
    # frames of a nested video name, read lazily by name
    src = ds.frames("UVO/all/abc")
    assert len(src) == 3 and ds.size("UVO/all/abc") == (H, W)
    assert src.get(2).shape == (H, W, 3) and abs(int(src.get(2).mean()) - 80) <= 2
    assert np.array_equal(ds.foreground_mask("UVO/all/abc", 0), A[0] | B[0])
    with pytest.raises(KeyError, match="no entry for video 'plain'"):
        ds.foreground_mask("plain", 0)


def test_revos_unknown_anno_id_names_the_file(revos_root):
    ds = ReVOSDataset(revos_root, "valid")
    with pytest.raises(KeyError, match="mask_dict.json: unknown anno_id '99'"):
        ds.object_mask("99", 0)


def test_revos_frames_are_read_lazily(revos_root):
    """Reading one frame must not touch the others: delete them and read it."""
    ds = ReVOSDataset(revos_root, "valid")
    folder = revos_root / "JPEGImages" / "plain"
    (folder / "00000.jpg").unlink()
    (folder / "00002.jpg").unlink()
    assert ds.frames("plain").get(1).shape == (H, W, 3)
    with pytest.raises(FileNotFoundError, match="00000"):
        ds.frames("plain").get(0)


def test_revos_bad_meta_errors_name_the_file(tmp_path):
    (tmp_path / "meta_expressions_valid_.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta_expressions_valid_.json: not valid JSON"):
        ReVOSDataset(tmp_path, "valid")
    (tmp_path / "meta_expressions_valid_.json").write_text(json.dumps({"videos": {"v": {"frames": ["0"],
                                                                                      "expressions": {"0": {}}}}}))
    with pytest.raises(ValueError, match=r"videos\['v'\].expressions\['0'\]: missing 'exp'"):
        ReVOSDataset(tmp_path, "valid")
    with pytest.raises(FileNotFoundError, match="split 'train'"):
        ReVOSDataset(tmp_path, "train")


def test_mevis_layout_without_type_id(tmp_path):
    root = tmp_path / "valid_u"
    _frames(root / "JPEGImages" / "d56a6ec78cfa", 3)
    meta = {"videos": {"d56a6ec78cfa": {"expressions": {"0": {"exp": "4 lizards moving around", "obj_id": [0],
                                                              "anno_id": [7]}},
                                        "vid_id": 0, "frames": ["00000", "00001", "00002"]}}}
    (root / "meta_expressions.json").write_text(json.dumps(meta))
    (root / "mask_dict.json").write_text(json.dumps({"7": _rles(A)}))
    ds = MeViSDataset(tmp_path)
    (e,) = ds.expressions
    assert e.type_id is None and e.anno_ids == ("7",)
    assert ds.size("d56a6ec78cfa") == (H, W)  # no height/width in MeViS meta: read from the JPEG header
    assert ds.gt_areas(e) == [4, 0, 12]


# ------------------------------------------------------------------------------------------------ ReasonVOS
@pytest.fixture()
def reasonvos_root(tmp_path) -> Path:
    _frames(tmp_path / "JPEGImages" / "vidA", 3)
    meta = {"videos": {"vidA": {"source": "MOSE", "frames": ["00000", "00001", "00002"], "is_sent": True,
                                "expressions": {"0": {"exp_text": "what could hurt a child?", "obj_id": 3},
                                                "1": {"exp_text": "the pet", "obj_id": 5}}}}}
    (tmp_path / "meta_expressions.json").write_text(json.dumps(meta))
    d3 = tmp_path / "Annotations" / "MOSE_vidA_3"
    d3.mkdir(parents=True)
    for t, m in enumerate(A):
        if t != 1:  # frame 1 has no GT PNG
            Image.fromarray(m.astype(np.uint8) * 255).save(d3 / f"{t:05d}.png")
    d5 = tmp_path / "Annotations" / "mose_vidA_5"  # lower-cased source, as the release's checker builds it
    d5.mkdir(parents=True)
    for t, m in enumerate(B):
        m = np.zeros((H, W), bool) if m is None else m
        p = Image.fromarray(m.astype(np.uint8), mode="L").convert("P")  # palette PNG, index 1 = object
        p.save(d5 / f"{t:05d}.png")
    return tmp_path


def test_reasonvos_reader(reasonvos_root):
    ds = ReasonVOSDataset(reasonvos_root)
    assert list(ds.videos) == ["vidA"]
    e0, e1 = ds.expressions
    assert (e0.text, e0.obj_ids, e0.anno_ids, e0.type_id) == ("what could hurt a child?", (3,), ("MOSE_vidA_3",),
                                                               None)
    assert ds.video_info["vidA"] == {"source": "MOSE", "is_sent": True}
    assert ds.size("vidA") == (H, W)
    assert np.array_equal(ds.gt_mask(e0, 0), A[0])
    assert not ds.gt_mask(e0, 1).any()  # missing PNG reads as empty
    assert ds.annotated_frames(e0) == [0, 2]
    assert ds.gt_areas(e0) == [4, 0, 12]
    assert ds.gt_areas(e1) == [4, 9, 0]  # lower-cased folder, palette PNG
    assert ds.object_masks(e1, 2) == [None]
    assert ds.frames("vidA").get(1).shape == (H, W, 3)


def test_reasonvos_missing_gt_folder(reasonvos_root):
    import shutil

    shutil.rmtree(reasonvos_root / "Annotations" / "MOSE_vidA_3")
    ds = ReasonVOSDataset(reasonvos_root)
    with pytest.raises(FileNotFoundError, match="MOSE_vidA_3"):
        ds.gt_mask(ds.expressions[0], 0)


# ------------------------------------------------------------------------------------------------ synthetic
def test_revos_reader_on_synthetic(synth_root):
    facts = json.loads((synth_root / "synthetic_facts.json").read_text())["videos"]
    train, valid = ReVOSDataset(synth_root, "train"), ReVOSDataset(synth_root, "valid")
    assert len(train.videos) + len(valid.videos) == 12 and not set(train.videos) & set(valid.videos)
    assert any("/" in v for v in train.videos)  # nested names like real ReVOS
    for ds in (train, valid):
        for e in ds.expressions:
            h, w = ds.size(e.video)
            areas = ds.gt_areas(e)
            assert len(areas) == len(ds.videos[e.video].frames)
            for t in {0, len(areas) // 2, len(areas) - 1}:
                gt = ds.gt_mask(e, t)
                assert gt.shape == (h, w) and int(gt.sum()) == areas[t]
                assert not (gt & ~ds.foreground_mask(e.video, t)).any()
            objs = facts[e.video]["objects"]
            assert [objs[str(o)]["anno_id"] for o in e.obj_ids] == list(e.anno_ids)
            if e.type_id == 2:
                assert e.obj_ids == () and e.anno_ids == () and sum(areas) == 0
            else:
                assert max(areas) > 0


def test_reasonvos_reader_on_synthetic(tmp_path, synth_root):
    from veason_r1.data.synthetic import SynthConfig, write_benchmark

    root = write_benchmark(tmp_path / "rv", SynthConfig(num_videos=12, seed=0), fmt="reasonvos")
    rv = ReasonVOSDataset(root)
    revos = {s: ReVOSDataset(synth_root, s) for s in ("train", "valid")}
    revos_by_text = {}
    for ds in revos.values():
        for e in ds.expressions:
            revos_by_text[(e.video.split("/")[-1], e.text)] = (ds, e)
    assert len(rv.expressions) == sum(1 for d in revos.values() for e in d.expressions if e.type_id != 2)
    for e in rv.expressions[:12]:
        ds, ref = revos_by_text[(e.video, e.text)]  # same seed -> same videos, same GT
        assert rv.gt_areas(e) == ds.gt_areas(ref)
