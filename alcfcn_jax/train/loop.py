"""The training loop of one run: train, validate, checkpoint, resume (``train.runner.run`` is the
entry that resolves the config and calls it).

``train_and_evaluate`` runs in explicit sections: set up (mesh, data, state, resume), the loop
(step, log, validate, checkpoint) and the end-of-run figures (count baseline, test split at the
best checkpoint). Rerunning the same command continues from the latest checkpoint with the same
data order and dropout masks; a finished run only reports its final figures again.
"""

from __future__ import annotations

import contextlib
import math
import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from alcfcn_jax import config_utils
from alcfcn_jax import sharding as shd
from alcfcn_jax.checkpoint import Checkpointer, is_better
from alcfcn_jax.eval.baseline import count_baseline
from alcfcn_jax.eval.evaluation import evaluate
from alcfcn_jax.io import read_json, write_json_atomic, write_text_atomic
from alcfcn_jax.losses.affinity import AffinityLoss
from alcfcn_jax.losses.embedding import EmbeddingLoss
from alcfcn_jax.train import inputs
from alcfcn_jax.train.metric_writer import MetricWriter
from alcfcn_jax.train.optim import learning_rate_schedule
from alcfcn_jax.train.state import (
    Graphs,
    TrainState,
    create_train_state,
    param_counts,
    restore_state,
    save_state,
)
from alcfcn_jax.train.step import auto_loss_splits, make_train_step, prepare_batch

FINAL_FILE = "final.json"


def train_step_kwargs(
    config: ml_collections.ConfigDict,
    num_steps: int,
    *,
    model: nnx.Module | None = None,
    per_device_batch: int = 1,
) -> dict[str, Any]:
    """What ``make_train_step`` takes besides the graphs and the mesh, from a resolved config:
    the loss, the learning-rate schedule over ``num_steps``, the affinity and embedding losses
    and the loss splits (``train.loss_splits``; 0 = :func:`auto_loss_splits` for ``model`` and
    ``per_device_batch``, 1 without a model). The training loop and the step benchmarks build
    their step from it."""
    embedding = embedding_loss_from_config(config)
    splits = int(config.train.loss_splits)
    if splits == 0 and model is not None:
        splits = auto_loss_splits(
            model, config.loss.name, per_device_batch, embedding=embedding is not None
        )
    return dict(
        loss_name=config.loss.name,
        learning_rate=learning_rate_schedule(config.optim, num_steps),
        skip_zero_loss=bool(config.train.skip_zero_loss),
        affinity=affinity_loss_from_config(config),
        embedding=embedding,
        loss_splits=max(splits, 1),
    )


class _Window:
    """Averages of per-step metrics and timings between two log lines."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.n = 0
        self.data_s = 0.0
        self.step_s = 0.0
        self.skipped = 0

    def add(self, metrics: Mapping[str, float], *, data_s: float, step_s: float) -> None:
        for k, v in metrics.items():
            if k in ("skipped", "nonfinite", "nonfinite_output", "lr"):
                continue
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.skipped += int(metrics.get("skipped", 0.0) > 0)
        self.lr = float(metrics.get("lr", math.nan))
        self.n += 1
        self.data_s += data_s
        self.step_s += step_s

    def summary(self, images_per_step: int) -> dict[str, float]:
        out = {k: v / self.n for k, v in self.sums.items()}
        wall = self.data_s + self.step_s
        out.update(
            lr=self.lr,
            skipped_updates=self.skipped,
            steps_per_second=self.n / wall if wall > 0 else math.nan,
            images_per_second=self.n * images_per_step / wall if wall > 0 else math.nan,
            data_seconds=self.data_s / self.n,
            step_seconds=self.step_s / self.n,
            data_share=self.data_s / wall if wall > 0 else math.nan,
        )
        return out


def affinity_loss_from_config(config: Any) -> AffinityLoss | None:
    """``config.loss.affinity_*`` as an :class:`AffinityLoss`, or None when the weight is 0."""
    weight = float(config.loss.affinity_weight)
    if weight == 0.0:
        return None
    return AffinityLoss(
        weight=weight,
        fg=float(config.loss.affinity_fg),
        bg=float(config.loss.affinity_bg),
        radius=int(config.model.radius),
        source=str(config.loss.affinity_labels),
    )


def embedding_loss_from_config(config: Any) -> EmbeddingLoss | None:
    """``config.loss.embedding_*`` as an :class:`EmbeddingLoss`, or None when the weight is 0."""
    weight = float(config.loss.embedding_weight)
    if weight == 0.0:
        return None
    return EmbeddingLoss(
        weight=weight,
        per_object=int(config.loss.embedding_per_object),
        background=int(config.loss.embedding_background),
        max_objects=int(config.loss.embedding_max_objects),
    )


def _scalars(result: Mapping[str, Any], prefix: str) -> dict[str, float]:
    """The numeric top-level entries of an evaluation result, keys prefixed."""
    return {
        f"{prefix}{k}": float(v)
        for k, v in result.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def evaluate_split(
    graphs: Graphs,
    state: TrainState,
    data: inputs.TrainData,
    source: Any,
    mesh: jax.sharding.Mesh,
) -> dict[str, Any]:
    """Runs ``alcfcn_jax.eval.evaluation.evaluate`` on ``source`` with the current model state."""
    model = nnx.merge(graphs.model, state["model"])
    return evaluate(model, data.eval_batches(source), mesh=mesh, boxes=data.boxes)


def _nonfinite_message(step: int, metrics: Mapping[str, float]) -> str:
    if metrics.get("nonfinite_output", 0.0) > 0:
        return (
            f"non-finite loss at step {step}: the model's outputs are NaN/inf (its weights "
            f"diverged; param_norm={metrics.get('param_norm')})"
        )
    bad = [k for k, v in metrics.items() if k.startswith("loss") and not math.isfinite(v)]
    terms = [k.removeprefix("loss_") for k in bad if k != "loss"]
    if terms:
        what = "term(s) " + ", ".join(f"{t}={metrics['loss_' + t]}" for t in terms)
    elif bad:
        what = f"loss={metrics['loss']}"
    else:
        what = f"gradient (grad_norm={metrics.get('grad_norm')})"
    return f"non-finite loss at step {step}: {what}"


def _stop_on_nonfinite(
    ckpt: Checkpointer,
    writer: MetricWriter,
    mesh: jax.sharding.Mesh,
    *,
    config: Any,
    state: TrainState,
    step: int,
    metrics: Mapping[str, float],
    best: Mapping[str, Any],
    data_state: Any,
) -> None:
    """Saves the last good state and raises FloatingPointError naming the step and the term.

    The failed step left parameters and optimizer state untouched: when only the loss was
    non-finite (a term on this batch) they are kept as the checkpoint of step - 1 with the data
    state before the batch, so a resume replays it. When the model's outputs were already
    non-finite (``nonfinite_output``: the weights diverged at an earlier step) that state is not
    saved: the checkpoints already on disk are from before the divergence was seen.
    """
    diverged = metrics.get("nonfinite_output", 0.0) > 0
    good = dict(state, step=shd.put_replicated(np.asarray(step - 1, np.int32), mesh))
    if not diverged and ckpt.latest_step() != step - 1 and step - 1 > 0:
        save_state(ckpt, step - 1, good, config=config, best=best, data_state=data_state, val=None)
    ckpt.wait()
    message = _nonfinite_message(step, metrics)
    writer.write(step, {**metrics, "error": message}, kind="error")
    latest = ckpt.latest_step()
    if diverged:
        where = (
            f"the last checkpoint, saved before the divergence was seen, is step {latest} in "
            f"{ckpt.directory}"
            if latest is not None
            else "no checkpoint was saved before the divergence"
        )
        raise FloatingPointError(
            f"{message}. Training stopped; {where}. Lower optim.lr or set optim.clip_grad_norm."
        )
    raise FloatingPointError(
        f"{message}. Training stopped; the last good checkpoint is step "
        f"{latest} in {ckpt.directory}."
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains (or resumes) a run in ``workdir``, validating and checkpointing as configured.

    Args:
      config: the experiment config, resolved (``train.config.resolve``; :func:`run` does it).
      workdir: the run's directory (checkpoints, ``metrics.jsonl``, ``config.json``; the config
        is written only after every resume check has passed).

    Returns:
      The final figures: ``step``, ``best`` (step and score), the last validation metrics and,
      when configured, the test metrics and the median-count baseline.

    Raises:
      FloatingPointError: a non-finite loss (the message names the step and the term; the last
        good state is saved first).
      alcfcn_jax.checkpoint.CheckpointError: the workdir holds a checkpoint of another model.
    """
    # --- set up: mesh, batch sizes, data, state ---------------------------------------------
    tc = config.train
    workdir_path = pathlib.Path(workdir).expanduser()
    mesh = shd.make_mesh()
    n_dev = mesh.devices.size
    batch = config_utils.resolve_batch_size(int(tc.batch_size), n_dev, "train.batch_size")
    eval_batch = config_utils.resolve_batch_size(
        int(tc.eval_batch_size), n_dev, "train.eval_batch_size"
    )
    local_batch = batch // jax.process_count()
    logging.info(
        "Process %d/%d, %d local of %d devices (%s); global batch %d, eval batch %d",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        n_dev,
        jax.devices()[0].platform,
        batch,
        eval_batch,
    )
    select_key = f"val_{tc.select_metric}"
    data = inputs.build(
        config, local_batch=local_batch, eval_batch_local=eval_batch // jax.process_count()
    )
    num_steps = int(tc.num_steps)

    with contextlib.ExitStack() as stack:
        stack.enter_context(jax.set_mesh(mesh))
        graphs, state = create_train_state(config, mesh)
        model = nnx.merge(graphs.model, state["model"])
        data = inputs.attach_feature_cache(config, model, data, local_batch)
        counts = param_counts(state, graphs.wrt)
        logging.info(
            "Model: %s/%s, %d trainable and %d frozen/statistics values",
            config.model.name,
            config.model.backbone,
            counts["trainable"],
            counts["other"],
        )
        ckpt = Checkpointer(workdir_path, keep=int(tc.keep_checkpoints), best_metric=select_key)
        stack.callback(ckpt.close)

        # --- resume ------------------------------------------------------------------------
        best: dict[str, Any] = {"step": None, "score": None, "metric": select_key}
        last_val: dict[str, float] | None = None
        latest = ckpt.latest_step()
        if latest is not None:
            state, meta, data_state = restore_state(ckpt, latest, config, state, mesh)
            best = dict(meta.get("best") or best)
            last_val = meta.get("val")
            if data_state is not None:
                data.iterator.set_state(data_state)
            logging.info("Resumed from %s at step %d", ckpt.directory, latest)
        # Every check has passed (config, structure, data): only now does config.json change.
        write_config(config, workdir)
        if latest is not None:
            done = read_json(workdir_path / FINAL_FILE)
            if latest >= num_steps and done is not None and done.get("step") == latest:
                logging.info("Run already finished at step %d; final figures: %s", latest, done)
                return done
        start = int(jax.device_get(state["step"]))

        step_kwargs = train_step_kwargs(
            config, num_steps, model=model, per_device_batch=batch // n_dev
        )
        if step_kwargs["loss_splits"] > 1:
            logging.info("Loss in %d parts per device batch", step_kwargs["loss_splits"])
        step_fn = make_train_step(graphs, mesh, **step_kwargs)
        # Walk warm-up: the first steps train the activation logits without the random walk.
        warmup = int(tc.walk_warmup_steps)
        warmup_fn = make_train_step(graphs, mesh, walk=False, **step_kwargs) if warmup else None
        writer = stack.enter_context(
            MetricWriter(
                workdir_path,
                total_steps=num_steps,
                is_chief=jax.process_index() == 0,
                tensorboard=str(tc.tensorboard),
                progress=bool(tc.progress),
            )
        )

        # --- the loop: step, log, validate, checkpoint --------------------------------------
        window = _Window()
        data_state = data.iterator.get_state()
        step = start
        run_start = time.perf_counter()
        while step < num_steps:
            t0 = time.perf_counter()
            global_batch = shd.to_global(prepare_batch(next(data.iterator)), mesh)
            t1 = time.perf_counter()
            prev_data_state = data_state
            state, metrics = (warmup_fn if step < warmup else step_fn)(state, global_batch)
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            t2 = time.perf_counter()
            step += 1
            data_state = data.iterator.get_state()
            if metrics["nonfinite"] > 0:
                _stop_on_nonfinite(
                    ckpt,
                    writer,
                    mesh,
                    config=config,
                    state=state,
                    step=step,
                    metrics=metrics,
                    best=best,
                    data_state=prev_data_state,
                )
            window.add(metrics, data_s=t1 - t0, step_s=t2 - t1)
            writer.update_progress(step, f"loss {metrics['loss']:.4g}")
            if step % int(tc.log_every) == 0 or step == num_steps:
                writer.write(step, window.summary(batch))
                window = _Window()
            val = None
            if step % int(tc.eval_every) == 0 or step == num_steps:
                val = _scalars(evaluate_split(graphs, state, data, data.val, mesh), "val_")
                if is_better(val.get(select_key, math.nan), best["score"], select_key):
                    best = {"step": step, "score": val[select_key], "metric": select_key}
                writer.write(
                    step,
                    {**val, "best_step": best["step"], "best_score": best["score"]},
                    kind="val",
                )
                last_val = val
            if val is not None or step % int(tc.checkpoint_every) == 0 or step == num_steps:
                save_state(
                    ckpt, step, state, config=config, best=best, data_state=data_state, val=val
                )
        train_seconds = time.perf_counter() - run_start
        ckpt.wait()

        # --- end of run ----------------------------------------------------------------------
        final = _finish(
            config,
            workdir_path,
            data,
            mesh,
            ckpt,
            writer,
            step=step,
            best=best,
            last_val=last_val,
            train_seconds=train_seconds,
        )
        if jax.process_index() == 0:
            write_json_atomic(workdir_path / FINAL_FILE, final)
        ckpt.wait()
        return final


def best_checkpoint_figures(
    config: Any, workdir: str | pathlib.Path, split: str, mesh: jax.sharding.Mesh
) -> dict[str, Any]:
    """The run's best checkpoint on ``split``, by the one evaluation of a checkpoint:
    ``eval.report.run_evaluation``, what ``evaluate.py`` runs (it also writes
    ``<workdir>/eval/<split>/``), so training's final figures and ``evaluate.py``'s are equal."""
    from alcfcn_jax.eval.report import run_evaluation

    return run_evaluation(config, workdir, split=split, which="best", num_overlays=0, mesh=mesh)


def _finish(
    config: Any,
    workdir: pathlib.Path,
    data: inputs.TrainData,
    mesh: jax.sharding.Mesh,
    ckpt: Checkpointer,
    writer: MetricWriter,
    *,
    step: int,
    best: Mapping[str, Any],
    last_val: Mapping[str, float] | None,
    train_seconds: float,
) -> dict[str, Any]:
    """End-of-run figures: the best checkpoint on the validation split (and on the test split
    when configured) by :func:`best_checkpoint_figures`, and the count baseline."""
    tc = config.train
    final: dict[str, Any] = {
        "step": step,
        "best": dict(best),
        "val": dict(last_val or {}),
        "train_seconds": round(train_seconds, 2),
    }
    ckpt.wait()
    result = best_checkpoint_figures(config, workdir, "val", mesh)
    best_val = _scalars(result, "val_")
    best_val["checkpoint_step"] = int(result["meta"]["step"])
    final["best_val"] = best_val
    writer.write(step, best_val, kind="best_val")
    if bool(tc.count_baseline):
        baseline = count_baseline(data.train, result["per_image"])
        baseline["val_mae"] = float(result["mae"])
        final["count_baseline"] = baseline
        writer.write(step, baseline, kind="baseline")
        logging.info(
            "Validation count MAE %.4f (best checkpoint, step %d) vs %.4f for always predicting "
            "the median training count (%g)",
            baseline["val_mae"],
            best_val["checkpoint_step"],
            baseline["median_baseline_mae"],
            baseline["median_train_count"],
        )
    if bool(tc.eval_test):
        result = best_checkpoint_figures(config, workdir, "test", mesh)
        test = _scalars(result, "test_")
        test["checkpoint_step"] = int(result["meta"]["step"])
        final["test"] = test
        writer.write(step, test, kind="test")
    return final


def write_config(config: ml_collections.ConfigDict, workdir: str) -> pathlib.Path | None:
    """Writes ``workdir/config.json`` atomically (process 0 only) and returns its path."""
    if jax.process_index() != 0:
        return None
    path = pathlib.Path(workdir).expanduser() / "config.json"
    return write_text_atomic(path, config_utils.config_to_json(config) + "\n")
