"""Stage 2: FS-FCN trained on A-LCFCN's pseudo masks ("A-LCFCN + PM", reference run fcc1acac).

Stage 1 (``configs/deepfish.py``) trains A-LCFCN on FishLoc clicks; ``evaluate.py
--mode=pseudo_masks`` then writes ``<stage-1 workdir>/pseudo_masks/<id>.png`` (0/255) and a
``manifest.json`` naming the checkpoint step. This config trains the shared ResNet-38d trunk with
its activation branch only (no random walk) by cross-entropy on those masks, lr 1e-5, validating on
FishSeg val masks::

    python train.py --config=configs/deepfish_pm.py --workdir=runs/pm \
        --config.stage1.workdir=runs/alcfcn --config.data.data_dir=/data/DeepFish

Training refuses masks written from another stage-1 checkpoint than its current best
(``stage1.allow_stale=True`` overrides that), and any training image without a mask.
``data.pseudo_mask_dir`` may point at a mask folder directly instead.

``--config.pm.rounds=R`` (R > 1) trains R rounds in ``<workdir>/round_<r>/``, each on the pseudo
masks of the round before (``alcfcn_jax/train/rounds.py``; README "Iterative pseudo-mask rounds").
"""

from __future__ import annotations

import ml_collections

from alcfcn_jax.train import defaults
from configs import deepfish
from configs.common import parse_arg

PRESETS = ("pm", "smoke")


def add_stage2_sections(config: ml_collections.ConfigDict, *, stage1_workdir: str) -> None:
    """The ``stage1`` and ``pm`` sections of every run on a stage-1 run's pseudo masks (stage 2,
    also ``configs/frames.py``; keys and defaults: alcfcn_jax/train/defaults.py)."""
    config.stage1 = defaults.section("stage1", workdir=stage1_workdir)
    config.pm = defaults.section("pm")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """FS-FCN on pseudo masks; ``arg`` "smoke" gives a tiny synthetic variant for tests."""
    preset, _ = parse_arg(arg, file="configs/deepfish_pm.py", presets=PRESETS)
    smoke = preset == "smoke"
    config = deepfish.get_config("smoke" if smoke else "alcfcn")
    config.model.with_affinity = False  # PM: ResNet-38 fc8 logits, no random walk
    config.loss.name = "cross_entropy"
    config.optim.lr = 1e-3 if smoke else 1e-5
    config.data.config_name = "fish_loc"  # the FishLoc training images the masks were written for
    add_stage2_sections(config, stage1_workdir="runs/alcfcn")
    return config
