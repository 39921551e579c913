"""Atomic writes and append-only JSONL: a crash never leaves a half-written file or loses finished work."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask, read without changing it (Linux /proc), else by the set-and-restore idiom."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def honour_umask(path: str | os.PathLike) -> None:
    """Give model files written owner-only (safetensors' `save_file` creates 0600) the mode `open()` would have
    given them (0666 minus the umask), so collaborators on shared storage can read the models as they read the
    results. `path`: a file or a folder (every regular file under it); files of any other mode are left alone."""
    path = Path(path)
    mode = 0o666 & ~current_umask()
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()] if path.is_dir() else []
    for f in files:
        st = f.lstat()
        if not f.is_symlink() and (st.st_mode & 0o7777) == 0o600 and mode != 0o600:
            os.chmod(f, mode)


def _new_file_mode(path: Path) -> int:
    """A replaced file keeps its mode; a new one gets what `open()` would give it (0666 minus the umask)."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~current_umask()


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over the target.

    The temp file is created 0600 by mkstemp; it is given the mode a plain `open()` would (the umask honoured, or
    the replaced file's mode) before the rename, so results on shared storage stay readable by the group.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _new_file_mode(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False))


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one record as one line and fsync, so a finished record survives a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> Iterator[dict]:
    """Records of a JSONL file; a torn last line (crash mid-write) is skipped, any other bad line is an error."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 and not line.endswith("\n"):
                return  # torn final line from a killed writer
            raise ValueError(f"{path}:{i + 1}: not valid JSON") from None


DIGEST_CACHE_FILE = "file_digests.json"  # under digest_cache_dir()
_DIGESTS: dict[str, str] = {}  # this process's digests, by `_stat_key`


def digest_cache_dir() -> Path:
    """Where whole-file digests are remembered between runs ($VEASON_R1_CACHE, else $XDG_CACHE_HOME/veason-r1)."""
    env = os.environ.get("VEASON_R1_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "veason-r1"


def _stat_key(path: Path, st: os.stat_result) -> str:
    """A file's content can only have changed if one of these did (a rewrite in place moves mtime and ctime; a new
    file, e.g. a second LoRA merge into the same folder, has a new inode)."""
    return f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def _load_digest_cache() -> dict[str, str]:
    try:
        data = json.loads((digest_cache_dir() / DIGEST_CACHE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) else {}


def _save_digest(key: str, digest: str, keep: int = 4096) -> None:
    """Remember one digest on disk (best effort: an unwritable cache only makes the next run hash again)."""
    cache = _load_digest_cache()
    cache.pop(key, None)
    cache[key] = digest
    cache = dict(list(cache.items())[-keep:])
    try:
        atomic_write_json(digest_cache_dir() / DIGEST_CACHE_FILE, cache)
    except OSError:
        pass


def file_identity(path: str | os.PathLike) -> dict | None:
    """Size and sha256 of the whole content of one file, or None when it does not exist; used by run fingerprints
    to refuse a resume with other models.

    Why the whole file: a sampled hash (first, middle and last MiB) missed weights changed in between, and a resume
    mixed answers of two models. Hashing multi-GB weights takes seconds to minutes, so the digest is remembered
    (in this process and in `digest_cache_dir()`) by path, device, inode, size, mtime and ctime: a resume of an
    unchanged checkpoint does not read it again."""
    import hashlib

    path = Path(path)
    if not path.is_file():
        return None
    st = path.stat()
    key = _stat_key(path, st)
    digest = _DIGESTS.get(key) or _load_digest_cache().get(key)
    if digest is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        digest = h.hexdigest()
        if _stat_key(path, path.stat()) == key:  # not changed while it was read: safe to remember
            _save_digest(key, digest)
    _DIGESTS[key] = digest
    return {"size": st.st_size, "sha256": digest}
