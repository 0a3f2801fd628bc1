"""The command lines end to end, as a user runs them: train.py, evaluate.py, predict.

Each runs in its own process (one device, the ``smoke`` preset) through a driver that makes
TensorFlow look installed and records every import of it, even one inside try/except (so the
check means something where TensorFlow is absent): the project reads TFDS data and writes
metrics without it.
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]
DRIVER = """
import atexit, importlib.abc, importlib.machinery, runpy, sys
imports = []
class _Refuse(importlib.abc.Loader):
    def create_module(self, spec):
        return None
    def exec_module(self, module):
        imports.append(module.__name__)
        raise ImportError("TensorFlow import refused by the test driver")
class _PretendInstalled(importlib.abc.MetaPathFinder):
    # TensorFlow looks installed (find_spec succeeds, as where a user has it), and every real
    # import of it, even one inside try/except, is recorded and refused.
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            return importlib.machinery.ModuleSpec(name, _Refuse())
        return None
sys.meta_path.insert(0, _PretendInstalled())
def _report():
    print("TENSORFLOW_IMPORTS", sorted(set(imports)))
atexit.register(_report)
target, sys.argv = sys.argv[1], sys.argv[1:]
if target.startswith("-m"):
    sys.argv[0] = target[2:]
    runpy.run_module(target[2:], run_name="__main__", alter_sys=True)
else:
    runpy.run_path(target, run_name="__main__")
"""


def _run(target: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")  # one device
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, target, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "TENSORFLOW_IMPORTS []" in proc.stdout, proc.stdout[-500:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> pathlib.Path:
    workdir = tmp_path_factory.mktemp("cli") / "run"
    _run("train.py", "--config=configs/deepfish.py:smoke", f"--workdir={workdir}")
    return workdir


def test_train_py_writes_a_run(trained):
    assert (trained / "config.json").is_file() and (trained / "final.json").is_file()
    steps = sorted(int(p.name) for p in (trained / "checkpoints").iterdir() if p.name.isdigit())
    final = json.loads((trained / "final.json").read_text())
    assert steps and final["step"] == steps[-1]
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert any(r["kind"] == "train" for r in rows) and any(r["kind"] == "val" for r in rows)


def test_evaluate_py_writes_metrics_report_rows_and_overlays(trained):
    _run(
        "evaluate.py",
        "--config=configs/deepfish.py:smoke",
        f"--workdir={trained}",
        "--split=test",
        "--num_overlays=2",
    )
    out = trained / "eval" / "test"
    metrics = json.loads((out / "metrics.json").read_text())
    with open(out / "per_image.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == metrics["num_images"] > 0
    errors = [abs(float(r["true_count"]) - float(r["pred_count"])) for r in rows]
    assert metrics["mae"] == pytest.approx(np.mean(errors))
    assert "# Evaluation:" in (out / "report.md").read_text()
    assert len(list((out / "overlays").glob("*.png"))) == 2
    assert metrics["meta"]["walk"] is True
    # --nowalk: the activation branch alone, written beside it.
    _run(
        "evaluate.py",
        "--config=configs/deepfish.py:smoke",
        f"--workdir={trained}",
        "--split=test",
        "--num_overlays=0",
        "--nowalk",
    )
    nowalk = json.loads((trained / "eval" / "test_nowalk" / "metrics.json").read_text())
    assert nowalk["meta"]["walk"] is False and nowalk["num_images"] == metrics["num_images"]


def test_predict_cli_writes_one_row_per_fish(trained, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 255, (40, 64, 3), np.uint8)).save(photos / "a.png")
    Image.fromarray(np.full((33, 50, 3), 90, np.uint8)).save(photos / "b.jpg")
    out = tmp_path / "pred"
    proc = _run(
        "-malcfcn_jax.predict",
        "--config=configs/deepfish.py:smoke",
        f"--workdir={trained}",
        f"--input={photos}",
        f"--output_dir={out}",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 2
    with open(out / "fish.csv", newline="") as f:
        fish = list(csv.DictReader(f))
    with open(out / "images.csv", newline="") as f:
        images = list(csv.DictReader(f))
    assert len(fish) == summary["num_fish"]
    assert len(images) == 2
    assert f"{summary['num_fish']} fish in 2 images" in proc.stdout
    assert len(list((out / "instances").glob("*.png"))) == 2
    assert len(list((out / "overlays").glob("*.png"))) == 2


def _run_failing(target: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, target, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0
    return proc


def test_the_workdir_alone_is_enough_and_overrides_still_work(trained, tmp_path):
    # No --config: evaluate.py reads the run's own config.json.
    out = tmp_path / "eval"
    _run("evaluate.py", f"--workdir={trained}", "--split=val", f"--output_dir={out}")
    alone = json.loads((out / "metrics.json").read_text())
    given = tmp_path / "eval_given"
    _run(
        "evaluate.py",
        "--config=configs/deepfish.py:smoke",
        f"--workdir={trained}",
        "--split=val",
        f"--output_dir={given}",
    )
    assert alone["mae"] == json.loads((given / "metrics.json").read_text())["mae"]
    # Overrides apply to the run's config: a free key (the instances) is taken ...
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((40, 64, 3), 200, np.uint8)).save(photos / "a.png")
    _run(
        "-malcfcn_jax.predict",
        f"--workdir={trained}",
        f"--input={photos}",
        f"--output_dir={tmp_path / 'pred'}",
        "--config.instances.min_area=3",
    )
    summary = json.loads((tmp_path / "pred" / "summary.json").read_text())
    assert summary["settings"]["instances"]["min_area"] == 3
    # ... and a model key, which would not be the trained network, is refused in one line.
    proc = _run_failing(
        "evaluate.py", f"--workdir={trained}", "--split=val", "--config.model.logt=2"
    )
    assert "model.logt" in proc.stderr and "may differ from training" in proc.stderr


def test_predict_cli_on_a_video(trained, tmp_path):
    import cv2

    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"FFV1"), 5.0, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(6):
        writer.write(rng.integers(0, 255, (48, 64, 3), np.uint8))
    writer.release()
    out = tmp_path / "pred"
    proc = _run(
        "-malcfcn_jax.predict",
        f"--workdir={trained}",
        f"--input={clip}",
        f"--output_dir={out}",
        "--every=2",
        "--window=1s",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["frames_analysed"] == 3 and summary["every"] == 2
    assert "MaxN" in proc.stdout
    assert (out / "frames.csv").is_file() and (out / "windows.csv").is_file()
    # A video flag on a folder is refused before anything runs.
    bad = _run_failing(
        "-malcfcn_jax.predict",
        f"--workdir={trained}",
        f"--input={tmp_path}",
        f"--output_dir={tmp_path / 'x'}",
        "--fps=2",
    )
    assert "--fps applies to a video" in bad.stderr


def test_predict_without_a_workdir_uses_the_shipped_model(tmp_path):
    from alcfcn_jax.data import SAMPLE_DIR

    frame = sorted((SAMPLE_DIR / "val" / "images").glob("*.jpg"))[0]
    out = tmp_path / "pred"
    proc = _run("-malcfcn_jax.predict", f"--input={frame}", f"--output_dir={out}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "shipped" and summary["num_images"] == 1
    assert summary["settings"]["instances"]["outline"] == "grabcut"
    assert "fish in 1 images" in proc.stdout
