"""veason_r1.eval.metrics: every row of docs/metrics.md, and exact equality with the literal DAVIS/VISA reference."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from veason_r1.eval.metrics import (
    FrameScore,
    accuracy,
    boundary_f,
    boundary_radius,
    frame_scores,
    jaccard,
    robustness,
    seg2bmap,
    video_scores,
)


def _load_reference():
    """tests/ is not a package (and verl installs a top-level `tests`): load the literal reference by path."""
    spec = importlib.util.spec_from_file_location("reference_metrics", Path(__file__).with_name("reference_metrics.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ref = _load_reference()


def rect(r0, r1, c0, c1, shape=(10, 10), value=1):
    m = np.zeros(shape, np.uint8)
    m[r0:r1 + 1, c0:c1 + 1] = value
    return m


EMPTY = np.zeros((10, 10), np.uint8)
FULL = np.ones((10, 10), np.uint8)
SQ = rect(2, 5, 2, 5)


def pixel(r, c, shape=(10, 10)):
    return rect(r, r, c, c, shape)


JF_VECTORS = {  # id: (gt, pred, J, F) -- docs/metrics.md
    "V1": (EMPTY, EMPTY, 1, 1),
    "V2": (SQ, SQ, 1, 1),
    "V3": (SQ, EMPTY, 0, 0),
    "V4": (EMPTY, SQ, 0, 0),
    "V5": (EMPTY, FULL, 0, 1),
    "V6": (FULL, EMPTY, 0, 1),
    "V7": (FULL, FULL, 1, 1),
    "V8": (SQ, rect(2, 5, 3, 6), 12 / 20, 1),
    "V9": (SQ, rect(2, 5, 4, 7), 8 / 24, 0.625),
    "V10": (pixel(4, 4), pixel(4, 4), 1, 1),
    "V11": (pixel(4, 4), pixel(4, 6), 0, 0.5),
    "V12": (rect(6, 9, 6, 9), rect(6, 9, 6, 9), 1, 1),
    "V13": (rect(20, 59, 20, 59, (100, 100)), rect(20, 59, 22, 61, (100, 100)), 19 / 21, 1),
    "V14": (rect(20, 59, 20, 59, (100, 100)), rect(20, 59, 23, 62, (100, 100)), 37 / 43, 0.525),
    "V15": (SQ, rect(2, 5, 4, 7, value=255), 8 / 24, 0.625),
}


@pytest.mark.parametrize("vid", sorted(JF_VECTORS, key=lambda k: int(k[1:])))
def test_jf_vectors(vid):
    gt, pred, j, f = JF_VECTORS[vid]
    s = frame_scores(gt, pred)
    assert s.J == pytest.approx(j, abs=1e-12)
    assert s.F == pytest.approx(f, abs=1e-12)
    assert jaccard(gt, pred) == pytest.approx(j, abs=1e-12)
    assert boundary_f(gt, pred) == pytest.approx(f, abs=1e-12)
    # and the literal reference agrees with docs/metrics.md too (so the reference itself is checked)
    assert float(ref.db_eval_iou(gt, pred)) == pytest.approx(j, abs=1e-12)
    assert ref.f_measure(pred, gt) == pytest.approx(f, abs=1e-12)


def test_boundary_counts_of_vectors():
    assert seg2bmap(SQ).sum() == 16  # V2: ring of box [1..5]^2
    assert set(zip(*np.nonzero(seg2bmap(SQ)))) == {(r, c) for r in range(1, 6) for c in range(1, 6)
                                                   if r in (1, 5) or c in (1, 5)}
    assert seg2bmap(pixel(4, 4)).sum() == 4  # V10
    assert seg2bmap(rect(6, 9, 6, 9)).sum() == 9  # V12
    assert seg2bmap(FULL).sum() == 0  # full frame: no boundary
    b = seg2bmap(rect(20, 59, 20, 59, (100, 100)))
    assert b.sum() == 160  # V14: P = R = 84/160


def test_v16_expression_means():
    gts = [EMPTY, SQ, SQ]
    preds = [EMPTY, rect(2, 5, 3, 6), EMPTY]
    s = video_scores(gts, preds)
    assert s["J"] == pytest.approx(0.533333, abs=1e-6)
    assert s["F"] == pytest.approx(0.666667, abs=1e-6)
    assert (s["J"] + s["F"]) / 2 == pytest.approx(0.6, abs=1e-6)


SQ_PLUS = SQ.copy()
SQ_PLUS[8, 8] = 1


@pytest.mark.parametrize("case,gt,pred,fg_area,r,a", [
    ("V17", SQ, SQ_PLUS, 16, 0.9375, 0.99),
    ("V17b", SQ, SQ_PLUS * 255, 16, 0.0, 0.83),
    ("V18", SQ, SQ, 16, 1.0, 1.0),
    ("V18b", SQ, SQ * 255, 16, 1.0, 0.84),
    ("V19", EMPTY, EMPTY, 0, 1.0, None),
    ("V19b", EMPTY, pixel(3, 3), 0, 0.0, None),
])
def test_revos_a_r_vectors(case, gt, pred, fg_area, r, a):
    s = frame_scores(gt, pred, foreground_area=fg_area)
    assert s.R == pytest.approx(r, abs=1e-6)
    fg = gt.astype(np.uint8)
    assert robustness(gt, pred, fg) == pytest.approx(r, abs=1e-6)
    assert float(ref.r2vos_robustness([gt], [pred], [fg])[0]) == pytest.approx(r, abs=1e-6)
    if a is not None:
        assert s.A == pytest.approx(a, abs=1e-12)
        assert accuracy(gt, pred) == pytest.approx(a, abs=1e-12)
        assert float(ref.r2vos_accuracy([gt], [pred])[0]) == pytest.approx(a, abs=1e-12)


def test_scale_free_r_ignores_value_scale():
    s1 = frame_scores(SQ, SQ_PLUS, foreground_area=16)
    s255 = frame_scores(SQ, SQ_PLUS * 255, foreground_area=16)
    assert s1.R_scale_free == s255.R_scale_free == pytest.approx(0.9375)
    assert s255.R == 0.0 and s1.R == pytest.approx(0.9375)
    assert s1.J == s255.J and s1.F == s255.F


def test_bool_prediction_counts_as_one():
    s = frame_scores(SQ.astype(bool), SQ_PLUS.astype(bool), foreground_area=16)
    assert s.R == pytest.approx(0.9375) and s.A == pytest.approx(0.99)


@pytest.mark.parametrize("shape,radius", [((10, 10), 1), ((100, 100), 2), ((256, 256), 3), ((480, 854), 8),
                                          ((720, 1280), 12), ((1080, 1920), 18)])
def test_radius_table(shape, radius):
    assert boundary_radius(shape) == radius


def test_size_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same size"):
        frame_scores(np.zeros((4, 5)), np.zeros((5, 4)))


def test_frame_score_type():
    s = frame_scores(SQ, SQ)
    assert isinstance(s, FrameScore) and s.A is None and s.R is None
    assert frame_scores(SQ, SQ, with_accuracy=True).A == 1.0


# ---------------------------------------------------------------------------------------------------------------
# Exact equality with whole-frame dilation on many random shapes (touching borders, tiny, thin, noisy, full)


def _random_mask(rng, shape):
    h, w = shape
    kind = rng.integers(0, 7)
    m = np.zeros(shape, bool)
    if kind == 0:
        return m
    if kind == 1:
        return np.ones(shape, bool) if rng.random() < 0.5 else (rng.random(shape) < 0.5)
    if kind == 2:  # ellipse, possibly cut by the frame edge
        cy, cx = rng.uniform(-0.2, 1.2) * h, rng.uniform(-0.2, 1.2) * w
        ry, rx = rng.uniform(1, h), rng.uniform(1, w)
        yy, xx = np.mgrid[:h, :w]
        return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    if kind == 3:  # thin lines
        m[rng.integers(0, h), :] = True
        m[:, rng.integers(0, w)] = True
        return m
    if kind == 4:  # scattered pixels
        return rng.random(shape) < 0.01
    if kind == 5:  # rectangle touching a border
        r0, c0 = rng.integers(0, h), rng.integers(0, w)
        m[r0:, c0:] = True
        return m
    for _ in range(rng.integers(1, 5)):  # blobs
        r0, c0 = rng.integers(0, h), rng.integers(0, w)
        m[r0:r0 + rng.integers(1, h // 2 + 2), c0:c0 + rng.integers(1, w // 2 + 2)] = True
    return m


def _perturb(rng, m):
    out = np.roll(m, (rng.integers(-6, 7), rng.integers(-6, 7)), axis=(0, 1))
    if rng.random() < 0.5:
        out = out ^ (rng.random(m.shape) < 0.02)
    return out


def test_f_identical_to_whole_frame_dilation():
    rng = np.random.default_rng(0)
    shapes = [(1, 1), (1, 7), (7, 1), (2, 2), (10, 10), (37, 53), (64, 64), (65, 130), (120, 200), (200, 333)]
    n = 0
    for shape in shapes:
        for _ in range(25):
            g = _random_mask(rng, shape)
            p = _perturb(rng, g) if rng.random() < 0.7 else _random_mask(rng, shape)
            ours = frame_scores(g, p.astype(np.uint8) * 255, foreground_area=int(g.sum()) + 3)
            assert ours.F == ref.f_measure(p, g), (shape, n)
            assert ours.J == float(ref.db_eval_iou(g, p)), (shape, n)
            assert ours.A == float(ref.r2vos_accuracy([g.astype(np.uint8)], [p.astype(np.uint8) * 255])[0])
            assert ours.R == float(ref.r2vos_robustness([g.astype(np.uint8)], [p.astype(np.uint8) * 255],
                                                       [np.ones(int(g.sum()) + 3)])[0])
            n += 1
    # explicit radius larger than 64 px (crosses several words per shift) and bound_th >= 1
    g = _random_mask(np.random.default_rng(1), (150, 300))
    p = _perturb(np.random.default_rng(2), g)
    assert frame_scores(g, p, bound_th=70).F == ref.f_measure(p, g, bound_th=70)


def test_seg2bmap_equals_reference_and_rows_dilation_equals_ndimage():
    rng = np.random.default_rng(3)
    for shape in [(1, 1), (3, 9), (40, 41), (97, 64)]:
        for _ in range(10):
            m = _random_mask(rng, shape)
            b = ref.seg2bmap(m)
            assert np.array_equal(seg2bmap(m), b)
            for r in (1, 2, 5, 12):
                assert np.array_equal(ref.dilate_rows(b, r), ref.dilate_ndimage(b, r))


# ---------------------------------------------------------------------------------------------------------------
# Packed masks: COCO RLE straight to bits, values for A/R


def test_rle_bits_equal_pycocotools_decode():
    from pycocotools import mask as cocomask

    from veason_r1.eval.packed import mask_from_rles, words

    rng = np.random.default_rng(7)
    for shape in [(1, 1), (1, 65), (5, 1), (7, 64), (33, 70), (64, 128), (50, 200)]:
        for _ in range(6):
            m = _random_mask(rng, shape).astype(np.uint8)
            rle = cocomask.encode(np.asfortranarray(m))
            for counts in (rle["counts"].decode(), rle["counts"]):  # str (JSON) and bytes
                got = mask_from_rles([{"size": list(shape), "counts": counts}], shape)
                bits = np.unpackbits(got.bits.view(np.uint8), axis=1, bitorder="little")[:, :shape[1]]
                assert got.bits.shape == (shape[0], words(shape[1]))
                assert np.array_equal(bits, cocomask.decode(rle)), shape
                assert got.area == int(m.sum()) and got.value == (1 if m.any() else 0)
            uncompressed = {"size": list(shape), "counts": _runs(m)}
            got = mask_from_rles([uncompressed], shape)
            assert np.array_equal(np.unpackbits(got.bits.view(np.uint8), axis=1, bitorder="little")[:, :shape[1]], m)


def _runs(m: np.ndarray) -> list[int]:
    flat = m.flatten(order="F")
    runs, cur, n = [], 0, 0
    for v in flat:
        if v != cur:
            runs.append(n)
            cur, n = v, 0
        n += 1
    runs.append(n)
    return runs


def test_rle_errors_say_what_is_wrong():
    from veason_r1.eval.packed import mask_from_rles

    with pytest.raises(ValueError, match=r"RLE size \[4, 4\] differs from the frame size \[4, 5\]"):
        mask_from_rles([{"size": [4, 4], "counts": [16]}], (4, 5))
    with pytest.raises(ValueError, match="RLE runs cover 19 pixels, the frame has 20"):
        mask_from_rles([{"size": [4, 5], "counts": [3, 16]}], (4, 5))


def test_pack_mask_values():
    from veason_r1.eval.packed import pack_mask

    m = SQ.astype(bool)
    assert pack_mask(m).value == 1 and pack_mask(SQ * 255).value == 255 and pack_mask(EMPTY).value == 0
    soft = SQ * 7
    soft[3, 3] = 9
    assert pack_mask(soft).value is None and pack_mask(soft).area == 16
    wide = np.zeros((3, 131), np.uint8)  # width not a multiple of 8: the last byte is read too
    wide[1, 130] = 5
    assert pack_mask(wide).value == 5 and pack_mask(wide).rows == (1, 1)
    wide[2, 0] = 6
    assert pack_mask(wide).value is None
    with pytest.raises(ValueError, match="must hold uint8 values"):
        pack_mask(np.full((2, 2), 300))
    assert pack_mask(np.ones((2, 2), np.int64)).value == 1


def test_bench_refuses_to_time_without_the_real_reference(tmp_path, capsys):
    """Speed is only reported against real DAVIS/VISA code: no --reference-repo -> exit 2; a wrong folder is named."""
    spec = importlib.util.spec_from_file_location("bench_metrics", Path(__file__).resolve().parents[1] /
                                                  "bench" / "bench_metrics.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main([]) == 2
    assert "pass --reference-repo PATH" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=f"{tmp_path} is neither a davis2017-evaluation clone"):
        bench.main(["--reference-repo", str(tmp_path)])
