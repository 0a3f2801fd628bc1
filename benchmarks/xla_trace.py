"""Core time per part of a jitted step, from an XLA profiler trace (CPU or GPU).

``profile_parts(fn, args, steps)`` runs ``fn(*args)`` ``steps`` times under ``jax.profiler``,
reads the Perfetto trace it writes, and sums the duration of every XLA operation of the step per
part. Each operation is named in the compiled HLO (``fn.lower(*args).compile().as_text()``) with
the JAX call path it came from (``op_name`` metadata), and the part follows from that path:

* ``host callback``: the ``pure_callback`` (the LCFCN targets on the host, and the device's wait
  for them);
* ``walk: affinity`` / ``walk: steps`` (forward and backward): ``random_walk.refine``, split into
  the sparse affinity matrix (``sparse_affinity``) and the rest (power, normalisation, pooling,
  the walk's steps and its resizes);
* ``full-resolution maps``: operations on arrays of the image's size outside the walk (the
  activation logits resized to the image, softmax, the loss's per-pixel terms);
* ``network`` (forward and backward): everything else inside the differentiated function: the
  heads, and the trunk where it runs in the step (no feature cache);
* ``optimizer and metrics``: what is outside it (Adam, norms, the skip logic).

The figures are core milliseconds per step (an operation's own time, without the operations
nested in it): operations that run at the same time on different threads both count, so
``device_core_ms`` over the step's wall time is how many cores the device side keeps busy on
average. The host callback is reported apart, as the time the executor waits in it (its worker
threads run the targets meanwhile).
"""

from __future__ import annotations

import collections
import gzip
import json
import pathlib
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax

# Trace events that wrap the step (the executable, its thunk executor, waits) rather than being
# one operation of it.
_WRAPPERS = re.compile(
    r"^(PjitFunction|ThunkExecutor|CommonPjRtLoadedExecutable|SlinkyThreadPool|TfrtCpu|"
    r"PjRt|\$)"
)
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) .*?op_name=\"([^\"]*)\"")


def op_table(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (result shape, op_name) of a compiled HLO module's text."""
    table: dict[str, tuple[str, str]] = {}
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.match(line)
        if m:
            table.setdefault(m.group(1), (m.group(2), m.group(3)))
    return table


def classify(op_name: str, shape: str, full_res: Sequence[int]) -> str:
    """The part of the step an operation belongs to (module docstring)."""
    if "pure_callback" in op_name:
        return "host callback"
    backward = "transpose(" in op_name
    differentiated = backward or "jvp(" in op_name
    if not differentiated:
        return "optimizer and metrics"
    side = "backward" if backward else "forward"
    if "refine" in op_name:
        what = "affinity" if "sparse_affinity" in op_name else "steps"
        return f"walk: {what} ({side})"
    dims = [int(d) for d in re.findall(r"\d+", shape.split("{")[0])]
    if all(int(s) in dims for s in full_res):
        return f"full-resolution maps ({side})"
    return f"network ({side})"


def _perfetto_events(trace_dir: pathlib.Path) -> list[dict[str, Any]]:
    files = sorted(trace_dir.rglob("perfetto_trace.json.gz"))
    if not files:
        raise FileNotFoundError(f"jax.profiler wrote no perfetto_trace.json.gz under {trace_dir}")
    data = json.loads(gzip.open(files[-1]).read())
    events = data["traceEvents"] if isinstance(data, dict) else data
    return [e for e in events if e.get("ph") == "X"]


def profile_parts(
    fn: Callable[..., Any],
    args: tuple,
    steps: int,
    *,
    full_res: Sequence[int],
    advance: Callable[[Any, tuple], tuple] | None = None,
) -> tuple[dict[str, Any], tuple]:
    """Runs ``fn(*args)`` ``steps`` times under the profiler; core milliseconds per step by part,
    and the arguments for a next call.

    Args:
      fn: a jitted function (``.lower`` must work on ``args``).
      args: its arguments.
      steps: profiled calls (after one unprofiled call that compiles).
      full_res: (H, W) of the images: arrays with both sizes are "full-resolution maps".
      advance: ``(output, args) -> args`` for the next call (a train step passes its new state
        on, since it donates the old one); default: the same ``args``.

    Returns:
      ``(report, args)``: ``report`` is ``{"parts_core_ms": {part: core ms per call}, "device_core_ms": their sum,
      "host_callback_ms": the callback's duration per call (its host threads not counted),
      "wall_ms": per call, "top_ops": the 15 costliest operations (self time)}``; ``args`` as
      ``advance`` left them.
    """
    table = op_table(fn.lower(*args).compile().as_text())
    out = fn(*args)
    jax.block_until_ready(out)
    if advance is not None:
        args = advance(out, args)
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        t0 = time.perf_counter()
        for _ in range(steps):
            out = fn(*args)
            jax.block_until_ready(out)
            if advance is not None:
                args = advance(out, args)
        wall = (time.perf_counter() - t0) / steps
        jax.profiler.stop_trace()
        events = _perfetto_events(pathlib.Path(tmp))
    parts: dict[str, float] = collections.defaultdict(float)
    ops: dict[str, float] = collections.defaultdict(float)
    for name, self_us in _self_times(events, table):
        shape, op_name = table[name]
        ms = self_us / 1e3 / steps
        parts[classify(op_name, shape, full_res)] += ms
        ops[f"{name} {op_name[-80:]}"] += ms
    callback = parts.pop("host callback", 0.0)
    device = sum(parts.values())
    report = {
        "parts_core_ms": {k: round(v, 1) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
        "device_core_ms": round(device, 1),
        "host_callback_ms": round(callback, 1),
        "wall_ms": round(wall * 1e3, 1),
        "top_ops": {k: round(v, 1) for k, v in sorted(ops.items(), key=lambda kv: -kv[1])[:15]},
    }
    return report, args


def _self_times(events: list[dict[str, Any]], table: dict[str, tuple[str, str]]):
    """(instruction, self time in us) of every operation event: a loop's or a call's own event
    spans those of its body, which are subtracted so no time counts twice."""
    by_thread: dict[Any, list[dict[str, Any]]] = collections.defaultdict(list)
    for e in events:
        if not _WRAPPERS.match(e["name"]) and e["name"] in table:
            by_thread[(e.get("pid"), e.get("tid"))].append(e)
    for evs in by_thread.values():
        evs.sort(key=lambda e: (e["ts"], -e.get("dur", 0)))
        stack: list[list[Any]] = []  # [name, end, self]
        for e in evs:
            start, dur = e["ts"], e.get("dur", 0)
            while stack and stack[-1][1] <= start:
                yield stack[-1][0], stack.pop()[2]
            if stack:
                stack[-1][2] -= dur
            stack.append([e["name"], start + dur, dur])
        while stack:
            yield stack[-1][0], stack.pop()[2]
