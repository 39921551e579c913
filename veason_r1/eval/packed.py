"""Masks as the metrics consume them: packed bits (64 pixels per word) plus what A and R need of the values.

Built from a uint8/bool array (`pack_mask`), from mask PNGs read as the reference reads them (`mask_from_png`),
or from the COCO RLEs of an expression's objects (`mask_from_rles`, decoded straight into bits).

The ground truth of a multi-object expression is, as VISA builds it, the uint8 sum of the objects' masks
(`gt += decode(rle)`): pixels where objects overlap hold 2 (3, ...). `mask_from_rles(literal=True)` keeps those
values for A and R; its bits (used for J and F, and by the scale-free variants) are the union, which is what the
sum's non-zero pixels are for fewer than 256 overlapping objects. `literal=False` is the boolean union throughout.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from veason_r1.eval import kernels

_UNKNOWN = -1


class MaskBits:
    """A (height, width) mask. `bits`: (height, ceil(width / 64)) uint64, bit c % 64 of word c // 64 set where
    pixel c is non-zero. `area`: set pixels; `rows`: first/last row with content ((-1, -1) when empty).
    `value`: the one non-zero value when the mask holds 0 and a single other value (0 when empty), None when it
    holds several; it is worked out from `frame` (the uint8 pixels) on first use, since J and F never need it."""

    __slots__ = ("_value", "area", "bits", "frame", "layers", "rows", "width")

    def __init__(self, bits: np.ndarray, width: int, area: int, rows: tuple[int, int], value: int | None = _UNKNOWN,
                 frame: np.ndarray | None = None, layers: np.ndarray | None = None):
        if value == _UNKNOWN and frame is None:
            raise ValueError("MaskBits needs its value or its uint8 frame")
        self.bits, self.width, self.area, self.rows, self.frame, self._value = bits, width, area, rows, frame, value
        self.layers = layers  # VISA's summed GT of overlapping objects: (objects, H, nw) bits (value is None)

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.bits.shape[0]), self.width

    @property
    def value(self) -> int | None:
        if self._value == _UNKNOWN:
            if self.area == 0:
                self._value = 0
            else:
                flat = self.frame[self.rows[0]:self.rows[1] + 1].reshape(-1)  # rows with content only
                n8 = flat.size // 8 * 8
                out = np.empty(2, np.int64)
                kernels.value_stats(flat[:n8].view(np.uint64), flat[n8:], out)
                self._value = int(out[0]) if out[0] == out[1] else None
        return self._value

    def as_values(self) -> np.ndarray:
        """The uint8 frame (rebuilt from the bits, or summed from the layers, when there is none)."""
        if self.frame is not None:
            return self.frame
        out = np.zeros(self.shape, np.uint8)
        if self.layers is not None:
            for layer in self.layers:
                kernels.add_bits(layer, out)
        else:
            kernels.unpack_values(self.bits, self.width, np.uint8(self.value or 0), out)
        return out


def words(width: int) -> int:
    return (int(width) + 63) // 64


def from_bits(bits: np.ndarray, width: int, value: int | None = _UNKNOWN, frame: np.ndarray | None = None,
              layers: np.ndarray | None = None) -> MaskBits:
    """MaskBits of packed bits (area and rows counted here); value 1 when neither value nor frame is given."""
    ext = np.empty(3, np.int64)
    kernels.bits_extent(bits, ext)
    if value == _UNKNOWN and frame is None:
        value = 1
    area = int(ext[0])
    return MaskBits(bits, width, area, (int(ext[1]), int(ext[2])), (0 if area == 0 else value), frame, layers)


def _as_uint8(mask: np.ndarray, what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"{what} must be a 2-D mask, got shape {mask.shape}")
    if mask.dtype == np.uint8:
        return np.ascontiguousarray(mask)
    if mask.dtype == bool:
        return np.ascontiguousarray(mask).view(np.uint8)
    if mask.size and (not np.issubdtype(mask.dtype, np.number) or mask.min() < 0 or mask.max() > 255
                      or not np.array_equal(mask, np.round(mask))):
        raise ValueError(f"{what} must hold uint8 values (0..255), got dtype {mask.dtype}")
    return np.ascontiguousarray(mask.astype(np.uint8))


def pack_frame(frame: np.ndarray) -> np.ndarray:
    """(H, W) uint8 -> (H, ceil(W/64)) uint64 bits of its non-zero pixels (numpy's packbits, padded per row)."""
    h, w = frame.shape
    packed = np.packbits(frame, axis=1, bitorder="little")
    nb = words(w) * 8
    if packed.shape[1] != nb:
        padded = np.zeros((h, nb), np.uint8)
        padded[:, :packed.shape[1]] = packed
        packed = padded
    return packed.view(np.uint64)


def pack_mask(mask: np.ndarray, what: str = "mask") -> MaskBits:
    """A bool / uint8 (H, W) array as MaskBits (values kept as given: a 0/255 mask has value 255)."""
    frame = _as_uint8(mask, what)
    value = 1 if np.asarray(mask).dtype == bool else _UNKNOWN
    return from_bits(pack_frame(frame), frame.shape[1], value, frame=frame)


def mask_from_png(path, what: str = "prediction", out: np.ndarray | None = None) -> MaskBits:
    """A mask PNG read as the reference reads it (veason_r1.data.mask_png), packed. `out`: a (H, W) uint8 buffer the
    pixels may be decoded into (reused frame after frame; the MaskBits then refers to it)."""
    from veason_r1.data.mask_png import read_mask_png

    return pack_mask(read_mask_png(path, out), what)


def _counts(rle: dict) -> np.ndarray:
    counts = rle["counts"]
    if isinstance(counts, (list, tuple, np.ndarray)):
        return np.asarray(counts, np.int64)
    s = np.frombuffer(counts.encode("ascii") if isinstance(counts, str) else bytes(counts), np.uint8)
    out = np.empty(s.size + 1, np.int64)
    n = kernels.rle_counts_from_string(s, out)
    if n < 0:
        raise ValueError("malformed RLE counts string")
    return out[:n]


def rle_bits(rle: dict, shape: tuple[int, int], out: np.ndarray, scratch: np.ndarray) -> None:
    """Decode one COCO RLE (compressed string or list counts) into packed bits `out` (pycocotools' decode, as bits).
    Errors say what is wrong; the caller adds the file and key."""
    h, w = shape
    size = tuple(int(x) for x in rle["size"])
    if size != (h, w):
        raise ValueError(f"RLE size {list(size)} differs from the frame size {[h, w]}")
    covered = kernels.rle_to_bits(_counts(rle), h, out, scratch)
    if covered != h * w:
        raise ValueError(f"RLE runs cover {covered} pixels, the frame has {h * w}")


def mask_from_rles(rles: Sequence[dict | None], shape: tuple[int, int], literal: bool = True) -> MaskBits:
    """The GT of one frame from its objects' RLEs (None = object absent): union bits, and with `literal` VISA's
    uint8 sum for A and R (kept as the objects' layers where they overlap)."""
    h, w = shape
    nw = words(w)
    present = [r for r in rles if r is not None]
    scratch = np.empty((h, nw), np.uint64)
    if len(present) <= 1:
        union = np.zeros((h, nw), np.uint64)
        if present:
            rle_bits(present[0], shape, union, scratch)
        return from_bits(union, w, 1)
    layers = np.empty((len(present), h, nw), np.uint64)
    for i, r in enumerate(present):
        rle_bits(r, shape, layers[i], scratch)
    union = layers[0].copy()
    overlap = 0
    for i in range(1, len(present)):
        overlap += kernels.or_into(union, layers[i])
    if literal and overlap:
        return from_bits(union, w, None, layers=layers)
    return from_bits(union, w, 1)
