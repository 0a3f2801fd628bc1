"""Stage-2 training data: the training split with masks taken from stage 1's pseudo masks.

Stage 1 (A-LCFCN) writes ``<stage-1 workdir>/pseudo_masks/`` (``<id>.png`` 0/255 masks and a
``manifest.json`` naming the checkpoint step; ``alcfcn_jax.pseudo_masks``). Before stage 2 reads
anything, :func:`resolve_pseudo_masks` checks that folder: it must exist, its manifest must be
complete, its masks must come from stage 1's current best checkpoint (otherwise they are stale),
and it must hold a mask for every training image. The overlay itself is the data layer's
``data.pseudo_mask_dir`` option (``alcfcn_jax.data.source.PseudoMaskSource``).
"""

from __future__ import annotations

import pathlib
from typing import Any

import ml_collections
from absl import logging

PSEUDO_MASK_SUBDIR = "pseudo_masks"


class StalePseudoMasksError(RuntimeError):
    """The pseudo masks are missing, incomplete, or were written from another checkpoint."""


def pseudo_mask_dir(config: Any) -> pathlib.Path | None:
    """The pseudo-mask folder a config trains on, or None for ordinary training.

    ``data.pseudo_mask_dir`` wins when set; otherwise ``<stage1.workdir>/pseudo_masks`` when the
    config has a ``stage1`` block with a workdir.
    """
    explicit = str(config.data.get("pseudo_mask_dir", "") or "")
    if explicit:
        return pathlib.Path(explicit).expanduser()
    stage1 = config.get("stage1")
    if stage1 is not None and str(stage1.get("workdir", "") or ""):
        return pathlib.Path(str(stage1.workdir)).expanduser() / PSEUDO_MASK_SUBDIR
    return None


def _expected_step(config: Any) -> int | None:
    """Stage 1's checkpoint step the masks must come from (None: no stage-1 checkpoints known)."""
    stage1 = config.get("stage1")
    if stage1 is None or not str(stage1.get("workdir", "") or ""):
        return None
    if bool(stage1.get("allow_stale", False)):
        return None
    from alcfcn_jax.checkpoint import Checkpointer, CheckpointError, checkpoint_dir

    if not checkpoint_dir(stage1.workdir).is_dir():
        logging.warning(
            "stage1.workdir %s has no checkpoints/: the pseudo masks' step cannot be checked",
            stage1.workdir,
        )
        return None
    ckpt = Checkpointer(stage1.workdir, read_only=True)
    try:
        return ckpt.resolve(str(stage1.get("which", "best")))
    except CheckpointError:
        return None
    finally:
        ckpt.close()


def resolve_pseudo_masks(config: Any) -> tuple[ml_collections.ConfigDict, dict[str, Any] | None]:
    """The data config to read stage-2 training data with, and the masks' manifest.

    Returns ``(config.data, None)`` when the config does not train on pseudo masks, else a copy
    of ``config.data`` with ``pseudo_mask_dir`` set and the checked manifest.

    Raises:
      StalePseudoMasksError: missing folder or manifest, masks from another stage-1 step (set
        ``stage1.allow_stale=True`` to accept them anyway), or missing mask files.
    """
    mask_dir = pseudo_mask_dir(config)
    if mask_dir is None:
        return config.data, None
    from alcfcn_jax.pseudo_masks import PseudoMaskError, load_manifest

    try:
        manifest = load_manifest(mask_dir, expected_step=_expected_step(config))
    except PseudoMaskError as err:
        raise StalePseudoMasksError(str(err)) from err
    data_cfg = ml_collections.ConfigDict(config.data.to_dict())
    data_cfg.pseudo_mask_dir = str(mask_dir)
    logging.info(
        "Training on pseudo masks from %s (checkpoint step %s, %d masks)",
        mask_dir,
        manifest.get("checkpoint_step"),
        len(manifest.get("ids", ())),
    )
    return data_cfg, manifest


def check_coverage(n_train: int, manifest: dict[str, Any] | None, mask_dir: Any) -> None:
    """Raises StalePseudoMasksError when the manifest lists fewer masks than training images.

    A cheap early check (no image is read); a single missing file would otherwise only surface
    when its example is first drawn, possibly hours into training.
    """
    if manifest is None:
        return
    n_masks = len(manifest.get("ids", ()))
    if n_masks < n_train:
        raise StalePseudoMasksError(
            f"{mask_dir}: the manifest lists {n_masks} pseudo masks but the training split has "
            f"{n_train} images; the masks were written for another split or dataset - "
            "regenerate them with evaluate.py --mode=pseudo_masks"
        )
