"""Mask PNGs read exactly as the reference scripts read them: `cv2.imread(path, cv2.IMREAD_GRAYSCALE)` (VISA's
eval_revos/eval_mevis, VideoLISA's eval_reason_vos, for predictions and ReasonVOS GT alike).

What that gives, per PNG kind: 8-bit grey -> the values as saved (0/255 or 0/1); 1-bit grey -> 0/255 (libpng
expands low bit depths to 8 bits); palette, RGB, RGBA -> the grey level of each pixel's colour (alpha dropped), not
the palette index; 16-bit -> reduced to 8 bits (a 16-bit mask holding 1 reads as 0). Those are the pixels A and R
are computed on, and their non-zero pixels are the foreground for J and F.

Fast path: non-interlaced 8-bit grey PNGs (what `veason-r1 predict` writes and most tools save) are inflated with
zlib-ng and unfiltered by `unfilter_gray8` (numba; the PNG spec's five row filters). Why: inflating a mostly-empty
720p mask is most of `cv2.imread`'s time, and zlib-ng inflates such streams several times faster than the zlib in
OpenCV's libpng (bench/bench_metrics.py `breakdown`). Every other PNG goes through OpenCV's own decoder. A file that
is not a PNG (a JPEG saved as .png, say) or is damaged is refused with an error naming it.
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from numba import njit

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {0: "grey", 2: "RGB", 3: "palette", 4: "grey+alpha", 6: "RGBA"}
_CRITICAL = (b"IHDR", b"PLTE", b"IDAT", b"IEND")


class PNGError(ValueError):
    """A mask file that cannot be read as the reference reads it (the message names the file)."""


def _kind(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG data"
    if data[:4] in (b"GIF8", b"RIFF") or data[:2] == b"BM":
        return "a GIF/WebP/BMP image"
    return "no PNG signature"


def png_header(data: bytes, path: str | os.PathLike = "<bytes>") -> tuple[int, int, int, int, int]:
    """(height, width, bit depth, colour type, interlace) from the IHDR chunk."""
    if not data.startswith(PNG_SIGNATURE):
        raise PNGError(f"{path}: not a PNG file ({_kind(data)}); prediction masks must be PNG images")
    if len(data) < 33 or data[12:16] != b"IHDR":
        raise PNGError(f"{path}: damaged PNG (no IHDR chunk)")
    width, height, depth, color, _comp, _filt, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return height, width, depth, color, interlace


def mode_name(depth: int, color: int) -> str:
    return f"{depth}-bit {COLOR_TYPES.get(color, f'colour type {color}')}"


def _chunks(data: bytes, path) -> tuple[bytes, bool]:
    """(concatenated IDAT data, saw IEND); CRCs of the critical chunks are checked as libpng does."""
    pos = 8
    idat = []
    n = len(data)
    while pos + 12 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        ctype = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > n:
            raise PNGError(f"{path}: damaged PNG (chunk {ctype!r} is cut short)")
        if ctype in _CRITICAL:
            crc = int.from_bytes(data[end - 4:end], "big")
            if zlib.crc32(data[pos + 4:end - 4]) != crc:
                raise PNGError(f"{path}: damaged PNG (CRC error in chunk {ctype.decode('latin-1')})")
        if ctype == b"IDAT":
            idat.append(data[pos + 8:end - 4])
        elif ctype == b"IEND":
            return b"".join(idat), True
        pos = end
    return b"".join(idat), False


@njit(cache=True, nogil=True)
def unfilter_gray8(raw, out):
    """Reconstruct the (H, W) uint8 image from inflated PNG scanlines (filter byte + W bytes per row).
    Returns 0, or 1 + the first invalid filter type."""
    h, w = out.shape
    stride = w + 1
    for y in range(h):
        f = raw[y * stride]
        base = y * stride + 1
        if f == 0:
            for x in range(w):
                out[y, x] = raw[base + x]
        elif f == 1:
            left = np.uint8(0)
            for x in range(w):
                left = np.uint8(raw[base + x] + left)
                out[y, x] = left
        elif f == 2:
            if y == 0:
                for x in range(w):
                    out[y, x] = raw[base + x]
            else:
                for x in range(w):
                    out[y, x] = np.uint8(raw[base + x] + out[y - 1, x])
        elif f == 3:
            left = 0
            for x in range(w):
                up = np.int64(out[y - 1, x]) if y > 0 else 0
                v = np.uint8(np.int64(raw[base + x]) + ((left + up) >> 1))
                out[y, x] = v
                left = np.int64(v)
        elif f == 4:
            a = np.int32(0)  # left, up (b) and upper-left (c) neighbours
            c = np.int32(0)
            for x in range(w):
                b = np.int32(out[y - 1, x]) if y > 0 else np.int32(0)
                d = np.int32(raw[base + x])
                if d == 0 and a == b and b == c:  # flat neighbourhood: the predictor is a (most of a mask)
                    out[y, x] = np.uint8(a)
                    c = b
                    continue
                pa = abs(b - c)  # |p - a| for p = a + b - c
                pb = abs(a - c)
                pc = abs(a + b - 2 * c)
                pred = a if (pa <= pb and pa <= pc) else (b if pb <= pc else c)
                a = np.int32(np.uint8(d + pred))
                out[y, x] = np.uint8(a)
                c = b
        else:
            return np.int64(f) + 1
    return 0


def decode_mask_png(data: bytes, path: str | os.PathLike = "<bytes>", out: np.ndarray | None = None) -> np.ndarray:
    """PNG bytes -> (H, W) uint8, the array `cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)` gives. `out` (optional,
    (H, W) uint8, C-contiguous) receives the pixels on the fast path."""
    height, width, depth, color, interlace = png_header(data, path)
    if height == 0 or width == 0:
        raise PNGError(f"{path}: PNG of size {height}x{width}")
    if depth == 8 and color == 0 and interlace == 0:
        idat, _ = _chunks(data, path)
        from zlib_ng import zlib_ng

        try:
            raw = zlib_ng.decompress(idat)
        except zlib_ng.error as e:
            raise PNGError(f"{path}: damaged PNG (image data does not inflate: {e})") from None
        need = height * (width + 1)
        if len(raw) < need:
            raise PNGError(f"{path}: damaged PNG (image data ends after {len(raw)} of {need} bytes)")
        if out is None or out.shape != (height, width) or out.dtype != np.uint8 or not out.flags.c_contiguous:
            out = np.empty((height, width), np.uint8)
        bad = unfilter_gray8(np.frombuffer(raw, np.uint8, count=need), out)
        if bad:
            raise PNGError(f"{path}: damaged PNG (invalid row filter type {bad - 1})")
        return out
    import cv2

    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
    if arr is None:
        raise PNGError(f"{path}: OpenCV cannot decode this {mode_name(depth, color)} PNG")
    return arr


def read_mask_png(path: str | os.PathLike, out: np.ndarray | None = None) -> np.ndarray:
    """A mask PNG as the reference scripts read it (see the module docstring); errors name the file."""
    path = Path(path)
    data = path.read_bytes()
    return decode_mask_png(data, path, out)
