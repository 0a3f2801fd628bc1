"""Iterative pseudo-mask rounds (alcfcn_jax/train/rounds.py) on the smoke presets.

A smoke stage 1 and its masks, then 2 rounds of stage 2: both round folders, round 2 trained on
round 1's masks from round 1's best step, rounds.json with per-round figures; a rerun trains,
writes and evaluates nothing; the early-stop rule on hand-made figures.
"""

import json
import math

import pytest

from alcfcn_jax.config_utils import ConfigError
from alcfcn_jax.train import loop, rounds, runner
from alcfcn_jax.train import mask_writer as pm_app
from alcfcn_jax.train.config import resolve


def _short(cfg):
    # One image per fake device (8) per step needs at least 8 training images.
    cfg.data.synthetic.loc_sizes = (12, 2, 2)
    cfg.train.num_steps = 2
    cfg.train.eval_every = 2
    cfg.train.checkpoint_every = 2
    cfg.train.eval_test = False
    return cfg


def stage1_config():
    from configs import deepfish

    return _short(deepfish.get_config("smoke"))


def stage2_config(stage1_workdir, n_rounds):
    from configs import deepfish_pm

    cfg = _short(deepfish_pm.get_config("smoke"))
    cfg.stage1.workdir = str(stage1_workdir)
    cfg.pm.rounds = n_rounds
    return cfg


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    w1 = tmp_path_factory.mktemp("stage1")
    cfg1 = stage1_config()
    runner.run(cfg1, str(w1))
    pm_app.write_pseudo_masks(cfg1, w1)
    return w1


def _refuse(*args, **kwargs):
    raise AssertionError("a finished round was trained, written or evaluated again")


def test_two_rounds_then_rerun_does_nothing(tmp_path, stage1, monkeypatch):
    w = tmp_path / "pm"
    real_stage1_record = rounds.stage1_record

    def lenient(stage1_dir, step):  # round 1 is never worse than stage 1 here: both rounds train
        rec = real_stage1_record(stage1_dir, step)
        return {**rec, "val": {**rec["val"], "miou": 0.0}}

    monkeypatch.setattr(rounds, "stage1_record", lenient)
    summary = rounds.run_rounds(stage2_config(stage1, 2), w)

    r1, r2 = w / "round_1", w / "round_2"
    for rdir in (r1, r2):
        final = json.loads((rdir / "final.json").read_text())
        assert final["step"] == 2
        assert (rdir / "checkpoints").is_dir()
        assert (rdir / "eval" / "val" / "metrics.json").exists()
    # Round 1 trained on stage 1's masks, round 2 on round 1's, from round 1's best step.
    cfg2 = json.loads((r2 / "config.json").read_text())
    assert cfg2["stage1"]["workdir"] == str(r1) and cfg2["pm"]["rounds"] == 1
    cfg1 = json.loads((r1 / "config.json").read_text())
    assert cfg1["stage1"]["workdir"] == str(stage1)
    manifest1 = json.loads((r1 / "pseudo_masks" / "manifest.json").read_text())
    best1 = json.loads((r1 / "final.json").read_text())["best"]["step"]
    assert manifest1["checkpoint_step"] == best1
    assert manifest1["stage1_workdir"] == str(r1.resolve())
    assert manifest1["quality"] is None  # FishLoc training images: no true masks to score
    assert not (r2 / "pseudo_masks").exists()  # no round 3: round 2's masks are not needed

    saved = json.loads((w / "rounds.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    assert [rec["round"] for rec in saved["rounds"]] == [1, 2]
    assert saved["rounds"][0]["masks"]["from"] == "stage 1"
    assert saved["rounds"][1]["masks"]["from"] == "round 1"
    assert saved["rounds"][1]["masks"]["checkpoint_step"] == best1
    assert saved["rounds"][1]["masks"]["miou_vs_true_masks"] is None
    assert saved["select_metric"] == "miou"
    # Stage 1's own figures at its masks' checkpoint, read from its metrics.jsonl (a reference
    # row, not a round).
    stage1_step = json.loads((stage1 / "pseudo_masks" / "manifest.json").read_text())[
        "checkpoint_step"
    ]
    rows = [json.loads(line) for line in (stage1 / "metrics.jsonl").read_text().splitlines()]
    val_row = [r for r in rows if r["kind"] == "val" and r["step"] == stage1_step][-1]
    assert saved["stage1"]["step"] == stage1_step and saved["stage1"]["workdir"] == str(stage1)
    assert saved["stage1"]["val"]["mae"] == pytest.approx(val_row["val_mae"])
    real = real_stage1_record(stage1, stage1_step)
    assert real["val"]["miou"] == pytest.approx(val_row["val_miou"])
    assert real["val"]["mae"] == pytest.approx(val_row["val_mae"])
    assert real_stage1_record(stage1, 10**6) is None  # no logged figures at that step
    for rec in saved["rounds"]:
        assert rec["trained"] is True
        assert set(rec["val"]) >= {"mae", "miou", "iou_fish"}
        assert rec["val"]["mae"] is not None and rec["val"]["mae"] >= 0
        metrics = json.loads((w / f"round_{rec['round']}" / "eval/val/metrics.json").read_text())
        assert rec["val"]["mae"] == pytest.approx(metrics["mae"])
        assert metrics["meta"]["step"] == rec["best_step"]
    figures = [rec["val"] for rec in saved["rounds"]]
    assert saved["stop_reason"] == rounds.stop_reason(figures, "miou", saved["stage1"]["val"])
    assert saved["stopped_early"] == (saved["stop_reason"] is not None)
    assert saved["complete"] == (not saved["stopped_early"])
    assert saved["best_round"] == rounds.best_round(figures, "miou")
    table = (w / "rounds.md").read_text()
    assert "| round |" in table and "| 2 | round 1 step" in table
    assert f"| stage 1 | clicks | {stage1_step} |" in table

    # Rerunning the same command trains, writes and evaluates nothing.
    monkeypatch.setattr(loop, "train_and_evaluate", _refuse)
    monkeypatch.setattr(rounds, "write_pseudo_masks", _refuse)
    monkeypatch.setattr(rounds, "run_evaluation", _refuse)
    again = rounds.run_rounds(stage2_config(stage1, 2), w)
    assert [rec["trained"] for rec in again["rounds"]] == [False, False]
    assert [rec["val"] for rec in again["rounds"]] == figures

    # A third round after a worse round 2 is not trained: the rounds stop, and say so.
    worse = {1: {"miou": 0.6, "mae": 1.0}, 2: {"miou": 0.5, "mae": 0.5}}
    monkeypatch.setattr(
        rounds, "evaluate_round", lambda cfg, rdir, step: worse[int(rdir.name.split("_")[1])]
    )
    stopped = rounds.run_rounds(stage2_config(stage1, 3), w)
    assert stopped["stopped_early"] and not stopped["complete"]
    assert "round 2 is worse than round 1" in stopped["stop_reason"]
    assert len(stopped["rounds"]) == 2 and stopped["best_round"] == 1
    assert not (w / "round_3").exists()
    assert json.loads((w / "rounds.json").read_text())["stopped_early"] is True
    assert "Stopped early" in (w / "rounds.md").read_text()

    # Round 1 worse than stage 1 (whose masks it trained on): the rounds stop after round 1.
    monkeypatch.setattr(
        rounds,
        "stage1_record",
        lambda d, step: {"workdir": str(d), "step": step, "val": {"miou": 0.9}},
    )
    first_only = rounds.run_rounds(stage2_config(stage1, 3), w)
    assert first_only["stopped_early"] and len(first_only["rounds"]) == 1
    assert "round 1 is worse than stage 1" in first_only["stop_reason"]
    table = (w / "rounds.md").read_text()
    assert "| stage 1 | clicks |" in table
    assert "Stage 1 is better than every round on validation miou." in table


def test_stop_rule_on_hand_made_figures():
    mae = [{"mae": 2.0}, {"mae": 1.5}, {"mae": 1.7}]
    assert rounds.stop_reason(mae[:1], "mae") is None  # one round: nothing to compare
    # Round 1 against stage 1, the model whose masks it trained on (when its figures are known).
    assert rounds.stop_reason(mae[:1], "mae", {"mae": 2.5}) is None
    assert "round 1 is worse than stage 1" in rounds.stop_reason(mae[:1], "mae", {"mae": 1.0})
    assert rounds.stop_reason(mae[:1], "mae", {"mae": None}) is None
    assert rounds.stop_reason(mae[:2], "mae") is None  # lower MAE is better
    reason = rounds.stop_reason(mae, "mae")
    assert "round 3 is worse than round 2" in reason and "lower is better" in reason
    assert rounds.stop_reason([{"mae": 1.5}, {"mae": 1.5}], "mae") is None  # a tie goes on
    assert rounds.stop_reason([{"miou": 0.5}, {"miou": 0.6}], "miou") is None
    assert "higher is better" in rounds.stop_reason([{"miou": 0.6}, {"miou": 0.5}], "miou")
    assert rounds.stop_reason([{"miou": 0.6}, {"miou": None}], "miou")  # lost its figure
    assert rounds.stop_reason([{"miou": 0.6}, {"miou": math.nan}], "miou")
    assert rounds.stop_reason([{"miou": None}, {"miou": 0.1}], "miou") is None
    assert rounds.stop_reason([{"game": 3.0}, {"game": 3.5}], "game")
    assert rounds.best_round([{"mae": 2.0}, {"mae": 1.5}, {"mae": 1.7}], "mae") == 2
    assert rounds.best_round([{"miou": 0.5}, {"miou": 0.5}], "miou") == 2
    assert rounds.best_round([{"miou": None}], "miou") is None


def test_rounds_config_and_workdir_checks(tmp_path):
    cfg = stage2_config(tmp_path / "stage1", 2)
    assert resolve(cfg).pm.rounds == 2
    cfg.pm.rounds = 0
    with pytest.raises(ConfigError, match="pm.rounds"):
        resolve(cfg)
    cfg = stage2_config("", 2)
    with pytest.raises(ConfigError, match="stage1.workdir"):
        resolve(cfg)
    # Configs without pseudo masks have no rounds; stage 2 defaults to one.
    assert "pm" not in resolve(stage1_config())
    assert rounds.num_rounds(stage1_config()) == 1
    single = stage2_config(tmp_path / "stage1", 1)
    del single["pm"]
    assert resolve(single).pm.rounds == 1
    # Round configs: a single run each, round r > 1 on round r - 1's masks.
    r3 = rounds.round_config(resolve(stage2_config(tmp_path / "s1", 3)), tmp_path / "w", 3)
    assert r3.pm.rounds == 1 and r3.stage1.workdir == str(tmp_path / "w" / "round_2")
    # Rounds and a single run never share a workdir.
    (tmp_path / "single" / "checkpoints").mkdir(parents=True)
    with pytest.raises(rounds.RoundsError, match="single stage-2 run"):
        rounds.check_workdir(tmp_path / "single", 2)
    rounds.check_workdir(tmp_path / "single", 1)
    (tmp_path / "multi").mkdir()
    (tmp_path / "multi" / rounds.ROUNDS_FILE).write_text("{}")
    with pytest.raises(rounds.RoundsError, match="pseudo-mask rounds"):
        rounds.check_workdir(tmp_path / "multi", 1)
    rounds.check_workdir(tmp_path / "multi", 2)


def test_table_says_when_stage_one_beats_every_round():
    def summary(stage1_mae):
        return {
            "select_metric": "mae",
            "stage1": {"step": 5, "val": {"mae": stage1_mae}},
            "rounds": [
                {
                    "round": 1,
                    "masks": {"from": "stage 1", "checkpoint_step": 5},
                    "best_step": 2,
                    "val": {"mae": 0.7},
                },
            ],
            "stopped_early": False,
            "complete": True,
            "rounds_requested": 1,
            "best_round": 1,
        }

    assert "Stage 1 is better than every round" in rounds.render_table(summary(0.6))
    assert "Stage 1 is better" not in rounds.render_table(summary(0.7))  # a tie is not better
    assert "Stage 1 is better" not in rounds.render_table(summary(0.8))
    assert "| stage 1 | clicks | 5 | 0.6000 |" in rounds.render_table(summary(0.6))
