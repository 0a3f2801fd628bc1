"""The experiment config: what it must hold, its defaults and its validation.

``resolve`` is what entry points call once (``train.py``, ``evaluate.py``, ``predict``): it
validates a config (every value a user can get wrong fails with the key named, before anything
expensive runs) and returns a copy with every optional key filled, so that below the entry points
values are read as plain attributes. Unknown keys and wrong types on the command line are already
rejected by ``config_flags`` (the config is locked); this catches bad values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from alcfcn_jax.config_utils import ConfigError, to_plain
from alcfcn_jax.data.config import DATASETS
from alcfcn_jax.data.config import defaults as data_defaults
from alcfcn_jax.data.pseudo_masks import pseudo_mask_dir
from alcfcn_jax.eval.outlines import InstanceSettings
from alcfcn_jax.losses.affinity import LABEL_SOURCES
from alcfcn_jax.losses.registry import LOSSES
from alcfcn_jax.models import (
    BACKBONES,
    CAM_HEADS,
    DTYPES,
    MODEL_NAMES,
    RW_METHODS,
    TRUNK_MODES,
)
from alcfcn_jax.train import defaults
from alcfcn_jax.train.inputs import FEATURE_CACHE_MODES
from alcfcn_jax.train.optim import OPTIMIZERS, SCHEDULES

SELECT_METRICS = ("miou", "iou_fish", "mae", "rmse", "game")
# Selection metrics computed from masks, and the datasets whose validation split has none (box
# and click folders): ``resolve`` picks "mae" for those.
MASK_METRICS = ("miou", "iou_fish")
DATASETS_WITHOUT_MASKS = ("sample", "boxes", "points")
REQUIRED_SECTIONS = ("model", "loss", "data", "optim", "train")


def _require(cfg: Any, path: str) -> Any:
    """``cfg.<path>`` or a ConfigError naming the missing key."""
    node = cfg
    for part in path.split("."):
        if not hasattr(node, part) and not (isinstance(node, Mapping) and part in node):
            raise ConfigError(f"config key {path!r} is missing")
        node = node[part] if isinstance(node, Mapping) else getattr(node, part)
    return node


def _choice(cfg: Any, path: str, allowed: tuple[str, ...]) -> str:
    value = _require(cfg, path)
    if value not in allowed:
        raise ConfigError(f"config.{path}={value!r} is not one of {allowed}")
    return value


def _int(cfg: Any, path: str, *, minimum: int) -> int:
    value = _require(cfg, path)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"config.{path}={value!r} must be an integer >= {minimum}")
    return value


def _number(cfg: Any, path: str, *, minimum: float, strict: bool = False) -> float:
    value = _require(cfg, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"config.{path}={value!r} must be a number")
    if value < minimum or (strict and value == minimum):
        op = ">" if strict else ">="
        raise ConfigError(f"config.{path}={value!r} must be {op} {minimum}")
    return float(value)


def validate_config(config: ml_collections.ConfigDict) -> None:
    """Raises :class:`ConfigError` naming the first invalid key of a training config.

    Args:
      config: the full experiment config (docs/contracts.md "Configs").
    """
    for section in REQUIRED_SECTIONS:
        _require(config, section)
    config = with_defaults(config)
    _int(config, "seed", minimum=0)
    try:
        InstanceSettings.from_config(config.instances)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"config.instances: {err}") from None
    name = _choice(config, "model.name", MODEL_NAMES)
    if name == "alcfcn":
        _choice(config, "model.backbone", BACKBONES)
    _int(config, "model.n_classes", minimum=1)
    _choice(config, "model.trunk_mode", TRUNK_MODES)
    _choice(config, "model.rw_method", RW_METHODS)
    _choice(config, "model.dtype", DTYPES)
    _number(config, "model.beta", minimum=0.0, strict=True)
    _int(config, "model.logt", minimum=0)
    _int(config, "model.radius", minimum=1)
    if name == "alcfcn":
        _choice(config, "model.cam_head", CAM_HEADS)
        _int(config, "model.decoder_width", minimum=1)
        widths = tuple(config.model.affinity_widths or ())
        if widths and (len(widths) != 3 or any(int(w) < 1 for w in widths)):
            raise ConfigError(
                f"config.model.affinity_widths={widths} must be () or three positive widths"
            )
        rate = _number(config, "model.decoder_dropout", minimum=0.0)
        if rate >= 1.0:
            raise ConfigError(f"config.model.decoder_dropout={rate} must be < 1")
        if config.model.output_stride not in (8, 32):
            raise ConfigError(
                f"config.model.output_stride={config.model.output_stride!r} must be 8 or 32"
            )
    loss = _choice(config, "loss.name", LOSSES)
    n_classes = config.model.n_classes
    if loss in ("lcfcn", "point_level", "cross_entropy") and n_classes < 2:
        raise ConfigError(
            f"config.loss.name={loss!r} needs config.model.n_classes >= 2 (got {n_classes})"
        )
    if loss == "joint" and n_classes > 2:
        raise ConfigError(
            f"config.loss.name='joint' needs config.model.n_classes of 1 or 2 (got {n_classes})"
        )
    if name == "fcn8_vgg16" and config.model.with_affinity:
        raise ConfigError("config.model.with_affinity=True is only supported for model 'alcfcn'")
    _check_affinity_learning(config)
    _check_embedding(config)
    _check_rounds(config)
    _choice(config, "optim.name", OPTIMIZERS)
    _number(config, "optim.lr", minimum=0.0, strict=True)
    _number(config, "optim.weight_decay", minimum=0.0)
    _number(config, "optim.trunk_lr_mult", minimum=0.0)
    _number(config, "optim.clip_grad_norm", minimum=0.0)
    _choice(config, "optim.schedule", SCHEDULES)
    for key in ("b1", "b2"):
        value = _number(config, f"optim.{key}", minimum=0.0)
        if value >= 1.0:
            raise ConfigError(f"config.optim.{key}={value!r} must be in [0, 1)")
    _number(config, "optim.eps", minimum=0.0)
    _int(config, "train.num_steps", minimum=1)
    _int(config, "train.batch_size", minimum=0)
    _int(config, "train.eval_batch_size", minimum=0)
    for key in ("log_every", "eval_every", "checkpoint_every"):
        _int(config, f"train.{key}", minimum=1)
    _int(config, "train.keep_checkpoints", minimum=1)
    _int(config, "train.loss_splits", minimum=0)
    _choice(config, "train.tensorboard", ("auto", "on", "off"))
    _choice(config, "train.select_metric", SELECT_METRICS)
    if "budget" in config:
        _int(config, "budget.n_background", minimum=0)
        _int(config, "budget.n_fish", minimum=0)
        _int(config, "budget.seed", minimum=0)


def _check_affinity_learning(config: ml_collections.ConfigDict) -> None:
    """The optional affinity-learning and walk warm-up keys (absent in older configs)."""
    walk = config.model.name == "alcfcn" and bool(config.model.with_affinity)
    weight = config.loss.affinity_weight
    if weight:
        _number(config, "loss.affinity_weight", minimum=0.0)
        if not walk:
            raise ConfigError(
                "config.loss.affinity_weight > 0 trains the affinity branch: it needs model "
                "'alcfcn' with config.model.with_affinity=True"
            )
        fg = _number(config, "loss.affinity_fg", minimum=0.0)
        bg = _number(config, "loss.affinity_bg", minimum=0.0)
        if not bg < fg <= 1.0:
            raise ConfigError(
                f"config.loss.affinity_bg={bg} and affinity_fg={fg} need 0 <= bg < fg <= 1"
            )
        source = _choice(config, "loss.affinity_labels", LABEL_SOURCES)
        if source == "pseudo_masks" and pseudo_mask_dir(config) is None:
            raise ConfigError(
                "config.loss.affinity_labels='pseudo_masks' reads the training masks of a "
                "stage-1 run: set config.stage1.workdir (a preset with a stage1 section, e.g. "
                "configs/frames.py:alcfcn_outlines)"
            )
    warmup = _int(config, "train.walk_warmup_steps", minimum=0)
    if warmup and not walk:
        raise ConfigError(
            "config.train.walk_warmup_steps > 0 needs the random walk (model 'alcfcn' with "
            "config.model.with_affinity=True)"
        )
    _choice(config, "train.feature_cache", FEATURE_CACHE_MODES)
    _choice(config, "train.feature_cache_dtype", ("float16", "float32"))
    _number(config, "train.feature_cache_memory_mb", minimum=0.0)


def _check_embedding(config: ml_collections.ConfigDict) -> None:
    """The optional WISE embedding keys (``model.embedding_*``, ``loss.embedding_*``)."""
    dim = _int(config, "model.embedding_dim", minimum=0)
    _int(config, "model.embedding_width", minimum=1)
    if dim and config.model.name != "alcfcn":
        raise ConfigError("config.model.embedding_dim > 0 is only supported for model 'alcfcn'")
    weight = _number(config, "loss.embedding_weight", minimum=0.0)
    for key in ("embedding_per_object", "embedding_max_objects"):
        _int(config, f"loss.{key}", minimum=1)
    _int(config, "loss.embedding_background", minimum=0)
    if weight and not dim:
        raise ConfigError(
            "config.loss.embedding_weight > 0 trains the embedding branch: set "
            "config.model.embedding_dim > 0 (e.g. 64)"
        )
    if weight and config.loss.name != "lcfcn":
        raise ConfigError(
            "config.loss.embedding_weight > 0 needs config.loss.name='lcfcn' (its proposals are "
            "the model's blobs and the clicks)"
        )


def _check_rounds(config: ml_collections.ConfigDict) -> None:
    """``pm.rounds`` (pseudo-mask configs only): >= 1; more than 1 needs pseudo masks to start
    from (``stage1.workdir`` or ``data.pseudo_mask_dir``)."""
    if "pm" not in config:
        return
    rounds = _int(config, "pm.rounds", minimum=1)
    if rounds > 1 and pseudo_mask_dir(config) is None:
        raise ConfigError(
            f"config.pm.rounds={rounds} trains on pseudo masks: set config.stage1.workdir "
            "(the stage-1 run whose pseudo masks round 1 trains on)"
        )


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config every module reads: validated, with every optional key filled.

    Entry points call this once; below them values are read as plain attributes
    (``config.model.cam_head``), never with a fallback. Returns an unlocked copy; the input is
    not changed. Idempotent.

    Raises:
      ConfigError: an invalid value (:func:`validate_config`).
    """
    validate_config(config)
    out = with_defaults(config)
    dataset = str(out.data.dataset)
    if dataset in DATASETS_WITHOUT_MASKS and out.train.select_metric in MASK_METRICS:
        # No validation masks: mIoU is never finite, so no best checkpoint would ever be chosen.
        logging.warning(
            "config.train.select_metric=%r needs segmentation masks, which dataset %r has not; "
            "selecting the best checkpoint by 'mae' (count error) instead",
            out.train.select_metric,
            dataset,
        )
        out.train.select_metric = "mae"
    return out


def with_defaults(config: Any) -> ml_collections.ConfigDict:
    """An unlocked copy of ``config`` with every key it lacks at its default
    (``train.defaults``), except the ``REQUIRED`` ones. ``stage1`` is filled only where it
    exists, and ``pm`` (the pseudo-mask rounds) only in configs that train on pseudo masks (a
    ``stage1`` or ``pm`` section)."""
    out = ml_collections.ConfigDict(to_plain(config))
    for section, fields in defaults.SECTIONS.items():
        if section not in out:
            if section == "stage1" or (section == "pm" and "stage1" not in out):
                continue
            out[section] = ml_collections.ConfigDict()
        required = defaults.REQUIRED.get(section, ())
        for key, value in fields.items():
            if key not in out[section] and key not in required:
                out[section][key] = value
    if "dataset" in out.data and out.data.dataset in DATASETS:
        for key, value in data_defaults(str(out.data.dataset)).items():
            if key not in out.data:
                out.data[key] = value
    return out
