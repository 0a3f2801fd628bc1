"""One evaluation of a run's best checkpoint: training's final figures, evaluate.py's and the
rounds' are the same numbers, to the last digit."""

import json
import math

from alcfcn_jax.eval.report import run_evaluation
from alcfcn_jax.train import runner
from alcfcn_jax.train.config import resolve
from configs import deepfish
from tests.test_rounds import _short


def _same(a: dict, b: dict, prefix: str) -> None:
    checked = 0
    for key, value in b.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in ("eval_seconds", "images_per_second"):
            continue
        got = a[prefix + key]
        assert (math.isnan(got) and math.isnan(value)) or got == value, (key, got, value)
        checked += 1
    assert checked > 10


def test_final_figures_equal_evaluate_py(tmp_path):
    config = _short(deepfish.get_config("smoke"))
    config.train.eval_test = True
    final = runner.run(config, str(tmp_path))
    assert final["best_val"]["checkpoint_step"] == final["best"]["step"]
    # evaluate.py's library call, in a fresh evaluation.
    val = run_evaluation(resolve(config), tmp_path, split="val", which="best", num_overlays=0)
    test = run_evaluation(resolve(config), tmp_path, split="test", which="best", num_overlays=0)
    _same(final["best_val"], val, "val_")
    _same(final["test"], test, "test_")
    on_disk = json.loads((tmp_path / "final.json").read_text())
    assert on_disk["best_val"] == final["best_val"]
