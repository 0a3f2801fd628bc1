"""Evaluation run of a trained checkpoint: metrics.json, report.md, per-image CSV, overlay PNGs.

``run_evaluation`` is what ``evaluate.py`` calls: it restores the chosen checkpoint, evaluates the
split on every device of every process (``alcfcn_jax.eval.evaluation.evaluate``), and process 0 writes
``<workdir>/eval/<split>/``:

  * ``metrics.json``  every figure, the checkpoint step, the split and the model summary;
  * ``report.md``     a table of our figures, beside the paper's Table 1 mIoU for DeepFish;
  * ``per_image.csv`` id, habitat, true / predicted count, IoU (for error analysis);
  * ``overlays/<id>.png`` for the first ``num_overlays`` images (see ``viz.eval_panel``).
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging

from alcfcn_jax.data.pseudo_masks import pseudo_mask_dir
from alcfcn_jax.io import (
    csv_text,
    ensure_writable_dir,
    json_safe,
    save_png_atomic,
    write_json_atomic,
    write_text_atomic,
)
from alcfcn_jax.models import outputs

# The A-LCFCN paper's Table 1 (DeepFish FishSeg test mIoU).
PAPER_TABLE1 = {
    "FS-FCN": 0.827,
    "PL-FCN": 0.573,
    "LCFCN": 0.774,
    "A-LCFCN": 0.860,
    "A-LCFCN + PM": 0.879,
}
PER_IMAGE_COLUMNS = (
    "id",
    "habitat",
    "true_count",
    "pred_count",
    "abs_error",
    "miou",
    "iou_fish",
    "game_l3",
)


def per_image_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The per-image CSV text (columns ``PER_IMAGE_COLUMNS`` plus any box columns)."""
    from alcfcn_jax.eval.instances import IMAGE_COLUMNS

    cols = list(PER_IMAGE_COLUMNS)
    for extra in ("num_boxes", "box_hits", *IMAGE_COLUMNS[1:]):
        if rows and extra in rows[0]:
            cols.append(extra)
    return csv_text(rows, cols)


def method_name(config: Any) -> str:
    """The paper's name for the method a config trains (for the report table)."""
    model = config.model
    loss = str(config.loss.name) if "loss" in config else ""
    if pseudo_mask_dir(config) is not None:
        # Trained on a stage-1 run's pseudo masks; A-LCFCN learning only its affinities from
        # them keeps its loss on the clicks.
        return "A-LCFCN + PM" if loss != "lcfcn" else "A-LCFCN (affinity from pseudo masks)"
    if loss == "point_level":
        return "PL-FCN"
    if loss in ("cross_entropy", "joint"):
        return "FS-FCN"
    if loss == "lcfcn":
        return "A-LCFCN" if bool(getattr(model, "with_affinity", False)) else "LCFCN"
    return str(getattr(model, "name", "model"))


def model_summary(config: Any) -> dict[str, Any]:
    """The model fields that identify what a checkpoint is (for manifests and reports)."""
    keys = ("name", "backbone", "n_classes", "with_affinity", "trunk_mode", "beta", "logt")
    keys += ("radius", "rw_method", "dtype")
    m = config.model
    return {k: json_safe(getattr(m, k)) for k in keys if hasattr(m, k)}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render_report(result: Mapping[str, Any], *, meta: Mapping[str, Any]) -> str:
    """Markdown report of one evaluation.

    Args:
      result: the dict returned by ``evaluation.evaluate``.
      meta: ``method``, ``dataset``, ``split``, ``checkpoint`` (which), ``step``, ``workdir``.
    """
    method = meta.get("method", "model")
    lines = [
        f"# Evaluation: {method} on {meta.get('dataset')} / {meta.get('split')}",
        "",
        f"Checkpoint: `{meta.get('checkpoint')}` (step {meta.get('step')}) in "
        f"`{meta.get('workdir')}`; {int(result['num_images'])} images.",
        "",
        "mIoU = mean of background and fish IoU of the confusion matrix pooled over the split; "
        "MAE over 8-connected predicted blobs; GAME(L) = sum of |count error| over a 2^L x 2^L "
        "grid; `_ref` = A-LCFCN's convention (remainder rows/columns dropped, divided by L+1); "
        "`game` = `game_l3_ref`, the figure A-LCFCN reports.",
        "",
        "| figure | ours |",
        "|---|---|",
    ]
    keys = ["miou", "iou_bg", "iou_fish", "mae", "rmse", "game"]
    keys += [f"game_l{k}" for k in range(4)] + [f"game_l{k}_ref" for k in range(4)]
    if "box_hit_rate" in result:
        keys += ["num_boxes", "box_hit_rate", "box_precision"]
    for k in keys:
        if k in result:
            lines.append(f"| {k} | {_fmt(result[k])} |")
    if "ap50" in result:
        from alcfcn_jax.eval.instances import figure_table, size_table

        lines += [
            "",
            "## Fish instances against the true boxes",
            "",
            "Instances: blobs of the fish probability cut by the watershed, outlined as "
            f"config.instances says (outline `{meta.get('instances', {}).get('outline')}`, "
            "alcfcn_jax/eval/outlines.py); each instance's box matched greedily to the true "
            "boxes by its mean fish probability (alcfcn_jax/eval/instances.py defines every "
            "figure).",
            "",
            *figure_table(result),
            "",
            *size_table(result),
        ]
    if meta.get("dataset") == "deepfish":
        lines += [
            "",
            "## Paper Table 1 (DeepFish FishSeg test mIoU) beside ours",
            "",
            "| method | paper mIoU | ours |",
            "|---|---|---|",
        ]
        for name, paper in PAPER_TABLE1.items():
            ours = _fmt(result.get("miou")) if name == method else ""
            lines.append(f"| {name} | {paper:.3f} | {ours} |")
    else:
        lines += [
            "",
            f"(Dataset {meta.get('dataset')!r} is not DeepFish: the paper's Table 1 "
            "(A-LCFCN mIoU 0.860) does not apply.)",
        ]
    habitats = result.get("per_habitat", {})
    if habitats:
        lines += [
            "",
            "## Per habitat",
            "",
            "| habitat | images | mIoU | fish IoU | MAE | GAME |",
            "|---|---|---|---|---|---|",
        ]
        for name, r in habitats.items():
            lines.append(
                f"| {name} | {int(r['num_images'])} | {_fmt(r.get('miou'))} | "
                f"{_fmt(r.get('iou_fish'))} | {_fmt(r.get('mae'))} | {_fmt(r.get('game'))} |"
            )
    cf = result.get("confusion")
    if cf is not None:
        lines += [
            "",
            "Confusion (pixels; rows = predicted, columns = true): "
            f"bg/bg {cf[0][0]}, bg/fish {cf[0][1]}, fish/bg {cf[1][0]}, fish/fish {cf[1][1]}.",
        ]
    lines += ["", f"Speed: {_fmt(result.get('images_per_second'), 2)} images/s.", ""]
    return "\n".join(lines)


def resolve_split(data_cfg: Any, split: str) -> str:
    """Maps ``train`` / ``val`` / ``test`` to the config's split names; others pass through."""
    if split in ("train", "val", "test"):
        return str(data_cfg[f"{split}_split"])
    return split


def write_overlays(
    model: Any,
    source: Sequence[Mapping[str, Any]],
    out_dir: str | os.PathLike,
    *,
    num: int,
) -> list[pathlib.Path]:
    """Overlay PNGs of the first ``num`` examples of ``source`` (single device, batch 1).

    Runs on this process alone: a model replicated over a mesh that spans processes is copied
    to this process's first device first (``sharding.localize``).
    """
    import jax.numpy as jnp
    from flax import nnx

    from alcfcn_jax import sharding as shd
    from alcfcn_jax.data import preprocess as pp
    from alcfcn_jax.eval import evaluation, metrics, viz

    graphdef, state = nnx.split(model)
    model = nnx.merge(graphdef, shd.localize(state))
    fwd = evaluation.make_forward(model, return_aux=True)
    written = []
    for i in range(min(num, len(source))):
        ex = source[i]
        image = np.asarray(ex["image"], np.float32)
        logits, aux = fwd(jnp.asarray(image[None]))
        prob = np.asarray(outputs.fish_probability(logits))[0]
        pred = np.asarray(outputs.prediction(logits))[0]
        cam = aux.get("cam") if isinstance(aux, Mapping) else None
        with_rw = cam is not None and "aff_feats" in aux
        cam_prob = np.asarray(outputs.fish_probability(cam))[0] if with_rw else None
        pad = ex.get("pad")
        if pad is not None:
            pred = np.where(np.asarray(pad, bool), pred, 0)
        pred_points = np.asarray(metrics.blobs_to_points(pred == 1))
        mask = np.asarray(ex["mask"]) if "mask" in ex else None
        has_mask = mask is not None and bool((mask != 255).any())
        panel = viz.eval_panel(
            pp.denormalize(image),
            pred=pred,
            pred_points=pred_points,
            gt_mask=mask if has_mask else None,
            gt_points=(np.asarray(ex["points"]) == 1) if "points" in ex else None,
            boxes=ex.get("boxes"),
            fish_prob=prob,
            cam_prob=cam_prob,
            title=str(ex.get("id", i)),
        )
        safe = str(ex.get("id", i)).replace("/", "__")
        written.append(save_png_atomic(panel, pathlib.Path(out_dir) / f"{safe}.png"))
    return written


def default_output_dir(workdir: str | os.PathLike, split: str, walk: bool = True) -> pathlib.Path:
    """``<workdir>/eval/<split>`` (``<split>_nowalk`` without the random walk)."""
    return pathlib.Path(workdir) / "eval" / (split if walk else f"{split}_nowalk")


def run_evaluation(
    config: Any,
    workdir: str | os.PathLike,
    *,
    split: str = "test",
    which: str | int = "best",
    num_overlays: int = 8,
    mesh: jax.sharding.Mesh | None = None,
    walk: bool = True,
    output_dir: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Restores a checkpoint, evaluates a split, writes the outputs (process 0). Returns metrics.

    The output folder is created and checked writable first (nothing is computed for results
    that could not be saved).

    Args:
      config: the training config (``config.model`` must match the checkpoint).
      workdir: the training workdir (checkpoints under ``workdir/checkpoints``).
      split: ``train`` | ``val`` | ``test`` (mapped through ``config.data``) or a split name.
      which: ``best``, ``latest`` or a step number.
      num_overlays: overlay PNGs to write (0 = none).
      mesh: the device mesh (default: every device).
      walk: ``False`` evaluates an A-LCFCN model's activation branch alone (no random walk) and
        writes to ``<workdir>/eval/<split>_nowalk/``: what the walk adds, measured.
      output_dir: where the outputs go (default ``<workdir>/eval/<split>[_nowalk]``; for a
        read-only workdir).

    Raises:
      alcfcn_jax.io.OutputDirError: the output folder cannot be written (checked first).
    """
    from alcfcn_jax.eval import evaluation, inference, outlines

    workdir = pathlib.Path(workdir)
    out_dir = pathlib.Path(output_dir) if output_dir else default_output_dir(workdir, split, walk)
    if jax.process_index() == 0:
        ensure_writable_dir(
            out_dir, "--output_dir" if output_dir else "the evaluation output folder (--output_dir)"
        )
    run = inference.restore(config, workdir, which, mesh=mesh)
    model, step, ckpt_meta = run.model, run.step, run.meta
    if not walk:
        from alcfcn_jax.models.alcfcn import WithoutWalk

        model = WithoutWalk(model)
    split_name = resolve_split(run.data_cfg, split)
    source = run.source(split_name)
    if len(source) == 0:
        raise ValueError(f"split {split!r} ({split_name!r}) of {config.data.dataset!r} is empty")
    batches = run.batches(source, config.train.eval_batch_size)
    settings = outlines.InstanceSettings.from_config(config.instances)
    result = evaluation.evaluate(
        model,
        batches,
        mesh=run.mesh,
        per_image=True,
        boxes=run.boxes,
        extents=run.boxes,
        instance_fn=outlines.instance_fn(dataclasses.replace(settings, method="watershed")),
    )
    meta = {
        "method": method_name(config),
        "dataset": str(config.data.dataset),
        "split": split,
        "split_name": split_name,
        "checkpoint": str(which),
        "step": int(step),
        "walk": bool(walk),
        "workdir": str(workdir),
        "model": model_summary(config),
        "instances": settings.to_dict(),
        "checkpoint_meta": json_safe(dict(ckpt_meta or {})),
    }
    if jax.process_index() == 0:
        per_image = result.pop("per_image")
        write_json_atomic(out_dir / "metrics.json", {**result, "meta": meta})
        write_text_atomic(out_dir / "per_image.csv", per_image_csv(per_image))
        write_text_atomic(out_dir / "report.md", render_report(result, meta=meta))
        if num_overlays > 0:
            write_overlays(model, source, out_dir / "overlays", num=num_overlays)
        result["per_image"] = per_image
        logging.info(
            "%s step %d: mIoU %.4f fish IoU %.4f MAE %.3f GAME %.3f -> %s",
            split,
            step,
            result["miou"],
            result["iou_fish"],
            result["mae"],
            result["game"],
            out_dir,
        )
    result["meta"] = meta
    return result
