"""Atomic file writes that leave nothing behind when they fail, and why they failed, in words."""

from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``.

    A reader never sees half a file; missing parent folders are created; on any failure the
    temporary file is removed and the error propagates (see ``why_unwritable``).
    """
    if path.is_dir():
        # os.replace would say so too, but only after writing the temporary file.
        raise IsADirectoryError(21, "Is a directory", str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        tmp.write_text(text, "utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def why_unwritable(path: Path, error: OSError | ValueError) -> str:
    """The reason a write to ``path`` failed, naming the culprit when it is not ``path`` itself.

    >>> why_unwritable(Path("/x"), PermissionError(13, "Permission denied", "/x"))
    'Permission denied'
    """
    if isinstance(error, ValueError):  # an embedded NUL byte, for one
        return str(error)
    for parent in path.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                return f"{parent} is a file, not a folder"
            break
    reason = error.strerror or str(error)
    culprit = error.filename
    if culprit is not None and os.fspath(culprit) != os.fspath(path):
        return f"{reason}: {culprit}"
    return reason
