"""Atomic file writes: a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import IO


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool
) -> pathlib.Path:
    """Calls ``write(f)`` on a temporary file in the target folder, then renames it into place.

    The rename is atomic on POSIX file systems, so readers see either the old file or the whole
    new one. Parent folders are created. Returns the final path.
    """
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(
            fd, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8"})
        ) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path
