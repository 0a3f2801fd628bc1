"""The one inference setup of every checkpoint consumer: restore, data, mesh, batches.

``evaluate.py`` (``eval.report``) and the pseudo-mask writer (``apps.pseudo_masks``) both run a
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
from flax import nnx

from alcfcn_jax import checkpoint, config_utils
from alcfcn_jax import sharding as shd
from alcfcn_jax.data import get_source, has_boxes
from alcfcn_jax.data.config import with_preprocessing
from alcfcn_jax.data.pipeline import eval_batches_from_config


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
    model, step, meta = checkpoint.restore_for_inference(config, str(workdir), which, mesh=mesh)
    data_cfg = with_preprocessing(config.data, checkpoint.recorded_preprocessing(meta, config))
    return Restored(model, int(step), dict(meta or {}), data_cfg, mesh)
