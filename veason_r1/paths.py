"""Names from a dataset are untrusted: the one rule for joining them under a root, and for deleting folders.

Why: video names, expression ids, object ids and frame names come from a JSON file anyone may have written. An
expression id `..` once made `predict --merge` delete the whole prediction folder, and an absolute video name wrote
masks into the source dataset. So:

- `name_problem` / `check_name` is the rule (also used by `veason-r1 doctor`): a name is a non-empty string without
  NUL, not absolute (POSIX, Windows drive or UNC), and no component is `..`; a single-component name (expression
  id, object id, frame name) also has no `/` or `\\`, and no component is longer than file systems allow (a
  300-character video name crashed `doctor`). Video names may hold `/` (ReVOS has `<source>/<video>`).
- `safe_join(root, *parts, key=...)` applies it and checks the joined path stays inside `root` (for writes, after
  resolving symlinks too); any failure is a `BadInput` naming the key and the value, raised before anything is
  written.
- `output_dir(root, *parts)`: every folder a command writes into under its output folder goes through the same
  check (a symlinked `PRED/.stage1` once put predict's cache outside --out).
- `claim_output_dir`: a folder a command fills as a whole is refused unless it is new, empty or marked by the same
  command with the same settings.
- `mark_owned` / `remove_owned_tree`: a command deletes only folders it created itself (in this run or an earlier
  run of the same command), recognised by a marker file it wrote inside them.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path, PurePosixPath, PureWindowsPath

from veason_r1.errors import BadInput, UserError

NAME_MAX = 255  # bytes per path component on ext4, xfs, btrfs, APFS, NTFS
OWNER_MARKER = ".veason-r1-owned"  # inside every folder a command may later delete or replace


def name_problem(name: object, allow_slash: bool = False) -> str | None:
    """Why `name` may not be joined under a root, or None when it is safe."""
    if not isinstance(name, str) or not name.strip():
        return f"must be a non-empty string, got {name!r}"
    if "\x00" in name:
        return f"{name!r} contains a NUL byte"
    if PurePosixPath(name).is_absolute() or PureWindowsPath(name).is_absolute() or re.match(r"^[A-Za-z]:", name) \
            or name.startswith("\\"):
        return f"absolute path {name!r} escapes the root"
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        return f"{name!r} contains '..' and escapes the root"
    if not allow_slash and ("/" in name or "\\" in name):
        return f"{name!r} contains a path separator (only video names may)"
    if name in (".",) or not parts:
        return f"{name!r} names the root itself"
    longest = max(parts, key=lambda p: len(p.encode("utf-8", "surrogateescape")))
    if len(longest.encode("utf-8", "surrogateescape")) > NAME_MAX - 16:  # room for ".png", temp-file suffixes
        return (f"{_short(name)}: a path component of {len(longest.encode('utf-8', 'surrogateescape'))} bytes is "
                f"longer than file systems allow ({NAME_MAX - 16} here, {NAME_MAX} on most)")
    return None


def _short(name: str, limit: int = 60) -> str:
    return repr(name) if len(name) <= limit else repr(name[:limit - 3] + "...")


def check_name(name: object, key: str, where: str | os.PathLike = "dataset", allow_slash: bool = False) -> str:
    """`name` as a string, or `BadInput` naming the file (`where`), the key and the value."""
    problem = name_problem(name, allow_slash)
    if problem:
        raise BadInput(where, f"{key}: unsafe name: {problem}",
                       hint="names in a dataset become paths under --data and --out; fix the name in the file "
                            "(`veason-r1 doctor ROOT` lists every such problem)")
    return str(name)


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def safe_join(root: str | os.PathLike, *parts: str, key: str = "name", write: bool = False) -> Path:
    """`root / part / ...`, refusing any part that is absolute, holds `..`, or leaves `root`.

    The first part may hold `/` (a video name); later parts are single components. `write=True` (a path under
    --out) also resolves symlinks: the result must stay inside the resolved root.
    """
    root = Path(root)
    for i, part in enumerate(parts):
        problem = name_problem(part, allow_slash=(i == 0))
        if problem:
            raise BadInput(root, f"{key}: unsafe name: {problem}",
                           hint="the run stopped before writing anything; fix the name in the dataset "
                                "(`veason-r1 doctor ROOT` lists every such problem)")
    path = root.joinpath(*parts)
    if not _inside(Path(os.path.normpath(path)), Path(os.path.normpath(root))):
        raise BadInput(root, f"{key}: {'/'.join(parts)!r} resolves outside {root}")
    if write:
        real_root = root.resolve()
        real = path.resolve()
        if real == real_root or not _inside(real, real_root):
            raise BadInput(root, f"{key}: {'/'.join(parts)!r} resolves to {real}, outside {real_root} "
                                 "(a symbolic link?)")
    return path


def check_output_folder(folder: str | os.PathLike, flag: str = "--out") -> Path:
    """An output folder a run will create or continue: refused (one line, before any work) when it is a file or
    lies under one; `preflight` calls the same function as the run."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BadInput(f"{flag} {folder}", "exists and is not a folder", hint="choose another output folder")
    for parent in folder.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BadInput(f"{flag} {folder}", f"{parent} is a file, so no folder can be made under it")
            break
    return folder


def output_dir(root: str | os.PathLike, *parts: str, key: str = "--out") -> Path:
    """The one rule for a folder a command writes into under its output folder (`PRED/.stage1`,
    `PRED/.partial/<shard>`, mask folders): `safe_join(..., write=True)`, so a symbolic link that leads outside
    `root` is refused (naming `key`) before anything is written through it."""
    return safe_join(root, *parts, key=key, write=True)


def mark_owned(folder: str | os.PathLike, command: str) -> None:
    """Mark `folder` (created by `command`) as one this project may later replace or delete."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / OWNER_MARKER
    if not marker.is_file():
        marker.write_text(f"created by veason-r1 {command}\n")


def _marker_owner(folder: Path) -> tuple[str | None, str | None]:
    """(command, settings line) recorded in `folder`'s marker, or (None, None) without one."""
    try:
        lines = (folder / OWNER_MARKER).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None, None
    command = lines[0].removeprefix("created by veason-r1 ").strip() if lines else ""
    settings = next((line.removeprefix("settings: ") for line in lines[1:] if line.startswith("settings: ")), None)
    return command, settings


def claim_output_dir(folder: str | os.PathLike, command: str, settings: dict | None = None,
                     flag: str = "--out") -> Path:
    """The ownership rule for a folder a command fills as a whole (`synth --out`): a missing or empty folder is
    created and marked; a folder this command marked before, with the same `settings`, is reused; anything else (a
    file, a folder the user filled, one another command or other settings made) is refused in one line, before any
    write. Why: `synth --out` on an existing dataset overwrote its meta, masks and frames, leaving a mixed dataset."""
    import json

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BadInput(flag, f"{folder} is a file, not a folder", hint="choose another output folder")
    text = json.dumps(settings, sort_keys=True) if settings is not None else None
    if folder.is_dir() and any(folder.iterdir()):
        owner, old = _marker_owner(folder)
        if owner != command:
            made = f"by veason-r1 {owner}" if owner else f"by veason-r1 {command} (no {OWNER_MARKER} marker)"
            raise BadInput(flag, f"{folder} is not empty and was not made {made}",
                           hint="choose a new or empty output folder; nothing was written")
        if text is not None and old is not None and old != text:
            raise BadInput(flag, f"{folder} was made by veason-r1 {command} with other settings ({old})",
                           hint="rerun with the same settings, or choose a new or empty output folder")
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / OWNER_MARKER
    if not marker.is_file():
        from veason_r1.io_utils import atomic_write_text

        atomic_write_text(marker, f"created by veason-r1 {command}\n" + (f"settings: {text}\n" if text else ""))
    return folder


def is_owned(folder: str | os.PathLike, marker: str = OWNER_MARKER) -> bool:
    folder = Path(folder)
    return folder.is_dir() and not folder.is_symlink() and (folder / marker).is_file()


def remove_owned_tree(folder: str | os.PathLike, root: str | os.PathLike, marker: str = OWNER_MARKER) -> None:
    """Delete `folder` if it is a marked folder strictly inside `root`; refuse anything else (nothing is deleted).

    `marker`: the file that proves ownership (default `OWNER_MARKER`; predict's mask folders use their manifest).
    """
    folder, root = Path(folder), Path(root)
    if not folder.exists() and not folder.is_symlink():
        return
    real, real_root = folder.resolve(), root.resolve()
    if real == real_root or not _inside(real, real_root) or folder.is_symlink():
        raise UserError(folder, f"refusing to delete: not a folder inside {root}")
    if not is_owned(folder, marker):
        raise UserError(folder, f"refusing to delete or replace a folder veason-r1 did not create (no {marker} "
                                "marker inside)", hint="move it away or choose another output folder")
    shutil.rmtree(folder)


__all__ = ["OWNER_MARKER", "check_name", "check_output_folder", "claim_output_dir", "is_owned", "mark_owned", "name_problem", "output_dir",
           "remove_owned_tree", "safe_join"]
