"""Small shared helpers for the benchmark scripts: timing, compiled memory, host load, JSON."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax

__all__ = [
    "compiled_memory",
    "host_info",
    "loadavg",
    "print_json",
    "time_calls",
    "time_jitted",
    "write_video",
]


def loadavg() -> list[float]:
    """The 1/5/15-minute load averages, rounded (NaN where the OS has none)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    return [round(x, 2) for x in load]


def time_calls(fn: Callable, args: tuple, repeats: int) -> tuple[float, list[float]]:
    """(first call incl. any compilation, sorted steady-state times) of ``fn(*args)`` in seconds."""
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return first, sorted(times)


def time_jitted(fn: Callable, *args: Any, repeats: int = 3) -> dict[str, float]:
    """Compiles ``fn`` with jit and times it.

    Args:
        fn: function of ``args`` (wrapped in ``jax.jit`` here).
        *args: example arguments.
        repeats: timed runs after the first (compiling) call.

    Returns:
        dict with ``compile_s`` (first call, includes compilation), ``min_s`` and ``median_s``.
    """
    first, times = time_calls(jax.jit(fn), args, repeats)
    return {
        "compile_s": round(first, 3),
        "min_s": round(times[0], 4),
        "median_s": round(times[len(times) // 2], 4),
    }


def compiled_memory(fn: Callable, *args: Any) -> dict[str, int] | None:
    """XLA's static memory estimate of ``jax.jit(fn)`` (arguments, outputs, temporaries).

    Returns:
        dict of byte counts with ``peak_bytes`` = arguments + outputs + temporaries, or None when
        the backend does not report it.
    """
    try:
        mem = jax.jit(fn).lower(*args).compile().memory_analysis()
    except Exception:  # noqa: BLE001 - not every backend implements memory_analysis
        return None
    if mem is None:
        return None
    out = {
        "argument_bytes": int(mem.argument_size_in_bytes),
        "output_bytes": int(mem.output_size_in_bytes),
        "temp_bytes": int(mem.temp_size_in_bytes),
    }
    out["peak_bytes"] = sum(out.values())
    return out


def host_info() -> dict[str, Any]:
    """Device, CPU count and 1/5/15-minute load averages (timings are only comparable when quiet)."""
    return {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "loadavg": loadavg(),
        "jax": jax.__version__,
    }


def print_json(result: dict) -> None:
    """Prints a benchmark result as indented JSON."""
    print(json.dumps(result, indent=2, sort_keys=False))


def write_video(files: list, path: Any, fps: float = 10.0) -> None:
    """Image files (same size) as an MPEG-4 video at ``fps`` frames a second (OpenCV)."""
    import cv2
    import numpy as np
    from PIL import Image

    first = np.asarray(Image.open(files[0]).convert("RGB"))
    h, w = first.shape[:2]
    out = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for f in files:
        out.write(np.asarray(Image.open(f).convert("RGB"))[..., ::-1].copy())
    out.release()


def variant_list(parser: Any, text: str, allowed: tuple[str, ...]) -> list[str]:
    """The comma-separated variants of ``text``; an unknown one stops the argparse ``parser``
    with the allowed ones."""
    variants = [v for v in text.split(",") if v]
    unknown = set(variants) - set(allowed)
    if unknown:
        parser.error(f"unknown variant(s) {sorted(unknown)}; choose from {allowed}")
    return variants
