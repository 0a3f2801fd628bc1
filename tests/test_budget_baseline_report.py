"""The annotation-budget subset, the median-count baseline and the report's paper-table branch."""

from __future__ import annotations

import pytest

from alcfcn_jax.data.budget import budget_subset
from alcfcn_jax.eval import baseline
from alcfcn_jax.eval import report as eval_report

COUNTS = [0, 3, 0, 1, 0, 0, 2, 0, 5, 0]  # background at 0, 2, 4, 5, 7, 9; fish at 1, 3, 6, 8


def _source(counts=COUNTS):
    return [{"id": f"img_{i}", "count": c} for i, c in enumerate(counts)]


def test_budget_subset_draws_the_asked_kinds_without_replacement():
    src = _source()
    sub = budget_subset(src, n_background=4, n_fish=2, seed=3)
    ids = [sub[i]["id"] for i in range(len(sub))]
    assert len(ids) == 6 == len(set(ids))
    kinds = [int(ex["count"] > 0) for ex in (sub[i] for i in range(len(sub)))]
    assert kinds.count(0) == 4 and kinds.count(1) == 2
    assert ids == sorted(ids, key=lambda s: int(s.split("_")[1]))  # source order kept
    # The same seed picks the same images; the seeds differ somewhere over a few draws.
    again = budget_subset(src, n_background=4, n_fish=2, seed=3)
    assert [again[i]["id"] for i in range(len(again))] == ids
    draws = {
        tuple(s[i]["id"] for i in range(len(s)))
        for s in (budget_subset(src, n_background=4, n_fish=2, seed=k) for k in range(8))
    }
    assert len(draws) > 1
    # Everything of a kind: exactly those images.
    whole = budget_subset(src, n_background=6, n_fish=4, seed=0)
    assert sorted(whole[i]["id"] for i in range(len(whole))) == sorted(e["id"] for e in src)


def test_budget_subset_zero_is_the_source_and_too_many_is_an_error():
    src = _source()
    assert budget_subset(src, n_background=0, n_fish=0, seed=0) is src
    with pytest.raises(ValueError, match="7 background and 1 fish.*has 6 and 4"):
        budget_subset(src, n_background=7, n_fish=1, seed=0)
    with pytest.raises(ValueError, match="has 6 and 4"):
        budget_subset(src, n_background=1, n_fish=5, seed=0)


def test_count_baseline_by_hand():
    """Counts are read through ``example_count`` (plain example dicts here)."""
    # Training counts 0,0,0,0,0,0,1,2,3,5 -> median 0; validation counts 0, 2, 4 -> MAE 2.
    got = baseline.count_baseline(_source(), [{"true_count": c} for c in (0, 2, 4)])
    assert got == {"median_train_count": 0.0, "median_baseline_mae": 2.0}
    # An even number of images with a median between two counts: (1 + 2) / 2 = 1.5.
    got = baseline.count_baseline(_source([1, 2, 2, 1]), [{"true_count": 3}])
    assert got["median_train_count"] == 1.5 and got["median_baseline_mae"] == 1.5


def _result(miou):
    return {"num_images": 3, "miou": miou, "iou_bg": 0.9, "iou_fish": 0.7, "mae": 1.25}


def test_report_puts_ours_beside_the_paper_on_deepfish_only():
    meta = dict(dataset="deepfish", split="test", checkpoint="best", step=5, workdir="w")
    text = eval_report.render_report(_result(0.8123), meta={**meta, "method": "LCFCN"})
    assert "## Paper Table 1" in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.count("|") == 4}
    assert rows["LCFCN"].replace(" ", "") == "|LCFCN|0.774|0.812|"
    assert rows["A-LCFCN"].replace(" ", "") == "|A-LCFCN|0.860||"  # only our method's row
    assert "| mae | 1.250 |" in text
    other = eval_report.render_report(
        _result(0.5), meta={**meta, "dataset": "synthetic", "method": "LCFCN"}
    )
    assert "## Paper Table 1" not in other and "does not apply" in other
