"""ReasonVOS reader (VideoLISA release), with the public interface of `ReVOSDataset`.

Layout (docs/method.md §2): `meta_expressions.json` with `videos[vid] = {source, frames, is_sent,
expressions: {key: {exp_text, obj_id}}}`, frames in `JPEGImages/<vid>/<frame>.jpg` and one GT folder per expression
target, `Annotations/<source>_<vid>_<obj_id>/<frame>.png` (the union mask of the expression; 0 = background).

GT PNGs are read lazily, one frame at a time. The reference script scores the PNGs present in the GT folder and reads
predictions from `<pred>/<vid>/<obj_id>/`; `annotated_frames(expr)` lists the frames with a GT PNG, and a frame
without one reads as an empty mask here. ReasonVOS has no `type_id` (every Expression has `type_id=None`) and no
foreground masks.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from veason_r1.data.revos import Expression, VideoMeta, check_frame_names, load_json
from veason_r1.data.video import JpegFolderSource
from veason_r1.errors import BadInput, MissingInput
from veason_r1.paths import check_name, safe_join


def read_png_mask(path: Path) -> np.ndarray:
    """A GT/prediction PNG as a bool mask (any non-zero value is foreground; RGB: any channel)."""
    with Image.open(path) as im:
        a = np.asarray(im)
    return a.any(axis=2) if a.ndim == 3 else a > 0


def parse_reasonvos_meta(meta: object, source: Path) -> tuple[dict[str, VideoMeta], dict[str, dict]]:
    """(videos, per-video extra fields {source, is_sent}); errors name the file and key."""
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise BadInput(source, "expected {'videos': {...}} at top level")
    videos: dict[str, VideoMeta] = {}
    extra: dict[str, dict] = {}
    for vname, v in meta["videos"].items():
        where = f"videos[{vname!r}]"
        check_name(vname, f"{where}: video name", source, allow_slash=True)
        if not isinstance(v, dict) or not isinstance(v.get("frames"), list):
            raise BadInput(source, f"{where}: missing 'frames' list")
        if "source" not in v:
            raise BadInput(source, f"{where}: missing 'source'")
        vm = VideoMeta(vname, check_frame_names(v["frames"], f"{where}.frames", source))
        src = check_name(str(v["source"]), f"{where}.source", source)
        for key, e in (v.get("expressions") or {}).items():
            check_name(key, f"{where}.expressions[{key!r}]: expression id", source)
            if not isinstance(e, dict) or "exp_text" not in e or "obj_id" not in e:
                raise BadInput(source, f"{where}.expressions[{key!r}]: needs 'exp_text' and 'obj_id'")
            obj = e["obj_id"]
            try:
                obj_ids = tuple(int(o) for o in obj) if isinstance(obj, list) else (int(obj),)
            except (TypeError, ValueError):
                raise BadInput(source, f"{where}.expressions[{key!r}].obj_id: expected integer ids, got {obj!r}") \
                    from None
            vm.expressions[str(key)] = Expression(
                video=vname, exp_id=str(key), text=str(e["exp_text"]), obj_ids=obj_ids,
                anno_ids=tuple(check_name(f"{src}_{vname}_{o}", f"{where}.expressions[{key!r}]: GT folder", source,
                                          allow_slash=True) for o in (obj if isinstance(obj, list) else [obj])),
                type_id=None)
        videos[vname] = vm
        extra[vname] = {"source": src, "is_sent": bool(v.get("is_sent", False))}
    return videos, extra


class ReasonVOSDataset:
    """A ReasonVOS-format benchmark. `gt_mask(expr, t)` reads one GT PNG; anno_ids are GT folder names."""

    def __init__(self, root: str | os.PathLike, meta_file: str | os.PathLike | None = None):
        self.root = Path(root)
        self.split = "test"
        self.meta_file = Path(meta_file) if meta_file else self.root / "meta_expressions.json"
        self.videos, self.video_info = parse_reasonvos_meta(load_json(self.meta_file), self.meta_file)
        self.expressions = [e for v in self.videos.values() for e in v.expressions.values()]
        self._sizes: dict[str, tuple[int, int]] = {}

    # frames ------------------------------------------------------------------------------------------------
    def frame_dir(self, video: str) -> Path:
        return safe_join(self.root / "JPEGImages", video, key=f"video {video!r}")

    def frames(self, video: str) -> JpegFolderSource:
        return JpegFolderSource(self.frame_dir(video), self.videos[video].frames, video=video)

    def size(self, video: str) -> tuple[int, int]:
        if video not in self._sizes:
            self._sizes[video] = self.frames(video).size  # JPEG header only
        return self._sizes[video]

    # masks --------------------------------------------------------------------------------------------------
    def mask_dir(self, anno_id: str) -> Path:
        """GT folder of one target. The release names it `<source>_<vid>_<obj_id>` (its checker lower-cases
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
        """Indices of the frames with a GT PNG for every target of the expression (what the reference script scores)."""
        dirs = [self.mask_dir(a) for a in expr.anno_ids]
        names = self.videos[expr.video].frames
        return [t for t, n in enumerate(names) if all((d / f"{n}.png").is_file() for d in dirs)]

    def object_mask(self, anno_id: str, t: int, video: str | None = None) -> np.ndarray | None:
        """Mask of one GT folder in frame t, or None when that frame has no PNG or the mask is empty."""
        if video is None:
            matches = [v for v, info in self.video_info.items() if anno_id.startswith(f"{info['source']}_{v}_")]
            if not matches:
                raise KeyError(f"{self.meta_file}: no video for GT folder {anno_id!r}")
            video = max(matches, key=len)
        path = self.mask_dir(anno_id) / f"{self.videos[video].frames[t]}.png"
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
