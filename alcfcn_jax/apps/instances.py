"""Fish instances from a trained checkpoint, and their evaluation against true boxes.

The instances follow ``config.instances`` (``eval/outlines.py``): a cut into fish, then an outline.
Two cuts (``method``):

  * ``watershed`` (default): blobs of ``p(fish) > threshold`` split by the distance-transform
    watershed (``measure.instance_labels``); any model;
  * ``embedding``: WISE's assignment by the embedding branch (``measure.embedding_instance_labels``);
    needs a model trained with ``model.embedding_dim > 0``. The object locations are the
    highest-probability pixels of the blobs of the activation map before the random walk
    (``seeds="activation"``, LCFCN's one-blob-per-fish map; the refined map for models without
    a walk) or of the refined map (``seeds="refined"``).

and two outlines (``outline``): ``blobs`` (as cut) or ``grabcut`` (each instance grown to the
fish's edges in the image).

Evaluation on a box split (``python -m alcfcn_jax.apps.instances``)::

    python -m alcfcn_jax.apps.instances --config=configs/frames.py --workdir=runs/frames \
        --split=val [--config.instances.outline=grabcut] [--checkpoint=best] [--output_dir=DIR]

restores the checkpoint as ``evaluate.py`` does (its recorded preprocessing), cuts every image of
the split into instances, and compares each instance's bounding box with the true boxes
(``eval.instances``: AP at several IoUs, best IoU per box, box coverage, pixel precision, lengths;
confidence = the mean fish probability of its pixels above 0.5). It writes
``<workdir>/eval/<split>/instances_<method>[_<outline>].json`` (every figure and the settings),
``.md`` (a table) and ``.csv`` (per image).
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from alcfcn_jax import sharding as shd
from alcfcn_jax.apps import entry
from alcfcn_jax.data.preprocess import denormalize
from alcfcn_jax.eval import evaluation, measure, outlines
from alcfcn_jax.eval import instances as inst
from alcfcn_jax.io import csv_text, ensure_writable_dir, write_json_atomic, write_text_atomic
from alcfcn_jax.losses.embedding import upsample_embedding
from alcfcn_jax.models import outputs

METHODS = outlines.METHODS
SEEDS = outlines.SEEDS


def has_embedding(model: Any) -> bool:
    """Whether ``model`` has the WISE embedding branch."""
    return int(getattr(model, "embedding_dim", 0) or 0) > 0


def check_method(model: Any, method: str) -> None:
    """Raises ValueError for an unknown method, or ``embedding`` on a model without the branch."""
    if method not in METHODS:
        raise ValueError(f"config.instances.method must be one of {METHODS}, got {method!r}")
    if method == "embedding" and not has_embedding(model):
        raise ValueError(
            "config.instances.method='embedding' needs a model with an embedding head, trained "
            "with config.model.embedding_dim > 0 (and loss.embedding_weight > 0); this "
            "checkpoint's model has none: use --config.instances.method=watershed"
        )


def make_batch_forward(
    model: Any,
    settings: outlines.InstanceSettings | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """``forward(images (B,h,w,3) normalised) -> {"prob": (B,h,w) fish probability}`` (jitted,
    the batch sharded over ``mesh`` when given), plus for the embedding cut ``"embedding"``
    (B,h/8,w/8,d) and ``"seed_prob"`` (B,h,w) from the map its seeds come from. Raises ValueError
    as :func:`check_method`."""
    settings = settings or outlines.InstanceSettings()
    check_method(model, settings.method)
    embedding = settings.method == "embedding"
    graphdef, state = nnx.split(model)
    if mesh is not None:
        state = jax.device_put(state, shd.replicated(mesh))

    def build(graphdef):
        @jax.jit
        def forward(state, images):
            size = images.shape[1:3]
            logits, aux = nnx.merge(graphdef, state)(images, train=False, return_aux=True)
            out = {"prob": outputs.fish_probability(outputs.upsample_logits(logits, size))}
            if embedding:
                out["embedding"] = aux["embedding"]
                seed = out["prob"]
                if settings.seeds == "activation" and "aff_feats" in aux:
                    seed = outputs.fish_probability(outputs.upsample_logits(aux["cam"], size))
                out["seed_prob"] = seed
            return out

        return forward

    # One compiled forward per model structure and cut (a second predict call in the same
    # process, e.g. the benchmark's, reuses it).
    kind = f"batch_forward/embedding={embedding}/seeds={settings.seeds}"
    forward = evaluation.cached_jit(kind, graphdef, build)

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        x = jnp.asarray(images, jnp.float32)
        if mesh is not None:
            x = jax.device_put(x, shd.data_sharding(mesh))
        return {k: np.asarray(v) for k, v in jax.device_get(forward(state, x)).items()}

    return run


def cut_instances(
    settings: outlines.InstanceSettings,
    outputs_i: Mapping[str, np.ndarray],
    rgb: np.ndarray,
    valid: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(labels (h,w) int32, prob (h,w))`` of one image from its :func:`make_batch_forward`
    outputs: the cut and the outline of ``settings``. Pixels outside ``valid`` (letterbox bars)
    are never fish."""
    prob = outputs_i["prob"]
    if valid is not None:
        prob = np.where(valid, prob, 0.0)
    if settings.method == "watershed":
        cut = outlines.instance_fn(settings)
        return cut(prob, rgb), prob
    size = prob.shape
    emb = np.asarray(upsample_embedding(jnp.asarray(outputs_i["embedding"])[None], size))[0]
    seed_prob = outputs_i["seed_prob"]
    if valid is not None:
        seed_prob = np.where(valid, seed_prob, 0.0)
    labels = measure.embedding_instance_labels(
        prob, emb, threshold=settings.threshold, seed_prob=seed_prob, min_area=settings.min_area
    )
    return outlines.outline(labels, rgb, settings, prob), prob


def make_instance_fn(
    model: Any, settings: outlines.InstanceSettings | None = None
) -> Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray]]:
    """``run(image (h,w,3) normalised, valid (h,w) or None) -> (labels (h,w) int32, prob (h,w))``:
    :func:`make_batch_forward` and :func:`cut_instances` on one image."""
    settings = settings or outlines.InstanceSettings()
    forward = make_batch_forward(model, settings)

    def run(image: np.ndarray, valid: np.ndarray | None = None):
        out = forward(image[None])
        return cut_instances(settings, {k: v[0] for k, v in out.items()}, denormalize(image), valid)

    return run


def render_markdown(result: dict[str, Any]) -> str:
    """The report of one instance evaluation."""
    meta = result["meta"]
    lines = [
        f"# Fish instances against true boxes: {meta['split']}",
        "",
        f"Checkpoint `{meta['checkpoint']}` (step {meta['step']}) in `{meta['workdir']}`; "
        f"{int(result['num_images'])} images, {int(result['num_true_boxes'])} true boxes, "
        f"{int(result['num_instances'])} instances (count MAE of instances "
        f"{result['instance_count_mae']:.3f}).",
        "",
        "Each instance's bounding box against the true boxes: greedy matching in order of the "
        "instance's mean fish probability; AP = all-point interpolated area under the "
        "precision-recall curve (alcfcn_jax/eval/instances.py defines every figure). "
        f"Instances: {json.dumps(meta['instances'])} (alcfcn_jax/eval/outlines.py).",
        "",
        *inst.figure_table(result),
        "",
        *inst.size_table(result),
    ]
    return "\n".join(lines) + "\n"


def evaluate_instances(
    instance_fn: Callable[[np.ndarray, np.ndarray | None], tuple[np.ndarray, np.ndarray]],
    source: Sequence[dict[str, Any]],
    *,
    limit: int = 0,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Box and extent figures (``eval.instances.extent_metrics``) of every example (``image``,
    ``boxes`` in model pixels, optional ``pad``) of ``source``, and one row per image."""
    records = []
    rows = []
    n = len(source) if not limit else min(limit, len(source))
    for i in range(n):
        ex = source[i]
        pad = ex.get("pad")
        labels, prob = instance_fn(
            np.asarray(ex["image"], np.float32), None if pad is None else np.asarray(pad, bool)
        )
        rec = inst.image_record(labels, prob, ex["boxes"])
        records.append(rec)
        rows.append({"id": str(ex.get("id", i)), **inst.image_row(rec)})
    result = inst.extent_metrics(records)
    errs = [abs(r["num_boxes"] - r["num_instances"]) for r in rows]
    result["instance_count_mae"] = float(np.mean(errs)) if errs else float("nan")
    return result, rows


def run_instance_evaluation(
    config: Any,
    workdir: str | os.PathLike,
    *,
    split: str = "val",
    which: str | int = "best",
    output_dir: str | os.PathLike | None = None,
    limit: int = 0,
) -> dict[str, Any]:
    """Restores a checkpoint, evaluates its instances (``config.instances``) on a box split,
    writes the files (module docstring). Process 0 computes and writes; in a multi-process job
    the others wait."""
    from alcfcn_jax.eval import inference, report

    settings = outlines.InstanceSettings.from_config(config.instances)
    workdir = pathlib.Path(workdir)
    out_dir = pathlib.Path(output_dir) if output_dir else report.default_output_dir(workdir, split)
    run = inference.restore(config, workdir, which)
    if not run.boxes:
        raise ValueError(
            f"instance evaluation needs box ground truth; dataset {config.data.dataset!r} has "
            "none (use a 'boxes' or 'sample' dataset)"
        )
    if jax.process_index() != 0:
        shd.barrier("instances_done")
        return {}
    ensure_writable_dir(out_dir, "--output_dir")
    from flax import nnx

    graphdef, state = nnx.split(run.model)
    model = nnx.merge(graphdef, shd.localize(state))
    fn = make_instance_fn(model, settings)
    split_name = report.resolve_split(run.data_cfg, split)
    source = run.source(split_name)
    result, rows = evaluate_instances(fn, source, limit=limit)
    result["meta"] = {
        "split": split,
        "split_name": split_name,
        "checkpoint": str(which),
        "step": int(run.step),
        "workdir": str(workdir),
        "instances": settings.to_dict(),
        "limit": limit,
    }
    stem = f"instances_{stem_of(settings)}"
    write_json_atomic(out_dir / f"{stem}.json", result)
    write_text_atomic(out_dir / f"{stem}.md", render_markdown(result))
    write_text_atomic(out_dir / f"{stem}.csv", csv_text(rows, ("id", *inst.IMAGE_COLUMNS)))
    shd.barrier("instances_done")
    return result


def stem_of(settings: outlines.InstanceSettings) -> str:
    """``<method>`` or ``<method>_<outline>`` (the file names of one evaluation)."""
    if settings.outline == "blobs":
        return settings.method
    return f"{settings.method}_{settings.outline}"


def main(argv: Sequence[str]) -> None:
    """absl entry point (flags in :func:`define_flags`)."""
    from absl import flags

    config, workdir, which = entry.start(argv)
    f = flags.FLAGS
    result = run_instance_evaluation(
        config, workdir, split=f.split, which=which, output_dir=f.output_dir or None, limit=f.limit
    )
    if result:
        print(
            f"{f.split} ({stem_of(outlines.InstanceSettings.from_config(config.instances))}): "
            f"AP50 {result['ap50']:.3f}  AP50:95 {result['ap50_95']:.3f}  precision "
            f"{result['instance_precision']:.3f}  recall {result['instance_recall']:.3f}  box "
            f"coverage {result['box_coverage_median']:.3f}  length in range "
            f"{result['length_in_range']:.3f}  ({int(result['num_images'])} images)"
        )


def define_flags() -> None:
    """The flags of ``python -m alcfcn_jax.apps.instances`` (the instance settings are
    ``--config.instances.*``)."""
    from absl import flags

    entry.define_flags(config_help="The training config of the run")
    flags.DEFINE_string("split", "val", "train | val | test, or a split name (a box split).")
    flags.DEFINE_integer("limit", 0, "Evaluate only the first N images (0 = all).")
    flags.DEFINE_string("output_dir", "", "Default <workdir>/eval/<split>.")


if __name__ == "__main__":
    define_flags()
    entry.run(main, saved_config=True)
