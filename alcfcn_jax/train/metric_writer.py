"""Training metrics: absl log lines, ``workdir/metrics.jsonl``, a progress bar, optional TensorBoard.

Named ``metric_writer`` (not ``logging``) so it never shadows the standard library module.

Only process 0 writes files; every process logs to its own absl log. TensorBoard event files are
written only when TensorFlow happens to be importable: it is never a dependency (it would add
about 1.5 GB to an install), and its absence is not an error.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from absl import logging

from alcfcn_jax.io import json_safe

METRICS_FILE = "metrics.jsonl"


def _format_value(value: Any) -> str:
    """Short human-readable number for log lines (4 significant digits, sci for tiny values)."""
    if isinstance(value, (bool, int, str)):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.4g}"


def _format_duration(seconds: float) -> str:
    """``h:mm:ss`` (or ``m:ss``) for ETAs; ``?`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """A one-line ``\\r`` progress bar with rate and ETA, drawn only on an interactive terminal.

    Args:
      total: number of steps of the whole run.
      stream: where to draw (stderr by default); nothing is drawn unless it is a TTY.
      width: bar width in characters.
      min_interval_s: minimum time between redraws.
    """

    def __init__(
        self,
        total: int,
        *,
        stream: TextIO | None = None,
        width: int = 30,
        min_interval_s: float = 0.2,
    ) -> None:
        self.total = max(int(total), 1)
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.min_interval_s = min_interval_s
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self._start_step: int | None = None
        self._start_time = 0.0
        self._last_draw = 0.0
        self._drawn = False

    def update(self, step: int, note: str = "") -> None:
        """Redraws the bar at ``step`` (steps done so far) with an optional short note."""
        if not self.enabled:
            return
        now = time.monotonic()
        if self._start_step is None:
            self._start_step, self._start_time = step, now
        if now - self._last_draw < self.min_interval_s and step < self.total:
            return
        self._last_draw = now
        done = min(step, self.total)
        filled = int(self.width * done / self.total)
        bar = "#" * filled + "-" * (self.width - filled)
        elapsed = now - self._start_time
        rate = (step - self._start_step) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        line = f"\r[{bar}] {done}/{self.total} {rate:.2f} step/s ETA {_format_duration(eta)} {note}"
        self.stream.write(line[:160].ljust(100))
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        """Ends the bar's line so later output starts on a fresh line."""
        if self.enabled and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


class _TensorBoard:
    """Scalar summaries through ``tf.summary`` (only constructed when TensorFlow is importable)."""

    def __init__(self, logdir: pathlib.Path) -> None:
        import tensorflow as tf  # noqa: PLC0415 - optional dependency, imported only when present

        self._tf = tf
        self._writer = tf.summary.create_file_writer(str(logdir))

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        with self._writer.as_default():
            for key, value in scalars.items():
                self._tf.summary.scalar(key, value, step=step)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()


class _LibraryInfoFilter:
    """Drops INFO/DEBUG records logged from inside the given libraries (their warnings pass)."""

    def __init__(self, packages: tuple[str, ...]) -> None:
        self.markers = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

    def filter(self, record) -> bool:
        if record.levelno >= 30:  # WARNING and above always pass
            return True
        return not any(m in record.pathname for m in self.markers)


def quiet_library_logs(packages: tuple[str, ...] = ("orbax",)) -> None:
    """Hides the per-save INFO chatter of Orbax (dozens of lines per checkpoint) in absl logs."""
    handler = logging.get_absl_handler()
    if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
        handler.addFilter(_LibraryInfoFilter(packages))


def tensorflow_available() -> bool:
    """True when ``import tensorflow`` would succeed (without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


class MetricWriter:
    """Writes scalar metrics to the absl log, ``workdir/metrics.jsonl`` and (maybe) TensorBoard.

    Each ``write`` appends one JSON object per line: ``{"step": s, "time": unix_s, "kind": kind,
    <name>: value, ...}``, so train and validation rows can be told apart and the file can be read
    with ``pandas.read_json(path, lines=True)``. The file is appended to (a resumed run continues
    the same file) and flushed after every row, so a crash loses nothing already reported.

    Args:
      workdir: the run's directory.
      total_steps: length of the run, for the progress bar.
      is_chief: whether this process writes files (process 0); others only log.
      tensorboard: "auto" (use it when TensorFlow is importable), "on" (fail if it is not) or
        "off".
      progress: draw a progress bar on an interactive terminal.
    """

    def __init__(
        self,
        workdir: str | os.PathLike,
        *,
        total_steps: int,
        is_chief: bool = True,
        tensorboard: str = "auto",
        progress: bool = True,
    ) -> None:
        if tensorboard not in ("auto", "on", "off"):
            raise ValueError(
                f"tensorboard must be 'auto', 'on' or 'off', got {tensorboard!r} "
                "(config key train.tensorboard)"
            )
        self.workdir = pathlib.Path(workdir)
        self.is_chief = is_chief
        self._file: TextIO | None = None
        self._tb: _TensorBoard | None = None
        self.progress = ProgressBar(total_steps) if (progress and is_chief) else None
        if not is_chief:
            return
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.workdir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard == "on" or (tensorboard == "auto" and tensorflow_available()):
            try:
                self._tb = _TensorBoard(self.workdir / "tensorboard")
            except Exception as err:  # noqa: BLE001 - a broken optional TF install must not stop training
                if tensorboard == "on":
                    raise RuntimeError(
                        "train.tensorboard='on' but TensorBoard summaries could not be created: "
                        f"{err}"
                    ) from err
                logging.warning("TensorFlow is installed but unusable, no TensorBoard: %s", err)

    def write(self, step: int, scalars: Mapping[str, Any], *, kind: str = "train") -> None:
        """Records one row of scalars at ``step`` (numbers are converted to Python floats)."""
        clean = json_safe(dict(scalars), strict=False)
        text = ", ".join(f"{k}={_format_value(v)}" for k, v in clean.items() if v is not None)
        if self.progress is not None:
            self.progress.close()
        logging.info("[%s] step %d: %s", kind, step, text)
        if self._file is not None:
            row = {"step": int(step), "time": round(time.time(), 3), "kind": kind, **clean}
            self._file.write(json.dumps(row, allow_nan=True) + "\n")
            self._file.flush()
        if self._tb is not None:
            numeric = {f"{kind}/{k}": v for k, v in clean.items() if isinstance(v, (int, float))}
            self._tb.write(step, numeric)

    def update_progress(self, step: int, note: str = "") -> None:
        """Advances the progress bar (no-op off a terminal or on non-chief processes)."""
        if self.progress is not None:
            self.progress.update(step, note)

    def close(self) -> None:
        """Closes the progress line, the JSONL file and the TensorBoard writer."""
        if self.progress is not None:
            self.progress.close()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_metrics(workdir: str | os.PathLike, kind: str | None = None) -> list[dict[str, Any]]:
    """Reads ``workdir/metrics.jsonl`` back (optionally only rows of one ``kind``)."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                row = json.loads(line)
                if kind is None or row.get("kind") == kind:
                    rows.append(row)
    return rows
