"""The evaluation reads and scores exactly as the reference scripts do (VISA tools/eval_revos.py + tools/metrics.py,
VideoLISA's eval_reason_vos.py, DAVIS metrics):

- ReVOS A/R with `--r-mode literal`: VISA's GT is the uint8 *sum* of the objects' masks (overlaps hold 2) and its
  R takes (1 - gt) * pred in uint8 (1 - 2 -> 255, 255 * 255 -> 1). Reference values here come from hand arithmetic
  and from VISA's formulas written out in this file (not from the code under test).
- Prediction PNGs are decoded as `cv2.imread(path, cv2.IMREAD_GRAYSCALE)`, for every PNG kind users produce; a JPEG
  saved as .png is refused with an error naming the file.
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from veason_r1.cli import main as cli_main
from veason_r1.data.mask_png import PNGError, decode_mask_png, read_mask_png
from veason_r1.data.masks import encode_rle
from veason_r1.eval.evaluators import EvalConfig, evaluate_revos
from veason_r1.eval.metrics import frame_scores
from veason_r1.eval.packed import mask_from_rles, pack_mask


def rect(r0, r1, c0, c1, shape=(10, 10)):
    m = np.zeros(shape, np.uint8)
    m[r0:r1 + 1, c0:c1 + 1] = 1
    return m


# ---------------------------------------------------------------------------------------------------------------
# VISA's A and R, written out as its script computes them (uint8 stacks, `gt += decode(rle)`)


def visa_expression(objects: list[list[np.ndarray | None]], preds: list[np.ndarray], fgs: list[np.ndarray]):
    """(A, R) of one expression as VISA: objects[k][t] is object k's 0/1 mask in frame t (None = absent)."""
    n = len(preds)
    h, w = preds[0].shape
    gt = np.zeros((n, h, w), np.uint8)
    for t in range(n):
        for obj in objects:
            if obj[t] is not None:
                gt[t] += obj[t].astype(np.uint8)
    accs, robs = [], []
    for g, p, fg in zip(gt, np.asarray(preds, np.uint8), np.asarray(fgs, np.uint8)):
        accs.append(np.mean(g == p))
        neg = ((1 - g) * p).sum()
        pos = fg.sum()
        robs.append(max(1 - neg / (pos + 1e-6), 0.0))
    return float(np.array(accs).mean()), float(np.array(robs).mean())


def union_expression(objects, preds, fgs, binarise: bool):
    """The boolean-union variant: GT = OR of the objects (0/1), prediction as saved or binarised."""
    n = len(preds)
    accs, robs = [], []
    for t in range(n):
        g = np.zeros(preds[0].shape, np.uint8)
        for obj in objects:
            if obj[t] is not None:
                g |= obj[t].astype(np.uint8)
        p = (preds[t] != 0).astype(np.uint8) if binarise else preds[t]
        accs.append(np.mean(g == p))
        neg = int(((p != 0) & (g == 0)).sum()) if binarise else int(p[g == 0].astype(np.int64).sum())
        robs.append(max(1 - neg / (int(fgs[t].sum()) + 1e-6), 0.0))
    return float(np.mean(accs)), float(np.mean(robs))


def test_overlap_by_hand():
    """Objects A (rows/cols 2-5) and B (4-7) overlap in 4 pixels; the prediction is exactly their union."""
    a, b = rect(2, 5, 2, 5), rect(4, 7, 4, 7)
    gt_sum = a + b  # VISA's GT: 24 pixels hold 1, 4 hold 2
    union = (a | b).astype(np.uint8)
    assert int((gt_sum == 2).sum()) == 4 and int(union.sum()) == 28
    fg = 28
    # 0/255 prediction: A = 72/100 either way (255 never equals 1 or 2); literal R counts 255 * 255 = 1 (uint8) at
    # each overlap pixel: 1 - 4 / 28; the union GT has no false positive: R = 1
    s = frame_scores(gt_sum, union * 255, fg)
    assert s.A == 0.72 and s.R == pytest.approx(1 - 4 / 28, abs=1e-7) and s.R == 1 - 4 / (28 + 1e-6)
    u = frame_scores(union, union * 255, fg)
    assert u.A == 0.72 and u.R == 1.0
    assert s.A_scale_free == u.A_scale_free == 1.0 and s.R_scale_free == u.R_scale_free == 1.0
    assert s.J == u.J == 1.0 and s.F == u.F == 1.0  # J and F: any non-zero pixel is foreground
    # 0/1 prediction: literal A = (72 + 24) / 100 (2 != 1 at the overlap); (1 - 2) * 1 = 255 per overlap pixel
    # -> neg 1020 > 28 -> R = 0; union: A = R = 1
    s1 = frame_scores(gt_sum, union, fg)
    assert s1.A == 0.96 and s1.R == 0.0
    assert frame_scores(union, union, fg).A == 1.0 and frame_scores(union, union, fg).R == 1.0
    # and VISA's formulas written out agree with the hand values
    assert visa_expression([[a], [b]], [union * 255], [union]) == (0.72, 1 - 4 / (28 + 1e-6))
    assert visa_expression([[a], [b]], [union], [union]) == (0.96, 0.0)


def test_three_objects_and_soft_predictions_match_visa():
    """Three overlapping objects (values up to 3), soft (many-valued) and 0/1/0/255 predictions, random shapes."""
    rng = np.random.default_rng(5)
    shape = (37, 70)  # width not a multiple of 64 or 8
    for trial in range(30):
        objs = []
        for _ in range(3):
            m = np.zeros(shape, np.uint8)
            r0, c0 = rng.integers(0, 30), rng.integers(0, 60)
            m[r0:r0 + rng.integers(3, 20), c0:c0 + rng.integers(3, 40)] = 1
            objs.append(m if rng.random() < 0.9 else None)
        union = np.zeros(shape, np.uint8)
        for m in objs:
            if m is not None:
                union |= m
        kind = trial % 3
        pred = np.roll(union, (int(rng.integers(-3, 4)), int(rng.integers(-3, 4))), axis=(0, 1))
        pred = pred * (255 if kind == 0 else 1) if kind < 2 else (pred * rng.integers(1, 256, shape)).astype(np.uint8)
        fg = union.copy()
        fg[:3, :5] = 1
        want = visa_expression([[m] for m in objs], [pred], [fg])
        gt = mask_from_rles([None if m is None else encode_rle(m) for m in objs], shape, literal=True)
        from veason_r1.eval.metrics import score_masks

        got = score_masks(gt, pack_mask(pred), int(fg.sum()))
        assert (got.A, got.R) == want, trial
        u = score_masks(mask_from_rles([None if m is None else encode_rle(m) for m in objs], shape, literal=False),
                        pack_mask(pred), int(fg.sum()))
        assert (u.A, u.R) == union_expression([[m] for m in objs], [pred], [fg], binarise=False), trial
        assert (u.A_scale_free, u.R_scale_free) == union_expression([[m] for m in objs], [pred], [fg], True), trial
        assert (got.A_scale_free, got.R_scale_free) == (u.A_scale_free, u.R_scale_free)


def test_uint8_wraparound_of_the_summed_gt():
    """VISA's `gt += decode(rle)` is uint8: it wraps only past 255, which needs 256 overlapping objects; the sum of
    2 objects already makes 1 - gt wrap to 255 (checked above); here a pixel covered by 3 objects with a 0/255
    prediction: (1 - 3) * 255 = 254 * 255 = 2 (mod 256)."""
    m = rect(0, 0, 0, 0, (4, 4))
    gt = mask_from_rles([encode_rle(m)] * 3, (4, 4), literal=True)
    from veason_r1.eval.metrics import score_masks

    s = score_masks(gt, pack_mask(m * 255), 1)
    assert s.R == max(1 - 2 / (1 + 1e-6), 0.0) == 0.0
    s = score_masks(gt, pack_mask(m * 255), 4)
    assert s.R == 1 - 2 / (4 + 1e-6)


# ---------------------------------------------------------------------------------------------------------------
# A ReVOS-format folder with overlapping objects: `veason-r1 eval revos --r-mode literal|union`


def build_overlap_revos(root: Path, pred: Path, scale: int) -> tuple[list, list, list]:
    """One 40x64 video, 4 frames, one expression of two objects that overlap in frames 1-3; predictions exact in
    frames 0 and 2, shifted in 1 and 3."""
    h, w = 40, 64
    frames = [f"{t:05d}" for t in range(4)]
    a = [rect(5, 20, 5 + t, 30 + t, (h, w)) for t in range(4)]
    b = [None] + [rect(15, 35, 25 - t, 50, (h, w)) for t in range(1, 4)]
    c = rect(0, 3, 60, 63, (h, w))  # another object of the video (foreground only)
    mask_dict = {"1": [encode_rle(m) for m in a], "2": [None if m is None else encode_rle(m) for m in b],
                 "3": [encode_rle(c)] * 4}
    fgs = [(a[t] | (b[t] if b[t] is not None else 0) | c).astype(np.uint8) for t in range(4)]
    meta = {"videos": {"vid": {"vid_id": 0, "height": h, "width": w, "frames": frames, "expressions": {
        "0": {"exp": "the two boxes", "obj_id": [1, 2], "anno_id": ["1", "2"], "type_id": 0},
        "1": {"exp": "the one that stays", "obj_id": [1], "anno_id": ["1"], "type_id": 1}}}}}
    root.mkdir(parents=True)
    (root / "mask_dict.json").write_text(json.dumps(mask_dict))
    (root / "mask_dict_foreground.json").write_text(json.dumps({"vid": {"masks_rle": [encode_rle(m) for m in fgs]}}))
    (root / "meta_expressions_valid_.json").write_text(json.dumps(meta))
    preds = {"0": [], "1": []}
    for t in range(4):
        union = a[t] | (b[t] if b[t] is not None else 0)
        for exp, m in (("0", union), ("1", a[t])):
            p = np.roll(m, (t % 2, 2 * (t % 2)), axis=(0, 1)).astype(np.uint8) * scale  # frames 1, 3 shifted
            (pred / "vid" / exp).mkdir(parents=True, exist_ok=True)
            Image.fromarray(p, mode="L").save(pred / "vid" / exp / f"{frames[t]}.png")
            preds[exp].append(p)
    return [[a, b], [a]], [preds["0"], preds["1"]], fgs


@pytest.mark.parametrize("scale", [255, 1])
def test_revos_literal_mode_equals_visa_on_overlaps(tmp_path, scale):
    root, pred = tmp_path / "data", tmp_path / "pred"
    objects, preds, fgs = build_overlap_revos(root, pred, scale)
    out = tmp_path / "literal.json"
    assert cli_main(["eval", "revos", "--data", str(root), "--pred", str(pred), "--out", str(out), "--workers", "1",
                     "--no-progress", "--r-mode", "literal"]) == 0
    lit = json.loads(out.read_text())
    assert lit["r_mode"] == "literal"
    for split, k in (("referring", 0), ("reasoning", 1)):
        a, r = visa_expression(objects[k], preds[k], fgs)
        assert lit[split]["A"] == 100 * a and lit[split]["R"] == 100 * r, split
    # the two-object expression: its overlap lowers R (0/255: by 1 per predicted overlap pixel; 0/1: by 255)
    s_union, _ = evaluate_revos(root, pred, EvalConfig(progress=False, r_mode="union"))
    a_u, r_u = union_expression(objects[0], preds[0], fgs, binarise=False)
    assert s_union["referring"]["A"] == 100 * a_u and s_union["referring"]["R"] == 100 * r_u
    assert lit["referring"]["R"] < s_union["referring"]["R"]
    assert lit["reasoning"] == {k: v for k, v in s_union["reasoning"].items()}  # one object: no overlap
    a_sf, r_sf = union_expression(objects[0], preds[0], fgs, binarise=True)
    assert lit["referring"]["R_scale_free"] == s_union["referring"]["R_scale_free"] == 100 * r_sf
    assert lit["referring"]["A_scale_free"] == 100 * a_sf


# ---------------------------------------------------------------------------------------------------------------
# PNG decoding: every kind users save, against OpenCV's IMREAD_GRAYSCALE (the reference's reader)


def _mask(h=12, w=21):
    m = np.zeros((h, w), np.uint8)
    m[2:7, 3:15] = 1
    m[8, 0:w] = 1
    return m


def _save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, "PNG", **kw)
    return path


def png_kinds(tmp_path: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """name -> (PNG file, the array cv2.IMREAD_GRAYSCALE must give, worked out by hand)."""
    m = _mask()
    kinds = {}
    kinds["L 0/255"] = (_save(Image.fromarray(m * 255, "L"), tmp_path / "l255.png"), m * 255)
    kinds["L 0/1"] = (_save(Image.fromarray(m, "L"), tmp_path / "l01.png"), m)
    kinds["1-bit"] = (_save(Image.fromarray(m.astype(bool)), tmp_path / "bit.png"), m * 255)  # libpng: 1 -> 255
    pal = Image.fromarray(m, "P")
    pal.putpalette([0, 0, 0, 200, 30, 10] + [0] * 762)  # index 1 = (200, 30, 10)
    grey = 78  # its grey level (0.299 R + 0.587 G + 0.114 B = 78.55; libpng's fixed point truncates), not index 1
    kinds["palette"] = (_save(pal, tmp_path / "pal.png"), m * grey)
    rgb = np.stack([m * 255, m * 255, m * 255], -1).astype(np.uint8)
    kinds["RGB"] = (_save(Image.fromarray(rgb, "RGB"), tmp_path / "rgb.png"), m * 255)
    rgba = np.concatenate([rgb, np.full(m.shape + (1,), 255, np.uint8) * m[..., None]], -1)
    kinds["RGBA"] = (_save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"), m * 255)  # alpha dropped
    kinds["16-bit holding 1"] = (_save(Image.fromarray(m.astype(np.uint16), "I;16"), tmp_path / "i16.png"),
                                 np.zeros_like(m))  # 8-bit reduction: 1 -> 0
    kinds["16-bit holding 65535"] = (_save(Image.fromarray(m.astype(np.uint16) * 65535, "I;16"),
                                          tmp_path / "i16max.png"), m * 255)
    la = Image.fromarray(np.stack([m * 255, m * 255], -1).astype(np.uint8), "LA")
    kinds["LA"] = (_save(la, tmp_path / "la.png"), m * 255)
    grey_t = Image.fromarray(m * 255, "L")
    kinds["L with tRNS"] = (_save(grey_t, tmp_path / "trns.png", transparency=0), m * 255)
    return kinds


def test_png_kinds_decode_as_opencv(tmp_path):
    for name, (path, want) in png_kinds(tmp_path).items():
        got = read_mask_png(path)
        ref = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert got.dtype == np.uint8 and np.array_equal(got, ref), name
        assert np.array_equal(got, want), name


def _png_bytes(rows: np.ndarray, filters: list[int], extra_chunks: list[tuple[bytes, bytes]] = ()) -> bytes:
    """An 8-bit grey PNG with the given filter type per row (an independent encoder: PNG spec section 9)."""
    h, w = rows.shape
    raw = bytearray()
    prev = np.zeros(w, np.int64)
    for y in range(h):
        cur = rows[y].astype(np.int64)
        left = np.concatenate([[0], cur[:-1]])
        upleft = np.concatenate([[0], prev[:-1]])
        f = filters[y]
        if f == 0:
            line = cur
        elif f == 1:
            line = cur - left
        elif f == 2:
            line = cur - prev
        elif f == 3:
            line = cur - (left + prev) // 2
        else:
            pa, pb, pc = np.abs(prev - upleft), np.abs(left - upleft), np.abs(left + prev - 2 * upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
            line = cur - pred
        raw.append(f)
        raw += bytes((line % 256).astype(np.uint8))
        prev = cur

    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + b"".join(chunk(t, d) for t, d in extra_chunks)
    comp = zlib.compress(bytes(raw), 9)
    body += chunk(b"IDAT", comp[: len(comp) // 2]) + chunk(b"IDAT", comp[len(comp) // 2:])  # two IDAT chunks
    return b"\x89PNG\r\n\x1a\n" + body + chunk(b"IEND", b"")


def test_fast_path_all_row_filters_and_ancillary_chunks():
    rng = np.random.default_rng(0)
    for trial in range(10):
        h, w = int(rng.integers(1, 30)), int(rng.integers(1, 90))
        img = (rng.random((h, w)) < 0.3).astype(np.uint8) * rng.integers(1, 256)
        if trial % 2:
            img = rng.integers(0, 256, (h, w)).astype(np.uint8)  # every value, all filters stress the arithmetic
        data = _png_bytes(img, [int(f) for f in rng.integers(0, 5, h)],
                          [(b"gAMA", struct.pack(">I", 45455)), (b"tEXt", b"k\x00v")])
        got = decode_mask_png(data)
        ref = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(got, img) and np.array_equal(got, ref), trial


def test_refuses_non_png_and_damaged_files(tmp_path, capsys):
    m = _mask() * 255
    jpg = tmp_path / "00000.png"
    Image.fromarray(m, "L").save(jpg, "JPEG")
    with pytest.raises(PNGError, match=r"00000\.png: not a PNG file \(JPEG data\)"):
        read_mask_png(jpg)
    good = io.BytesIO()
    Image.fromarray(m, "L").save(good, "PNG")
    data = good.getvalue()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) - 30])
    with pytest.raises(PNGError, match=r"cut\.png: damaged PNG"):
        read_mask_png(cut)
    bad_crc = bytearray(data)
    bad_crc[data.index(b"IDAT") + 6] ^= 0xFF  # a byte of the image data: its chunk's CRC no longer matches
    (tmp_path / "crc.png").write_bytes(bytes(bad_crc))
    with pytest.raises(PNGError, match=r"crc\.png: damaged PNG \(CRC error"):
        read_mask_png(tmp_path / "crc.png")
    bad_filter = _png_bytes(_mask(), [0] * 12)
    raw = zlib.decompress(b"".join(_idat_parts(bad_filter)))
    raw = bytes([7]) + raw[1:]
    (tmp_path / "filt.png").write_bytes(_rebuild_with_idat(bad_filter, zlib.compress(raw)))
    with pytest.raises(PNGError, match=r"filt\.png: damaged PNG \(invalid row filter type 7\)"):
        read_mask_png(tmp_path / "filt.png")


def _idat_parts(data: bytes) -> list[bytes]:
    pos, out = 8, []
    while pos < len(data):
        n = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IDAT":
            out.append(data[pos + 8:pos + 8 + n])
        pos += 12 + n
    return out


def _rebuild_with_idat(data: bytes, idat: bytes) -> bytes:
    ihdr_end = 8 + 12 + 13
    chunk = struct.pack(">I", len(idat)) + b"IDAT" + idat + struct.pack(">I", zlib.crc32(b"IDAT" + idat))
    iend = struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    return data[:ihdr_end] + chunk + iend


def test_evaluator_scores_every_png_kind_as_the_decoded_arrays(tmp_path, capsys):
    """A ReVOS expression whose frames are saved in different PNG kinds scores as the arrays OpenCV decodes."""
    h, w = 12, 21
    m = _mask(h, w)
    root, pred = tmp_path / "data", tmp_path / "pred"
    kinds = png_kinds(tmp_path)
    names = [f"{t:05d}" for t in range(len(kinds))]
    gt = rect(1, 7, 2, 12, (h, w))
    meta = {"videos": {"v": {"vid_id": 0, "height": h, "width": w, "frames": names, "expressions": {
        "0": {"exp": "x", "obj_id": [1], "anno_id": ["1"], "type_id": 0},
        "1": {"exp": "y", "obj_id": [1], "anno_id": ["1"], "type_id": 1}}}}}
    root.mkdir()
    (root / "mask_dict.json").write_text(json.dumps({"1": [encode_rle(gt)] * len(names)}))
    (root / "mask_dict_foreground.json").write_text(json.dumps({"v": {"masks_rle": [encode_rle(gt)] * len(names)}}))
    (root / "meta_expressions_valid_.json").write_text(json.dumps(meta))
    decoded = []
    for exp in ("0", "1"):
        (pred / "v" / exp).mkdir(parents=True)
        for name, (path, want) in zip(names, kinds.values()):
            (pred / "v" / exp / f"{name}.png").write_bytes(path.read_bytes())
            if exp == "0":
                decoded.append(cv2.imread(str(path), cv2.IMREAD_GRAYSCALE))
    _, rows = evaluate_revos(root, pred, EvalConfig(progress=False))
    want = [frame_scores(gt, d, int(gt.sum())) for d in decoded]
    assert rows[0].scores["R"] == np.mean([x.R for x in want]) and rows[0].scores["A"] == np.mean([x.A for x in want])
    assert rows[0].scores["J"] == np.mean([x.J for x in want])
    # and a JPEG saved under a frame's name stops the evaluation with one line naming it (exit 2)
    jpg = pred / "v" / "1" / f"{names[0]}.png"
    Image.fromarray(m * 255, "L").save(jpg, "JPEG")
    rc = cli_main(["eval", "revos", "--data", str(root), "--pred", str(pred), "--workers", "1", "--no-progress"])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {jpg}: not a PNG file (JPEG data); " \
                                                              f"prediction masks must be PNG images"
