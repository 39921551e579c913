"""Dataset validation ("doctor") for ReVOS / MeViS / ReasonVOS layouts.

Why: a bad frame name, an RLE of the wrong size or a dangling anno_id otherwise surfaces hours later as a crash in
a GRPO worker or as a silently wrong score. The doctor reads only JSON and image headers (full decode with
`decode=True`), reports every problem as an `Issue(file, key, message)` and never stops at the first one.

Checks (ReVOS/MeViS): malformed JSON; meta structure; video names, expression ids and frame names that escape the
root or hold a separator (`..`, absolute; the rule of `veason_r1.paths`, the one every reader applies); duplicate
frame names; missing or unreadable frames, frames whose size differs within a video or from the meta height/width;
empty expressions; obj_id/anno_id length mismatch; unknown anno_id; RLE list length vs frame count; RLE size vs
frame size; malformed RLEs; foreground masks, and a ReVOS split (one with `type_id`s) without
`mask_dict_foreground.json` (its R metric needs it). Warnings (exit code stays 0): a type 0/1 expression whose GT is
empty in every frame, a split without `mask_dict.json` (MeViS `valid` is scored by a server), a video missing from
the foreground file. ReasonVOS (either release, detected and reported): names, frames, the form of `expressions`,
empty `exp_text`, missing obj_id / exp_id, repeated (obj_id, exp_id), missing GT folders / PNGs, PNGs the reference
cannot read (a JPEG saved as .png, damaged files), PNG size vs frame size.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image
from pycocotools import mask as mask_utils

from veason_r1.data.masks import coco_rle, rle_area
from veason_r1.data.revos import TYPE_NAMES
from veason_r1.paths import name_problem

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Issue:
    """One problem: the file it is in, the key inside that file (JSON path or frame), and what is wrong."""

    file: str
    key: str
    message: str
    severity: str = ERROR

    def __str__(self) -> str:
        where = f"{self.file} [{self.key}]" if self.key else self.file
        return f"{self.severity.upper()}: {where}: {self.message}"


@dataclass
class DoctorReport:
    root: str
    format: str = "revos"
    splits: list[str] = field(default_factory=list)
    videos: int = 0
    expressions: Counter = field(default_factory=Counter)  # type name -> count
    frames_checked: int = 0
    issues: list[Issue] = field(default_factory=list)
    release: str | None = None  # ReasonVOS: which release the meta file is

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == ERROR]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == WARNING]

    @property
    def ok(self) -> bool:
        return not self.errors

    def summary(self) -> str:
        types = ", ".join(f"{k} {v}" for k, v in sorted(self.expressions.items())) or "none"
        fmt = f"{self.format}, {self.release}" if self.release else self.format
        return (f"{self.root} ({fmt}; splits: {', '.join(self.splits) or 'none'}): {self.videos} videos, "
                f"{sum(self.expressions.values())} expressions ({types}), {self.frames_checked} frames checked, "
                f"{len(self.errors)} errors, {len(self.warnings)} warnings")


def unsafe_name(name: object, allow_slash: bool = True) -> str | None:
    """Why a name may not be joined under the dataset root, or None when it is safe (`veason_r1.paths`' rule: video
    names may hold `/`; expression ids and frame names are one component)."""
    return name_problem(name, allow_slash=allow_slash)


class _Checker:
    def __init__(self, root: Path, decode: bool, progress: bool):
        self.root = root
        self.decode = decode
        self.progress = progress
        self.report = DoctorReport(str(root))
        self._json: dict[Path, object] = {}

    # helpers ---------------------------------------------------------------------------------------------------
    def issue(self, file, key: str, message: str, severity: str = ERROR) -> None:
        self.report.issues.append(Issue(self.rel(file), key, message, severity))

    def rel(self, path) -> str:
        try:
            return str(Path(path).relative_to(self.root))
        except ValueError:
            return str(path)

    def load(self, path: Path) -> object | None:
        """Parsed JSON, cached (ReVOS shares mask_dict.json between splits); None (and an issue) when broken."""
        if path not in self._json:
            try:
                with open(path, encoding="utf-8") as f:
                    self._json[path] = json.load(f)
            except json.JSONDecodeError as e:
                self.issue(path, "", f"malformed JSON: {e}")
                self._json[path] = None
            except (OSError, UnicodeDecodeError) as e:
                self.issue(path, "", f"unreadable: {e}")
                self._json[path] = None
        return self._json[path]

    def image_size(self, path: Path, key: str) -> tuple[int, int] | None:
        """(H, W) from the header (full decode if asked); None and an issue when missing or unreadable."""
        if not path.is_file():
            self.issue(path, key, "missing frame" if path.suffix == ".jpg" else "missing file")
            return None
        try:
            with Image.open(path) as im:
                if self.decode:
                    im.load()
                return im.height, im.width
        except Exception as e:  # noqa: BLE001 - PIL raises many types for broken files
            self.issue(path, key, f"unreadable image: {e}")
            return None

    def load_meta(self, meta_file: Path) -> dict | None:
        """A meta_expressions JSON with a 'videos' object, or None (the problem is reported)."""
        meta = self.load(meta_file)
        if meta is not None and (not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict)):
            self.issue(meta_file, "", "expected {'videos': {...}} at top level")
            return None
        return meta

    def videos(self, meta_file: Path, meta: dict, desc: str):
        """(name, entry, key) of each video whose name is safe and whose 'frames' list is non-empty; the others
        are reported. Counts every video."""
        for vname, v in self.bar(list(meta["videos"].items()), desc):
            self.report.videos += 1
            key = f"videos[{vname!r}]"
            bad = unsafe_name(vname)
            if bad:
                self.issue(meta_file, key, bad)
                continue
            if not isinstance(v, dict) or not isinstance(v.get("frames"), list) or not v["frames"]:
                self.issue(meta_file, f"{key}.frames", "missing or empty 'frames' list")
                continue
            yield vname, v, key

    def bar(self, items, desc: str):
        if not self.progress:
            return items
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit="video")

    # ReVOS / MeViS -----------------------------------------------------------------------------------------------
    def find_splits(self) -> list[tuple[str, Path]]:
        found: dict[str, Path] = {}
        for p in sorted(self.root.glob("meta_expressions_*_.json")):
            found.setdefault(p.name[len("meta_expressions_"):-len("_.json")], p)
        for p in sorted(self.root.glob("meta_expressions_*.json")):
            if not p.name.endswith("_.json"):
                found.setdefault(p.name[len("meta_expressions_"):-len(".json")], p)
        for p in sorted(self.root.glob("*/meta_expressions.json")):
            found.setdefault(p.parent.name, p)
        return sorted(found.items())

    def find(self, name: str, split: str) -> Path | None:
        for cand in (self.root / name, self.root / split / name):
            if cand.is_file():
                return cand
        return None

    def check_revos(self, splits: list[str] | None) -> None:
        available = self.find_splits()
        if splits:
            names = dict(available)
            for s in splits:
                if s not in names:
                    self.issue(self.root, s, f"no meta_expressions file for split {s!r} "
                                             f"(found: {', '.join(names) or 'none'})")
            available = [(s, names[s]) for s in splits if s in names]
        elif not available:
            self.issue(self.root, "", "no meta_expressions_<split>_.json, meta_expressions_<split>.json, "
                                      "<split>/meta_expressions.json or meta_expressions.json (ReasonVOS) found")
        for split, meta_file in available:
            if meta_file.name == "meta_expressions.json":
                self.report.format = "mevis"  # MeViS release layout: <split>/meta_expressions.json
            self.report.splits.append(split)
            self.check_split(split, meta_file)

    def check_split(self, split: str, meta_file: Path) -> None:
        meta = self.load_meta(meta_file)
        if meta is None:
            return
        mask_file = self.find("mask_dict.json", split)
        mask_dict = self.load(mask_file) if mask_file else None
        if mask_file is None:
            self.issue(self.root, split, "no mask_dict.json: GT masks are not available for this split", WARNING)
        elif mask_dict is not None and not isinstance(mask_dict, dict):
            self.issue(mask_file, "", "expected an object anno_id -> list of RLEs")
            mask_dict = None
        fg_file = self.find("mask_dict_foreground.json", split)
        fg = self.load(fg_file) if fg_file else None
        if fg is not None and not isinstance(fg, dict):
            self.issue(fg_file, "", "expected an object video -> {'masks_rle': [...]}")
            fg = None
        checked_annos: set[str] = set()
        typed = False  # ReVOS has type_id; MeViS has none
        for vname, v, key in self.videos(meta_file, meta, f"doctor {split}"):
            size = self.check_frames(split, meta_file, vname, v)
            n = len(v["frames"])
            exps = v.get("expressions")
            if not isinstance(exps, dict):
                self.issue(meta_file, f"{key}.expressions", "missing 'expressions' object")
                continue
            for exp_id, e in exps.items():
                bad = unsafe_name(exp_id, allow_slash=False)
                if bad:
                    self.issue(meta_file, f"{key}.expressions[{exp_id!r}]", f"expression id: {bad}")
                self.check_expression(meta_file, mask_file, mask_dict, f"{key}.expressions[{exp_id!r}]", e, n, size,
                                      checked_annos)
                typed = typed or (isinstance(e, dict) and e.get("type_id") is not None)
            if fg is not None:
                self.check_foreground(fg_file, fg, vname, n, size)
        if typed and mask_file is not None and fg_file is None:
            self.issue(self.root, split, "no mask_dict_foreground.json: a ReVOS split (expressions with type_id) "
                                         "needs it for the R (robustness) metric")

    def check_frames(self, split: str, meta_file: Path, vname: str, v: dict) -> tuple[int, int] | None:
        key = f"videos[{vname!r}].frames"
        folder = None
        for cand in (self.root / "JPEGImages" / vname, self.root / split / "JPEGImages" / vname):
            if cand.is_dir():
                folder = cand
                break
        if folder is None:
            self.issue(self.root / "JPEGImages" / vname, key, "missing frame folder")
            return _meta_size(v)
        first: tuple[int, int] | None = None
        seen: set[str] = set()
        for t, fname in enumerate(v["frames"]):
            bad = unsafe_name(fname, allow_slash=False)
            if bad:
                self.issue(meta_file, f"{key}[{t}]", bad)
                continue
            if fname in seen:
                self.issue(meta_file, f"{key}[{t}]", f"duplicate frame name {fname!r}")
            seen.add(fname)
            self.report.frames_checked += 1
            size = self.image_size(folder / f"{fname}.jpg", f"{key}[{t}]")
            if size is None:
                continue
            if first is None:
                first = size
                meta_size = _meta_size(v)
                if meta_size and meta_size != size:
                    self.issue(meta_file, f"videos[{vname!r}].height/width",
                               f"meta says {meta_size[0]}x{meta_size[1]} but frame {fname!r} is {size[0]}x{size[1]}")
            elif size != first:
                self.issue(folder / f"{fname}.jpg", f"{key}[{t}]",
                           f"frame is {size[0]}x{size[1]}, the video's first frame is {first[0]}x{first[1]}")
        return first or _meta_size(v)

    def check_expression(self, meta_file, mask_file, mask_dict, key, e, n, size, checked_annos) -> None:
        if not isinstance(e, dict):
            self.issue(meta_file, key, "expression must be an object")
            return
        text = e.get("exp")
        if not isinstance(text, str) or not text.strip():
            self.issue(meta_file, f"{key}.exp", "empty expression text")
        type_id = e.get("type_id")
        if type_id is not None and type_id not in (0, 1, 2):
            self.issue(meta_file, f"{key}.type_id", f"type_id must be 0, 1 or 2, got {type_id!r}")
        self.report.expressions[TYPE_NAMES.get(type_id, "untyped")] += 1
        obj_ids, anno_ids = e.get("obj_id", []), e.get("anno_id", [])
        if not isinstance(obj_ids, list) or not isinstance(anno_ids, list):
            self.issue(meta_file, key, "obj_id and anno_id must be lists")
            return
        if len(obj_ids) != len(anno_ids):
            self.issue(meta_file, key, f"{len(obj_ids)} obj_id but {len(anno_ids)} anno_id")
        if type_id == 2 and anno_ids:
            self.issue(meta_file, f"{key}.anno_id", "no-target expression (type_id 2) lists anno_ids", WARNING)
        if type_id in (0, 1) and not anno_ids:
            self.issue(meta_file, f"{key}.anno_id", f"type_id {type_id} expression has no anno_id")
        if mask_dict is None:
            return
        any_fg = False
        for a in anno_ids:
            a = str(a)
            rles = mask_dict.get(a)
            if rles is None:
                self.issue(meta_file, f"{key}.anno_id", f"unknown anno_id {a!r} (not in {self.rel(mask_file)})")
                continue
            if a not in checked_annos:
                checked_annos.add(a)
                self.check_rles(mask_file, f"{a!r}", rles, n, size)
            if not any_fg and isinstance(rles, list):
                any_fg = any(_area(r) > 0 for r in rles if isinstance(r, dict))
        if type_id in (0, 1) and anno_ids and not any_fg:
            self.issue(meta_file, key, "GT is empty in every frame", WARNING)

    def check_rles(self, file, key: str, rles, n: int, size: tuple[int, int] | None) -> None:
        if not isinstance(rles, list):
            self.issue(file, key, "expected a list with one RLE (or null) per frame")
            return
        if len(rles) != n:
            self.issue(file, key, f"{len(rles)} RLEs for {n} frames")
        bad_size: list[int] = []
        for t, r in enumerate(rles):
            if r is None:
                continue
            if not (isinstance(r, dict) and isinstance(r.get("size"), list) and len(r["size"]) == 2
                    and isinstance(r.get("counts"), (str, list))):
                self.issue(file, f"{key}[{t}]", "malformed RLE (needs 'size': [h, w] and 'counts')")
                continue
            if self.decode:
                try:
                    _decode_check(r)
                except Exception as e:  # noqa: BLE001
                    self.issue(file, f"{key}[{t}]", f"RLE does not decode: {e}")
            if size is not None and tuple(int(x) for x in r["size"]) != tuple(size):
                bad_size.append(t)
        if bad_size:
            t = bad_size[0]
            self.issue(file, f"{key}[{t}]", f"RLE size {list(rles[t]['size'])} differs from the frame size "
                                            f"{list(size)} (in {len(bad_size)} of {len(rles)} frames)")

    def check_foreground(self, fg_file, fg: dict, vname: str, n: int, size) -> None:
        entry = fg.get(vname)
        if entry is None:
            self.issue(fg_file, repr(vname), "video missing from the foreground masks", WARNING)
            return
        if not isinstance(entry, dict) or not isinstance(entry.get("masks_rle"), list):
            self.issue(fg_file, repr(vname), "expected {'masks_rle': [...]}")
            return
        self.check_rles(fg_file, f"{vname!r}.masks_rle", entry["masks_rle"], n, size)

    # ReasonVOS ----------------------------------------------------------------------------------------------------
    def check_reasonvos(self, meta_file: Path) -> None:
        """Both releases (veason_r1.data.reasonvos): the form of `expressions` decides which one is checked."""
        from veason_r1.data.reasonvos import RELEASE_DICT, RELEASE_LIST, RELEASES, detect_release

        self.report.format = "reasonvos"
        self.report.splits.append("test")
        meta = self.load_meta(meta_file)
        if meta is None:
            return
        release = detect_release(meta) or RELEASE_LIST
        self.report.release = RELEASES[release]
        for vname, v, key in self.videos(meta_file, meta, "doctor reasonvos"):
            src = v.get("source")
            if not isinstance(src, str) or unsafe_name(src):
                self.issue(meta_file, f"{key}.source", f"missing or unsafe 'source': {src!r}")
                continue
            size = self.check_frames("", meta_file, vname, v)
            exps = v.get("expressions")
            if release == RELEASE_LIST and not isinstance(exps, list):
                self.issue(meta_file, f"{key}.expressions", f"expected a list of {{obj_id, exp_id, exp_text, "
                                                            f"is_sent}} ({release} release, as the other videos)")
                continue
            if release == RELEASE_DICT and not isinstance(exps, dict):
                self.issue(meta_file, f"{key}.expressions", f"expected an object {{key: {{exp_text, obj_id}}}} "
                                                            f"({release} release, as the other videos)")
                continue
            items = list(enumerate(exps)) if release == RELEASE_LIST else list(exps.items())
            pairs: set[tuple[str, str]] = set()
            checked: set[str] = set()
            for exp_key, e in items:
                ekey = f"{key}.expressions[{exp_key!r}]"
                self.report.expressions["untyped"] += 1
                bad = unsafe_name(exp_key, allow_slash=False) if release != RELEASE_LIST else None
                if bad:
                    self.issue(meta_file, ekey, f"expression id: {bad}")
                if not isinstance(e, dict):
                    self.issue(meta_file, ekey, "expression must be an object")
                    continue
                if not isinstance(e.get("exp_text"), str) or not e["exp_text"].strip():
                    self.issue(meta_file, f"{ekey}.exp_text", "empty expression text")
                if "obj_id" not in e:
                    self.issue(meta_file, f"{ekey}.obj_id", "missing obj_id")
                    continue
                if release == RELEASE_LIST:
                    if "exp_id" not in e:
                        self.issue(meta_file, f"{ekey}.exp_id", "missing exp_id")
                        continue
                    pair = (str(e["obj_id"]), str(e["exp_id"]))
                    if pair in pairs:
                        self.issue(meta_file, ekey, f"obj_id {pair[0]} and exp_id {pair[1]} repeat an earlier "
                                                    f"expression (they name its prediction folder)")
                    pairs.add(pair)
                    if not isinstance(e.get("is_sent"), bool):
                        self.issue(meta_file, f"{ekey}.is_sent", "missing or not true/false", WARNING)
                    bad = unsafe_name(str(e["exp_id"]), allow_slash=False)
                    if bad:
                        self.issue(meta_file, f"{ekey}.exp_id", bad)
                gt_name = f"{src}_{vname}_{e['obj_id']}"
                if gt_name in checked:
                    continue
                checked.add(gt_name)
                self.check_reasonvos_gt(gt_name, f"{src.lower()}_{vname}_{e['obj_id']}", ekey, v, size)

    def check_reasonvos_gt(self, gt_name: str, lower_name: str, ekey: str, v: dict, size) -> None:
        """One GT folder: present, one PNG per frame (a missing one is a warning: the frame is not scored), each a
        PNG the reference can read (decoded with `decode=True`) and of the frames' size."""
        from veason_r1.data.mask_png import PNGError, png_header, read_mask_png

        gt_dir = self.root / "Annotations" / gt_name
        if not gt_dir.is_dir() and (self.root / "Annotations" / lower_name).is_dir():
            gt_dir = self.root / "Annotations" / lower_name
        if unsafe_name(gt_name) or not gt_dir.is_dir():
            self.issue(gt_dir, ekey, "missing GT folder")
            return
        for t, fname in enumerate(v["frames"]):
            if unsafe_name(fname, allow_slash=False):
                continue  # reported by check_frames
            png = gt_dir / f"{fname}.png"
            if not png.is_file():
                self.issue(png, f"{ekey}[{t}]", "missing GT PNG (frame not scored)", WARNING)
                continue
            try:
                if self.decode:
                    psize = read_mask_png(png).shape
                else:
                    with open(png, "rb") as f:
                        psize = png_header(f.read(33), png)[:2]
            except (PNGError, OSError) as err:
                self.issue(png, f"{ekey}[{t}]", f"unreadable GT PNG: {err}")
                continue
            if size is not None and tuple(psize) != tuple(size):
                self.issue(png, f"{ekey}[{t}]", f"GT PNG is {psize[0]}x{psize[1]}, frames are "
                                                f"{size[0]}x{size[1]}")

    # entry ---------------------------------------------------------------------------------------------------------
    def run(self, splits: list[str] | None) -> DoctorReport:
        if not self.root.is_dir():
            self.issue(self.root, "", "dataset root is not a folder")
            return self.report
        rv_meta = self.root / "meta_expressions.json"
        if rv_meta.is_file() and _looks_like_reasonvos(self.load(rv_meta)):
            self.check_reasonvos(rv_meta)
        else:
            self.check_revos(splits)
        return self.report


def _meta_size(v: dict) -> tuple[int, int] | None:
    h, w = v.get("height"), v.get("width")
    return (int(h), int(w)) if isinstance(h, int) and isinstance(w, int) else None


def _area(r: dict) -> int:
    try:
        return rle_area(r)
    except Exception:  # noqa: BLE001 - malformed RLEs are reported elsewhere
        return 0


def _decode_check(r: dict) -> None:
    m = mask_utils.decode(coco_rle(r))
    h, w = int(r["size"][0]), int(r["size"][1])
    if m.shape[:2] != (h, w):
        raise ValueError(f"decoded to {m.shape[:2]}")


def _looks_like_reasonvos(meta: object) -> bool:
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict) or not meta["videos"]:
        return False
    first = next(iter(meta["videos"].values()))
    return isinstance(first, dict) and "source" in first


def diagnose(root: str | os.PathLike, splits: list[str] | None = None, decode: bool = False,
             progress: bool = False) -> DoctorReport:
    """Check a dataset; `splits=None` checks every split present. Returns counts and every issue found."""
    return _Checker(Path(root), decode, progress).run(splits)


def check_dataset(root: str | os.PathLike, splits: list[str] | None = None, decode: bool = False,
                  progress: bool = False) -> list[Issue]:
    """Every issue (errors and warnings) of a dataset."""
    return diagnose(root, splits, decode, progress).issues
