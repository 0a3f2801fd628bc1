"""The one inference setup of every checkpoint consumer: restore, data, mesh, batches.

``evaluate.py`` (``eval.report``) and the pseudo-mask writer (``train.mask_writer``) both run a
restored checkpoint over a split of the data on every device of every process; this module is that
setup, so they cannot drift apart: the model is restored from ``workdir`` (``which`` = best,
latest or a step), images are prepared exactly as in the checkpoint's training run (its recorded
crop and resize), the global eval batch is ``train.eval_batch_size`` (0 = one image per device;
refused when it does not split over the devices) and each process reads its own slice.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import jax
import ml_collections
from absl import logging
from flax import nnx

from alcfcn_jax import checkpoint, config_utils
from alcfcn_jax import sharding as shd
from alcfcn_jax.data import get_source, has_boxes
from alcfcn_jax.data import preprocess as pp
from alcfcn_jax.data.config import complete, with_preprocessing
from alcfcn_jax.data.pipeline import eval_batches_from_config
from alcfcn_jax.models import build_model


@dataclasses.dataclass
class Restored:
    """A restored checkpoint ready to run: the model, its step and metadata, the data config
    that prepares images as its training did, and the mesh."""

    model: nnx.Module
    step: int
    meta: dict[str, Any]
    data_cfg: Any
    mesh: jax.sharding.Mesh

    @property
    def boxes(self) -> bool:
        """Whether the data's ground truth is boxes (box hit rate and precision apply)."""
        return has_boxes(self.data_cfg)

    def source(self, split: str):
        """The example source of ``split`` (a split name of the data config)."""
        return get_source(self.data_cfg, split)

    def batches(self, source, eval_batch_size: int) -> Iterator[dict[str, Any]]:
        """This process's eval batches of ``source`` (global batch ``eval_batch_size``)."""
        global_bs = config_utils.resolve_batch_size(
            int(eval_batch_size), self.mesh.devices.size, "train.eval_batch_size"
        )
        return eval_batches_from_config(
            self.data_cfg,
            source,
            batch_size=global_bs // jax.process_count(),
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )


def restore_model(
    config: Any,
    workdir: str | os.PathLike,
    which: str | int = "best",
    *,
    mesh: jax.sharding.Mesh | None = None,
) -> tuple[nnx.Module, int, dict[str, Any]]:
    """Builds the model of ``config.model`` and loads its weights from ``workdir/checkpoints``.

    Args:
      config: the experiment config (its ``model`` block builds the network).
      workdir: the training run's directory.
      which: ``"best"`` (best validation score, ``config.train.select_metric``), ``"latest"`` or
        a step number.
      mesh: restore every array replicated over this mesh (it may span processes: Orbax reads
        each process's copies); None: onto this process's first device.

    Returns:
      ``(model, step, meta)``: the model with restored state (call it with ``train=False``), the
      checkpoint step, and the checkpoint's JSON metadata (config, validation metrics...).

    Raises:
      CheckpointError: no checkpoint, an unknown step, or a checkpoint of a different model.
    """
    ckpt = checkpoint.Checkpointer(
        workdir, read_only=True, best_metric=checkpoint.selection_metric(config)
    )
    try:
        step = ckpt.resolve(which)
        meta = ckpt.check_config(step, config)
        # No pretrained weights: every value is overwritten by the checkpoint.
        model_cfg = ml_collections.ConfigDict(config.model.to_dict())
        model_cfg.weights = ""
        abstract_model = nnx.eval_shape(
            lambda: build_model(model_cfg, rngs=nnx.Rngs(int(config.seed)))
        )
        graphdef, abstract_state = nnx.split(abstract_model)
        if mesh is None:
            target = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        else:
            target = shd.replicated(mesh)
        abstract_state = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=target), abstract_state
        )
        model_state, _, meta, _ = ckpt.restore(
            step, model_state=abstract_state, opt_state=None, with_data=False
        )
    finally:
        ckpt.close()
    return nnx.merge(graphdef, model_state), step, meta


def recorded_preprocessing(meta: dict[str, Any] | None, config: Any) -> Any:
    """The preprocessing a checkpoint was trained with (its metadata), else the config's.

    Checkpoints record it (``meta["preprocessing"]``); older ones only their config, whose data
    block says the same. A config that disagrees is overruled, with a warning.
    """
    given = pp.Preprocessing.from_data_config(config.data)
    meta = meta or {}
    if "preprocessing" in meta:
        recorded = pp.Preprocessing.from_dict(meta["preprocessing"])
    elif "data" in (meta.get("config") or {}):
        # A recorded config of an older run: its missing fields meant their defaults then.
        recorded = pp.Preprocessing.from_data_config(complete(meta["config"]["data"]))
    else:
        return given
    if recorded != given:
        logging.warning(
            "The checkpoint was trained with %s; the config says %s: using the checkpoint's",
            recorded,
            given,
        )
    return recorded


def restore(
    config: Any,
    workdir: str | os.PathLike,
    which: str | int = "best",
    *,
    mesh: jax.sharding.Mesh | None = None,
) -> Restored:
    """Restores the checkpoint ``which`` of ``workdir`` for inference (see the module doc)."""
    mesh = mesh or shd.make_mesh()
    # Restored straight onto the mesh (replicated): on a multi-process mesh no process could
    # move a local copy onto devices of another.
    model, step, meta = restore_model(config, str(workdir), which, mesh=mesh)
    data_cfg = with_preprocessing(config.data, recorded_preprocessing(meta, config))
    return Restored(model, int(step), dict(meta or {}), data_cfg, mesh)
