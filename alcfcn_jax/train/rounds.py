"""Iterative pseudo-mask rounds: stage 2 trained again on its own pseudo masks, R times.

    python train.py --config=configs/deepfish_pm.py --workdir=runs/pm_rounds \
        --config.stage1.workdir=runs/alcfcn --config.pm.rounds=3

Layout::

    <workdir>/round_1/                 a stage-2 run on stage 1's masks (<stage1.workdir>/pseudo_masks)
    <workdir>/round_1/pseudo_masks/    round 1's masks (written only when round 2 will train)
    <workdir>/round_1/eval/val/        round 1's best checkpoint on the validation split
    <workdir>/round_2/                 a stage-2 run on round 1's masks, and so on
    <workdir>/rounds.json, rounds.md   per-round validation figures (and stage 1's), the best round, why it stopped

Why a config key read by ``train.py`` and not a separate command: a round is exactly a stage-2
run, so the rounds take the stage-2 command unchanged plus ``--config.pm.rounds=R`` (recorded in
every round's ``config.json`` like any other setting, validated by ``train.config.resolve``);
``pm.rounds=1``, the default, is today's single stage 2 trained in the workdir itself, so nothing
changes for existing configs and workdirs. Rounds and a single run never share a workdir (each
refuses the other's).

Each round's config is the stage-2 config with ``stage1.workdir`` pointing at the round before
(round 1: the user's ``stage1.workdir``), so round r+1 is checked exactly as stage 2 is: its masks
must come from round r's best checkpoint by round r's own selection metric. Round r's masks are
written by the one pseudo-mask writer (``train.mask_writer.write_pseudo_masks``), whose staleness
rule is the one stage 2 applies (``data.pseudo_masks.stale_reason``).

Resumable at round granularity: a round whose ``final.json`` exists for its last step is not
trained again (its figures are read back from ``eval/val/metrics.json`` when that file is from its
best step); an interrupted round resumes from its latest checkpoint (``train.loop``); masks that
are up to date are not rewritten. Rerunning the same command on a finished run trains nothing.

Early stop: after each round its best checkpoint is evaluated on the validation split; when a round
is worse on the run's ``train.select_metric`` (``checkpoint.is_better``: a tie is not worse) than
the model whose masks it trained on (the round before; for round 1, stage 1 at its masks'
checkpoint, by the figures stage 1 logged there), the rounds stop there, say so in the log and in
``rounds.json`` (``stopped_early``, ``stop_reason``), and no further masks are written. The
decision is recomputed from the figures on every rerun, so a rerun stops at the same round.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
from absl import logging

from alcfcn_jax import sharding as shd
from alcfcn_jax.checkpoint import best_mode, is_better
from alcfcn_jax.data import pseudo_masks as pm
from alcfcn_jax.eval.report import run_evaluation
from alcfcn_jax.io import read_json, write_json_atomic, write_text_atomic
from alcfcn_jax.train import loop
from alcfcn_jax.train.mask_writer import write_pseudo_masks
from alcfcn_jax.train.metric_writer import read_metrics

ROUNDS_FILE = "rounds.json"
ROUNDS_TABLE = "rounds.md"
# Validation figures recorded per round (those the data has: box figures on box folders, mIoU
# where the validation split has masks; absent or null otherwise).
FIGURES = ("mae", "rmse", "game", "miou", "iou_fish", "box_hit_rate", "box_precision")


class RoundsError(RuntimeError):
    """The workdir holds another kind of run (a single stage 2 vs. rounds)."""


def num_rounds(config: Any) -> int:
    """``config.pm.rounds`` (1 for a config without the key: no rounds)."""
    return int(config.pm.rounds) if "pm" in config else 1


def round_dir(workdir: str | os.PathLike, r: int) -> pathlib.Path:
    """``<workdir>/round_<r>`` (rounds count from 1)."""
    return pathlib.Path(workdir).expanduser() / f"round_{r}"


def check_workdir(workdir: str | os.PathLike, rounds: int) -> None:
    """Refuses a workdir that holds the other kind of run.

    Raises:
      RoundsError: rounds > 1 on a workdir with a single run's checkpoints, or rounds == 1 on
        a workdir that holds rounds.
    """
    path = pathlib.Path(workdir).expanduser()
    if rounds > 1 and (path / "checkpoints").is_dir():
        raise RoundsError(
            f"{path} holds a single stage-2 run (checkpoints/); the rounds train in "
            f"{path}/round_<r>/: use another --workdir for config.pm.rounds={rounds}"
        )
    if rounds == 1 and (path / ROUNDS_FILE).exists():
        raise RoundsError(
            f"{path} holds pseudo-mask rounds ({ROUNDS_FILE}); rerun it with "
            "--config.pm.rounds=<R> > 1, or use another --workdir for a single stage 2"
        )


def round_config(config: Any, workdir: str | os.PathLike, r: int) -> ml_collections.ConfigDict:
    """The stage-2 config of round ``r``: a single run (``pm.rounds`` 1) on the masks of round
    r - 1 (round 1: the masks the config names, stage 1's)."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.pm.rounds = 1
    if r > 1:
        out.stage1.workdir = str(round_dir(workdir, r - 1))
        out.data.pseudo_mask_dir = ""
    return out


def writer_config(config: Any) -> ml_collections.ConfigDict:
    """A round's config for writing its masks: the training split as stored (true masks score
    the pseudo masks where the split has them), not the masks it trained on."""
    out = ml_collections.ConfigDict(config.to_dict())
    out.data.pseudo_mask_dir = ""
    return out


def is_finished(config: Any, rdir: pathlib.Path) -> bool:
    """The round's ``final.json`` exists for its last step (process 0 decides for all)."""
    final = read_json(rdir / loop.FINAL_FILE) if jax.process_index() == 0 else None
    done = final is not None and int(final.get("step", -1)) == int(config.train.num_steps)
    return bool(shd.gather_json(done)[0])


def _finite(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def figures_of(result: Mapping[str, Any], prefix: str = "") -> dict[str, float | None]:
    """The per-round figures of an evaluation result (keys ``<prefix><figure>``; non-finite ->
    None)."""
    return {k: _finite(result[prefix + k]) for k in FIGURES if prefix + k in result}


def stop_reason(
    figures: Sequence[Mapping[str, Any]],
    metric: str,
    stage1: Mapping[str, Any] | None = None,
) -> str | None:
    """Why the rounds stop after the last of ``figures`` (one dict per round, in order), or None
    to go on: the last round is worse on ``metric`` than the model whose masks it trained on, the
    round before or, for round 1, stage 1 (``stage1``: its figures, when known).
    ``checkpoint.is_better`` decides, lower-is-better aware; a tie is not worse; a missing or
    non-finite figure is worse than a finite one."""
    if not figures:
        return None
    n = len(figures)
    teacher = figures[-2] if n > 1 else stage1
    if teacher is None:
        return None
    prev = _finite(teacher.get(metric))
    last = _finite(figures[-1].get(metric))
    if prev is None or is_better(math.nan if last is None else last, prev, metric):
        return None
    direction = "lower" if best_mode(metric) == "min" else "higher"
    name = f"round {n - 1}" if n > 1 else "stage 1"
    return (
        f"round {n} is worse than {name} (whose masks it trained on) on validation {metric} "
        f"({direction} is better): {last} vs {prev}"
    )


def best_round(figures: Sequence[Mapping[str, Any]], metric: str) -> int | None:
    """The round (from 1) with the best ``metric`` (``is_better``; ties go to the later round)."""
    best, score = None, None
    for r, f in enumerate(figures, start=1):
        v = _finite(f.get(metric))
        if v is not None and is_better(v, score, metric):
            best, score = r, v
    return best


def stage1_record(stage1: pathlib.Path | None, step: Any) -> dict[str, Any] | None:
    """Stage 1's validation figures at the checkpoint its masks came from, for comparison with
    the rounds: its ``final.json``'s ``best_val`` when the masks are from its best checkpoint
    (the same evaluation as the rounds'), else its ``metrics.jsonl`` row of that step; None when
    neither is there."""
    if stage1 is None or step is None or jax.process_index() != 0:
        return None
    final = read_json(stage1 / loop.FINAL_FILE) or {}
    best_val = final.get("best_val") or {}
    if best_val and int(best_val.get("checkpoint_step", -1)) == int(step):
        return {"workdir": str(stage1), "step": int(step), "val": figures_of(best_val, "val_")}
    try:
        rows = read_metrics(stage1, kind="val")
    except (OSError, ValueError):
        return None
    at_step = [row for row in rows if int(row.get("step", -1)) == int(step)]
    if not at_step:
        return None
    return {"workdir": str(stage1), "step": int(step), "val": figures_of(at_step[-1], "val_")}


def evaluate_round(
    config: Any, rdir: pathlib.Path, final: Mapping[str, Any]
) -> dict[str, float | None]:
    """The round's best checkpoint on the validation split: the figures its training ended with
    (``final.json``'s ``best_val``, by ``loop.best_checkpoint_figures``, the evaluation of
    ``evaluate.py``); evaluated the same way for a round trained before they were recorded."""
    if final.get("best_val"):
        return figures_of(final["best_val"], "val_")
    result = run_evaluation(config, rdir, split="val", which="best", num_overlays=0)
    return figures_of(result)


def render_table(summary: Mapping[str, Any]) -> str:
    """``rounds.md``: one row per round, the stop and the best round said below."""
    metric = summary["select_metric"]
    cols = [k for k in FIGURES if any(k in r["val"] for r in summary["rounds"])]
    lines = [
        f"# Pseudo-mask rounds (validation, selected by {metric})",
        "",
        "| round | trained on | best step | " + " | ".join(cols) + " |",
        "|---" * (3 + len(cols)) + "|",
    ]

    def row(name: str, source: str, step: Any, val: Mapping[str, Any]) -> str:
        cells = ["-" if val.get(k) is None else f"{val[k]:.4f}" for k in cols]
        return f"| {name} | {source} | {step} | " + " | ".join(cells) + " |"

    first = summary.get("stage1")
    if first is not None:
        lines.append(row("stage 1", "clicks", first["step"], first["val"]))
    for rec in summary["rounds"]:
        src = rec["masks"]
        source = f"{src['from']} step {src['checkpoint_step']}"
        lines.append(row(str(rec["round"]), source, rec["best_step"], rec["val"]))
    lines.append("")
    if summary["stopped_early"]:
        lines.append(f"Stopped early: {summary['stop_reason']}.")
    elif summary["complete"]:
        lines.append(f"All {summary['rounds_requested']} rounds finished.")
    if summary["best_round"] is not None:
        lines.append(f"Best round: {summary['best_round']}.")
        best = summary["rounds"][summary["best_round"] - 1]["val"]
        if first is not None and stop_reason([best], metric, first["val"]) is not None:
            lines.append(f"Stage 1 is better than every round on validation {metric}.")
    return "\n".join(lines) + "\n"


def _masks_record(manifest: Mapping[str, Any] | None, origin: str) -> dict[str, Any]:
    manifest = manifest or {}
    quality = manifest.get("quality") or {}
    return {
        "from": origin,
        "checkpoint_step": manifest.get("checkpoint_step"),
        "count": manifest.get("count"),
        "miou_vs_true_masks": _finite(quality.get("miou")),
    }


def _write_summary(workdir: pathlib.Path, summary: Mapping[str, Any]) -> None:
    if jax.process_index() == 0:
        write_json_atomic(workdir / ROUNDS_FILE, summary)
        write_text_atomic(workdir / ROUNDS_TABLE, render_table(summary))


def run_rounds(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains (or resumes) ``config.pm.rounds`` stage-2 rounds in ``workdir`` (module doc);
    ``config`` is resolved (``train.runner.run`` does it once).

    Returns:
      The content of ``rounds.json``: ``rounds`` (per round: ``round``, ``workdir``, ``masks``
      it trained on, ``best_step``, ``val`` figures, ``trained`` this call, ``test`` figures
      from its ``final.json`` when present), ``best_round``, ``stopped_early``, ``stop_reason``,
      ``complete``.

    Raises:
      RoundsError: the workdir holds a single stage-2 run.
      alcfcn_jax.data.pseudo_masks.StalePseudoMasksError: round 1's masks are not stage 1's
        current ones (as for stage 2).
    """
    n_rounds = num_rounds(config)
    workdir = pathlib.Path(workdir).expanduser()
    check_workdir(workdir, n_rounds)
    metric = str(config.train.select_metric)
    which = str(config.stage1.which)
    summary: dict[str, Any] = {
        "rounds_requested": n_rounds,
        "select_metric": metric,
        "stage1_workdir": str(pm.stage1_workdir(config) or ""),
        # Stage 1's own validation figures at its masks' checkpoint (a row of the table; round 1
        # stops the rounds when it is worse).
        "stage1": None,
        "rounds": [],
        "best_round": None,
        "stopped_early": False,
        "stop_reason": None,
        "complete": False,
    }
    for r in range(1, n_rounds + 1):
        cfg = round_config(config, workdir, r)
        rdir = round_dir(workdir, r)
        finished = is_finished(cfg, rdir)
        if r > 1 and not finished:
            # Round r - 1's masks, from its best checkpoint (a no-op when they are up to date).
            prev = round_config(config, workdir, r - 1)
            write_pseudo_masks(writer_config(prev), round_dir(workdir, r - 1), which=which)
        if finished:
            logging.info("Round %d/%d in %s is finished; not training it again", r, n_rounds, rdir)
        else:
            logging.info("Round %d/%d: training in %s", r, n_rounds, rdir)
            loop.train_and_evaluate(cfg, str(rdir))
        final = read_json(rdir / loop.FINAL_FILE) if jax.process_index() == 0 else None
        final = shd.gather_json(final)[0] or {}
        best_step = int((final.get("best") or {}).get("step") or final.get("step"))
        mask_dir = pm.pseudo_mask_dir(cfg)
        manifest = read_json(mask_dir / pm.MANIFEST) if jax.process_index() == 0 else None
        manifest = shd.gather_json(manifest)[0]
        origin = "stage 1" if r == 1 else f"round {r - 1}"
        if r == 1:
            step = (manifest or {}).get("checkpoint_step")
            summary["stage1"] = shd.gather_json(stage1_record(pm.stage1_workdir(config), step))[0]
        record = {
            "round": r,
            "workdir": str(rdir),
            "masks": {**_masks_record(manifest, origin), "dir": str(mask_dir)},
            "best_step": best_step,
            "trained": not finished,
            "val": evaluate_round(cfg, rdir, final),
        }
        if final.get("test"):
            record["test"] = figures_of(final["test"], "test_")
        summary["rounds"].append(record)
        figures = [rec["val"] for rec in summary["rounds"]]
        summary["best_round"] = best_round(figures, metric)
        logging.info("Round %d/%d validation: %s", r, n_rounds, record["val"])
        reason = stop_reason(figures, metric, (summary["stage1"] or {}).get("val"))
        if reason is not None:
            summary.update(stopped_early=True, stop_reason=reason)
            logging.warning("Stopping the pseudo-mask rounds early: %s", reason)
            break
        summary["complete"] = r == n_rounds
        _write_summary(workdir, summary)
    _write_summary(workdir, summary)
    logging.info(
        "Pseudo-mask rounds: %d of %d finished%s; best round %s -> %s",
        len(summary["rounds"]),
        n_rounds,
        " (stopped early)" if summary["stopped_early"] else "",
        summary["best_round"],
        workdir / ROUNDS_FILE,
    )
    return summary
