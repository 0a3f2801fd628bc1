"""Networks: ResNet-38d / EfficientNet-Lite0 / tiny trunks, A-LCFCN heads and model, FCN8-VGG16.

``build_model(model_cfg, rngs=...)`` builds the model a config names and, if ``model_cfg.weights``
is set, loads those weights with the matching importer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
from flax import nnx

from alcfcn_jax.models.alcfcn import ALCFCN
from alcfcn_jax.models.heads import ActivationHead, AffinityHead
from alcfcn_jax.models.resnet38 import ResNet38d
from alcfcn_jax.models.tiny import TinyTrunk

__all__ = [
    "ALCFCN",
    "ActivationHead",
    "AffinityHead",
    "ResNet38d",
    "TinyTrunk",
    "build_model",
    "build_trunk",
]

_BACKBONES = ("resnet38", "efficientnet_lite0", "tiny")
_NAMES = ("alcfcn", "fcn8_vgg16")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Affinity head widths (f8_3, f8_4, f8_5): the reference's for real trunks, small for the tiny one.
_AFFINITY_WIDTHS = {"tiny": (8, 8, 16)}
_REFERENCE_AFFINITY_WIDTHS = (64, 128, 256)


def _get(cfg: Any, name: str, default: Any) -> Any:
    """Reads a config field from a ConfigDict, a dict or any object with attributes."""
    if isinstance(cfg, Mapping) or hasattr(cfg, "get"):
        value = cfg.get(name, default)
    else:
        value = getattr(cfg, name, default)
    return default if value is None else value


def _dtype(cfg: Any):
    name = str(_get(cfg, "dtype", "float32"))
    if name not in _DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def build_trunk(
    backbone: str,
    *,
    dtype=jnp.float32,
    rngs: nnx.Rngs,
    output_stride: int = 8,
    taps: tuple[str, ...] = (),
) -> nnx.Module:
    """Builds a trunk by name (``resnet38``, ``efficientnet_lite0`` or ``tiny``).

    ``output_stride`` (8 or 32) and ``taps`` (three tap points, empty = the default) apply to
    EfficientNet-Lite0 only; the other trunks are stride 8 with fixed taps.
    """
    if backbone in ("resnet38", "tiny") and (output_stride != 8 or taps):
        raise ValueError(
            f"model.output_stride and model.trunk_taps are EfficientNet-Lite0 options; "
            f"{backbone} is a fixed stride-8 trunk (got output_stride={output_stride}, "
            f"trunk_taps={taps})"
        )
    if backbone == "resnet38":
        return ResNet38d(dtype=dtype, rngs=rngs)
    if backbone == "tiny":
        return TinyTrunk(dtype=dtype, rngs=rngs)
    if backbone == "efficientnet_lite0":
        from alcfcn_jax.models.efficientnet_lite import DEFAULT_TAPS, EfficientNetLite0Trunk

        if output_stride not in (8, 32):
            raise ValueError(f"model.output_stride must be 8 or 32, got {output_stride}")
        return EfficientNetLite0Trunk(
            dtype=dtype, rngs=rngs, dilated=output_stride == 8, taps=tuple(taps) or DEFAULT_TAPS
        )
    raise ValueError(f"model.backbone must be one of {_BACKBONES}, got {backbone!r}")


def build_model(model_cfg: Any, *, rngs: nnx.Rngs) -> nnx.Module:
    """Builds the segmentation model described by ``model_cfg`` (see docs/contracts.md).

    Args:
      model_cfg: config with ``name`` ("alcfcn" | "fcn8_vgg16"), ``backbone`` ("resnet38" |
        "efficientnet_lite0" | "tiny"), ``n_classes``, ``with_affinity``, ``trunk_mode``, ``beta``,
        ``logt``, ``radius``, ``rw_method``, ``dtype`` ("float32" | "bfloat16"), ``weights``
        (path or "") and ``weights_allow_missing`` (names; empty means the importer's default);
        optionally ``cam_head`` ("fc8" | "decoder"), ``decoder_width``, ``decoder_dropout``,
        ``affinity_widths`` (f8_3/f8_4/f8_5 widths; empty = the reference's 64/128/256), and for
        EfficientNet-Lite0 ``output_stride`` (8 | 32) and ``trunk_taps`` (three tap points);
        optionally ``input_format`` for FCN8-VGG16 (default "caffe_bgr" for ``.h5`` weights,
        else "imagenet").
      rngs: ``nnx.Rngs`` with ``params`` and ``dropout`` streams.

    Returns:
      The model, with weights loaded when ``model_cfg.weights`` is set.

    Raises:
      ValueError: an unknown name, backbone, mode or dtype.
      FileNotFoundError, alcfcn_jax.weights.WeightImportError: the weights cannot be loaded.
    """
    name = str(_get(model_cfg, "name", "alcfcn"))
    dtype = _dtype(model_cfg)
    n_classes = int(_get(model_cfg, "n_classes", 2))
    if name == "alcfcn":
        backbone = str(_get(model_cfg, "backbone", "resnet38"))
        trunk = build_trunk(
            backbone,
            dtype=dtype,
            rngs=rngs,
            output_stride=int(_get(model_cfg, "output_stride", 8)),
            taps=tuple(_get(model_cfg, "trunk_taps", ()) or ()),
        )
        model = ALCFCN(
            trunk,
            n_classes,
            with_affinity=bool(_get(model_cfg, "with_affinity", True)),
            trunk_mode=str(_get(model_cfg, "trunk_mode", "two_pass")),
            beta=float(_get(model_cfg, "beta", 8.0)),
            logt=int(_get(model_cfg, "logt", 4)),
            radius=int(_get(model_cfg, "radius", 5)),
            rw_method=str(_get(model_cfg, "rw_method", "dense")),
            affinity_widths=tuple(_get(model_cfg, "affinity_widths", ()) or ())
            or _AFFINITY_WIDTHS.get(backbone, _REFERENCE_AFFINITY_WIDTHS),
            cam_head=str(_get(model_cfg, "cam_head", "fc8")),
            decoder_width=int(_get(model_cfg, "decoder_width", 96)),
            decoder_dropout=float(_get(model_cfg, "decoder_dropout", 0.0)),
            dtype=dtype,
            rngs=rngs,
        )
    elif name == "fcn8_vgg16":
        from alcfcn_jax.models.vgg16_fcn8 import FCN8VGG16

        backbone = "vgg16"
        # Keras (.h5) VGG weights expect Caffe-style BGR input; torchvision's ImageNet-normalised.
        weights_path = str(_get(model_cfg, "weights", "") or "")
        default_format = "caffe_bgr" if weights_path.lower().endswith(".h5") else "imagenet"
        input_format = str(_get(model_cfg, "input_format", default_format))
        model = FCN8VGG16(n_classes, dtype=dtype, input_format=input_format, rngs=rngs)
    else:
        raise ValueError(f"model.name must be one of {_NAMES}, got {name!r}")

    weights = str(_get(model_cfg, "weights", "") or "")
    if weights:
        allow_missing = tuple(_get(model_cfg, "weights_allow_missing", ()) or ())
        load_weights(model, backbone, weights, allow_missing=allow_missing)
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
