"""User errors: bad input the user can fix, reported by `veason-r1` as one line and exit code 2.

Why one class: a command must tell "your file/flag is wrong" (one clear line naming the file or flag, a hint, exit 2,
the traceback only with `--debug`) from "the program is wrong" (an unexpected exception keeps its traceback).
Library code raises `BadInput` / `MissingInput` / `MissingKey`; they are also `ValueError` / `FileNotFoundError` /
`KeyError`, so callers that catch the builtin types (and tests that expect them) keep working. `veason_r1.cli.main`
prints them.
"""

from __future__ import annotations

import errno
import os


class UserError(Exception):
    """`where` (a file, a flag, a key inside a file) is wrong: `what`. `hint` says how to fix it (optional)."""

    def __init__(self, where: str | os.PathLike, what: str, hint: str | None = None):
        self.where = str(where)
        self.what = what
        self.hint = hint
        super().__init__(f"{self.where}: {what}")

    def __reduce__(self):  # survive pickling (worker processes): the default would call cls(message)
        return (type(self), (self.where, self.what, self.hint))

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


class BadInput(UserError, ValueError):
    """A file, key or flag holds a value that cannot be used."""


class MissingInput(UserError, FileNotFoundError):
    """A file or folder the command needs does not exist."""


class MissingKey(UserError, KeyError):
    """A key (anno_id, video) that a file refers to is not in the file that should hold it."""


STORAGE_ERRNOS = {  # errno -> hint: the disk or the folder is the problem, not the program
    errno.EROFS: "the output folder is on a read-only file system; choose a writable --out",
    errno.ENOSPC: "the file system is full; free space or choose another --out (a rerun continues)",
    errno.EDQUOT: "the disk quota is exceeded; free space or choose another --out (a rerun continues)",
    errno.EACCES: "no permission to read or write it; fix its permissions or choose another folder",
    errno.EPERM: "no permission to read or write it; fix its permissions or choose another folder",
    errno.ENAMETOOLONG: "a file name is longer than the file system allows; shorten it",
}


def storage_error(exc: OSError) -> UserError | None:
    """The user error for an OSError caused by the storage (read-only, full, no permission, name too long), naming
    the file; None for any other OSError (a bug keeps its traceback)."""
    hint = STORAGE_ERRNOS.get(exc.errno) if isinstance(exc, OSError) else None
    if hint is None:
        return None
    where = exc.filename if exc.filename is not None else "output"
    return UserError(where, exc.strerror or os.strerror(exc.errno), hint=hint)


def format_user_error(err: UserError) -> str:
    """The lines `veason-r1` prints on stderr for a user error."""
    text = f"error: {err}"
    if err.hint:
        text += f"\nhint: {err.hint}"
    return text


__all__ = ["BadInput", "MissingInput", "MissingKey", "UserError", "format_user_error", "storage_error"]
