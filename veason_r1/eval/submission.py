"""MeViS `valid` (and any server-scored split): pack predictions into the zip the evaluation server reads.

Layout inside the zip (default, docs/method.md §2): `Annotations/<video>/<exp_id>/<frame>.png`; `root="flat"` puts
`<video>/<exp_id>/<frame>.png` at the top (what MeViS's own LMPM code zips: `cd inference && zip -r submission.zip ./*`).
Every expression of the split's meta file must have every frame, else the error lists what is missing (a server
silently scoring holes as 0 is exactly what this avoids). PNGs are stored as they are (no re-encoding).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path


def build_submission_zip(data: str | os.PathLike, pred: str | os.PathLike, out: str | os.PathLike,
                         split: str = "valid", root: str = "Annotations") -> dict:
    from veason_r1.data.revos import load_json, meta_path, parse_meta

    data, pred, out = Path(data), Path(pred), Path(out)
    meta_file = meta_path(data, split)
    videos = parse_meta(load_json(meta_file), meta_file)
    prefix = "" if root == "flat" else root.strip("/") + "/"
    entries, missing = [], []
    for v in videos.values():
        for exp_id in v.expressions:
            for frame in v.frames:
                p = pred / v.name / exp_id / f"{frame}.png"
                if p.is_file():
                    entries.append((p, f"{prefix}{v.name}/{exp_id}/{frame}.png"))
                else:
                    missing.append(str(p))
    if missing:
        shown = "\n  ".join(missing[:10])
        raise FileNotFoundError(f"{len(missing)} prediction PNG(s) missing for {meta_file.name}, e.g.:\n  {shown}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for src, arc in entries:
            zf.write(src, arc)
    os.replace(tmp, out)
    return {"zip": str(out), "files": len(entries), "expressions": sum(len(v.expressions) for v in videos.values()),
            "root": prefix or "(flat)"}
