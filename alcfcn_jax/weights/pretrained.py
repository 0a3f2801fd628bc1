"""A network with its pretrained weights: ``build_pretrained`` and ``load_weights``.

``build_pretrained(model_cfg, rngs=...)`` builds the network of a config (``models.build_model``)
and loads ``model_cfg.weights`` with the importer of its backbone (``load_weights``).
"""

from __future__ import annotations

import os
from typing import Any

from flax import nnx

from alcfcn_jax.models import build_model, complete_config


def build_pretrained(model_cfg: Any, *, rngs: nnx.Rngs) -> nnx.Module:
    """``models.build_model(model_cfg)``, then ``model_cfg.weights`` loaded when it is set.

    Raises:
      ValueError: as ``build_model``; or no importer for the backbone.
      FileNotFoundError, WeightImportError: the weights cannot be loaded.
    """
    cfg = complete_config(model_cfg)
    model = build_model(cfg, rngs=rngs)
    if cfg.weights:
        backbone = "vgg16" if cfg.name == "fcn8_vgg16" else str(cfg.backbone)
        allow_missing = tuple(cfg.weights_allow_missing or ())
        load_weights(model, backbone, str(cfg.weights), allow_missing=allow_missing)
    return model


def load_weights(
    model: nnx.Module, backbone: str, path: str | os.PathLike, *, allow_missing: tuple = ()
) -> None:
    """Loads pretrained weights into ``model`` with the importer of ``backbone``.

    Args:
      model: a model built by :func:`build_model`.
      backbone: "resnet38" (SEAM/PSA ResNet-38d incl. heads), "efficientnet_lite0" (ImageNet
        trunk weights into ``model.trunk``) or "vgg16" (ImageNet VGG-16 into the FCN8).
      path: the weight file.
      allow_missing: names allowed absent (ResNet-38d only; empty = importer default, fc8).

    Raises:
      ValueError: no importer for this backbone, or ``allow_missing`` given where unsupported.
      FileNotFoundError, WeightImportError: from the importer.
    """
    if backbone == "resnet38":
        from alcfcn_jax.weights.resnet38 import DEFAULT_ALLOW_MISSING, load_resnet38

        load_resnet38(model, path, allow_missing=allow_missing or DEFAULT_ALLOW_MISSING)
        return
    if allow_missing:
        raise ValueError(
            f"model.weights_allow_missing is only supported for resnet38, not {backbone}"
        )
    if backbone == "efficientnet_lite0":
        from alcfcn_jax.weights.efficientnet import load_efficientnet_lite0

        load_efficientnet_lite0(model.trunk, path)
        return
    if backbone == "vgg16":
        from alcfcn_jax.weights import vgg16

        suffix = os.path.splitext(os.fspath(path))[1].lower()
        if suffix == ".h5":
            vgg16.load_keras_vgg16(model, path)
        else:
            vgg16.load_torchvision_vgg16(model, path)
        return
    raise ValueError(f"no weight importer for backbone {backbone!r}")
