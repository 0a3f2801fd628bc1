"""A-LCFCN on DeepFish, exactly as the reference trains it (reference spec section 7).

Usage::

    python train.py --config=configs/deepfish.py --workdir=runs/alcfcn \
        --config.data.data_dir=/data/DeepFish --config.model.weights=/weights/resnet38_aff_SEAM.pth

Presets (``--config=configs/deepfish.py:<preset>[,option...]``):
  ``alcfcn`` (default): ResNet-38d, shared trunk, affinity random walk (beta 8, logt 4, radius 5),
      LCFCN loss on FishLoc clicks, Adam(lr 1e-6, betas (0.99, 0.999)), batch 1 per device,
      model selection by validation mIoU on FishSeg val.
  ``lcfcn``: the same without the affinity branch (activation logits trained directly).
  ``plfcn``: point-level loss (Bearman et al.) on points derived from FishSeg masks, with the
      background points the reference samples, lr 1e-5 (reference run 63f29eec).
  ``fsfcn``: fully supervised FCN8-VGG16 with cross-entropy on the true FishSeg masks, lr 1e-5.
      Options: ``joint`` (weighted CE + weighted IoU of Wei et al. instead of CE), ``budget``
      (the paper's fixed annotation budget: 161 background and 11 fish training images).
  ``smoke``: tiny trunk on a tiny synthetic DeepFish tree, a few steps (tests, CI, first runs).

Step counts are global batches. The reference runs 1000 "epochs" of len(FishSeg val) = 124 random
draws at batch 1, i.e. 124,000 steps, validating every 124 steps.
"""

from __future__ import annotations

import ml_collections

from alcfcn_jax.data.config import default_data_config
from alcfcn_jax.train import defaults
from configs.common import parse_arg

PRESETS = ("alcfcn", "lcfcn", "plfcn", "fsfcn", "smoke")
_OPTIONS = {"fsfcn": ("joint", "budget")}

# The paper's annotation budget for the fully supervised baseline: the time of the point
# annotations of A-LCFCN buys full masks for this many FishSeg training images.
PAPER_BUDGET = {"n_background": 161, "n_fish": 11}


# Every section starts from its table in alcfcn_jax/train/defaults.py (what each key means is
# written there); the presets below change only what differs.
def model_config(**overrides) -> ml_collections.ConfigDict:
    """The ``config.model`` block (docs/contracts.md "Models"), reference values by default."""
    return defaults.section("model", **overrides)


def optim_config(**overrides) -> ml_collections.ConfigDict:
    """The ``config.optim`` block: torch-style Adam (weight decay as L2 in the gradient)."""
    return defaults.section("optim", **overrides)


def loss_config(**overrides) -> ml_collections.ConfigDict:
    """The ``config.loss`` block: the loss name, the optional affinity-learning and embedding
    terms."""
    return defaults.section("loss", **overrides)


def train_config(**overrides) -> ml_collections.ConfigDict:
    """The ``config.train`` block (loop cadence, batch sizes, checkpoint retention)."""
    return defaults.section("train", **overrides)


def base_config() -> ml_collections.ConfigDict:
    """A-LCFCN with the reference's settings (the ``alcfcn`` preset)."""
    config = ml_collections.ConfigDict()
    config.seed = 42
    config.model = model_config()
    config.loss = loss_config()
    data = default_data_config("deepfish")
    data.config_name = "fish_loc"  # train on FishLoc clicks; validate on FishSeg val masks
    config.data = data
    config.optim = optim_config()
    config.train = train_config()
    config.budget = defaults.section("budget")
    # How predictions become fish instances (alcfcn_jax/eval/outlines.py).
    config.instances = defaults.section("instances")
    return config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Builds the config of a preset (see the module docstring)."""
    preset, options = parse_arg(arg, file="configs/deepfish.py", presets=PRESETS, options=_OPTIONS)
    config = base_config()
    if preset == "lcfcn":
        config.model.with_affinity = False
    elif preset == "plfcn":
        config.loss.name = "point_level"
        config.optim.lr = 1e-5
        # Points (fish centroids + as many sampled background points) from FishSeg masks.
        config.data.config_name = "fish_seg"
    elif preset == "fsfcn":
        config.model = model_config(name="fcn8_vgg16", backbone="vgg16", with_affinity=False)
        config.loss.name = "joint" if "joint" in options else "cross_entropy"
        config.optim.lr = 1e-5
        config.data.config_name = "fish_seg"
        if "budget" in options:
            config.budget.n_background = PAPER_BUDGET["n_background"]
            config.budget.n_fish = PAPER_BUDGET["n_fish"]
    elif preset == "smoke":
        _make_smoke(config)
    return config


def _make_smoke(config: ml_collections.ConfigDict) -> None:
    """Tiny trunk, tiny synthetic tree, a handful of steps: runs in seconds on a CPU."""
    config.model.backbone = "tiny"
    config.model.radius = 5
    config.data = default_data_config("synthetic")
    config.data.config_name = "fish_loc"
    config.data.synthetic.height = 32
    config.data.synthetic.width = 48
    config.data.synthetic.seg_sizes = (4, 4, 4)
    config.data.synthetic.loc_sizes = (16, 2, 2)
    config.data.synthetic.max_fish = 3
    config.data.worker_threads = 0
    config.data.prefetch = 0
    config.optim.lr = 1e-3
    config.train.update(
        num_steps=6,
        log_every=2,
        eval_every=3,
        checkpoint_every=3,
        keep_checkpoints=2,
        eval_test=False,
        progress=False,
        tensorboard="off",
    )
