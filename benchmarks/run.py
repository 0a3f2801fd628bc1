"""Runs every benchmark and records the figures.

    python -m benchmarks.run                 # all benchmarks
    python -m benchmarks.run --only random_walk,lcfcn_targets

Writes ``benchmarks/results/<device>.json`` (raw figures) and ``benchmarks/results/<device>.md``
(a table). Each benchmark module exposes ``run() -> dict``; a failing benchmark is recorded with its
error instead of stopping the others. Never part of the test suite.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import pathlib
import platform
import re
import sys
import time
import traceback

BENCHMARKS = (
    "random_walk",
    "lcfcn_targets",
    "conv",
    "model_step",
    "train_step",
    "input_pipeline",
    "evaluation",
    "feature_cache",
)
RESULTS = pathlib.Path(__file__).parent / "results"


def device_name() -> str:
    """A file-name-safe description of the default JAX device ("cpu-2cores", "nvidia-h100...")."""
    import jax

    dev = jax.devices()[0]
    if dev.platform == "cpu":
        name = f"cpu-{os.cpu_count()}cores"
    else:
        name = f"{dev.platform}-{dev.device_kind}"
    return re.sub(r"[^a-z0-9.-]+", "-", name.lower()).strip("-")


def _flatten(prefix: str, value, rows: list) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        for i, v in enumerate(value):
            _flatten(f"{prefix}[{i}]", v, rows)
    else:
        rows.append((prefix, value))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def to_markdown(results: dict) -> str:
    """Renders the results as one table per benchmark (dotted metric names)."""
    lines = [f"# Benchmarks on {results['device']}", ""]
    lines.append(f"{results['date']}, {results['platform']}, jax {results['jax']}")
    lines.append("")
    for name, res in results["benchmarks"].items():
        lines += [f"## {name}", "", "| metric | value |", "|---|---|"]
        rows: list = []
        _flatten("", res, rows)
        lines += [f"| {k} | {_fmt(v)} |" for k, v in rows]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only", default="", help="comma-separated subset of " + ",".join(BENCHMARKS)
    )
    parser.add_argument("--out", default=str(RESULTS), help="directory for the results files")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")

    import jax

    results = {
        "device": device_name(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "benchmarks": {},
    }
    for name in names:
        print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            res = importlib.import_module(f"benchmarks.{name}").run()
        except Exception as e:  # noqa: BLE001 - record and go on with the other benchmarks
            res = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=5)}
        res["wall_s"] = round(time.perf_counter() - t0, 2)
        results["benchmarks"][name] = res
        print(json.dumps({name: res}, default=str), flush=True)

    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = results["device"]
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / f"{stem}.md").write_text(to_markdown(results) + "\n")
    print(f"[benchmarks] wrote {out / (stem + '.json')} and .md", file=sys.stderr)
    return results


if __name__ == "__main__":
    main()
