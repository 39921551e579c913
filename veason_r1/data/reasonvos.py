"""ReasonVOS reader (VideoLISA's benchmark), both releases, with the public interface of `ReVOSDataset`.

`meta_expressions.json` holds `videos[vid] = {source, frames, expressions}`; frames are `JPEGImages/<vid>/<frame>.jpg`
and each target has one GT folder `Annotations/<source>_<vid>_<obj_id>/<frame>.png` (the target's mask; 0 =
background). The two releases differ in `expressions` (docs/method.md §2, docs/evaluation.md):

- `2024-12-27` (the download VideoLISA links today, its scripts since commit 6625d43): a list of
  `{obj_id, exp_id, exp_text, is_sent}`; several expressions can share one obj_id (one GT folder); VideoLISA writes
  and scores predictions in `PRED/<source>_<vid>_<obj_id>/<exp_id>/<frame>.png`.
- `original` (the first release): an object `{key: {exp_text, obj_id}}` with `is_sent` per video; VideoLISA's
  scripts wrote and scored `PRED/<vid>/<obj_id>/<frame>.png`, once per (video, obj_id).

The release is detected from the form of `expressions` (`ReasonVOSDataset.release`). GT PNGs are read lazily, one
frame at a time, the way the reference reads them (`veason_r1.data.mask_png`: OpenCV grey levels; non-zero =
foreground). The reference scores the frames that have a GT PNG (`annotated_frames`); a frame without one reads as
an empty mask. ReasonVOS has no `type_id` (every Expression has `type_id=None`) and no foreground masks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from veason_r1.data.revos import Expression, VideoMeta, check_frame_names, load_json
from veason_r1.data.video import JpegFolderSource
from veason_r1.errors import BadInput, MissingInput
from veason_r1.paths import check_name, safe_join

RELEASE_LIST = "2024-12-27"
RELEASE_DICT = "original"
RELEASES = {
    RELEASE_LIST: "VideoLISA's 2024-12-27 release (expressions: list of {obj_id, exp_id, exp_text, is_sent})",
    RELEASE_DICT: "VideoLISA's original release (expressions: {key: {exp_text, obj_id}}, is_sent per video)",
}
PRED_LAYOUTS = {
    "current": "PRED/<source>_<video>_<obj_id>/<exp_id>/<frame>.png (VideoLISA since 2024-12-27)",
    "obj_id": "PRED/<video>/<obj_id>/<frame>.png (VideoLISA's original scripts; one folder per video and object)",
    "exp_id": "PRED/<video>/<exp_id>/<frame>.png (this project before 2024-12-27 support)",
}
DEFAULT_PRED_LAYOUT = "current"


@dataclass(frozen=True)
class ExpressionInfo:
    """What the release says about an expression beyond `Expression`: its own exp_id, the obj_id as written
    (GT / prediction folder part) and is_sent (a question sentence rather than a phrase)."""

    release_exp_id: str
    obj_id: str
    is_sent: bool


def read_png_mask(path: Path) -> np.ndarray:
    """A GT/prediction PNG as a bool mask, read as the reference reads it (OpenCV grey level != 0)."""
    from veason_r1.data.mask_png import read_mask_png

    return read_mask_png(path) != 0


def detect_release(meta: object) -> str | None:
    """RELEASE_LIST or RELEASE_DICT from the first video that has expressions; None when undecidable."""
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        return None
    for v in meta["videos"].values():
        exps = v.get("expressions") if isinstance(v, dict) else None
        if isinstance(exps, list) and exps:
            return RELEASE_LIST
        if isinstance(exps, dict) and exps:
            return RELEASE_DICT
    return None


def _obj_text(obj) -> str:
    """obj_id as it appears in folder names (a list of ids, never seen in the releases, joins with '_')."""
    return "_".join(str(o) for o in obj) if isinstance(obj, list) else str(obj)


def _obj_ids(obj, where: str, source) -> tuple[int, ...]:
    try:
        return tuple(int(o) for o in obj) if isinstance(obj, list) else (int(obj),)
    except (TypeError, ValueError):
        raise BadInput(source, f"{where}.obj_id: expected an integer id, got {obj!r}") from None


def parse_reasonvos_meta(meta: object, source: Path) -> tuple[dict[str, VideoMeta], dict[str, dict], str,
                                                               dict[str, ExpressionInfo]]:
    """(videos, per-video {source, is_sent}, release, per-expression-key ExpressionInfo); errors name the file
    and key. is_sent per video is the original release's field (None in the 2024-12-27 release)."""
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise BadInput(source, "expected {'videos': {...}} at top level")
    release = detect_release(meta) or RELEASE_LIST
    videos: dict[str, VideoMeta] = {}
    extra: dict[str, dict] = {}
    infos: dict[str, ExpressionInfo] = {}
    for vname, v in meta["videos"].items():
        where = f"videos[{vname!r}]"
        check_name(vname, f"{where}: video name", source, allow_slash=True)
        if not isinstance(v, dict) or not isinstance(v.get("frames"), list):
            raise BadInput(source, f"{where}: missing 'frames' list")
        if "source" not in v:
            raise BadInput(source, f"{where}: missing 'source'")
        vm = VideoMeta(vname, check_frame_names(v["frames"], f"{where}.frames", source))
        src = check_name(str(v["source"]), f"{where}.source", source)
        exps = v.get("expressions") or ([] if release == RELEASE_LIST else {})
        entries: list[tuple[str, str, dict, bool]] = []  # (where, release exp_id, entry, is_sent)
        if release == RELEASE_LIST:
            if not isinstance(exps, list):
                raise BadInput(source, f"{where}.expressions: expected a list (2024-12-27 release), got "
                                 f"{type(exps).__name__}; the file mixes the two ReasonVOS releases")
            for i, e in enumerate(exps):
                ew = f"{where}.expressions[{i}]"
                if not isinstance(e, dict) or any(k not in e for k in ("obj_id", "exp_id", "exp_text")):
                    raise BadInput(source, f"{ew}: needs 'obj_id', 'exp_id' and 'exp_text'")
                entries.append((ew, str(e["exp_id"]), e, bool(e.get("is_sent", False))))
        else:
            if not isinstance(exps, dict):
                raise BadInput(source, f"{where}.expressions: expected an object (original release), got "
                                 f"{type(exps).__name__}; the file mixes the two ReasonVOS releases")
            for key, e in exps.items():
                ew = f"{where}.expressions[{key!r}]"
                if not isinstance(e, dict) or "exp_text" not in e or "obj_id" not in e:
                    raise BadInput(source, f"{ew}: needs 'exp_text' and 'obj_id'")
                entries.append((ew, str(key), e, bool(v.get("is_sent", False))))
        seen_exp = [x[1] for x in entries]
        for ew, exp_id, e, is_sent in entries:
            check_name(exp_id, f"{ew}: expression id", source)
            obj = e["obj_id"]
            obj_ids = _obj_ids(obj, ew, source)
            # our key: the release's exp_id, made unique within the video when the release repeats it per object
            key = exp_id if seen_exp.count(exp_id) == 1 else f"{_obj_text(obj)}-{exp_id}"
            if key in vm.expressions:
                raise BadInput(source, f"{ew}: duplicate expression (obj_id {_obj_text(obj)}, exp_id {exp_id})")
            expr = Expression(video=vname, exp_id=key, text=str(e["exp_text"]), obj_ids=obj_ids,
                              anno_ids=tuple(check_name(f"{src}_{vname}_{o}", f"{ew}: GT folder", source,
                                                        allow_slash=True)
                                             for o in (obj if isinstance(obj, list) else [obj])),
                              type_id=None)
            vm.expressions[key] = expr
            infos[expr.key] = ExpressionInfo(exp_id, _obj_text(obj), is_sent)
        videos[vname] = vm
        extra[vname] = {"source": src, "is_sent": bool(v["is_sent"]) if "is_sent" in v else None}
    return videos, extra, release, infos


class ReasonVOSDataset:
    """A ReasonVOS-format benchmark (either release). `gt_mask(expr, t)` reads one GT PNG; anno_ids are GT folder
    names; `prediction_folder(expr, layout)` is where a prediction lives in each layout (PRED_LAYOUTS)."""

    def __init__(self, root: str | os.PathLike, meta_file: str | os.PathLike | None = None):
        self.root = Path(root)
        self.split = "test"
        self.meta_file = Path(meta_file) if meta_file else self.root / "meta_expressions.json"
        self.videos, self.video_info, self.release, self.expression_info = parse_reasonvos_meta(
            load_json(self.meta_file), self.meta_file)
        self.expressions = [e for v in self.videos.values() for e in v.expressions.values()]
        self._sizes: dict[str, tuple[int, int]] = {}

    @property
    def release_note(self) -> str:
        return RELEASES[self.release]

    # frames ------------------------------------------------------------------------------------------------
    def frame_dir(self, video: str) -> Path:
        return safe_join(self.root / "JPEGImages", video, key=f"video {video!r}")

    def frames(self, video: str) -> JpegFolderSource:
        return JpegFolderSource(self.frame_dir(video), self.videos[video].frames, video=video)

    def size(self, video: str) -> tuple[int, int]:
        if video not in self._sizes:
            self._sizes[video] = self.frames(video).size  # JPEG header only
        return self._sizes[video]

    # predictions ---------------------------------------------------------------------------------------------
    def prediction_folder(self, expr: Expression, layout: str = DEFAULT_PRED_LAYOUT) -> tuple[str, str]:
        """(folder, subfolder) under PRED of one expression's PNGs in `layout` (see PRED_LAYOUTS)."""
        info = self.expression_info[expr.key]
        if layout == "current":
            return f"{self.video_info[expr.video]['source']}_{expr.video}_{info.obj_id}", info.release_exp_id
        if layout == "obj_id":
            return expr.video, info.obj_id
        if layout == "exp_id":
            return expr.video, expr.exp_id
        raise ValueError(f"unknown ReasonVOS prediction layout {layout!r}; choose one of {', '.join(PRED_LAYOUTS)}")

    # masks --------------------------------------------------------------------------------------------------
    def mask_dir(self, anno_id: str) -> Path:
        """GT folder of one target. The release names it `<source>_<vid>_<obj_id>` (its first checker lower-cased
        `source`, its scorer does not): the exact name is tried first, then the lower-cased source."""
        path = self.root / "Annotations" / anno_id
        if not path.is_dir():
            for vname, info in self.video_info.items():
                prefix = f"{info['source']}_{vname}_"
                if anno_id.startswith(prefix):
                    alt = self.root / "Annotations" / (info["source"].lower() + "_" + anno_id[len(info["source"]) + 1:])
                    if alt.is_dir():
                        return alt
                    break
            raise MissingInput(path, "missing GT folder")
        return path

    def annotated_frames(self, expr: Expression) -> list[int]:
        """Indices of the frames with a GT PNG for every target of the expression (what the reference scores)."""
        dirs = [self.mask_dir(a) for a in expr.anno_ids]
        names = self.videos[expr.video].frames
        return [t for t, n in enumerate(names) if all((d / f"{n}.png").is_file() for d in dirs)]

    def gt_png(self, anno_id: str, t: int, video: str) -> Path:
        return self.mask_dir(anno_id) / f"{self.videos[video].frames[t]}.png"

    def object_mask(self, anno_id: str, t: int, video: str | None = None) -> np.ndarray | None:
        """Mask of one GT folder in frame t, or None when that frame has no PNG or the mask is empty."""
        if video is None:
            matches = [v for v, info in self.video_info.items() if anno_id.startswith(f"{info['source']}_{v}_")]
            if not matches:
                raise KeyError(f"{self.meta_file}: no video for GT folder {anno_id!r}")
            video = max(matches, key=len)
        path = self.gt_png(anno_id, t, video)
        if not path.is_file():
            return None
        m = read_png_mask(path)
        return m if m.any() else None

    def object_masks(self, expr: Expression, t: int) -> list[np.ndarray | None]:
        return [self.object_mask(a, t, expr.video) for a in expr.anno_ids]

    def gt_mask(self, expr: Expression, t: int) -> np.ndarray:
        """Union of the expression's GT folders in frame t (empty when the PNG is missing or blank)."""
        out = np.zeros(self.size(expr.video), dtype=bool)
        for m in self.object_masks(expr, t):
            if m is not None:
                if m.shape != out.shape:
                    raise ValueError(f"{expr.key}: GT mask of frame {t} is {m.shape}, frames are {out.shape}")
                out |= m
        return out

    def gt_areas(self, expr: Expression) -> list[int]:
        return [int(self.gt_mask(expr, t).sum()) for t in range(len(self.videos[expr.video].frames))]
