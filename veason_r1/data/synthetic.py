"""Synthetic video reasoning-segmentation benchmark: coloured shapes moving over a textured background.

Why: every stage (sampling, CoT, SFT, RL, inference, eval) must run end to end on CPU without the real datasets,
and the ground truth must be exact so bugs in box/mask handling show up as wrong numbers, not noise.

Each video has 1-4 objects (shape, colour, size), which stay still, bounce, or cross the frame (entering and/or
leaving); scripted scenes add overtaking and occlusion. GT masks are the *visible* pixels of each object (occluded
parts excluded, as in real VOS annotations); an object with no visible pixel in a frame has a `null` RLE there.

Expressions are generated from predicates evaluated on the rendered ground truth (not on the script), and only kept
when exactly the intended objects satisfy them, so every expression is unambiguous:
referring (type 0, appearance), reasoning (type 1, time / motion / relations), multi-object, and no-target (type 2,
empty GT, `obj_id: []`, `anno_id: []` as ReVOS stores them).

Determinism: each video draws from `np.random.default_rng([seed, index])`; JPEG/PNG encoder settings are fixed and
JSON is written with a fixed key order, so the same arguments give byte-identical files.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from veason_r1.benchmarks import DEFAULT_SPLITS
from veason_r1.data.masks import encode_rle
from veason_r1.io_utils import atomic_write_text

FORMATS = ("revos", "mevis", "reasonvos", "reasonvos-original")
# ReasonVOS: "reasonvos" is VideoLISA's 2024-12-27 release (expressions: a list of {obj_id, exp_id, exp_text, is_sent},
# one GT folder per target shared by its expressions); "reasonvos-original" its first release ({key: {exp_text,
# obj_id}}, is_sent per video, one GT folder per expression). veason_r1.data.reasonvos reads both.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 185, 70),
    "blue": (45, 85, 225),
    "yellow": (240, 215, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "diamond", "hexagon", "star")
SIZES = {"small": 0.075, "large": 0.14}  # radius as a fraction of min(H, W)
JPEG_SETTINGS = {"quality": 92, "subsampling": 2, "optimize": False, "progressive": False}
SOURCE = "synthetic"  # ReasonVOS `source` field
COUNT_WORDS = {2: "both", 3: "the three", 4: "all four"}
POSITION_CUE = 48.0  # background colour drift across the frame, in grey levels (see `_background`)


@dataclass
class SynthConfig:
    """What to generate. Sizes are in pixels; motion scales with the frame size and the video length."""

    num_videos: int = 12
    seed: int = 0
    min_frames: int = 8
    max_frames: int = 40
    height: int = 192
    width: int = 256
    min_objects: int = 1
    max_objects: int = 4
    max_expressions: int = 8  # per video
    valid_every: int = 4  # every 4th video goes to the valid split (~75/25)
    nested_every: int = 3  # ReVOS format: every 3rd video gets a nested name (`shapes/set0/v00002`); 0 = never
    scenario_prob: float = 0.45  # chance of a scripted overtaking / occlusion scene when there are >= 2 objects
    no_target_prob: float = 0.5  # chance of one no-target (type 2) expression per video
    jpeg_quality: int = 92

    def validate(self) -> None:
        if self.num_videos < 2:
            raise ValueError(f"num_videos must be >= 2 (train and valid both need a video), got {self.num_videos}")
        if not 2 <= self.min_frames <= self.max_frames:
            raise ValueError(f"need 2 <= min_frames <= max_frames, got {self.min_frames}, {self.max_frames}")
        if not 1 <= self.min_objects <= self.max_objects <= 4:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= 4, got {self.min_objects}, {self.max_objects}")
        if self.height < 32 or self.width < 32:
            raise ValueError(f"frames must be at least 32x32, got {self.height}x{self.width}")


# ------------------------------------------------------------------------------------------------------------------
# scene
@dataclass
class SynthObject:
    obj_id: int
    shape: str
    color: str
    size: str
    radius: float
    z: int
    centers: np.ndarray  # (L, 2) float (cx, cy); may lie outside the frame


@dataclass
class SynthExpression:
    text: str
    obj_ids: tuple[int, ...]
    type_id: int
    kind: str
    rationale: str


@dataclass
class SynthVideo:
    index: int
    name: str
    frames: list[np.ndarray]
    objects: list[SynthObject]
    visible: list[list[np.ndarray]]  # [obj][t] (H, W) bool visible mask
    expressions: list[SynthExpression] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return len(self.frames)


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Pixels inside a shape of radius r centred at (0, 0); dx, dy are pixel offsets from the centre."""
    adx, ady = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return (adx <= 0.82 * r) & (ady <= 0.82 * r)
    if shape == "diamond":
        return adx + ady <= 1.05 * r
    if shape == "triangle":  # apex up, base at 0.6 r
        return (dy <= 0.6 * r) & (dy >= -r + 1.732 * adx)
    if shape == "hexagon":
        return (ady <= 0.866 * r) & (0.866 * adx + 0.5 * ady <= 0.866 * r)
    if shape == "star":
        # five-pointed star polygon: outer radius r, inner 0.5 r; boundary is a straight edge between vertices
        rho = np.sqrt(dx * dx + dy * dy)
        sector = 2 * np.pi / 5
        alpha = np.abs(np.mod(np.arctan2(dy, dx) + np.pi / 2, sector) - sector / 2)  # angle to the inner vertex
        beta = sector / 2 - alpha  # angle from the outer vertex
        ax, bx, by = r, 0.5 * r * math.cos(sector / 2), 0.5 * r * math.sin(sector / 2)
        nx, ny = by, ax - bx  # normal of the edge from (ax, 0) to (bx, by)
        return rho * (nx * np.cos(beta) + ny * np.sin(beta)) <= nx * ax
    raise ValueError(f"unknown shape {shape!r}")


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Muted, low-saturation texture (sinusoids + noise + soft tiles) so the saturated objects stand out."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    v = rng.uniform(80, 140)
    base = np.array([v + rng.uniform(-14, 14) for _ in range(3)], dtype=np.float32)
    tex = np.zeros((h, w), dtype=np.float32)
    for _ in range(3):
        fx, fy = rng.uniform(0.5, 6.0), rng.uniform(0.5, 6.0)
        tex += np.sin(2 * np.pi * (fx * xx / w + fy * yy / h) + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    tile = int(rng.integers(12, 40))
    checker = (((xx // tile) + (yy // tile)) % 2).astype(np.float32) * 2 - 1
    noise = rng.normal(0, 5, (h, w)).astype(np.float32)
    lum = 9 * tex + 6 * checker + noise
    img = base[None, None, :] + lum[:, :, None] * np.array([1.0, 0.95, 0.9], dtype=np.float32)[None, None, :]
    # A faint colour drift across the frame (red grows to the right, blue downwards): the toy world's stand-in for
    # the absolute layout cues of real footage (sky above, ground below). Qwen2.5-VL has no absolute position
    # embedding, and without such a cue a toy-size model learns almost no localisation (docs/toy_reproduction.md).
    img[:, :, 0] += POSITION_CUE * (xx / w - 0.5)
    img[:, :, 2] += POSITION_CUE * (yy / h - 0.5)
    return np.clip(img, 0, 255).astype(np.uint8)


def _bounce(p0: np.ndarray, v: np.ndarray, lo: np.ndarray, hi: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((n, 2))
    p, v = p0.astype(float).copy(), v.astype(float).copy()
    for t in range(n):
        out[t] = p
        p = p + v
        for k in range(2):
            if p[k] < lo[k]:
                p[k], v[k] = 2 * lo[k] - p[k], -v[k]
            elif p[k] > hi[k]:
                p[k], v[k] = 2 * hi[k] - p[k], -v[k]
    return out


def _trajectory(rng: np.random.Generator, kind: str, r: float, h: int, w: int, n: int) -> np.ndarray:
    t = np.arange(n, dtype=float)
    lo, hi = np.array([r, r]), np.array([w - r, h - r])
    if kind == "still":
        p = rng.uniform(lo, hi)
        return np.repeat(p[None], n, axis=0)
    if kind == "bounce":
        speed = min(w, h) * rng.uniform(0.4, 1.0) / max(n - 1, 1)
        ang = rng.uniform(0, 2 * np.pi)
        return _bounce(rng.uniform(lo, hi), speed * np.array([math.cos(ang), math.sin(ang)]), lo, hi, n)
    # cross: enter and/or leave along one axis
    axis = int(rng.integers(0, 2))  # 0 horizontal, 1 vertical
    span, perp = (w, h) if axis == 0 else (h, w)
    speed = (span + 2 * r) / (max(n - 1, 1) * rng.uniform(0.55, 1.3))
    t_enter = rng.uniform(-0.35, 0.45) * n  # when the centre is at -r (just outside)
    along = -r + speed * (t - t_enter)
    if rng.random() < 0.5:
        along = span - along
    across = rng.uniform(r, perp - r) + rng.uniform(-0.15, 0.15) * perp * t / max(n - 1, 1)
    across = np.clip(across, r, perp - r)
    return np.stack([along, across], axis=1) if axis == 0 else np.stack([across, along], axis=1)


def _scene(rng: np.random.Generator, cfg: SynthConfig, n: int) -> list[SynthObject]:
    h, w = cfg.height, cfg.width
    k = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    objs: list[SynthObject] = []
    zs = rng.permutation(k)
    for i in range(k):
        size = str(rng.choice(list(SIZES)))
        r = SIZES[size] * min(h, w) * rng.uniform(0.92, 1.08)
        kind = str(rng.choice(["still", "bounce", "cross"], p=[0.25, 0.35, 0.4]))
        objs.append(SynthObject(i, str(rng.choice(SHAPES)), str(rng.choice(list(COLORS))), size, r, int(zs[i]),
                                _trajectory(rng, kind, r, h, w, n)))
    if k >= 2 and rng.random() < cfg.scenario_prob:
        t = np.arange(n, dtype=float) / max(n - 1, 1)
        a, b = objs[0], objs[1]
        if rng.random() < 0.5:  # overtaking in two separate lanes
            d = 1 if rng.random() < 0.5 else -1
            ya, yb = (0.28 * h, 0.72 * h) if rng.random() < 0.5 else (0.72 * h, 0.28 * h)
            xa, xb = 0.08 * w + 0.82 * w * t, 0.32 * w + 0.3 * w * t
            if d < 0:
                xa, xb = w - xa, w - xb
            a.centers = np.stack([xa, np.full(n, ya)], axis=1)
            b.centers = np.stack([xb, np.full(n, yb)], axis=1)
            a.size, a.radius = "small", SIZES["small"] * min(h, w)
            b.size, b.radius = "small", SIZES["small"] * min(h, w)
        else:  # a large object passes in front of a small still one
            xd, yd = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
            b.centers = np.repeat(np.array([[xd, yd]]), n, axis=0)
            b.size, b.radius = "small", SIZES["small"] * min(h, w)
            a.size, a.radius = "large", SIZES["large"] * min(h, w)
            xs = -a.radius + (w + 2 * a.radius) * (0.1 + 0.85 * t)
            if rng.random() < 0.5:
                xs = w - xs
            a.centers = np.stack([xs, np.full(n, yd + rng.uniform(-0.2, 0.2) * b.radius)], axis=1)
            if a.z < b.z:
                a.z, b.z = b.z, a.z
    return objs


def _render(rng: np.random.Generator, cfg: SynthConfig, objs: list[SynthObject], n: int):
    h, w = cfg.height, cfg.width
    bg = _background(rng, h, w)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    frames, full, visible = [], [[None] * n for _ in objs], [[None] * n for _ in objs]
    order = sorted(range(len(objs)), key=lambda i: objs[i].z)
    for t in range(n):
        img = bg.copy()
        masks = {}
        for i in order:
            o = objs[i]
            cx, cy = o.centers[t]
            m = _shape_mask(o.shape, xx - np.float32(cx), yy - np.float32(cy), o.radius)
            masks[i] = m
            color = np.array(COLORS[o.color], dtype=np.float32)
            shade = 0.88 + 0.12 * np.clip((yy - cy) / (2 * o.radius) + 0.5, 0, 1)[m]  # soft top-down shading
            img[m] = np.clip(color[None, :] * (2.0 - shade[:, None]) * 0.95, 0, 255).astype(np.uint8)
        above = np.zeros((h, w), dtype=bool)
        for i in reversed(order):  # front to back
            full[i][t] = masks[i]
            visible[i][t] = masks[i] & ~above
            above |= masks[i]
        frames.append(img)
    return frames, full, visible


# ------------------------------------------------------------------------------------------------------------------
# facts and expressions
@dataclass
class _Facts:
    n: int
    w: int
    h: int
    vis_area: np.ndarray  # (K, L)
    inframe: np.ndarray  # (K, L) bool: some pixel of the (unoccluded) shape inside the frame
    centers: np.ndarray  # (K, L, 2)
    cover: np.ndarray  # (K, K): max over t of |full_a & full_b| / area(a) where b is in front of a

    def first_vis(self, k: int) -> int:
        return int(np.flatnonzero(self.vis_area[k] > 0)[0])

    def last_vis(self, k: int) -> int:
        return int(np.flatnonzero(self.vis_area[k] > 0)[-1])

    def first_in(self, k: int) -> int:
        return int(np.flatnonzero(self.inframe[k])[0])

    def last_in(self, k: int) -> int:
        return int(np.flatnonzero(self.inframe[k])[-1])

    def net(self, k: int) -> np.ndarray:
        """Displacement of the centre between the first and last frame in which the object is in view."""
        return self.centers[k, self.last_in(k)] - self.centers[k, self.first_in(k)]

    def travel(self, k: int, axis: int, sign: int) -> float:
        """Total distance moved in direction `sign` along `axis` while in view (ignores the opposite steps)."""
        f, l = self.first_in(k), self.last_in(k)
        steps = np.diff(self.centers[k, f:l + 1, axis])
        return float(np.clip(sign * steps, 0, None).sum())

    def path(self, k: int) -> float:
        f, l = self.first_in(k), self.last_in(k)
        return float(np.linalg.norm(np.diff(self.centers[k, f:l + 1], axis=0), axis=1).sum()) if l > f else 0.0


def _facts(objs: list[SynthObject], full, visible, h: int, w: int) -> _Facts:
    k, n = len(objs), len(full[0])
    vis_area = np.array([[int(visible[i][t].sum()) for t in range(n)] for i in range(k)])
    inframe = np.array([[bool(full[i][t].any()) for t in range(n)] for i in range(k)])
    centers = np.stack([o.centers for o in objs])
    cover = np.zeros((k, k))
    for a in range(k):
        ref_area = math.pi * objs[a].radius ** 2 * 0.8
        for b in range(k):
            if a != b and objs[b].z > objs[a].z:
                cover[a, b] = max(int((full[a][t] & full[b][t]).sum()) for t in range(n)) / ref_area
    return _Facts(n, w, h, vis_area, inframe, centers, cover)


def _where(x: float, y: float, w: int, h: int) -> str:
    col = "left" if x < w / 3 else ("right" if x > 2 * w / 3 else "centre")
    row = "top" if y < h / 3 else ("bottom" if y > 2 * h / 3 else "middle")
    return "centre" if (col, row) == ("centre", "middle") else f"{row} {col}"


def _plural(shape: str) -> str:
    return shape + "s"


def _describe(objs: list[SynthObject], k: int) -> str | None:
    """Shortest appearance phrase that picks object k alone, or None."""
    o = objs[k]
    for keys, phrase in ((("shape",), o.shape), (("color", "shape"), f"{o.color} {o.shape}"),
                         (("size", "color", "shape"), f"{o.size} {o.color} {o.shape}")):
        same = [p for p in objs if all(getattr(p, a) == getattr(o, a) for a in keys)]
        if len(same) == 1:
            return phrase
    return None


def _motion(objs, f: _Facts, k: int) -> str:
    """One clause saying what object k does, for rationales."""
    a, b = f.first_in(k), f.last_in(k)
    if f.path(k) < 0.02 * f.w:
        return f"it stays still at the {_where(*f.centers[k, a], f.w, f.h)}"
    start = _where(*np.clip(f.centers[k, a], 0, [f.w - 1, f.h - 1]), f.w, f.h)
    end = _where(*np.clip(f.centers[k, b], 0, [f.w - 1, f.h - 1]), f.w, f.h)
    enter = f"enters at frame {a} on the {start}" if a > 0 else f"starts at the {start}"
    leave = f"leaves the frame at frame {b} on the {end}" if b < f.n - 1 else f"ends at the {end}"
    return f"it {enter} and {leave}"


def _name(objs, k: int) -> str:
    o = objs[k]
    return f"the {o.size} {o.color} {o.shape} (object {k})"


def _expressions(rng: np.random.Generator, objs: list[SynthObject], f: _Facts, cfg: SynthConfig
                 ) -> list[SynthExpression]:
    k_all = list(range(len(objs)))
    cands: dict[str, list[SynthExpression]] = {"ref1": [], "refN": [], "rea1": [], "reaN": [], "none": []}

    def add(group, text, ids, type_id, kind, why):
        cands[group].append(SynthExpression(text, tuple(sorted(ids)), type_id, kind, why))

    # referring, single object
    for k in k_all:
        o, d = objs[k], _describe(objs, k)
        if d is not None:
            add("ref1", f"the {d}", [k], 0, "appearance",
                f"{_name(objs, k)} is the only {d} in the video; {_motion(objs, f, k)}.")
        same_color = [p for p in objs if p.color == o.color]
        if len(same_color) == 1 and d != o.shape:
            add("ref1", f"the {o.color} shape", [k], 0, "appearance",
                f"{_name(objs, k)} is the only {o.color} object; {_motion(objs, f, k)}.")
    sizes = [o.size for o in objs]
    if len(objs) >= 2 and sizes.count("large") == 1:
        k = sizes.index("large")
        add("ref1", "the biggest shape", [k], 0, "size", f"{_name(objs, k)} is the only large object.")
    if len(objs) >= 2 and sizes.count("small") == 1:
        k = sizes.index("small")
        add("ref1", "the smallest object", [k], 0, "size", f"{_name(objs, k)} is the only small object.")
    # referring, several objects
    for attr, word in (("shape", None), ("color", None)):
        values = sorted({getattr(o, attr) for o in objs})
        for v in values:
            ids = [o.obj_id for o in objs if getattr(o, attr) == v]
            if len(ids) >= 2:
                text = f"{COUNT_WORDS[len(ids)]} {_plural(v)}" if attr == "shape" else f"the {v} shapes"
                add("refN", text, ids, 0, "appearance_multi",
                    f"{' and '.join(_name(objs, i) for i in ids)} are the {len(ids)} {v} objects.")
    # reasoning, single object
    n = f.n
    if len(objs) >= 2:
        for k in k_all:
            others = [j for j in k_all if j != k]
            if f.first_in(k) > 0 and all(f.first_in(k) >= f.first_in(j) + 2 and f.first_vis(k) >= f.first_vis(j) + 2
                                         for j in others):
                add("rea1", "the object that enters the frame last", [k], 1, "enters_last",
                    f"{_name(objs, k)} enters at frame {f.first_in(k)}, after every other object "
                    f"(latest of the rest: frame {max(f.first_in(j) for j in others)}); {_motion(objs, f, k)}.")
            if f.last_in(k) < n - 1 and all(f.last_in(k) + 2 <= f.last_in(j) and f.last_vis(k) + 2 <= f.last_vis(j)
                                            for j in others):
                add("rea1", "the object that leaves the frame first", [k], 1, "leaves_first",
                    f"{_name(objs, k)} leaves the view at frame {f.last_in(k)}, before any other object; "
                    f"{_motion(objs, f, k)}.")
            if f.path(k) < 0.02 * f.w and all(f.path(j) > 0.15 * f.w for j in others):
                add("rea1", "the shape that never moves", [k], 1, "still",
                    f"{_name(objs, k)} stays at the {_where(*f.centers[k, 0], f.w, f.h)} for the whole video "
                    f"while every other object moves.")
        speeds = [f.path(k) / max(f.last_in(k) - f.first_in(k), 1) for k in k_all]
        order = sorted(k_all, key=lambda k: -speeds[k])
        if speeds[order[0]] > 1.6 * speeds[order[1]] and speeds[order[0]] > 0.01 * f.w:
            k = order[0]
            add("rea1", "the fastest moving shape", [k], 1, "fastest",
                f"{_name(objs, k)} moves about {speeds[k]:.1f} px per frame, much faster than the others "
                f"(next: {speeds[order[1]]:.1f}); {_motion(objs, f, k)}.")
        for axis, sign, text, word in ((0, 1, "the shape that ends up furthest to the right", "right"),
                                       (0, -1, "the object that ends up furthest to the left", "left"),
                                       (1, -1, "the shape that ends up highest in the frame", "top")):
            end_ok = all(f.inframe[k, n - 1] and f.vis_area[k, n - 1] > 0 for k in k_all)
            if end_ok:
                pos = [sign * f.centers[k, n - 1, axis] for k in k_all]
                srt = sorted(k_all, key=lambda k: -pos[k])
                span = f.w if axis == 0 else f.h
                if pos[srt[0]] - pos[srt[1]] >= 0.15 * span and f.path(srt[0]) > 0.05 * f.w:
                    k = srt[0]
                    add("rea1", text, [k], 1, f"ends_{word}",
                        f"in the last frame {_name(objs, k)} is the object nearest the {word} edge; "
                        f"{_motion(objs, f, k)}.")
        for axis, sign, text in ((0, 1, "the object moving to the right"), (0, -1, "the object moving to the left"),
                                 (1, 1, "the shape moving down"), (1, -1, "the shape moving up")):
            span = f.w if axis == 0 else f.h
            movers = [k for k in k_all if sign * f.net(k)[axis] >= 0.25 * span
                      and f.travel(k, axis, -sign) <= 0.1 * span]  # steadily that way
            rest_ok = all(f.travel(k, axis, sign) <= 0.05 * span for k in k_all if k not in movers)  # never that way
            if rest_ok and len(movers) == 1:
                k = movers[0]
                add("rea1", text, [k], 1, "direction", f"{_name(objs, k)} is the only object whose net motion goes "
                    f"that way ({f.net(k)[axis]:+.0f} px); {_motion(objs, f, k)}.")
            elif rest_ok and len(movers) >= 2:
                plural = text.replace("the object moving", "the objects moving").replace("the shape moving",
                                                                                          "the shapes moving")
                add("reaN", plural, movers, 1, "direction_multi",
                    f"{' and '.join(_name(objs, i) for i in movers)} move that way; the others do not.")
        # relations: overtaking and occlusion, with the reference object named by its appearance
        for b in k_all:
            db = _describe(objs, b)
            if db is None:
                continue
            over = [a for a in k_all if a != b and _overtakes(f, a, b)]
            if len(over) == 1:
                a = over[0]
                add("rea1", f"the shape that overtakes the {db}", [a], 1, "overtakes",
                    f"{_name(objs, a)} starts behind the {db} and ends ahead of it in the direction they both move; "
                    f"{_motion(objs, f, a)}.")
            hidden = [a for a in k_all if f.cover[a, b] >= 0.5]
            if len(hidden) == 1 and all(f.cover[a, b] < 0.1 for a in k_all if a not in hidden):
                a = hidden[0]
                add("rea1", f"the object that gets hidden behind the {db}", [a], 1, "occluded",
                    f"the {db} passes in front of {_name(objs, a)} and covers most of it for a while; "
                    f"{_motion(objs, f, a)}.")
            front = [c for c in k_all if f.cover[b, c] >= 0.5]
            if len(front) == 1 and all(f.cover[b, c] < 0.1 for c in k_all if c not in front):
                c = front[0]
                add("rea1", f"the shape that passes in front of the {db}", [c], 1, "occludes",
                    f"{_name(objs, c)} moves over the {db} and covers it; {_motion(objs, f, c)}.")
        leavers = [k for k in k_all if f.last_in(k) <= n - 3]
        stayers = [k for k in k_all if f.last_in(k) == n - 1]
        if len(leavers) >= 2 and len(leavers) + len(stayers) == len(objs):
            add("reaN", "the objects that leave the frame", leavers, 1, "leave_multi",
                f"{' and '.join(_name(objs, i) for i in leavers)} exit the view before the end; the others stay.")
    # no target
    present_colors = {o.color for o in objs}
    absent = [c for c in COLORS if c not in present_colors]
    if absent:
        c, s = str(rng.choice(absent)), str(rng.choice(SHAPES))
        add("none", f"the {c} {s}", [], 2, "no_target", f"no {c} object appears in the video.")
    if all(f.first_in(k) == 0 and f.last_in(k) == n - 1 for k in k_all):
        add("none", "the object that enters the frame from outside", [], 2, "no_target_temporal",
            "every object is in view from the first to the last frame, so nothing enters.")

    chosen: list[SynthExpression] = []

    def take(group: str, count: int) -> None:
        pool = cands[group]
        seen = {(e.text) for e in chosen}
        pool = [e for e in pool if e.text not in seen]
        # one expression per text; keep the first candidate of each text
        uniq: dict[str, SynthExpression] = {}
        for e in pool:
            uniq.setdefault(e.text, e)
        pool = list(uniq.values())
        for i in rng.permutation(len(pool))[:count]:
            chosen.append(pool[int(i)])

    take("ref1", 1 + int(rng.random() < 0.5))
    take("refN", int(rng.random() < 0.7))
    take("rea1", 2)
    take("reaN", int(rng.random() < 0.8))
    take("none", int(rng.random() < cfg.no_target_prob))
    if not any(e.type_id in (0, 1) for e in chosen):  # every video needs a target expression
        take("ref1", 1) if cands["ref1"] else take("refN", 1)
    return chosen[: cfg.max_expressions]


def _overtakes(f: _Facts, a: int, b: int) -> bool:
    both = np.flatnonzero(f.inframe[a] & f.inframe[b])
    if len(both) < 3:
        return False
    t0, t1 = both[0], both[-1]
    db = f.centers[b, t1] - f.centers[b, t0]
    da = f.centers[a, t1] - f.centers[a, t0]
    axis = int(np.argmax(np.abs(db)))
    d = np.sign(db[axis])
    if d == 0 or abs(db[axis]) < 0.1 * f.w or np.sign(da[axis]) != d or abs(da[axis]) <= abs(db[axis]):
        return False
    rel0 = d * (f.centers[a, t0, axis] - f.centers[b, t0, axis])
    rel1 = d * (f.centers[a, t1, axis] - f.centers[b, t1, axis])
    return rel0 <= -0.05 * f.w and rel1 >= 0.05 * f.w


# ------------------------------------------------------------------------------------------------------------------
def video_name(index: int, cfg: SynthConfig, fmt: str = "revos") -> str:
    """ReVOS: some names are nested like real ReVOS (`UVO/all/...`); MeViS / ReasonVOS names are flat."""
    if fmt == "revos" and cfg.nested_every and index % cfg.nested_every == cfg.nested_every - 1:
        return f"shapes/set{index % 2}/v{index:05d}"
    return f"v{index:05d}"


def make_video(index: int, cfg: SynthConfig, fmt: str = "revos", max_tries: int = 20) -> SynthVideo:
    """Generate one video (deterministic in `cfg.seed` and `index`). Re-draws a scene in which some object is never
    visible, so every object (and every target expression) has GT in at least one frame."""
    rng = np.random.default_rng([cfg.seed, index])
    for _ in range(max_tries):
        n = int(rng.integers(cfg.min_frames, cfg.max_frames + 1))
        objs = _scene(rng, cfg, n)
        frames, full, visible = _render(rng, cfg, objs, n)
        if all(any(visible[i][t].any() for t in range(n)) for i in range(len(objs))):
            break
    else:  # pragma: no cover - would need 20 consecutive degenerate scenes
        raise RuntimeError(f"could not draw a valid scene for video {index}")
    facts = _facts(objs, full, visible, cfg.height, cfg.width)
    video = SynthVideo(index, video_name(index, cfg, fmt), frames, objs, visible)
    video.expressions = _expressions(rng, objs, facts, cfg)
    return video


def split_of(index: int, cfg: SynthConfig) -> str:
    """Deterministic ~75/25 split; the last video is `valid` when no index hits the valid slot."""
    if index % cfg.valid_every == cfg.valid_every - 1 or (cfg.num_videos < cfg.valid_every
                                                          and index == cfg.num_videos - 1):
        return "valid"
    return "train"


def _jpeg(frame: np.ndarray, cfg: SynthConfig) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, "JPEG", **{**JPEG_SETTINGS, "quality": cfg.jpeg_quality})
    return buf.getvalue()


def _png(mask: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(buf, "PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> None:
    """Plain write for the many frame files (rewritten identically on a rerun); JSON uses atomic writes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


def _dump(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, separators=(",", ":"), ensure_ascii=True))


def _object_facts(v: SynthVideo, anno_ids: list[str]) -> dict:
    out = {}
    for o, aid in zip(v.objects, anno_ids):
        vis = [bool(m.any()) for m in v.visible[o.obj_id]]
        idx = [t for t, x in enumerate(vis) if x]
        out[str(o.obj_id)] = {
            "color": o.color, "shape": o.shape, "size": o.size, "anno_id": aid,
            "first_frame": idx[0], "last_frame": idx[-1],
            "positions": [[round(float(o.centers[t, 0]), 1), round(float(o.centers[t, 1]), 1)] if vis[t] else None
                          for t in range(v.num_frames)],
        }
    return out


def iter_videos(cfg: SynthConfig, fmt: str = "revos") -> Iterator[SynthVideo]:
    for i in range(cfg.num_videos):
        yield make_video(i, cfg, fmt)


def write_benchmark(out: Path, cfg: SynthConfig, fmt: str = "revos", progress: bool = False) -> Path:
    """Write the synthetic benchmark under `out` in the ReVOS, MeViS or ReasonVOS layout (see docs/data.md;
    ReasonVOS in either release, see FORMATS).
    Also writes `synthetic_facts.json` (per-object attributes and tracks, per-expression rationale). Returns `out`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    cfg.validate()
    from dataclasses import asdict

    from veason_r1.paths import claim_output_dir

    out = claim_output_dir(out, "synth", {"format": fmt, **asdict(cfg)})  # never into a folder it did not make
    frame_names_cache: dict[int, list[str]] = {}
    metas: dict[str, dict] = {"train": {}, "valid": {}}
    mask_dicts: dict[str, dict] = {"train": {}, "valid": {}}
    foreground: dict[str, dict] = {}
    facts: dict[str, dict] = {}
    videos = iter_videos(cfg, fmt)
    if progress:
        from tqdm import tqdm

        videos = tqdm(videos, total=cfg.num_videos, desc="synth", unit="video")
    for v in videos:
        split = split_of(v.index, cfg)
        names = frame_names_cache.setdefault(v.num_frames, [f"{t:05d}" for t in range(v.num_frames)])
        if fmt == "mevis":
            img_root = out / (DEFAULT_SPLITS["mevis"] if split == "valid" else "train") / "JPEGImages" / v.name
        else:
            img_root = out / "JPEGImages" / v.name
        for t, frame in enumerate(v.frames):
            _write(img_root / f"{names[t]}.jpg", _jpeg(frame, cfg))
        anno_ids = [str(v.index * 10 + o.obj_id) for o in v.objects]
        rles = {o.obj_id: [encode_rle(m) if m.any() else None for m in v.visible[o.obj_id]] for o in v.objects}
        exp_facts = {}
        exps: dict | list = [] if fmt == "reasonvos" else {}
        targets: dict[tuple[int, ...], int] = {}  # ReasonVOS 2024-12-27: one obj_id (GT folder) per target set
        exp_list = [e for e in v.expressions if not (fmt != "revos" and e.type_id == 2)]
        for j, e in enumerate(exp_list):
            exp_facts[str(j)] = {"kind": e.kind, "rationale": e.rationale, "obj_ids": list(e.obj_ids),
                                 "type_id": e.type_id}
            if fmt.startswith("reasonvos"):
                key = tuple(sorted(e.obj_ids))
                if fmt == "reasonvos":
                    new_target = key not in targets
                    obj = targets.setdefault(key, len(targets))
                    exps.append({"obj_id": obj, "exp_id": j, "exp_text": e.text, "is_sent": e.type_id == 1})
                else:
                    new_target, obj = True, j
                    exps[str(j)] = {"exp_text": e.text, "obj_id": j}
                if new_target:
                    for t in range(v.num_frames):
                        union = np.zeros((cfg.height, cfg.width), dtype=bool)
                        for k in e.obj_ids:
                            union |= v.visible[k][t]
                        _write(out / "Annotations" / f"{SOURCE}_{v.name}_{obj}" / f"{names[t]}.png", _png(union))
            else:
                exps[str(j)] = {"exp": e.text, "obj_id": list(e.obj_ids), "anno_id": [anno_ids[k] for k in e.obj_ids]}
                if fmt == "revos":
                    exps[str(j)]["type_id"] = e.type_id
        if fmt == "reasonvos":
            metas[split][v.name] = {"source": SOURCE, "frames": names, "expressions": exps}
        elif fmt == "reasonvos-original":
            metas[split][v.name] = {"source": SOURCE, "frames": names, "is_sent": True, "expressions": exps}
        else:
            for o in v.objects:
                mask_dicts[split][anno_ids[o.obj_id]] = rles[o.obj_id]
            entry = {"vid_id": v.index}
            if fmt == "revos":
                entry.update(height=cfg.height, width=cfg.width)
            entry.update(frames=names, expressions=exps)
            metas[split][v.name] = entry
        if fmt == "revos":
            fg, ratio = [], []
            for t in range(v.num_frames):
                m = np.zeros((cfg.height, cfg.width), dtype=bool)
                for o in v.objects:
                    m |= v.visible[o.obj_id][t]
                fg.append(encode_rle(m))
                ratio.append(round(float(m.mean()), 6))
            foreground[v.name] = {"masks_rle": fg, "foreground_ratio": ratio}
        facts[v.name] = {"split": split, "objects": _object_facts(v, anno_ids), "expressions": exp_facts}

    if fmt == "revos":
        _dump(out / "mask_dict.json", {**mask_dicts["train"], **mask_dicts["valid"]})
        _dump(out / "mask_dict_foreground.json", foreground)
        for split in ("train", "valid"):
            _dump(out / f"meta_expressions_{split}_.json", {"videos": metas[split]})
    elif fmt == "mevis":
        for split, folder in (("train", "train"), ("valid", DEFAULT_SPLITS["mevis"])):
            _dump(out / folder / "mask_dict.json", mask_dicts[split])
            _dump(out / folder / "meta_expressions.json", {"videos": metas[split]})
    else:
        # ReasonVOS is an evaluation set: one meta file with every video (train ones first, then valid)
        _dump(out / "meta_expressions.json", {"videos": {**metas["train"], **metas["valid"]}})
    _dump(out / "synthetic_facts.json", {"format": fmt, "seed": cfg.seed, "videos": facts})
    return out


def summarize(root: str | os.PathLike) -> dict:
    """Counts of a written benchmark, from its synthetic_facts.json (for the CLI summary and docs)."""
    facts = json.loads((Path(root) / "synthetic_facts.json").read_text())
    kinds: dict[str, int] = {}
    types: dict[str, int] = {}
    splits: dict[str, int] = {}
    for v in facts["videos"].values():
        splits[v["split"]] = splits.get(v["split"], 0) + 1
        for e in v["expressions"].values():
            kinds[e["kind"]] = kinds.get(e["kind"], 0) + 1
            types[str(e["type_id"])] = types.get(str(e["type_id"]), 0) + 1
    return {"videos": len(facts["videos"]), "splits": splits, "type_ids": dict(sorted(types.items())),
            "kinds": dict(sorted(kinds.items()))}
