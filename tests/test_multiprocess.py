"""A real multi-process job: two processes on loopback, 2 CPU devices each, the smoke preset.

The processes are started as a user starts them (``train.py`` / ``evaluate.py`` with
``--coordinator_address --num_processes --process_id``), through ``tests/mp_driver.py``, which
adds test hooks only (a write log, a SIGKILL right after a checkpoint, a parameter dump, and for
the one-process reference the global batches of the two-process job). One set of runs, shared by
every test here (module fixture):

  A   2 processes, 6 steps, on an empty data cache (both prepare concurrently)
  R   1 process x 4 devices fed the same global batches as A
  B   2 processes killed (SIGKILL) right after checkpoint 3, then rerun to the end
  E   evaluate.py on A's checkpoint: 1 process x 4 devices, then 2 processes
  P   the pseudo-mask pass on A's checkpoint: 1 process x 4 devices, then 2 processes
"""

from __future__ import annotations

import collections
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DRIVER = str(ROOT / "tests" / "mp_driver.py")
CONFIG = "--config=configs/deepfish.py:smoke"
TIMEOUT = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(devices: int, cache: pathlib.Path, **hooks: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MP_", "SLURM_", "OMPI_"))}
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    env.update(
        JAX_PLATFORMS="cpu",
        XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
        PYTHONPATH=str(ROOT),
        ALCFCN_CACHE=str(cache),
        **hooks,
    )
    return env


def _launch(n: int, script: str, args: list[str], env: dict[str, str], log: pathlib.Path):
    """Runs ``script`` as an ``n``-process job (``n`` = 1: a plain single process); returns the
    exit codes."""
    procs = []
    port = _free_port()
    for i in range(n):
        flags = []
        if n > 1:
            flags = [
                f"--coordinator_address=127.0.0.1:{port}",
                f"--num_processes={n}",
                f"--process_id={i}",
            ]
        out = open(f"{log}.{i}.log", "w")  # noqa: SIM115 - closed below
        procs.append(
            (
                subprocess.Popen(
                    [sys.executable, DRIVER, script, *args, *flags],
                    cwd=ROOT,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                ),
                out,
            )
        )
    codes = []
    deadline = time.monotonic() + TIMEOUT
    for proc, out in procs:
        try:
            codes.append(proc.wait(timeout=max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            for p, _ in procs:
                p.kill()
            codes.append("timeout")
        out.close()
    return codes


def _tail(log: pathlib.Path, n: int) -> str:
    return "\n".join(
        pathlib.Path(f"{log}.{i}.log").read_text()[-3000:]
        for i in range(n)
        if pathlib.Path(f"{log}.{i}.log").exists()
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("mp")
    cache = base / "cache"  # empty: run A's two processes prepare the data together
    logs = base / "logs"
    logs.mkdir()
    seconds = {}
    out = {"base": base, "cache": cache, "seconds": seconds, "codes": {}}

    def run(name, n, script, args, devices, **hooks):
        t0 = time.perf_counter()
        codes = _launch(n, script, args, _env(devices, cache, **hooks), logs / name)
        seconds[name] = time.perf_counter() - t0
        out["codes"][name] = codes
        out[f"log_{name}"] = _tail(logs / name, n)
        out[f"logdir_{name}"] = (logs / name, n)
        return codes

    # count_baseline: the median training count, each process reading its own slice.
    train = ["train.py", [CONFIG, "--config.train.count_baseline=True"]]
    a, r, b = base / "A", base / "R", base / "B"
    run("A", 2, train[0], [*train[1], f"--workdir={a}"], 2, MP_DUMP_PARAMS=str(base / "A.npz"))
    run(
        "R",
        1,
        train[0],
        [*train[1], f"--workdir={r}"],
        4,
        MP_VIRTUAL_PROCESSES="2",
        MP_DUMP_PARAMS=str(base / "R.npz"),
    )
    run("B_killed", 2, train[0], [*train[1], f"--workdir={b}"], 2, MP_KILL_AFTER_STEP="3")
    out["B_steps_after_kill"] = sorted(p.name for p in (b / "checkpoints").iterdir())
    run(
        "B_resumed",
        2,
        train[0],
        [*train[1], f"--workdir={b}"],
        2,
        MP_DUMP_PARAMS=str(base / "B.npz"),
    )

    for name, mode, folder in (("E", "eval", "eval"), ("P", "pseudo_masks", "pseudo_masks")):
        args = [CONFIG, f"--workdir={a}", f"--mode={mode}", "--checkpoint=latest"]
        if mode == "eval":
            args += ["--split=val", "--num_overlays=2"]
        for n, devices in ((1, 4), (2, 2)):
            wlog = base / f"writes_{name}{n}"
            wlog.mkdir()
            run(f"{name}{n}", n, "evaluate.py", args, devices, MP_WRITE_LOG=str(wlog))
            shutil.move(a / folder, base / f"{name}{n}")
    return out


def _ok(runs, *names):
    for name in names:
        assert runs["codes"][name] == [0] * len(runs["codes"][name]), runs[f"log_{name}"]


def _load(path):
    with np.load(path) as d:
        return {k: d[k] for k in d.files}


def _train_losses(workdir: pathlib.Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if r.get("kind") == "train" and "loss" in r}


def test_two_processes_train_like_one_process_with_the_same_global_batches(runs):
    _ok(runs, "A", "R")
    a, r = _load(runs["base"] / "A.npz"), _load(runs["base"] / "R.npz")
    assert a.keys() == r.keys()
    diff = max(float(np.abs(a[k].astype(np.float64) - r[k]).max(initial=0.0)) for k in a)
    la, lr = _train_losses(runs["base"] / "A"), _train_losses(runs["base"] / "R")
    assert sorted(la) == sorted(lr) == [2, 4, 6]
    loss_diff = max(abs(la[s] - lr[s]) for s in la)
    print(f"2 processes vs 1 process: max |param diff| {diff:.3g}, max |loss diff| {loss_diff:.3g}")
    assert diff <= 1e-6
    assert loss_diff <= 1e-6
    final_a = json.loads((runs["base"] / "A" / "final.json").read_text())
    final_r = json.loads((runs["base"] / "R" / "final.json").read_text())
    base_a, base_r = final_a["count_baseline"], final_r["count_baseline"]
    assert base_a["median_train_count"] == base_r["median_train_count"]
    assert base_a["median_baseline_mae"] == base_r["median_baseline_mae"]


def test_sigkill_after_a_checkpoint_then_resume_is_bitwise_the_uninterrupted_run(runs):
    assert runs["codes"]["B_killed"] == [-signal.SIGKILL] * 2, runs["log_B_killed"]
    assert runs["B_steps_after_kill"] == ["3"]
    _ok(runs, "A", "B_resumed")
    log, _ = runs["logdir_B_resumed"]
    assert "Resumed from" in pathlib.Path(f"{log}.0.log").read_text()
    a, b = _load(runs["base"] / "A.npz"), _load(runs["base"] / "B.npz")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    # The data order resumed too: the losses after the restart are the uninterrupted run's.
    assert _train_losses(runs["base"] / "B")[6] == _train_losses(runs["base"] / "A")[6]


def _writes(folder: pathlib.Path) -> list[tuple[int, str]]:
    return [
        (row["process"], row["path"])
        for f in sorted(folder.glob("writes.*.jsonl"))
        for row in map(json.loads, f.read_text().splitlines())
    ]


def _assert_written_once(runs, name: str, *, only_process_0: tuple[str, ...]) -> list[str]:
    writes = _writes(runs["base"] / f"writes_{name}")
    counts = collections.Counter(path for _, path in writes)
    assert counts and max(counts.values()) == 1, [p for p, c in counts.items() if c > 1]
    for proc, path in writes:
        if path.endswith(only_process_0):
            assert proc == 0, path
    return sorted({proc for proc, _ in writes})


def test_evaluate_in_two_processes_equals_one_process_and_writes_once(runs):
    _ok(runs, "E1", "E2")
    one = json.loads((runs["base"] / "E1" / "val" / "metrics.json").read_text())
    two = json.loads((runs["base"] / "E2" / "val" / "metrics.json").read_text())
    timing = ("eval_seconds", "images_per_second")
    worst = 0.0
    for key, v in one.items():
        if key in timing or not isinstance(v, (int, float)):
            continue
        if key.startswith(("num_", "true_count", "pred_count")) or key in ("mae", "rmse"):
            assert two[key] == v, key  # counts: exact
        else:
            worst = max(worst, abs(two[key] - v))
            assert abs(two[key] - v) <= 1e-7, key
    assert two["confusion"] == one["confusion"]
    print(f"evaluate 2 vs 1 process: max |IoU/GAME diff| {worst:.3g}")
    csv1 = (runs["base"] / "E1" / "val" / "per_image.csv").read_text()
    csv2 = (runs["base"] / "E2" / "val" / "per_image.csv").read_text()
    assert csv1 == csv2
    reports = [
        [
            x
            for x in (runs["base"] / e / "val" / "report.md").read_text().splitlines()
            if not x.startswith("Speed:")
        ]
        for e in ("E1", "E2")
    ]
    assert reports[0] == reports[1]
    overlays = sorted(p.name for p in (runs["base"] / "E2" / "val" / "overlays").iterdir())
    assert len(overlays) == 2
    assert _assert_written_once(runs, "E2", only_process_0=(".json", ".csv", ".md", ".png")) == [0]


def test_pseudo_masks_in_two_processes_equal_one_process(runs):
    _ok(runs, "P1", "P2")
    d1, d2 = runs["base"] / "P1", runs["base"] / "P2"
    pngs1 = sorted(p.relative_to(d1) for p in d1.rglob("*.png"))
    pngs2 = sorted(p.relative_to(d2) for p in d2.rglob("*.png"))
    assert pngs1 == pngs2 and len(pngs1) > 4
    for rel in pngs1:
        assert (d1 / rel).read_bytes() == (d2 / rel).read_bytes(), rel
    m1 = json.loads((d1 / "manifest.json").read_text())
    m2 = json.loads((d2 / "manifest.json").read_text())
    for m in (m1, m2):
        m.pop("seconds_this_run")
    assert m1 == m2
    # Each mask by the process that computed it (both processes wrote some), none twice; the
    # manifest by process 0.
    assert _assert_written_once(runs, "P2", only_process_0=(".json",)) == [0, 1]


def test_two_processes_on_an_empty_data_cache_both_succeed(runs):
    _ok(runs, "A")
    cache = runs["cache"]
    trees = [p.name for p in cache.iterdir()]
    assert len(trees) == 1 and trees[0].startswith("synthetic_"), trees  # no leftover temp trees
    assert (cache / trees[0] / "tensorflow_datasets" / "deepfish").is_dir()
    assert "FileExistsError" not in runs["log_A"]
    print("multi-process runs (s):", {k: round(v, 1) for k, v in runs["seconds"].items()})
