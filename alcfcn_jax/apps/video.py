"""Videos for ``predict``: reading and sampling frames, and the counts surveys report (MaxN).

Reading uses OpenCV's ``VideoCapture`` (its wheels carry FFmpeg: MP4, AVI, MOV, MKV...; H.264,
HEVC, MPEG-4, MJPEG, FFV1...). A frame is RGB uint8 at the video's size; the model's recorded
preprocessing (letterbox crop, short side) turns it into a model input as it does an image, so a
huge resolution is only slower.

Sampling: every frame, every N-th (``every``), or about ``fps`` frames a second (every
``round(video fps / fps)``-th). A frame's time is its index divided by the video's frame rate.

Bad input: a file that cannot be opened, has no video stream or no frame stops before anything
is written (:class:`VideoError`, one message). A file that ends early (truncated or damaged) keeps
the frames read so far: :class:`VideoFrames` records where it stopped and the summary says so.

MaxN, the largest number of fish in any one frame, is the standard count of baited remote
underwater video surveys. The raw maximum of per-frame counts is biased upward by single-frame
false positives, so :func:`smoothed_counts` takes each sampled frame's median with its neighbours
(``smooth`` frames, centred; 1 = none): a count must hold for most of the window to count. The
summary reports both and calls the smoothed one ``maxn``; per time window (``window`` seconds)
as well.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from PIL import Image

from alcfcn_jax.apps.frames import Frame
from alcfcn_jax.data import preprocess as pp
from alcfcn_jax.data.errors import DataError

VIDEO_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mov",
    ".avi",
    ".mkv",
    ".webm",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".mts",
    ".m2ts",
    ".ts",
    ".3gp",
    ".flv",
)


class VideoError(DataError):
    """A video that cannot be read at all (nothing is written)."""


def is_video(path: str | pathlib.Path) -> bool:
    """Whether ``path`` names a video file (by its extension)."""
    return pathlib.Path(path).suffix.lower() in VIDEO_EXTENSIONS


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What the container says: frame rate, frame count (0 when unknown) and size."""

    path: str
    fps: float
    frame_count: int
    width: int
    height: int


def sampling_step(info: VideoInfo, *, every: int = 1, fps: float = 0.0) -> int:
    """Every how many frames one is analysed: ``every``, or about ``fps`` a second."""
    if every < 1:
        raise ValueError(f"--every must be >= 1, got {every}")
    if fps < 0:
        raise ValueError(f"--fps must be >= 0, got {fps}")
    if fps:
        return max(1, round(info.fps / fps)) if info.fps > 0 else 1
    return int(every)


class VideoFrames:
    """The sampled frames of a video as :class:`~alcfcn_jax.apps.frames.Frame` objects.

    Opening checks the file (:class:`VideoError`: cannot be opened, no video stream, no frame).
    Iterating decodes every frame (videos cannot skip without decoding) and yields each
    ``step``-th, prepared for the model. After iterating, ``decoded`` is the number of frames
    read and ``ended_early`` says whether the file stopped before the frame count its container
    announced (``stop_reason`` says where).
    """

    def __init__(
        self,
        path: str | pathlib.Path,
        preprocessing: pp.Preprocessing,
        *,
        every: int = 1,
        fps: float = 0.0,
    ) -> None:
        import cv2

        self.path = pathlib.Path(path).expanduser()
        if not self.path.is_file():
            raise VideoError(f"{self.path}: no such file")
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise VideoError(
                f"{self.path}: cannot be opened as a video (not a video, no video stream, or a "
                "codec this build of FFmpeg lacks)"
            )
        self.info = VideoInfo(
            str(self.path),
            float(cap.get(cv2.CAP_PROP_FPS) or 0.0),
            max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0), 0),
            int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0),
            int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0),
        )
        ok, first = cap.read()
        if not ok or first is None or first.size == 0:
            cap.release()
            raise VideoError(f"{self.path}: the video has no frame that can be decoded")
        self._cap, self._first = cap, first
        self.step = sampling_step(self.info, every=every, fps=fps)
        self.preprocessing = preprocessing
        self.decoded = 0
        self.ended_early = False
        self.stop_reason: str | None = None

    @property
    def expected(self) -> int:
        """Frames to be analysed according to the container (0 when it does not say)."""
        n = self.info.frame_count
        return -(-n // self.step) if n else 0

    def time_of(self, index: int) -> float | None:
        return index / self.info.fps if self.info.fps > 0 else None

    def __iter__(self) -> Iterator[Frame]:
        cap, frame = self._cap, self._first
        index = 0
        try:
            while frame is not None:
                self.decoded = index + 1
                if index % self.step == 0:
                    rgb = np.ascontiguousarray(frame[..., ::-1])
                    yield Frame(
                        name=self.path.name,
                        original=rgb,
                        prepared=self.preprocessing.apply(Image.fromarray(rgb)),
                        index=index,
                        time=self.time_of(index),
                    )
                ok, frame = cap.read()
                if not ok:
                    frame = None
                index += 1
        finally:
            cap.release()
        n = self.info.frame_count
        # Containers round their frame count; a shortfall of more than one frame is a file that
        # ended before its announced length.
        if n and self.decoded < n - 1:
            self.ended_early = True
            self.stop_reason = (
                f"the video stopped at frame {self.decoded} of {n} announced (truncated or "
                "damaged); the frames before it were analysed"
            )


def smoothed_counts(counts: Sequence[int], smooth: int) -> np.ndarray:
    """Each count's median with its neighbours over ``smooth`` sampled frames (centred; at the
    ends the window is cut short). ``smooth`` 1 returns the counts."""
    counts = np.asarray(counts, np.float64)
    if smooth < 1:
        raise ValueError(f"--smooth must be >= 1, got {smooth}")
    if smooth == 1 or counts.size == 0:
        return counts
    half = smooth // 2
    return np.asarray(
        [np.median(counts[max(0, i - half) : i + half + 1]) for i in range(counts.size)]
    )


def _maxn(counts: np.ndarray, indices: Sequence[int], times: Sequence[float | None]) -> dict:
    """The largest count and the first frame (and time) it occurs at."""
    if counts.size == 0:
        return {"value": None, "frame": None, "time_s": None}
    i = int(np.argmax(counts))
    return {"value": float(counts[i]), "frame": int(indices[i]), "time_s": times[i]}


def summarize_counts(
    indices: Sequence[int],
    times: Sequence[float | None],
    counts: Sequence[int],
    *,
    smooth: int = 5,
    window: float = 0.0,
) -> dict[str, Any]:
    """MaxN of a video's per-frame counts (module docstring).

    Args:
      indices, times, counts: per analysed frame (in order).
      smooth: the smoothing window (sampled frames).
      window: seconds per window for per-window MaxN (0: none).

    Returns:
      ``maxn`` (smoothed) and ``maxn_raw``, each ``{"value", "frame", "time_s"}``, ``smooth``,
      ``smoothed_counts`` and, with ``window``, ``windows`` (start, end, frames, both MaxN).
    """
    counts_arr = np.asarray(counts, np.float64)
    smoothed = smoothed_counts(counts_arr, smooth)
    out: dict[str, Any] = {
        "frames_analysed": int(counts_arr.size),
        "smooth": int(smooth),
        "maxn": _maxn(smoothed, indices, times),
        "maxn_raw": _maxn(counts_arr, indices, times),
        "smoothed_counts": smoothed.tolist(),
    }
    if window and window > 0:
        windows = []
        if any(t is None for t in times):
            raise ValueError("--window needs the video's frame rate (its container gives none)")
        t = np.asarray(times, np.float64)
        n_windows = int(math.floor(t.max() / window)) + 1 if t.size else 0
        for w in range(n_windows):
            sel = np.nonzero((t >= w * window) & (t < (w + 1) * window))[0]
            idx = [indices[i] for i in sel]
            tim = [times[i] for i in sel]
            windows.append(
                {
                    "start_s": w * window,
                    "end_s": (w + 1) * window,
                    "frames": int(sel.size),
                    "maxn": _maxn(smoothed[sel], idx, tim),
                    "maxn_raw": _maxn(counts_arr[sel], idx, tim),
                }
            )
        out["window_s"] = float(window)
        out["windows"] = windows
    return out


def parse_window(text: str) -> float:
    """``--window``: seconds (``60``, ``60s``), minutes (``2m``) or hours (``1h``); 0 = none."""
    text = str(text).strip().lower()
    if not text or text == "0":
        return 0.0
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}
    unit = text[-1] if text[-1] in scale else "s"
    number = text[:-1] if text[-1] in scale else text
    try:
        value = float(number) * scale[unit]
    except ValueError:
        raise ValueError(f"--window must be like 60s, 2m or 1h, got {text!r}") from None
    if value <= 0:
        raise ValueError(f"--window must be positive, got {text!r}")
    return value


class OverlayVideo:
    """An overlay video written to a temporary file and renamed when complete (MPEG-4 Part 2 in
    an ``.mp4``, the encoder every OpenCV build has)."""

    def __init__(self, path: pathlib.Path, fps: float) -> None:
        self.path = pathlib.Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp.mp4")
        self.fps = fps if fps > 0 else 1.0
        self.writer = None

    def write(self, rgb: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            h, w = rgb.shape[:2]
            self.writer = cv2.VideoWriter(
                str(self.tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h)
            )
            if not self.writer.isOpened():
                raise OSError(f"{self.path}: cannot write an overlay video here")
        self.writer.write(np.ascontiguousarray(rgb[..., ::-1]))

    def close(self, keep: bool) -> None:
        if self.writer is not None:
            self.writer.release()
        if keep and self.tmp.exists():
            self.tmp.replace(self.path)
        elif self.tmp.exists():
            self.tmp.unlink()
