"""Pseudo masks for stage 2: one 0/255 PNG per training image from a stage-1 checkpoint.

Layout (format and reader: ``alcfcn_jax.data.pseudo_masks``)::

    <workdir>/pseudo_masks/<id>.png     # ids may contain '/', giving subfolders (valid/xxx.png)
    <workdir>/pseudo_masks/manifest.json

A mask is the argmax of the model's refined output (for A-LCFCN: after the random walk),
bilinearly upsampled to the image size when the model's output is smaller (reference spec 7),
at the size of the image as the data pipeline delivers it (short side 256 for DeepFish); pixels
outside the picture (``pad`` False) are background. With
``config.instances.pseudo_masks='click_instances'`` it is instead the union of one instance per
click of the training image, outlined as ``config.instances.outline`` says
(``eval.outlines.pseudo_mask``: blobs without a click dropped, blobs with several split between
them, missed clicks seeded; GrabCut grows them to the fish's edges); ``'point_blots'`` draws the
instances from the clicks by ``eval.point_blots`` instead (measured, not kept). The manifest records the
settings, and masks written with other settings are regenerated. The manifest is written last and names the
checkpoint step, the model, the split, the ids, and quality figures against the true masks where
the split has them (synthetic trees, FishSeg train).

Idempotent and resumable:
  * a manifest for the same checkpoint step, model and ids with every file present -> nothing is
    rewritten;
  * ``.in_progress.json`` records the step of an unfinished run; a rerun from the same step
    keeps the masks already written (each was written atomically, so each is whole) and writes
    the rest; a run from another step deletes the old masks first, so a mix is impossible;
  * the manifest of an older checkpoint is removed before any mask changes, so stage 2 never
    reads a half-updated folder.
Multi-host: every process writes the masks of its own slice; process 0 writes the manifest after a
barrier.
"""

from __future__ import annotations

import math
import os
import pathlib
import time
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from alcfcn_jax import sharding as shd
from alcfcn_jax.data.preprocess import denormalize
from alcfcn_jax.data.pseudo_masks import (
    FORMAT_VERSION,
    MANIFEST,
    PROGRESS,
    PSEUDO_MASK_SUBDIR,
    PseudoMaskError,
    is_complete,
    mask_path,
    read_mask,
    stale_reason,
)
from alcfcn_jax.data.source import example_ids
from alcfcn_jax.eval import evaluation, inference, metrics, outlines
from alcfcn_jax.eval.report import model_summary
from alcfcn_jax.io import read_json, save_png_atomic, write_json_atomic
from alcfcn_jax.models import outputs


def _log_progress(done: int, batch: int, total: int, every: int, t0: float) -> None:
    """Logs this process's progress each time it passes a multiple of ``every`` examples."""
    if done == 0 or (done + batch) // every == done // every:
        return
    rate = done / max(time.perf_counter() - t0, 1e-9)
    local_total = math.ceil(total / jax.process_count())
    logging.info(
        "pseudo masks: %d/%d images on this process (%.1f/s, ETA %.0f s)",
        done,
        local_total,
        rate,
        max(local_total - done, 0) / max(rate, 1e-9),
    )


def _make_mask_step(model: nnx.Module, mesh: jax.sharding.Mesh | None, prob: bool = False):
    """Jitted (images) -> uint8 argmax map at the image size (bilinear upsampling if needed), or
    with ``prob`` the fish probability (float32)."""
    graphdef, state = nnx.split(model)
    if mesh is not None:
        state = jax.device_put(state, shd.replicated(mesh))

    @jax.jit
    def step(state, images):
        logits = nnx.merge(graphdef, state)(images, train=False)
        logits = outputs.upsample_logits(logits, images.shape[1:3])
        if prob:
            return outputs.fish_probability(logits)
        return outputs.prediction(logits).astype(jnp.uint8)

    return lambda images: step(state, images)


# Manifests written before the setting existed hold argmax masks.
_ARGMAX = {"pseudo_masks": "argmax"}


def masks_key(settings: outlines.InstanceSettings) -> dict[str, Any]:
    """What decides a mask's content besides the checkpoint: recorded in the manifest."""
    return settings.to_dict() if settings.pseudo_masks != "argmax" else dict(_ARGMAX)


def _remove_masks(out_dir: pathlib.Path) -> int:
    """Deletes every mask PNG (and stale temp file) under ``out_dir``; returns how many."""
    n = 0
    for p in list(out_dir.rglob("*.png")) + list(out_dir.rglob(".*.tmp")):
        p.unlink()
        n += 1
    return n


def generate(
    model: nnx.Module,
    batches: Iterable[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    step: int,
    expected_count: int,
    summary: Mapping[str, Any],
    mesh: jax.sharding.Mesh | None = None,
    settings: outlines.InstanceSettings | None = None,
) -> dict[str, Any]:
    """Writes the pseudo masks of ``batches`` into ``out_dir``; returns the manifest.

    This is the core of :func:`write_pseudo_masks` for any model and batch iterable (the tests
    use it directly). ``batches`` are this process's eval batches of the training split.

    Args:
      model: the stage-1 model (eval mode is used).
      batches: ``eval_batches`` output (``image``, ``id``, ``valid``, ``pad``, ``mask``).
      out_dir: the pseudo-mask folder.
      step: the checkpoint step the model was restored from (recorded; decides staleness).
      expected_count: number of examples in the split (all processes together).
      summary: extra manifest fields (model, dataset, split, stage-1 workdir...).
      mesh: the device mesh; ``None`` = default device.
      settings: ``pseudo_masks='click_instances'`` (or ``'point_blots'``) writes outlined
        instances of the clicks (module docstring); default (or ``argmax``): the argmax. Recorded in the manifest as ``masks``.
    """
    settings = settings or outlines.InstanceSettings()
    by_clicks = settings.pseudo_masks != "argmax"
    key = masks_key(settings)
    summary = {**summary, "masks": key}
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest_path, progress_path = out_dir / MANIFEST, out_dir / PROGRESS
    t0 = time.perf_counter()
    if jax.process_index() == 0:
        old = read_json(manifest_path)
        progress = read_json(progress_path)
        # Masks from an older manifest (no "masks" entry) were argmax masks.
        old_key = None if old is None else old.get("masks", _ARGMAX)
        if old is not None and (int(old.get("checkpoint_step", -1)) != int(step) or old_key != key):
            logging.info(
                "pseudo masks: manifest is from step %s with masks %s, not step %d with %s; "
                "regenerating",
                old.get("checkpoint_step"),
                old_key,
                step,
                key,
            )
            manifest_path.unlink()
            old = None
        same_run = progress is not None and progress.get("checkpoint_step") == int(step)
        same_run = same_run and progress.get("masks") == key
        if old is None and not same_run:
            removed = _remove_masks(out_dir)
            if removed:
                logging.info("pseudo masks: removed %d masks of another checkpoint", removed)
            write_json_atomic(progress_path, {"checkpoint_step": int(step), **summary})
    shd.barrier("pseudo_masks_start")

    mask_step = _make_mask_step(model, mesh, prob=by_clicks)
    multiple = evaluation.local_batch_multiple(mesh)
    ids: list[str] = []
    cf_rows: list[np.ndarray] = []
    with_mask: list[int] = []
    n_written = 0
    log_every = max(expected_count // 10, 1)
    for batch in batches:
        b = len(batch["id"])
        _log_progress(len(ids), b, expected_count, log_every, t0)
        valid = np.asarray(batch.get("valid", np.ones((b,), bool)), bool)
        paths = [mask_path(out_dir, str(i)) for i in batch["id"]]
        todo = [bool(valid[i]) and not paths[i].exists() for i in range(b)]
        pred = None
        if shd.any_process(any(todo)):
            images = np.asarray(batch["image"], np.float32)
            images = evaluation.pad_rows(images, (-b) % multiple, 0.0)
            if mesh is not None:
                images = shd.to_global({"x": images}, mesh)["x"]
            pred = shd.to_host(mask_step(images), mesh)
        pad = batch.get("pad")
        masks = batch.get("mask")
        for i in range(b):
            if not valid[i]:
                continue
            if todo[i]:
                h, w = evaluation.valid_extent(
                    None if pad is None else np.asarray(pad[i], bool), *pred.shape[1:]
                )
                if by_clicks:
                    p = pred[i, :h, :w]
                    if pad is not None:
                        p = np.where(np.asarray(pad[i], bool)[:h, :w], p, 0.0)
                    m = outlines.pseudo_mask(
                        p,
                        denormalize(np.asarray(batch["image"][i])[:h, :w]),
                        np.asarray(batch["points"][i])[:h, :w],
                        settings,
                    )
                else:
                    m = pred[i].astype(np.uint8)
                    if pad is not None:
                        m = np.where(np.asarray(pad[i], bool), m, 0)
                    m = m[:h, :w]
                save_png_atomic((m * 255).astype(np.uint8), paths[i])
                n_written += 1
            else:
                m = read_mask(paths[i])
                h, w = m.shape
            ids.append(str(batch["id"][i]))
            true = None if masks is None else np.asarray(masks[i])[:h, :w]
            known = true is not None and bool((true != 255).any())
            with_mask.append(int(known))
            cf_rows.append(
                metrics.confusion((m > 0).astype(np.int64), true) if known else np.zeros((2, 2))
            )

    numeric = {
        "cf": np.asarray(cf_rows, np.int64).reshape(-1, 2, 2),
        "with_mask": np.asarray(with_mask, np.int64).reshape(-1),
    }
    # In the source's order, as one process would list them (each read source[p::count]).
    numeric = shd.gather_arrays(numeric, interleave=True)
    all_ids = shd.gather_list(ids, interleave=True)
    n_written_all = shd.sum_processes(n_written)
    if len(all_ids) != expected_count or len(set(all_ids)) != len(all_ids):
        raise PseudoMaskError(
            f"pseudo masks: got {len(all_ids)} examples ({len(set(all_ids))} distinct ids), "
            f"expected {expected_count}; the split changed while masks were written?"
        )
    quality = None
    n_known = int(numeric["with_mask"].sum())
    if n_known:
        cf = numeric["cf"].sum(axis=0)
        quality = {k: float(v) for k, v in metrics.iou_from_confusion(cf).items()}
        quality["num_images_with_masks"] = n_known
        quality["confusion"] = cf.tolist()
    manifest = {
        "format_version": FORMAT_VERSION,
        "checkpoint_step": int(step),
        **summary,
        "count": len(all_ids),
        "ids": all_ids,
        "quality": quality,
        "written_this_run": n_written_all,
        "seconds_this_run": time.perf_counter() - t0,
    }
    shd.barrier("pseudo_masks_written")
    if jax.process_index() == 0:
        write_json_atomic(manifest_path, manifest)
        if progress_path.exists():
            progress_path.unlink()
    shd.barrier("pseudo_masks_done")
    return manifest


def write_pseudo_masks(
    config: Any,
    workdir: str | os.PathLike,
    *,
    which: str | int = "best",
    out_dir: str | os.PathLike | None = None,
    mesh: jax.sharding.Mesh | None = None,
) -> dict[str, Any]:
    """Writes ``<workdir>/pseudo_masks`` from a stage-1 checkpoint (see the module docstring).

    Args:
      config: the stage-1 config.
      workdir: the stage-1 workdir.
      which: ``best`` (the reference's choice), ``latest`` or a step.
      out_dir: override of the output folder (default ``<workdir>/pseudo_masks``).
      mesh: the device mesh (default: every device).

    Returns:
      The manifest.
    """
    workdir = pathlib.Path(workdir)
    out_dir = pathlib.Path(out_dir) if out_dir is not None else workdir / PSEUDO_MASK_SUBDIR
    run = inference.restore(config, workdir, which, mesh=mesh)
    existing = read_json(out_dir / MANIFEST)
    split = str(config.data.train_split)
    source = run.source(split)
    # The same "up to date" as stage 2's check (data.pseudo_masks.stale_reason): step and ids.
    # Process 0 decides for all: every process must take the same branch (collectives follow).
    ids = example_ids(source)
    settings = outlines.InstanceSettings.from_config(config.instances)
    up_to_date = is_complete(existing, run.step, out_dir, ids, len(source))
    if up_to_date and existing.get("masks", _ARGMAX) != masks_key(settings):
        logging.info("pseudo masks in %s were written with other settings", out_dir)
        up_to_date = False
    if shd.gather_json(up_to_date)[0]:
        logging.info(
            "pseudo masks in %s are up to date (step %d); nothing to do", out_dir, run.step
        )
        return existing
    if existing is not None:
        logging.info(
            "pseudo masks in %s are not up to date: %s",
            out_dir,
            stale_reason(existing, run.step, out_dir, ids, len(source)),
        )
    batches = run.batches(source, config.train.eval_batch_size)
    summary = {
        "checkpoint": str(which),
        "stage1_workdir": str(workdir.resolve()),
        "model": model_summary(config),
        "dataset": str(config.data.dataset),
        "split": split,
        "mask_format": "PNG, 0 = background, 255 = fish, at the pipeline's image size",
    }
    manifest = generate(
        run.model,
        batches,
        out_dir,
        step=run.step,
        expected_count=len(source),
        summary=summary,
        mesh=run.mesh,
        settings=settings,
    )
    logging.info(
        "pseudo masks: %d masks (%d written now) from step %d in %s; quality %s",
        manifest["count"],
        manifest["written_this_run"],
        run.step,
        out_dir,
        manifest["quality"],
    )
    return manifest
