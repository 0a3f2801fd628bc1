"""Frames through the model at the speed of the model: the pipeline of ``predict``.

Frames (images of a folder, or frames of a video) are decoded and prepared (the model's recorded
preprocessing) in a reader thread, gathered into batches of one size, run through the jitted
model with the batch sharded over every local device, and post-processed (the instances and
outlines of ``config.instances``, the blob count, the measurements) in a pool of threads, while
the model works on the next batch. Results come out in frame order.

The stages overlap: the reader runs ahead by ``prefetch`` frames, and up to ``inflight``
post-processed frames wait for their turn, so neither decoding nor post-processing stops the
model as long as they keep up with it.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import jax
import numpy as np

from alcfcn_jax import sharding as shd
from alcfcn_jax.apps import instances as inst_app
from alcfcn_jax.data import preprocess as pp
from alcfcn_jax.eval import measure, metrics, outlines


@dataclasses.dataclass
class Frame:
    """One frame to analyse.

    Attributes:
      name: the image's path under the input folder, or the video's name.
      original: (H, W, 3) uint8 RGB as read.
      prepared: the model input and the region of ``original`` it was made from.
      index: the frame's index in its video (images: position in the folder).
      time: the frame's time in seconds (videos), else None.
    """

    name: str
    original: np.ndarray
    prepared: pp.PreparedImage
    index: int = 0
    time: float | None = None


@dataclasses.dataclass
class Result:
    """A frame's fish: instance labels and probability at the model input's size, one measurement
    row per fish (``eval.measure.measure_fish``, original and model pixels) and the blob count
    (what evaluation counts)."""

    frame: Frame
    labels: np.ndarray
    prob: np.ndarray
    rows: list[dict[str, Any]]
    blob_count: int


def local_mesh() -> jax.sharding.Mesh:
    """A ``("data",)`` mesh of this process's devices (predict runs on one process)."""
    return jax.sharding.Mesh(np.array(jax.local_devices()), (shd.DATA_AXIS,))


class Progress:
    """A line of progress with rate and ETA: rewritten in place on a terminal, a log line every
    10% otherwise."""

    def __init__(self, total: int | None, what: str = "frames", stream=None) -> None:
        self.total, self.what = total, what
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.t0 = time.perf_counter()
        self.done = 0
        self._last = 0.0
        self._next_tenth = 1

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.perf_counter()
        rate = self.done / max(now - self.t0, 1e-9)
        if self.total:
            eta = max(self.total - self.done, 0) / max(rate, 1e-9)
            text = f"{self.what} {self.done}/{self.total} ({rate:.1f}/s, ETA {eta:.0f} s)"
        else:
            text = f"{self.what} {self.done} ({rate:.1f}/s)"
        if self.tty:
            if now - self._last > 0.2:
                self.stream.write("\r" + text)
                self.stream.flush()
                self._last = now
        elif self.total and self.done * 10 >= self._next_tenth * self.total:
            self._next_tenth = self.done * 10 // self.total + 1
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


_END = object()


class _Reader:
    """Pulls frames from an iterable in a thread, ``prefetch`` ahead; errors surface in order."""

    def __init__(self, frames: Iterable[Frame], prefetch: int) -> None:
        self.q: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(iter(frames),), daemon=True)
        self.thread.start()

    def _run(self, it: Iterator[Frame]) -> None:
        try:
            for frame in it:
                while not self.stop.is_set():
                    try:
                        self.q.put(frame, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self.stop.is_set():
                    return
            self.q.put(_END)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer
            self.q.put(err)

    def __iter__(self) -> Iterator[Frame]:
        while True:
            item = self.q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self.stop.set()


class FrameAnalyser:
    """The model and the instance settings, run over frames (module docstring).

    Args:
      model: an NNX segmentation model (eval mode is used).
      settings: how probability becomes fish (``eval.outlines.InstanceSettings``).
      batch_size: frames per model call (rounded up to a multiple of the local devices).
      workers: post-processing threads (default: the CPU count).
      prefetch: frames decoded ahead of the model (default: two batches).
    """

    def __init__(
        self,
        model: Any,
        settings: outlines.InstanceSettings | None = None,
        *,
        batch_size: int = 8,
        workers: int | None = None,
        prefetch: int | None = None,
    ) -> None:
        self.settings = settings or outlines.InstanceSettings()
        mesh = local_mesh()
        n_dev = mesh.devices.size
        self.batch_size = max(1, -(-int(batch_size) // n_dev) * n_dev)
        self.forward = inst_app.make_batch_forward(model, self.settings, mesh=mesh)
        self.workers = int(workers or os.cpu_count() or 1)
        self.prefetch = int(prefetch or 2 * self.batch_size)
        self.inflight = 2 * self.batch_size + self.workers

    def analyse(self, frame: Frame, out: dict[str, np.ndarray]) -> Result:
        """Post-processing of one frame from its model outputs."""
        prepared = frame.prepared
        labels, prob = inst_app.cut_instances(
            self.settings, out, pp.denormalize(prepared.image), prepared.valid
        )
        top, bottom, left, right = prepared.region
        rows = measure.measure_fish(
            labels, prob, original_size=(bottom - top, right - left), origin=(top, left)
        )
        blobs = int(metrics.count_blobs(prob > self.settings.threshold))
        return Result(frame, labels, prob, rows, blobs)

    def _batches(self, frames: Iterable[Frame]) -> Iterator[list[Frame]]:
        """Consecutive frames of one input size, at most ``batch_size`` at a time."""
        batch: list[Frame] = []
        for frame in frames:
            if batch and frame.prepared.image.shape != batch[0].prepared.image.shape:
                yield batch
                batch = []
            batch.append(frame)
            if len(batch) == self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _analyse_and_finish(
        self, frame: Frame, out: dict[str, np.ndarray], finish: Callable[[Result], None] | None
    ) -> Result:
        result = self.analyse(frame, out)
        if finish is not None:
            finish(result)
        return result

    def run(
        self,
        frames: Iterable[Frame],
        *,
        on_result: Callable[[Result], None] | None = None,
        finish: Callable[[Result], None] | None = None,
    ) -> Iterator[Result]:
        """The results of ``frames``, in order (``on_result`` is called on each, in order).

        ``finish`` is per-frame work that needs no order (writing a frame's own files), run in
        the post-processing threads right after the frame's analysis, beside the model."""
        reader = _Reader(frames, self.prefetch)
        pending: collections.deque[Future] = collections.deque()
        pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="predict-post")
        try:
            for batch in self._batches(reader):
                images = np.stack([f.prepared.image for f in batch]).astype(np.float32)
                extra = self.batch_size - len(batch)
                if extra:  # one compiled shape: pad the last batch
                    images = np.concatenate(
                        [images, np.zeros((extra,) + images.shape[1:], images.dtype)]
                    )
                out = self.forward(images)
                for i, frame in enumerate(batch):
                    pending.append(
                        pool.submit(
                            self._analyse_and_finish,
                            frame,
                            {k: v[i] for k, v in out.items()},
                            finish,
                        )
                    )
                while len(pending) > self.inflight or (pending and pending[0].done()):
                    result = pending.popleft().result()
                    if on_result is not None:
                        on_result(result)
                    yield result
            while pending:
                result = pending.popleft().result()
                if on_result is not None:
                    on_result(result)
                yield result
        finally:
            reader.close()
            for f in pending:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
