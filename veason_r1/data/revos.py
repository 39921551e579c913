"""ReVOS / MeViS reader (MeViS: the same files without `type_id`). Masks are decoded lazily, one frame at a time.

Layout (docs/method.md §2): `JPEGImages/<video>/<frame>.jpg` (video names may contain slashes),
`mask_dict.json` (anno_id -> per-frame RLE or null), `mask_dict_foreground.json` (video -> {"masks_rle": [...]}),
`meta_expressions_<split>_.json`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from veason_r1.benchmarks import DEFAULT_SPLITS
from veason_r1.data.masks import coco_rle, decode_rle, rle_area, union_masks
from veason_r1.data.video import JpegFolderSource

TYPE_NAMES = {0: "referring", 1: "reasoning", 2: "no_target"}


@dataclass(frozen=True)
class Expression:
    """One referring/reasoning expression of one video."""

    video: str
    exp_id: str
    text: str
    obj_ids: tuple[int, ...] = ()
    anno_ids: tuple[str, ...] = ()
    type_id: int | None = None  # 0 referring, 1 reasoning, 2 no target; None where the dataset has none (MeViS)

    @property
    def key(self) -> str:
        return f"{self.video}/{self.exp_id}"


@dataclass
class VideoMeta:
    name: str
    frames: list[str]
    height: int | None = None
    width: int | None = None
    expressions: dict[str, Expression] = field(default_factory=dict)


def load_json(path: Path) -> object:
    """json.load with an error that names the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing file: {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None


def meta_path(root: Path, split: str) -> Path:
    """`meta_expressions_<split>_.json` (ReVOS) or `<split>/meta_expressions.json` (MeViS release layout)."""
    for cand in (root / f"meta_expressions_{split}_.json", root / f"meta_expressions_{split}.json",
                 root / split / "meta_expressions.json"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"no meta_expressions file for split {split!r} under {root}")


def parse_meta(meta: object, source: Path) -> dict[str, VideoMeta]:
    """Validate and parse a meta_expressions JSON; errors name the file and the key."""
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise ValueError(f"{source}: expected {{'videos': {{...}}}} at top level")
    videos: dict[str, VideoMeta] = {}
    for vname, v in meta["videos"].items():
        where = f"{source}: videos[{vname!r}]"
        if not isinstance(v, dict) or not isinstance(v.get("frames"), list):
            raise ValueError(f"{where}: missing 'frames' list")
        vm = VideoMeta(vname, [str(f) for f in v["frames"]], v.get("height"), v.get("width"))
        for exp_id, e in (v.get("expressions") or {}).items():
            if not isinstance(e, dict) or "exp" not in e:
                raise ValueError(f"{where}.expressions[{exp_id!r}]: missing 'exp'")
            vm.expressions[str(exp_id)] = Expression(
                video=vname,
                exp_id=str(exp_id),
                text=str(e["exp"]),
                obj_ids=tuple(int(o) for o in e.get("obj_id", [])),
                anno_ids=tuple(str(a) for a in e.get("anno_id", [])),
                type_id=None if e.get("type_id") is None else int(e["type_id"]),
            )
        videos[vname] = vm
    return videos


class ReVOSDataset:
    """A ReVOS-format split. `gt_mask(expr, t)` is the union of the expression's objects in frame t."""

    def __init__(self, root: str | os.PathLike, split: str = DEFAULT_SPLITS["revos"],
                 meta_file: str | os.PathLike | None = None, load_foreground: bool = True):
        self.root = Path(root)
        self.split = split
        self.meta_file = Path(meta_file) if meta_file else meta_path(self.root, split)
        self.videos = parse_meta(load_json(self.meta_file), self.meta_file)
        self.mask_dict_file = self._find("mask_dict.json")
        self.mask_dict: dict[str, list] = load_json(self.mask_dict_file)  # RLE strings; decoded per frame on demand
        fg_file = self._find("mask_dict_foreground.json", required=False)
        self.foreground: dict[str, dict] = load_json(fg_file) if (fg_file and load_foreground) else {}
        self.expressions = [e for v in self.videos.values() for e in v.expressions.values()]

    def _find(self, name: str, required: bool = True) -> Path | None:
        for cand in (self.root / name, self.root / self.split / name):
            if cand.is_file():
                return cand
        if required:
            raise FileNotFoundError(f"missing {name} under {self.root}")
        return None

    # frames ------------------------------------------------------------------------------------------------
    def frame_dir(self, video: str) -> Path:
        for cand in (self.root / "JPEGImages" / video, self.root / self.split / "JPEGImages" / video):
            if cand.is_dir():
                return cand
        return self.root / "JPEGImages" / video

    def frames(self, video: str) -> JpegFolderSource:
        return JpegFolderSource(self.frame_dir(video), self.videos[video].frames)

    def size(self, video: str) -> tuple[int, int]:
        vm = self.videos[video]
        if vm.height and vm.width:
            return int(vm.height), int(vm.width)
        return self.frames(video).size

    # masks --------------------------------------------------------------------------------------------------
    def _rle(self, anno_id: str, t: int):
        try:
            rles = self.mask_dict[str(anno_id)]
        except KeyError:
            raise KeyError(f"{self.mask_dict_file}: unknown anno_id {anno_id!r}") from None
        return rles[t] if t < len(rles) else None

    def object_mask(self, anno_id: str, t: int) -> np.ndarray | None:
        """Mask of one annotated object in frame t, or None when the object is absent there."""
        return decode_rle(self._rle(anno_id, t))

    def object_masks(self, expr: Expression, t: int) -> list[np.ndarray | None]:
        return [self.object_mask(a, t) for a in expr.anno_ids]

    def gt_mask(self, expr: Expression, t: int) -> np.ndarray:
        """Union of the expression's objects in frame t (empty for no-target expressions)."""
        return union_masks(self.object_masks(expr, t), self.size(expr.video))

    def gt_areas(self, expr: Expression) -> list[int]:
        """Per-frame area of the GT union, computed on the RLEs (no full decode unless objects overlap)."""
        n = len(self.videos[expr.video].frames)
        areas = []
        for t in range(n):
            rles = [self._rle(a, t) for a in expr.anno_ids]
            rles = [r for r in rles if r is not None]
            if not rles:
                areas.append(0)
            elif len(rles) == 1:
                r = rles[0]
                areas.append(rle_area(r))
            else:
                merged = mask_utils.merge([coco_rle(r) for r in rles], intersect=False)
                areas.append(int(mask_utils.area(merged)))
        return areas

    def foreground_mask(self, video: str, t: int) -> np.ndarray:
        """Union of all annotated objects of the video in frame t (ReVOS's R metric)."""
        rles = self.foreground.get(video, {}).get("masks_rle")
        if rles is None:
            raise KeyError(f"{self.root}/mask_dict_foreground.json: no entry for video {video!r}")
        return decode_rle(rles[t] if t < len(rles) else None, self.size(video))


def MeViSDataset(root: str | os.PathLike, split: str = DEFAULT_SPLITS["mevis"], **kw) -> ReVOSDataset:  # noqa: N802
    """MeViS uses the same files as ReVOS, without type_id (every expression then has type_id None)."""
    return ReVOSDataset(root, split=split, **kw)
