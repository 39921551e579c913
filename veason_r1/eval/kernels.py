"""Compiled inner loops of the evaluation (numba): packed masks, COCO RLE decoding, DAVIS boundaries and the
boundary match, and VISA's uint8 A/R arithmetic (PNG row unfiltering is in veason_r1.data.mask_png).

Why compiled: per frame the reference runs a dozen whole-frame numpy passes plus two `cv2.dilate` calls with a
disk of ~490 pixels; the same numbers need only the masks' bits (64 pixels per word) and the boundary pixels, but
that work is a few thousand small, data-dependent steps per frame, which numpy cannot express without ~100 passes.
Every kernel is exact integer arithmetic; `veason_r1.eval.metrics` turns the counts into the reference's floats.

A packed mask is a C-contiguous (H, ceil(W/64)) uint64 array: bit c % 64 of word c // 64 of row y is 1 when pixel
(y, c) is non-zero; bits at columns >= W are 0.
"""

from __future__ import annotations

import numpy as np
from numba import njit

_JIT = {"cache": True, "nogil": True}
_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)
_LOW_BITS = np.uint64(0x0101010101010101)
_GATHER = np.uint64(0x0102040810204080)  # moves bit 0 of byte i to bit 56 + i (no carries: distinct products)


@njit(**_JIT)
def _popcount(x):
    x = x - ((x >> np.uint64(1)) & np.uint64(0x5555555555555555))
    x = (x & np.uint64(0x3333333333333333)) + ((x >> np.uint64(2)) & np.uint64(0x3333333333333333))
    x = (x + (x >> np.uint64(4))) & np.uint64(0x0F0F0F0F0F0F0F0F)
    return np.int64((x * _LOW_BITS) >> np.uint64(56))


@njit(**_JIT)
def _lowest_bit(x):
    return _popcount((x & (~x + np.uint64(1))) - np.uint64(1))


@njit(**_JIT)
def _highest_bit(x):
    hb = 63
    while (x >> np.uint64(hb)) == np.uint64(0):
        hb -= 1
    return hb


# ---------------------------------------------------------------------------------------------------------------
# Packed masks: extent, and what A and R need of the values


@njit(**_JIT)
def bits_extent(bits, out):
    """out <- [set pixels, first row with content, last row] (rows -1 when empty)."""
    h, nw = bits.shape
    n = 0
    y0 = -1
    y1 = -1
    for y in range(h):
        row = 0
        for k in range(nw):
            if bits[y, k] != np.uint64(0):
                row += _popcount(bits[y, k])
        if row:
            n += row
            if y0 < 0:
                y0 = y
            y1 = y
    out[0] = n
    out[1] = y0
    out[2] = y1


@njit(**_JIT)
def value_stats(chunks, tail, out):
    """OR and AND of the non-zero bytes of a uint8 frame given as 8-byte chunks plus its last len % 8 bytes:
    out <- [OR, AND] (AND = 255 when there is no non-zero byte). OR == AND means one non-zero value."""
    v_or = np.uint64(0)
    v_and = _ONES
    for j in range(chunks.shape[0]):
        c = chunks[j]
        if c != np.uint64(0):
            t = c | (c >> np.uint64(4))
            t |= t >> np.uint64(2)
            t |= t >> np.uint64(1)
            t &= _LOW_BITS
            v_or |= c
            v_and &= c | ~(t * np.uint64(0xFF))
    vo = np.int64(0)
    va = np.int64(0xFF)
    for i in range(8):
        vo |= np.int64((v_or >> np.uint64(8 * i)) & np.uint64(0xFF))
        va &= np.int64((v_and >> np.uint64(8 * i)) & np.uint64(0xFF))
    for i in range(tail.shape[0]):
        if tail[i] != 0:
            vo |= np.int64(tail[i])
            va &= np.int64(tail[i])
    out[0] = vo
    out[1] = va


@njit(**_JIT)
def unpack_values(bits, width, value, out):
    """out[y, c] = value where bit (y, c) is set, else 0 (a binary mask back as a uint8 frame)."""
    h = bits.shape[0]
    for y in range(h):
        for c in range(width):
            out[y, c] = value if (bits[y, c >> 6] >> np.uint64(c & 63)) & np.uint64(1) else 0


# ---------------------------------------------------------------------------------------------------------------
# COCO RLE (column-major runs, first run = 0s) -> packed rows


@njit(**_JIT)
def rle_counts_from_string(s, out):
    """pycocotools' compressed counts string (ASCII bytes) -> run lengths in out[:n]; returns n, or -1 when the
    string ends inside a number."""
    m = 0
    p = 0
    n = s.shape[0]
    while p < n:
        x = 0
        k = 0
        more = 1
        while more:
            if p >= n:
                return -1
            c = np.int64(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = c & 0x20
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if m > 2:
            x += out[m - 2]
        out[m] = x
        m += 1
    return m


@njit(**_JIT)
def rle_to_bits(counts, h, bits, scratch):
    """Write the mask of column-major run lengths `counts` (H = h) into `bits`. Each column segment of a run of 1s
    toggles its first row and the row after it in `scratch`; a prefix XOR down each column then gives the mask.
    Returns the number of pixels the runs cover (the caller checks it equals H * W) or -1 for a negative run."""
    nw = bits.shape[1]
    for y in range(h):
        for k in range(nw):
            scratch[y, k] = np.uint64(0)
    pos = 0
    val = 0
    total_cols = nw * 64
    for i in range(counts.shape[0]):
        cnt = counts[i]
        if cnt < 0:
            return -1
        if val == 1 and cnt > 0:
            a = pos
            b = pos + cnt
            col = a // h
            while a < b and col < total_cols:
                end_col = (col + 1) * h
                e = min(end_col, b)
                bit = np.uint64(1) << np.uint64(col & 63)
                scratch[a - col * h, col >> 6] ^= bit
                if e - col * h < h:
                    scratch[e - col * h, col >> 6] ^= bit
                a = e
                col += 1
        pos += cnt
        val ^= 1
    for k in range(nw):
        acc = np.uint64(0)
        for y in range(h):
            acc ^= scratch[y, k]
            bits[y, k] = acc
    return pos


@njit(**_JIT)
def or_into(dst, src):
    """dst |= src; returns the number of pixels set in both before (overlapping objects)."""
    h, nw = dst.shape
    both = 0
    for y in range(h):
        for k in range(nw):
            s = src[y, k]
            if s != np.uint64(0):
                both += _popcount(dst[y, k] & s)
                dst[y, k] |= s
    return both


@njit(**_JIT)
def add_bits(bits, acc):
    """acc += mask at its set pixels (uint8, wrapping at 256 as VISA's `gt += decode(rle)`)."""
    h, nw = bits.shape
    for y in range(h):
        for k in range(nw):
            word = bits[y, k]
            while word != np.uint64(0):
                c = k * 64 + _lowest_bit(word)
                word &= word - np.uint64(1)
                acc[y, c] = np.uint8(acc[y, c] + np.uint8(1))


@njit(**_JIT)
def level_counts(layers, p, m_hist, n_hist):
    """For VISA's summed GT (layers: (objects, H, nw) bits): m_hist[c] += pixels of the union whose object count
    is c (mod 256, as in uint8), n_hist[c] += those of them set in p; returns the pixels of p outside the union.
    Counts are added bit-parallel: 8 bit planes per word hold each pixel's count (a ripple-carry adder wraps at
    256 like uint8), then each count level is an AND of planes."""
    n_obj, h, nw = layers.shape
    planes = np.zeros(8, np.uint64)
    top = min(n_obj, 255)
    outside = 0
    for y in range(h):
        for k in range(nw):
            u = np.uint64(0)
            ov = np.uint64(0)
            for i in range(n_obj):
                o = layers[i, y, k]
                ov |= u & o
                u |= o
            pw = p[y, k]
            outside += _popcount(pw & ~u)
            if u == np.uint64(0):
                continue
            if ov == np.uint64(0):
                m_hist[1] += _popcount(u)
                n_hist[1] += _popcount(u & pw)
                continue
            for j in range(8):
                planes[j] = np.uint64(0)
            for i in range(n_obj):
                carry = layers[i, y, k]
                j = 0
                while carry != np.uint64(0) and j < 8:
                    t = planes[j] & carry
                    planes[j] ^= carry
                    carry = t
                    j += 1
            for c in range(256 if n_obj > 255 else top + 1):
                sel = u
                for j in range(8):
                    sel &= planes[j] if (c >> j) & 1 else ~planes[j]
                if sel != np.uint64(0):
                    m_hist[c] += _popcount(sel)
                    n_hist[c] += _popcount(sel & pw)
    return outside


# ---------------------------------------------------------------------------------------------------------------
# J counts, DAVIS boundaries, boundary match


@njit(**_JIT)
def overlap_counts(g, p, out):
    """out <- [|g|, |p|, |g & p|, first row with content in g | p, last row] (rows -1 when both are empty)."""
    h, nw = g.shape
    ng = 0
    npx = 0
    ni = 0
    y0 = -1
    y1 = -1
    for y in range(h):
        row_any = False
        for k in range(nw):
            a = g[y, k]
            b = p[y, k]
            if (a | b) != np.uint64(0):
                row_any = True
                ng += _popcount(a)
                npx += _popcount(b)
                ni += _popcount(a & b)
        if row_any:
            if y0 < 0:
                y0 = y
            y1 = y
    out[0] = ng
    out[1] = npx
    out[2] = ni
    out[3] = y0
    out[4] = y1


@njit(**_JIT)
def _right_neighbour(m, y, k, nw, lastbit):
    """Word k of row y holding, at column c, the pixel at column c + 1; the last column holds its own pixel
    (replicated), so it never differs from its right neighbour."""
    x = m[y, k] >> np.uint64(1)
    if k + 1 < nw:
        x |= m[y, k + 1] << np.uint64(63)
    else:
        x |= m[y, k] & lastbit
    return x


@njit(**_JIT)
def boundary(m, width, y0, y1, out, row_min, row_max):
    """DAVIS `seg2bmap` of packed mask m into `out`, for the rows that can hold boundary pixels (y0 - 1 .. y1,
    y0/y1 = first/last row with content; `out` must be zero elsewhere). A pixel is boundary when it differs from
    its right, lower or lower-right neighbour; outside the frame the last row and column are replicated, which is
    the reference's rule for the last row (right neighbour only), last column (lower only) and the corner (never).
    Fills row_min/row_max (first/last boundary column per row, -1 for none) and returns the boundary pixel count."""
    h, nw = m.shape
    lastbit = np.uint64(1) << np.uint64((width - 1) & 63)
    for y in range(h):
        row_min[y] = -1
        row_max[y] = -1
    n = 0
    if y0 < 0:
        return 0
    start = y0 - 1 if y0 > 0 else 0
    for y in range(start, y1 + 1):
        last = y == h - 1
        for k in range(nw):
            s = m[y, k]
            e = _right_neighbour(m, y, k, nw, lastbit)
            if last:
                t = s
                se = e
            else:
                t = m[y + 1, k]
                se = _right_neighbour(m, y + 1, k, nw, lastbit)
            b = (s ^ e) | (s ^ t) | (s ^ se)
            out[y, k] = b
            if b != np.uint64(0):
                n += _popcount(b)
                if row_min[y] < 0:
                    row_min[y] = k * 64 + _lowest_bit(b)
                row_max[y] = k * 64 + _highest_bit(b)
    return n


@njit(**_JIT)
def clear_rows(m, y0, y1):
    if y0 < 0:
        return
    start = y0 - 1 if y0 > 0 else 0
    for y in range(start, y1 + 1):
        for k in range(m.shape[1]):
            m[y, k] = np.uint64(0)


@njit(**_JIT)
def _any_in_range(m, y, lo, hi):
    kl = lo >> 6
    kh = hi >> 6
    if kl == kh:
        mask = (_ONES << np.uint64(lo & 63)) & (_ONES >> np.uint64(63 - (hi & 63)))
        return (m[y, kl] & mask) != np.uint64(0)
    if (m[y, kl] >> np.uint64(lo & 63)) != np.uint64(0):
        return True
    for k in range(kl + 1, kh):
        if m[y, k] != np.uint64(0):
            return True
    return (m[y, kh] << np.uint64(63 - (hi & 63))) != np.uint64(0)


@njit(**_JIT)
def matched(a, a_min, b, b_min, b_max, width, half_widths, order):
    """Number of set pixels of `a` with a set pixel of `b` inside the disk around them, i.e.
    sum(a & dilate(b, disk)). The disk's row at offset dy spans |dx| <= half_widths[|dy|] (the offsets of
    skimage's disk(r)); rows are tried in `order` (0, 1, -1, 2, ...) and the search stops at the first hit."""
    h, nw = a.shape
    n = 0
    for y in range(h):
        if a_min[y] < 0:
            continue
        for k in range(a_min[y] >> 6, nw):
            word = a[y, k]
            while word != np.uint64(0):
                c = k * 64 + _lowest_bit(word)
                word &= word - np.uint64(1)
                for i in range(order.shape[0]):
                    dy = order[i]
                    yy = y + dy
                    if yy < 0 or yy >= h or b_min[yy] < 0:
                        continue
                    half = half_widths[dy if dy >= 0 else -dy]
                    lo = c - half
                    hi = c + half
                    lo = max(lo, b_min[yy])
                    hi = min(hi, b_max[yy])
                    if lo > hi:
                        continue
                    if _any_in_range(b, yy, lo, hi):
                        n += 1
                        break
    return n


# ---------------------------------------------------------------------------------------------------------------
# VISA's A and R on uint8 values


@njit(**_JIT)
def literal_accuracy_robustness(gt, pred, y0, y1, out):
    """Over rows y0..y1 (zero outside in both): out <- [#pixels with gt != pred, sum of ((1 - gt) * pred) taken
    per pixel in uint8 (wrapping: 1 - 2 -> 255, 255 * 255 -> 1), as VISA's get_r2vos_robustness sums it]."""
    diff = 0
    neg = 0
    if y0 >= 0:
        w = gt.shape[1]
        for y in range(y0, y1 + 1):
            for x in range(w):
                g = np.int64(gt[y, x])
                p = np.int64(pred[y, x])
                if g != p:
                    diff += 1
                if p != 0:
                    neg += ((1 - g) * p) & 0xFF
    out[0] = diff
    out[1] = neg
