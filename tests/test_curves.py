"""Learning-curve PNG and results table from a run's metrics.jsonl (alcfcn_jax.apps.curves)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from alcfcn_jax.apps import curves


def _write_run(tmp_path, name, vals, baseline=None):
    workdir = tmp_path / name
    workdir.mkdir()
    rows = [{"step": 10, "kind": "train", "loss": 1.0}]
    for step, mae, hit in vals:
        rows.append(
            {
                "step": step,
                "kind": "val",
                "val_mae": mae,
                "val_box_hit_rate": hit,
                "val_box_precision": 0.5,
                "val_game_l1": mae + 0.1,
                "val_miou": float("nan"),
            }
        )
    if baseline is not None:
        rows.append({"step": vals[-1][0], "kind": "baseline", "median_baseline_mae": baseline})
    (workdir / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return workdir


def test_read_run_keeps_finite_val_rows_and_last_of_a_repeated_step(tmp_path):
    workdir = _write_run(tmp_path, "a", [(100, 2.0, 0.1), (200, 1.0, 0.5), (200, 0.9, 0.6)], 2.5)
    got, baseline = curves.read_run(workdir)
    assert got["val_mae"] == [(100, 2.0), (200, 0.9)]  # resumed run: the later row wins
    assert "val_miou" not in got  # NaN (box-only data) is not a point
    assert baseline == 2.5


def test_table_reports_best_and_last_rows(tmp_path):
    a = _write_run(tmp_path, "a", [(100, 2.0, 0.1), (200, 0.8, 0.7), (300, 1.1, 0.6)], 2.0)
    runs = [("A", *curves.read_run(a))]
    text = curves.table(runs).splitlines()
    best = next(line for line in text if "| best |" in line)
    last = next(line for line in text if "| last |" in line)
    assert "| 200 | 0.800 | 0.900 |" in best and "0.700" in best
    assert "| 300 | 1.100 |" in last
    assert any("always median" in line and "2.000" in line for line in text)


def test_main_writes_a_png_with_one_panel_per_metric(tmp_path, capsys):
    a = _write_run(tmp_path, "a", [(100, 2.0, 0.1), (200, 0.8, 0.7)], 2.0)
    b = _write_run(tmp_path, "b", [(100, 1.5, 0.2)])
    out = tmp_path / "curves.png"
    path = curves.main(
        [f"{a}:A", f"{b}:B", f"--out={out}", "--metrics=val_mae,val_box_hit_rate", "--table"]
    )
    assert path == out
    image = Image.open(out)
    assert image.size[0] == 2 * 560
    assert "| A | best | 200 |" in capsys.readouterr().out


def test_missing_metrics_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        curves.read_run(tmp_path)
