"""File output of every module: atomic writes (text, JSON, PNG, npz), strict JSON, CSV.

A crash never leaves a half-written file under its final name: each writer fills a temporary
file in the target folder, flushes and fsyncs it, and renames it into place (atomic on POSIX), so
readers see either the old file or the whole new one. Parent folders are created.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import pathlib
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

import numpy as np
from absl import logging


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO], None], *, binary: bool
) -> pathlib.Path:
    """Calls ``write(f)`` on a temporary file beside ``path``, then renames it into place.

    Returns the final path.
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


class OutputDirError(OSError):
    """An output folder cannot be created or written; the message names it and the flag."""


def ensure_writable_dir(path: str | os.PathLike, what: str) -> pathlib.Path:
    """Creates ``path`` if needed and proves it writable (a temporary file is created and
    removed), before any expensive work whose results would go there.

    Args:
      path: the output folder.
      what: how the user named it, for the message (e.g. ``"--output_dir"``).

    Raises:
      OutputDirError: ``path`` (or a parent) is a file, or the folder cannot be created or
        written (read-only file system, permissions).
    """
    path = pathlib.Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{what} {path} is a file, not a folder; give a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write_test.", dir=path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise OutputDirError(
            f"{what} {path} is not writable ({e.strerror or e}); choose a writable folder"
        ) from e
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> pathlib.Path:
    """Writes text atomically; returns the path."""
    return atomic_write(path, lambda f: f.write(text), binary=False)


def json_safe(obj: Any, *, strict: bool = True) -> Any:
    """Plain-JSON copy: numpy / jax scalars and arrays to Python, mapping keys to strings, and
    with ``strict`` NaN/inf to None (strict JSON has no NaN; ``metrics.jsonl`` keeps them)."""
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v, strict=strict) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v, strict=strict) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist(), strict=strict)
    if isinstance(obj, np.generic) or (hasattr(obj, "item") and hasattr(obj, "dtype")):
        obj = obj.item()
    if strict and isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json_atomic(path: str | os.PathLike, obj: Any) -> pathlib.Path:
    """Writes ``obj`` as indented, key-sorted strict JSON (NaN -> null), atomically."""
    return write_text_atomic(path, json.dumps(json_safe(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any | None:
    """A JSON file's content, or None when it does not exist or cannot be parsed (with a
    warning: the caller then redoes what the file would have recorded)."""
    try:
        return json.loads(pathlib.Path(path).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        logging.warning("%s is unreadable; treating it as absent", path)
        return None


def save_png_atomic(image: Any, path: str | os.PathLike) -> pathlib.Path:
    """Writes a PIL image or a (H,W[,C]) uint8 array as PNG, atomically; returns the path."""
    from PIL import Image

    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    return atomic_write(path, lambda f: pil.save(f, format="PNG"), binary=True)


def save_npz_atomic(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> pathlib.Path:
    """Writes named arrays as ``.npz``, atomically; returns the path."""
    return atomic_write(
        path, lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()}), binary=True
    )


def csv_text(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    *,
    float_format: str = ".6g",
    nonfinite: str | None = "",
) -> str:
    """CSV text with a header of ``columns`` (other keys ignored, missing ones empty); floats
    with ``float_format``; NaN/inf as ``nonfinite`` (None: formatted like other floats)."""

    def cell(v: Any) -> Any:
        if isinstance(v, float):
            if not math.isfinite(v) and nonfinite is not None:
                return nonfinite
            return format(v, float_format)
        return v

    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    for r in rows:
        writer.writerow({k: cell(r.get(k)) for k in columns})
    return buf.getvalue()
