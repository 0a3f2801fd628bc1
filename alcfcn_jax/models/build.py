"""Builds the network a model config names: ``build_model``, ``build_trunk`` and the model
options with their defaults (``MODEL_DEFAULTS``, the names a config may use).

``build_model(model_cfg, rngs=...)`` builds the model freshly initialised. Loading pretrained
weights is the job of ``alcfcn_jax.weights`` (``weights.build_pretrained``): the networks do not
know file formats.
"""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import ml_collections
from flax import nnx

from alcfcn_jax.models.alcfcn import ALCFCN, CAM_HEADS, RW_METHODS, TRUNK_MODES
from alcfcn_jax.models.resnet38 import ResNet38d
from alcfcn_jax.models.tiny import TinyTrunk

__all__ = [
    "BACKBONES",
    "CAM_HEADS",
    "DTYPES",
    "MODEL_DEFAULTS",
    "MODEL_NAMES",
    "RW_METHODS",
    "TRUNKS",
    "TRUNK_MODES",
    "build_model",
    "build_trunk",
    "complete_config",
]

# The names a config may use (``train.config.validate_config`` checks against these).
MODEL_NAMES = ("alcfcn", "fcn8_vgg16")
TRUNKS = ("resnet38", "efficientnet_lite0", "tiny")  # A-LCFCN trunks
BACKBONES = (*TRUNKS, "vgg16")  # vgg16: the FCN8's
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
DTYPES = tuple(_DTYPES)
# Affinity head widths (f8_3, f8_4, f8_5): the reference's for real trunks, small for the tiny one.
_AFFINITY_WIDTHS = {"tiny": (8, 8, 16)}
_REFERENCE_AFFINITY_WIDTHS = (64, 128, 256)


# Every model option and its default (the reference's A-LCFCN; the walk picks the dense or the
# sparse form by size, the same numbers); ``build_model`` reads a config through these, and
# ``train.defaults`` makes them the ``config.model`` table of every preset and of ``resolve``.
MODEL_DEFAULTS: dict[str, Any] = {
    "name": "alcfcn",
    "backbone": "resnet38",
    "n_classes": 2,
    "with_affinity": True,
    "trunk_mode": "two_pass",
    "beta": 8.0,
    "logt": 4,
    "radius": 5,
    "rw_method": "auto",
    "dtype": "float32",
    "weights": "",
    "weights_allow_missing": (),
    "cam_head": "fc8",
    "decoder_width": 96,
    "decoder_dropout": 0.0,
    "output_stride": 8,
    "affinity_widths": (),
    "trunk_taps": (),
    "embedding_dim": 0,
    "embedding_width": 64,
}


def complete_config(model_cfg: Any) -> ml_collections.ConfigDict:
    """A copy of a model config (ConfigDict or mapping) with every option, the missing ones (or
    None) at :data:`MODEL_DEFAULTS`."""
    given = model_cfg.to_dict() if hasattr(model_cfg, "to_dict") else dict(model_cfg)
    out = dict(MODEL_DEFAULTS)
    out.update({k: v for k, v in given.items() if v is not None})
    return ml_collections.ConfigDict(out)


def _dtype(name: str):
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
    raise ValueError(f"model.backbone must be one of {TRUNKS}, got {backbone!r}")


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
        optionally ``embedding_dim`` (WISE embedding branch, 0 = none) and ``embedding_width``;
        optionally ``input_format`` for FCN8-VGG16 (default "caffe_bgr" for ``.h5`` weights,
        else "imagenet").
      rngs: ``nnx.Rngs`` with ``params`` and ``dropout`` streams.

    Returns:
      The model, freshly initialised (``model_cfg.weights`` is read only to pick the FCN8's
      default input format; ``alcfcn_jax.weights.build_pretrained`` loads the weights).

    Raises:
      ValueError: an unknown name, backbone, mode or dtype.
    """
    cfg = complete_config(model_cfg)
    name = str(cfg.name)
    dtype = _dtype(str(cfg.dtype))
    n_classes = int(cfg.n_classes)
    if name == "alcfcn":
        backbone = str(cfg.backbone)
        trunk = build_trunk(
            backbone,
            dtype=dtype,
            rngs=rngs,
            output_stride=int(cfg.output_stride),
            taps=tuple(cfg.trunk_taps or ()),
        )
        model = ALCFCN(
            trunk,
            n_classes,
            with_affinity=bool(cfg.with_affinity),
            trunk_mode=str(cfg.trunk_mode),
            beta=float(cfg.beta),
            logt=int(cfg.logt),
            radius=int(cfg.radius),
            rw_method=str(cfg.rw_method),
            affinity_widths=tuple(cfg.affinity_widths or ())
            or _AFFINITY_WIDTHS.get(backbone, _REFERENCE_AFFINITY_WIDTHS),
            cam_head=str(cfg.cam_head),
            decoder_width=int(cfg.decoder_width),
            decoder_dropout=float(cfg.decoder_dropout),
            embedding_dim=int(cfg.embedding_dim),
            embedding_width=int(cfg.embedding_width),
            dtype=dtype,
            rngs=rngs,
        )
    elif name == "fcn8_vgg16":
        from alcfcn_jax.models.vgg16_fcn8 import FCN8VGG16

        # Keras (.h5) VGG weights expect Caffe-style BGR input; torchvision's ImageNet-normalised.
        weights_path = str(cfg.weights or "")
        default_format = "caffe_bgr" if weights_path.lower().endswith(".h5") else "imagenet"
        input_format = str(cfg.input_format if "input_format" in cfg else default_format)
        model = FCN8VGG16(n_classes, dtype=dtype, input_format=input_format, rngs=rngs)
    else:
        raise ValueError(f"model.name must be one of {MODEL_NAMES}, got {name!r}")

    return model
