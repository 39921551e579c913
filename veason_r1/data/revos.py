"""ReVOS / MeViS reader (MeViS: the same files without `type_id`). Masks are decoded lazily, one frame at a time.

Layout (docs/method.md §2): `JPEGImages/<video>/<frame>.jpg` (video names may contain slashes),
`mask_dict.json` (anno_id -> per-frame RLE or null), `mask_dict_foreground.json` (video -> {"masks_rle": [...]}),
`meta_expressions_<split>_.json`.

Untrusted input is refused when the dataset is opened, before any command writes (docs/data.md, "What is refused"):
video names, expression ids and frame names that would escape a root (`veason_r1.paths`), duplicate frame names,
and per-frame mask lists (objects and foreground) whose length is not the video's frame count. An RLE that does
not decode, or decodes to another size than the video, is an error naming the anno_id and the frame.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pycocotools import mask as mask_utils

from veason_r1.benchmarks import DEFAULT_SPLITS
from veason_r1.data.masks import coco_rle, decode_rle, rle_area, rle_counts, rle_problem, rle_size, union_masks
from veason_r1.data.video import JpegFolderSource
from veason_r1.errors import BadInput, MissingInput, MissingKey
from veason_r1.paths import check_name, safe_join

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
        raise MissingInput(path, "missing file") from None
    except json.JSONDecodeError as e:
        raise BadInput(path, f"not valid JSON ({e})") from None
    except UnicodeDecodeError as e:
        raise BadInput(path, f"not UTF-8 text ({e})") from None


def meta_path(root: Path, split: str) -> Path:
    """`meta_expressions_<split>_.json` (ReVOS) or `<split>/meta_expressions.json` (MeViS release layout)."""
    for cand in (root / f"meta_expressions_{split}_.json", root / f"meta_expressions_{split}.json",
                 root / split / "meta_expressions.json"):
        if cand.is_file():
            return cand
    raise MissingInput(root, f"no meta_expressions file for split {split!r}",
                       hint=f"expected meta_expressions_{split}_.json or {split}/meta_expressions.json; "
                            "`veason-r1 doctor ROOT` lists the splits present")


def parse_meta(meta: object, source: Path) -> dict[str, VideoMeta]:
    """Validate and parse a meta_expressions JSON; errors name the file and the key."""
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise BadInput(source, "expected {'videos': {...}} at top level")
    videos: dict[str, VideoMeta] = {}
    for vname, v in meta["videos"].items():
        key = f"videos[{vname!r}]"
        check_name(vname, f"{key}: video name", source, allow_slash=True)
        if not isinstance(v, dict) or not isinstance(v.get("frames"), list):
            raise BadInput(source, f"{key}: missing 'frames' list")
        frames = check_frame_names(v["frames"], f"{key}.frames", source)
        height, width = v.get("height"), v.get("width")
        for name, value in (("height", height), ("width", width)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise BadInput(source, f"{key}.{name}: expected a positive integer, got {value!r}")
        vm = VideoMeta(vname, frames, height, width)
        exps = v.get("expressions") or {}
        if not isinstance(exps, dict):
            raise BadInput(source, f"{key}.expressions: expected an object exp_id -> expression")
        for exp_id, e in exps.items():
            ekey = f"{key}.expressions[{exp_id!r}]"
            check_name(exp_id, f"{ekey}: expression id", source)
            if not isinstance(e, dict) or "exp" not in e:
                raise BadInput(source, f"{ekey}: missing 'exp'")
            try:
                obj_ids = tuple(int(o) for o in e.get("obj_id", []))
                anno_ids = tuple(str(a) for a in e.get("anno_id", []))
                type_id = None if e.get("type_id") is None else int(e["type_id"])
            except (TypeError, ValueError) as err:
                raise BadInput(source, f"{ekey}: obj_id, anno_id and type_id must be lists of ids / an int ({err})") \
                    from None
            vm.expressions[str(exp_id)] = Expression(video=vname, exp_id=str(exp_id), text=str(e["exp"]),
                                                     obj_ids=obj_ids, anno_ids=anno_ids, type_id=type_id)
        videos[vname] = vm
    return videos


def check_frame_names(frames: list, key: str, source: Path) -> list[str]:
    """Frame names as strings; unsafe or duplicate names are refused (a duplicate would be scored twice)."""
    names = []
    seen: dict[str, int] = {}
    for t, f in enumerate(frames):
        name = check_name(str(f) if isinstance(f, (int, str)) else f, f"{key}[{t}]: frame name", source)
        if name in seen:
            raise BadInput(source, f"{key}[{t}]: duplicate frame name {name!r} (also at index {seen[name]})",
                           hint="every frame of a video must have its own name")
        seen[name] = t
        names.append(name)
    return names


class ReVOSDataset:
    """A ReVOS-format split. `gt_mask(expr, t)` is the union of the expression's objects in frame t."""

    def __init__(self, root: str | os.PathLike, split: str = DEFAULT_SPLITS["revos"],
                 meta_file: str | os.PathLike | None = None, load_foreground: bool = True,
                 mask_cache: str | os.PathLike | None = None):
        """`mask_cache`: a folder for a memory-mapped index of mask_dict.json (`veason_r1.data.mask_index`), parsed
        once and shared by every process that opens the dataset with the same folder (RL data-loader workers)."""
        self.root = Path(root)
        self.split = split
        self.meta_file = Path(meta_file) if meta_file else meta_path(self.root, split)
        self.videos = parse_meta(load_json(self.meta_file), self.meta_file)
        self.mask_dict_file = self._find("mask_dict.json")
        if mask_cache is not None:
            from veason_r1.data.mask_index import shared_mask_dict

            self.mask_dict: Mapping[str, list] = shared_mask_dict(self.mask_dict_file, mask_cache)
        else:
            self.mask_dict = load_json(self.mask_dict_file)  # RLE strings; decoded per frame on demand
        fg_file = self._find("mask_dict_foreground.json", required=False)
        self.foreground: dict[str, dict] = load_json(fg_file) if (fg_file and load_foreground) else {}
        self.foreground_file = fg_file
        if not isinstance(self.mask_dict, Mapping):
            raise BadInput(self.mask_dict_file, "expected an object anno_id -> list of per-frame RLEs")
        if not isinstance(self.foreground, dict):
            raise BadInput(fg_file, "expected an object video -> {'masks_rle': [...]}")
        self.expressions = [e for v in self.videos.values() for e in v.expressions.values()]
        self._check_mask_lengths()

    def _check_mask_lengths(self) -> None:
        """Every listed object has one mask entry per frame: a short list would read as empty GT in the missing
        frames (a silently wrong score), a long one is misaligned. Unknown anno_ids stay a lazy KeyError (MeViS
        splits without GT never ask)."""
        count = getattr(self.mask_dict, "frame_count", None)  # MaskIndex: lengths without building the RLEs
        for vm in self.videos.values():
            n = len(vm.frames)
            for e in vm.expressions.values():
                for a in e.anno_ids:
                    length = count(a) if count is not None else None
                    rles = range(length) if length is not None else self.mask_dict.get(a)
                    if rles is None:
                        continue
                    if not isinstance(rles, (list, range)):
                        raise BadInput(self.mask_dict_file, f"anno_id {a!r}: expected a list with one RLE (or null) "
                                                            "per frame")
                    if len(rles) != n:
                        raise BadInput(self.mask_dict_file,
                                       f"anno_id {a!r} (video {vm.name!r}, expression {e.exp_id!r}) has {len(rles)} "
                                       f"masks for the video's {n} frames",
                                       hint="one RLE or null per frame listed in the meta file")
            fg = self.foreground.get(vm.name)
            if isinstance(fg, dict) and isinstance(fg.get("masks_rle"), list) and len(fg["masks_rle"]) != n:
                raise BadInput(self.foreground_file, f"video {vm.name!r}: {len(fg['masks_rle'])} foreground masks "
                                                     f"for {n} frames")

    def _find(self, name: str, required: bool = True) -> Path | None:
        for cand in (self.root / name, self.root / self.split / name):
            if cand.is_file():
                return cand
        if required:
            raise MissingInput(self.root / name, f"missing (also looked in {self.root / self.split})")
        return None

    # frames ------------------------------------------------------------------------------------------------
    def frame_dir(self, video: str) -> Path:
        """The video's frame folder, always inside the dataset root (an escaping name is refused)."""
        candidates = [safe_join(self.root / "JPEGImages", video, key=f"video {video!r}"),
                      safe_join(self.root / self.split / "JPEGImages", video, key=f"video {video!r}")]
        for cand in candidates:
            if cand.is_dir():
                return cand
        return candidates[0]

    def frames(self, video: str) -> JpegFolderSource:
        """The video's frames; each decoded frame must have the video's size (meta height/width, else frame 0)."""
        vm = self.videos[video]
        expected = (int(vm.height), int(vm.width)) if vm.height and vm.width else None
        return JpegFolderSource(self.frame_dir(video), vm.frames, expected_size=expected, video=video)

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
            raise MissingKey(self.mask_dict_file, f"unknown anno_id {anno_id!r}",
                             hint="`veason-r1 doctor ROOT` lists every anno_id the meta file names but the masks lack") \
                from None
        if not 0 <= t < len(rles):
            raise IndexError(f"{self.mask_dict_file}: anno_id {anno_id!r} has no frame {t} ({len(rles)} masks)")
        return rles[t]

    def object_mask(self, anno_id: str, t: int, size: tuple[int, int] | None = None) -> np.ndarray | None:
        """Mask of one annotated object in frame t, or None when the object is absent there. A malformed RLE, or one
        of another size than `size`, is a `BadInput` naming the anno_id and the frame."""
        rle = self._rle(anno_id, t)
        where = f"anno_id {anno_id!r}, frame {t}"
        problem = rle_problem(rle, size) if rle is not None and size is not None else None
        if problem:  # the size is wrong, not the RLE (eval says the same)
            raise BadInput(self.mask_dict_file, f"{where}: {problem}")
        try:
            mask = decode_rle(rle)
        except (ValueError, TypeError, KeyError, IndexError) as e:  # pycocotools: "Invalid RLE mask representation"
            raise BadInput(self.mask_dict_file, f"{where}: invalid RLE ({e})",
                           hint="`veason-r1 doctor ROOT --decode` lists every RLE that does not decode") from None
        if mask is not None and size is not None and mask.shape != tuple(size):
            raise BadInput(self.mask_dict_file, f"{where}: RLE is {mask.shape[0]}x{mask.shape[1]}, the video's "
                                                f"frames are {size[0]}x{size[1]}")
        return mask

    def object_masks(self, expr: Expression, t: int) -> list[np.ndarray | None]:
        size = self.size(expr.video)
        return [self.object_mask(a, t, size) for a in expr.anno_ids]

    def gt_mask(self, expr: Expression, t: int) -> np.ndarray:
        """Union of the expression's objects in frame t (empty for no-target expressions)."""
        return union_masks(self.object_masks(expr, t), self.size(expr.video))

    def gt_areas(self, expr: Expression) -> list[int]:
        """Per-frame area of the GT union, computed on the RLEs (no full decode unless objects overlap)."""
        n = len(self.videos[expr.video].frames)
        h, w = self.size(expr.video)
        areas = []
        for t in range(n):
            rles = [(a, self._rle(a, t)) for a in expr.anno_ids]
            rles = [(a, r) for a, r in rles if r is not None]
            checked = self.__dict__.setdefault("_rles_checked", set())  # (anno_id, t): run lengths summed once
            for a, r in rles:  # header and run-length checks only: a full decode of every frame would be slow
                if (a, t) in checked:
                    continue
                try:
                    ok = rle_size(r) == (h, w) and sum(rle_counts(r)) == h * w
                except (TypeError, KeyError, ValueError, IndexError):
                    ok = False
                if not ok:
                    self.object_mask(a, t, (h, w))  # raises the precise error (bad RLE or wrong size)
                checked.add((a, t))
            try:
                if not rles:
                    areas.append(0)
                elif len(rles) == 1:
                    areas.append(rle_area(rles[0][1]))
                else:
                    merged = mask_utils.merge([coco_rle(r) for _, r in rles], intersect=False)
                    areas.append(int(mask_utils.area(merged)))
            except (ValueError, TypeError) as e:
                raise BadInput(self.mask_dict_file, f"anno_id(s) {[a for a, _ in rles]}, frame {t}: invalid RLE "
                                                    f"({e})") from None
            if areas[-1] > h * w:  # counts that do not add up to the frame: pycocotools' area does not check
                for a, _ in rles:
                    self.object_mask(a, t, (h, w))
                raise BadInput(self.mask_dict_file, f"anno_id(s) {[a for a, _ in rles]}, frame {t}: invalid RLE "
                                                    f"(area {areas[-1]} > {h}x{w})")
        return areas

    def foreground_mask(self, video: str, t: int) -> np.ndarray:
        """Union of all annotated objects of the video in frame t (ReVOS's R metric)."""
        rles = self.foreground.get(video, {}).get("masks_rle")
        if rles is None:
            raise MissingKey(self.foreground_file or self.root / "mask_dict_foreground.json",
                             f"no entry for video {video!r}")
        try:
            return decode_rle(rles[t], self.size(video))
        except (ValueError, TypeError, KeyError) as e:
            raise BadInput(self.foreground_file, f"video {video!r}, frame {t}: invalid RLE ({e})") from None


def MeViSDataset(root: str | os.PathLike, split: str = DEFAULT_SPLITS["mevis"], **kw) -> ReVOSDataset:  # noqa: N802
    """MeViS uses the same files as ReVOS, without type_id (every expression then has type_id None)."""
    return ReVOSDataset(root, split=split, **kw)
