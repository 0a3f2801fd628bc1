"""Import/export of ResNet-38d A-LCFCN weights in the PSA/SEAM PyTorch naming.

The reference model ``resnet38_aff.Net`` keeps the trunk blocks and the heads as attributes of one
module, so its state dict reads::

    conv1a.weight
    b2.bn_branch2a.{weight,bias,running_mean,running_var,num_batches_tracked}
    b2.conv_branch2a.weight, b2.bn_branch2b1.*, b2.conv_branch2b1.weight, b2.conv_branch1.weight
    ... b2_1 ... b5_2 (ResBlock: conv_branch1 only where the shape changes)
    b6/b7 (ResBlock_bot): bn_branch2a, conv_branch1, conv_branch2a, bn_branch2b1, conv_branch2b1,
          bn_branch2b2, conv_branch2b2
    bn7.*
    f8_3.weight, f8_4.weight, f8_5.weight, f9.weight     (affinity branch)
    fc8.weight                                            (activation branch; not in SEAM's file)

The JAX modules use the same attribute names, so the mapping is generated from the model's module
tree: a conv ``<path>.kernel`` <- ``<path>.weight`` (OIHW -> HWIO), a FrozenBatchNorm
``scale/bias/mean/var`` <- ``weight/bias/running_mean/running_var``. ``num_batches_tracked``
entries are ignored explicitly. ``fc8.weight`` is allowed missing by default (the paper initialises
it fresh). Head keys (``f8_*``, ``f9``, ``fc8``) in a checkpoint are ignored, by name, only when the
target model has no such head (a bare trunk, or the LCFCN baseline without affinity branch).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np
from flax import nnx

from alcfcn_jax.models.layers import FrozenBatchNorm
from alcfcn_jax.weights.common import (
    CONV_OIHW_TO_HWIO,
    IDENTITY,
    Transform,
    WeightImportError,
    apply_mapping,
    export_arrays,
    load_arrays,
)

__all__ = [
    "AFFINITY_HEAD_KEYS",
    "DEFAULT_ALLOW_MISSING",
    "export_resnet38",
    "load_resnet38",
    "resnet38_mapping",
    "torch_style_mapping",
]

NameMapping = dict[str, tuple[tuple, Transform]]
AFFINITY_HEAD_KEYS = ("f8_3.weight", "f8_4.weight", "f8_5.weight", "f9.weight")
ACTIVATION_HEAD_KEYS = ("fc8.weight",)
DEFAULT_ALLOW_MISSING = ("fc8.weight",)
_BN_FIELDS = (
    ("weight", "scale"),
    ("bias", "bias"),
    ("running_mean", "mean"),
    ("running_var", "var"),
)


def torch_style_mapping(
    module: nnx.Module, *, source_prefix: str = "", target_prefix: tuple = ()
) -> NameMapping:
    """Mapping for a module whose attribute names are the torch module names.

    Every ``nnx.Conv`` at path ``p`` maps ``<p>.weight`` (and ``<p>.bias`` if it has one); every
    :class:`FrozenBatchNorm` maps its four tensors. Other modules carry no weights here.

    Args:
      module: the NNX module (trunk, block or head).
      source_prefix: prepended to source names (e.g. ``"b2."``).
      target_prefix: prepended to target paths (e.g. ``("trunk",)`` when ``module`` is the trunk of
        the model the mapping is applied to).

    Returns:
      ``{source_name: (target path, Transform)}``, sorted by source name.
    """
    mapping: NameMapping = {}
    for path, sub in nnx.iter_modules(module):
        dotted = ".".join(str(p) for p in path)
        src = source_prefix + dotted
        tgt = tuple(target_prefix) + tuple(path)
        if isinstance(sub, nnx.Conv):
            mapping[f"{src}.weight"] = (tgt + ("kernel",), CONV_OIHW_TO_HWIO)
            if sub.bias is not None:
                mapping[f"{src}.bias"] = (tgt + ("bias",), IDENTITY)
        elif isinstance(sub, FrozenBatchNorm):
            for torch_name, jax_name in _BN_FIELDS:
                mapping[f"{src}.{torch_name}"] = (tgt + (jax_name,), IDENTITY)
    return dict(sorted(mapping.items()))


def _parts(model: nnx.Module) -> tuple[nnx.Module, tuple, nnx.Module | None, nnx.Module | None]:
    """(trunk, trunk path, activation head or None, affinity head or None) of a supported model."""
    from alcfcn_jax.models.alcfcn import ALCFCN
    from alcfcn_jax.models.resnet38 import ResNet38d

    if isinstance(model, ResNet38d):
        return model, (), None, None
    if isinstance(model, ALCFCN) and isinstance(model.trunk, ResNet38d):
        aff = model.aff_head if model.with_affinity else None
        return model.trunk, ("trunk",), model.cam_head, aff
    raise WeightImportError(
        f"ResNet-38d weights need a ResNet38d trunk or an ALCFCN with a ResNet38d trunk, "
        f"got {type(model).__name__}"
    )


def resnet38_mapping(model: nnx.Module) -> NameMapping:
    """The SEAM/PSA-named mapping for a ResNet38d trunk or a ResNet-38d ALCFCN.

    Args:
      model: ``ResNet38d`` or ``ALCFCN`` whose trunk is a ``ResNet38d``.

    Returns:
      ``{source_name: (target path in nnx.state(model), Transform)}``.
    """
    trunk, trunk_path, cam_head, aff_head = _parts(model)
    mapping = torch_style_mapping(trunk, target_prefix=trunk_path)
    if cam_head is not None:
        # The torch model keeps fc8/f8_*/f9 at its top level: no source prefix.
        mapping.update(torch_style_mapping(cam_head, target_prefix=("cam_head",)))
    if aff_head is not None:
        mapping.update(torch_style_mapping(aff_head, target_prefix=("aff_head",)))
    return mapping


def _ignored_keys(model: nnx.Module) -> set[str]:
    _, _, cam_head, aff_head = _parts(model)
    ignored: set[str] = set()
    if cam_head is None:
        ignored.update(ACTIVATION_HEAD_KEYS)
    if aff_head is None:
        ignored.update(AFFINITY_HEAD_KEYS)
    return ignored


def load_resnet38(
    model: nnx.Module,
    weights: str | os.PathLike | Mapping[str, np.ndarray],
    *,
    allow_missing: Iterable[str] = DEFAULT_ALLOW_MISSING,
) -> list[str]:
    """Loads SEAM/PSA ResNet-38d weights (``resnet38_aff_SEAM.pth`` or an exported ``.npz``).

    Args:
      model: ``ALCFCN`` with a ``ResNet38d`` trunk, or a bare ``ResNet38d``; modified in place,
        only if every check passes.
      weights: a ``.pth``/``.pt``/``.npz`` path, or already loaded ``{name: array}``.
      allow_missing: source names allowed to be absent (kept at their fresh init). Names of heads
        the model does not have are dropped from this list.

    Returns:
      The allowed-missing names that were absent from the checkpoint.

    Raises:
      FileNotFoundError: the path does not exist.
      WeightImportError: one message listing missing, unexpected and mis-shaped entries.
    """
    if isinstance(weights, Mapping):
        arrays, source = dict(weights), "<arrays>"
    else:
        arrays, source = load_arrays(weights), os.fspath(weights)
    mapping = resnet38_mapping(model)
    ignored = _ignored_keys(model)
    allowed = [n for n in allow_missing if n not in ignored]
    return apply_mapping(
        model,
        arrays,
        mapping,
        allow_missing=allowed,
        ignore=lambda k: k.endswith(".num_batches_tracked") or k in ignored,
        source=source,
    )


def export_resnet38(model: nnx.Module) -> dict[str, np.ndarray]:
    """Exports the model's weights as a SEAM/PSA-named state dict of numpy arrays (OIHW convs)."""
    return export_arrays(model, resnet38_mapping(model))
