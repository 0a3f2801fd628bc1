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
from alcfcn_jax.eval.outlines import INSTANCE_DEFAULTS
from alcfcn_jax.models import MODEL_DEFAULTS
from configs.common import parse_arg

PRESETS = ("alcfcn", "lcfcn", "plfcn", "fsfcn", "smoke")
_OPTIONS = {"fsfcn": ("joint", "budget")}

# The paper's annotation budget for the fully supervised baseline: the time of the point
# annotations of A-LCFCN buys full masks for this many FishSeg training images.
PAPER_BUDGET = {"n_background": 161, "n_fish": 11}
_REFERENCE_VAL_SIZE = 124  # FishSeg val images = draws per reference "epoch"


def model_config(**overrides) -> ml_collections.ConfigDict:
    """The ``config.model`` block (docs/contracts.md "Models"), reference values by default."""
    # models.MODEL_DEFAULTS are the reference's values (ResNet-38d trunk, shared, beta 8, logt
    # 4, radius 5, fc8 head, no pretrained weights); the walk picks dense or sparse by size.
    cfg = ml_collections.ConfigDict({**MODEL_DEFAULTS, "rw_method": "auto"})
    cfg.update(overrides)
    return cfg


def optim_config(**overrides) -> ml_collections.ConfigDict:
    """The ``config.optim`` block: torch-style Adam (weight decay as L2 in the gradient)."""
    cfg = ml_collections.ConfigDict(
        {
            "name": "adam",
            "lr": 1e-6,
            "b1": 0.99,
            "b2": 0.999,
            "eps": 1e-8,
            "weight_decay": 0.0,
            # Learning-rate multiplier for parameters under the model's ``trunk`` (1 = one lr).
            "trunk_lr_mult": 1.0,
            # Global gradient-norm clipping; 0 disables it (the reference does not clip).
            "clip_grad_norm": 0.0,
            # "constant" (the reference) or "cosine" (lr decays to 0 over train.num_steps).
            "schedule": "constant",
        }
    )
    cfg.update(overrides)
    return cfg


def train_config(**overrides) -> ml_collections.ConfigDict:
    """The ``config.train`` block (loop cadence, batch sizes, checkpoint retention)."""
    cfg = ml_collections.ConfigDict(
        {
            "num_steps": 1000 * _REFERENCE_VAL_SIZE,
            # Global batch; 0 = one image per device (the reference trains at batch 1).
            "batch_size": 0,
            "log_every": 50,
            "eval_every": _REFERENCE_VAL_SIZE,
            "eval_at_start": False,
            "checkpoint_every": _REFERENCE_VAL_SIZE,
            "keep_checkpoints": 2,
            # Validation metric that picks the best checkpoint ("miou"; "mae"/"game" minimised).
            "select_metric": "miou",
            # Global evaluation batch; 0 = one image per device.
            "eval_batch_size": 0,
            # After training, evaluate the test split with the best checkpoint (the reference
            # reports test numbers at the best validation epoch).
            "eval_test": True,
            # Report the MAE of always predicting the median training count next to val MAE.
            "count_baseline": False,
            # Skip the optimizer update when the loss is exactly 0 (the reference does).
            "skip_zero_loss": True,
            "tensorboard": "auto",
            "progress": True,
            # Frozen-trunk feature cache (alcfcn_jax/train/feature_cache.py): "auto" trains the heads
            # on taps computed once when the trunk is frozen (optim.trunk_lr_mult=0) and
            # deterministic; "memory" / "disk" force a store; "off" always runs the trunk.
            "feature_cache": "auto",
            # Disk stores ("" = ~/.cache/alcfcn_jax/tap_cache), storage dtype, and the size up to
            # which "auto" keeps a store in memory.
            "feature_cache_dir": "",
            "feature_cache_dtype": "float16",
            "feature_cache_memory_mb": 256,
            # A-LCFCN: train the activation logits without the random walk for this many steps
            # first (0 = the reference: the walk from the first step).
            "walk_warmup_steps": 0,
        }
    )
    cfg.update(overrides)
    return cfg


def loss_config(**overrides) -> ml_collections.ConfigDict:
    """The ``config.loss`` block: the loss name, the optional affinity-learning and embedding
    terms."""
    cfg = ml_collections.ConfigDict(
        {
            "name": "lcfcn",
            # AffinityNet's balanced affinity loss on labels mined from the activation map
            # (alcfcn_jax/losses/affinity.py), added with this weight (0 = the reference: off).
            "affinity_weight": 0.0,
            # Stride-8 cells with pooled fish probability above affinity_fg are fish, below
            # affinity_bg background; clicked cells are always fish.
            "affinity_fg": 0.7,
            "affinity_bg": 0.3,
            # The map the cells come from: "cam" (the activation map) or "pseudo_masks" (a
            # stage-1 run's masks, fish cells numbered by their nearest click; needs stage1).
            "affinity_labels": "cam",
            # WISE's embedding term (alcfcn_jax/losses/embedding.py; needs
            # model.embedding_dim > 0, e.g. 64), added with this weight (0 = off; WISE: 0.1).
            # Pixels sampled per image: per_object from each of at most max_objects clicked
            # fish (their one-click blobs), and background ones.
            "embedding_weight": 0.0,
            "embedding_per_object": 8,
            "embedding_background": 32,
            "embedding_max_objects": 16,
        }
    )
    cfg.update(overrides)
    return cfg


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
    # Annotation budget on the training split: 0/0 = every training image.
    config.budget = ml_collections.ConfigDict({"n_background": 0, "n_fish": 0, "seed": 0})
    # How predictions become fish instances (alcfcn_jax/eval/outlines.py).
    config.instances = ml_collections.ConfigDict(dict(INSTANCE_DEFAULTS))
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
