"""One parsed copy of a ReVOS `mask_dict.json` for every process that reads it (issue 23 item 10).

Why: `mask_dict.json` is hundreds of MB on the real ReVOS set, and each verl data-loader worker (8 here) used to
parse the whole file into Python dicts of its own. `build_mask_index` parses it once (the launcher, before verl
starts) into a few flat arrays in a folder; `MaskIndex` maps them read-only (`np.load(mmap_mode="r")`), so every
worker shares the same pages of the OS page cache, whatever the start method (fork or spawn), and a worker holds
only the anno_id list and the RLEs it actually decodes.

`MaskIndex` is a read-only mapping anno_id -> [per-frame RLE dict or None], equal to the parsed JSON (the tests
compare them), so `ReVOSDataset` reads either. The folder is named by the source file's path, size and mtime: a
changed `mask_dict.json` gets a new index, and a half-written one is never seen (written in a temporary folder,
then renamed).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

NULL, COUNTS, JSON = 0, 1, 2  # per frame: no mask, compressed RLE {"size": [h, w], "counts": str}, anything else


def index_dir(mask_dict_file: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """The folder of the index of this version of `mask_dict_file` under `cache_dir`."""
    src = Path(mask_dict_file).resolve()
    st = src.stat()
    key = hashlib.sha256(f"{src}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"mask_index_{key}"


def _frame(rle: Any) -> tuple[int, int, int, bytes]:
    if rle is None:
        return NULL, 0, 0, b""
    if (isinstance(rle, dict) and set(rle) == {"size", "counts"} and isinstance(rle["counts"], str)
            and isinstance(rle["size"], list) and len(rle["size"]) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in rle["size"])):
        return COUNTS, int(rle["size"][0]), int(rle["size"][1]), rle["counts"].encode("utf-8")
    return JSON, 0, 0, json.dumps(rle).encode("utf-8")  # kept exactly (uncompressed RLEs, malformed entries)


def build_mask_index(mask_dict_file: str | os.PathLike, cache_dir: str | os.PathLike) -> Path:
    """Parse `mask_dict_file` once into `index_dir(...)` (no-op when it is already there); returns the folder."""
    from veason_r1.errors import BadInput

    out = index_dir(mask_dict_file, cache_dir)
    if (out / "ids.json").is_file():
        return out
    with open(mask_dict_file, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, dict):
        raise BadInput(mask_dict_file, "expected an object anno_id -> list of per-frame RLEs")
    ids, other, spans, kinds, heights, widths, offsets, chunks = [], {}, [0], [], [], [], [0], []
    total = 0
    for anno_id, rles in data.items():
        if not isinstance(rles, list):  # not a per-frame list: kept as is, ReVOSDataset names the problem
            other[anno_id] = rles
            continue
        ids.append(anno_id)
        for rle in rles:
            kind, h, w, blob = _frame(rle)
            kinds.append(kind)
            heights.append(h)
            widths.append(w)
            chunks.append(blob)
            total += len(blob)
            offsets.append(total)
        spans.append(len(kinds))
    del data
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mask_index_", dir=cache_dir))
    try:
        np.save(tmp / "spans.npy", np.asarray(spans, dtype=np.int64))
        np.save(tmp / "kinds.npy", np.asarray(kinds, dtype=np.int8))
        np.save(tmp / "sizes.npy", np.stack([np.asarray(heights, np.int32), np.asarray(widths, np.int32)], axis=1)
                if kinds else np.zeros((0, 2), np.int32))
        np.save(tmp / "offsets.npy", np.asarray(offsets, dtype=np.int64))
        np.save(tmp / "blob.npy", np.frombuffer(b"".join(chunks), dtype=np.uint8))
        (tmp / "other.json").write_text(json.dumps(other))
        (tmp / "ids.json").write_text(json.dumps(ids))  # last: its presence marks a complete index
        try:
            tmp.rename(out)
        except OSError:  # another process built it first
            if not (out / "ids.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


class MaskIndex(Mapping):
    """Read-only anno_id -> [RLE dict or None per frame], over a `build_mask_index` folder (memory-mapped)."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._ids = {a: i for i, a in enumerate(json.loads((self.folder / "ids.json").read_text()))}
        self._other = json.loads((self.folder / "other.json").read_text())
        self._spans = np.load(self.folder / "spans.npy", mmap_mode="r")
        self._kinds = np.load(self.folder / "kinds.npy", mmap_mode="r")
        self._sizes = np.load(self.folder / "sizes.npy", mmap_mode="r")
        self._offsets = np.load(self.folder / "offsets.npy", mmap_mode="r")
        self._blob = np.load(self.folder / "blob.npy", mmap_mode="r")

    def _rle(self, j: int) -> Any:
        kind = int(self._kinds[j])
        if kind == NULL:
            return None
        text = bytes(self._blob[int(self._offsets[j]):int(self._offsets[j + 1])]).decode("utf-8")
        if kind == COUNTS:
            return {"size": [int(self._sizes[j, 0]), int(self._sizes[j, 1])], "counts": text}
        return json.loads(text)

    def __getitem__(self, anno_id: str) -> Any:
        i = self._ids.get(anno_id)
        if i is None:
            return self._other[anno_id]  # KeyError for an unknown anno_id, as the dict
        return [self._rle(j) for j in range(int(self._spans[i]), int(self._spans[i + 1]))]

    def frame_count(self, anno_id: str) -> int | None:
        """len(self[anno_id]) without building the RLEs (None when it is not a per-frame list)."""
        i = self._ids.get(anno_id)
        return None if i is None else int(self._spans[i + 1] - self._spans[i])

    def __contains__(self, anno_id: object) -> bool:
        return anno_id in self._ids or anno_id in self._other

    def __iter__(self) -> Iterator[str]:
        yield from self._ids
        yield from self._other

    def __len__(self) -> int:
        return len(self._ids) + len(self._other)


def shared_mask_dict(mask_dict_file: str | os.PathLike, cache_dir: str | os.PathLike) -> MaskIndex:
    """The index of `mask_dict_file` under `cache_dir`, built on first use."""
    return MaskIndex(build_mask_index(mask_dict_file, cache_dir))


__all__ = ["MaskIndex", "build_mask_index", "index_dir", "shared_mask_dict"]
