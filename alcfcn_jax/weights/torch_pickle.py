"""Read PyTorch checkpoints (``torch.save`` files) into numpy arrays without importing torch.

Both serialisation formats written by ``torch.save`` are supported:

* the zip format (torch >= 1.6): ``<root>/data.pkl`` plus one raw little-endian byte file per
  storage under ``<root>/data/<key>``;
* the legacy format (older checkpoints such as the PSA/SEAM weights): a magic number, protocol
  version and system-info pickles, the object pickle, the list of storage keys, then the raw
  storages one after another, each preceded by its element count as an int64.

The object pickle is read with a *restricted* unpickler: ``find_class`` only resolves the handful of
names needed to rebuild tensors (``torch._utils._rebuild_tensor*``, ``torch._utils._rebuild_parameter``,
storage types, dtypes, ``collections.OrderedDict`` and a few harmless builtins). Any other global
(a class instance, ``os.system``, ``builtins.eval``, a pickled ``nn.Module``...) is refused with
:class:`UnsafeCheckpointError`, so a checkpoint can never run code. Quantised, sparse and nested
tensors are refused too: they never occur in the weights this project reads.

Which dict is the state dict (:func:`select_state_dict`):

1. if the loaded object is a mapping whose values are all tensors, it is the state dict;
2. otherwise, if it is a mapping, the first of the wrapper keys ``state_dict``,
   ``model_state_dict``, ``model``, ``net``, ``network``, ``module`` whose value satisfies rule 1
   (applied recursively, so ``{"model": {"state_dict": {...}}}`` works) is used;
3. anything else is an error that lists the top-level keys found.

If *every* key of the chosen state dict starts with ``module.`` (a checkpoint written from
``nn.DataParallel``), that prefix is removed; a partial prefix is left untouched.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "TorchCheckpointError",
    "UnsafeCheckpointError",
    "load_checkpoint",
    "load_state_dict",
    "select_state_dict",
]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module")


class TorchCheckpointError(ValueError):
    """The file is not a readable PyTorch checkpoint, or holds no usable state dict."""


class UnsafeCheckpointError(TorchCheckpointError):
    """The checkpoint's pickle asks for a global outside the tensor-rebuilding allowlist."""


def _bfloat16_dtype() -> np.dtype:
    # ml_dtypes ships with jax; numpy itself has no bfloat16.
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


# Storage class name (legacy typed storages) -> numpy dtype. Strings for lazily resolved types.
_STORAGE_DTYPES: dict[str, Any] = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16",
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64,
    "ComplexDoubleStorage": np.complex128,
    "UntypedStorage": np.uint8,
}

# torch dtype attribute name -> numpy dtype (for ``_rebuild_tensor_v3`` and untyped storages).
_TORCH_DTYPES: dict[str, Any] = {
    "float64": np.float64,
    "double": np.float64,
    "float32": np.float32,
    "float": np.float32,
    "float16": np.float16,
    "half": np.float16,
    "bfloat16": "bfloat16",
    "int64": np.int64,
    "long": np.int64,
    "int32": np.int32,
    "int": np.int32,
    "int16": np.int16,
    "short": np.int16,
    "int8": np.int8,
    "uint8": np.uint8,
    "bool": np.bool_,
    "complex64": np.complex64,
    "complex128": np.complex128,
}


def _np_dtype(spec: Any) -> np.dtype:
    return _bfloat16_dtype() if spec == "bfloat16" else np.dtype(spec)


@dataclass(frozen=True)
class _StorageType:
    """Stand-in for a torch storage class found in the pickle (``torch.FloatStorage``...)."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return _np_dtype(_STORAGE_DTYPES[self.name])


@dataclass(frozen=True)
class _TorchDtype:
    """Stand-in for a ``torch.<dtype>`` object found in the pickle."""

    name: str

    @property
    def dtype(self) -> np.dtype:
        return _np_dtype(_TORCH_DTYPES[self.name])


@dataclass
class _Storage:
    """A storage referenced by the pickle; its bytes are attached once they have been read."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _LazyTensor:
    """A tensor described by the pickle; materialised once every storage has been read."""

    storage: _Storage
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: np.dtype | None = None  # set by _rebuild_tensor_v3 on untyped (byte) storages


def _rebuild_tensor(storage, storage_offset, size, stride, *_unused) -> _LazyTensor:
    if not isinstance(storage, _Storage):
        raise TorchCheckpointError(f"tensor rebuild got {type(storage).__name__}, not a storage")
    return _LazyTensor(storage, int(storage_offset), tuple(size), tuple(stride))


def _rebuild_tensor_v3(
    storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None
) -> _LazyTensor:
    del requires_grad, backward_hooks, metadata
    tensor = _rebuild_tensor(storage, storage_offset, size, stride)
    if not isinstance(dtype, _TorchDtype):
        raise TorchCheckpointError(f"_rebuild_tensor_v3 got dtype {dtype!r}")
    tensor.dtype = dtype.dtype
    return tensor


def _rebuild_parameter(data, requires_grad, backward_hooks, state=None) -> _LazyTensor:
    # An nn.Parameter is just its data here.
    del requires_grad, backward_hooks, state
    if not isinstance(data, _LazyTensor):
        raise TorchCheckpointError(f"_rebuild_parameter got {type(data).__name__}")
    return data


def _rebuild_from_type_v2(func, new_type, args, state) -> _LazyTensor:
    # Used by torch for tensors carrying a __dict__; only plain Tensor/Parameter are accepted.
    del state
    if new_type not in (_TENSOR_CLASS, _PARAMETER_CLASS):
        raise UnsafeCheckpointError(f"tensor subclass {new_type!r} is not supported")
    return func(*args)


_TENSOR_CLASS = object()  # markers standing in for torch.Tensor / torch.nn.Parameter
_PARAMETER_CLASS = object()


def _allowed_globals() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("torch", "Tensor"): _TENSOR_CLASS,
        ("torch.nn.parameter", "Parameter"): _PARAMETER_CLASS,
        ("torch", "Size"): tuple,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
    }
    for name in _STORAGE_DTYPES:
        allowed[("torch", name)] = _StorageType(name)
        # Some old files name the CUDA storage class of GPU-saved tensors; the bytes are the same.
        allowed[("torch.cuda", name)] = _StorageType(name)
    allowed[("torch.storage", "UntypedStorage")] = _StorageType("UntypedStorage")
    for name in _TORCH_DTYPES:
        allowed[("torch", name)] = _TorchDtype(name)
    return allowed


_ALLOWED = _allowed_globals()


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only allow-listed globals and torch storage references."""

    def __init__(self, file, source: str, make_storage: Callable[[tuple], _Storage]):
        super().__init__(file, encoding="latin1")
        self._source = source
        self._make_storage = make_storage

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafeCheckpointError(
                f"{self._source}: the checkpoint pickle references '{module}.{name}', which is not "
                "needed to rebuild tensors; refusing to load it (it could run code). Re-save the "
                "weights as a plain state dict (torch.save(model.state_dict(), path)) or as .npz."
            ) from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchCheckpointError(f"{self._source}: unsupported persistent id {pid!r}")
        return self._make_storage(pid)


def _storage_from_pid(pid: tuple, storages: dict[str, _Storage], source: str) -> _Storage:
    # pid = ('storage', storage_type, key, location, numel[, view_metadata])
    if len(pid) < 5 or not isinstance(pid[1], _StorageType):
        raise TorchCheckpointError(f"{source}: malformed storage reference {pid!r}")
    if len(pid) > 5 and pid[5] is not None:
        raise TorchCheckpointError(
            f"{source}: storage views (legacy view_metadata) are not supported"
        )
    storage_type, key, numel = pid[1], str(pid[2]), int(pid[4])
    if key not in storages:
        storages[key] = _Storage(key, storage_type.dtype, numel)
    return storages[key]


def _materialise(obj: Any, source: str) -> Any:
    if isinstance(obj, _LazyTensor):
        return _tensor_to_numpy(obj, source)
    if isinstance(obj, collections.OrderedDict):
        return collections.OrderedDict((k, _materialise(v, source)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialise(v, source) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialise(v, source) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v, source) for v in obj)
    return obj


def _tensor_to_numpy(t: _LazyTensor, source: str) -> np.ndarray:
    raw = t.storage.data
    if raw is None:
        raise TorchCheckpointError(f"{source}: storage {t.storage.key!r} was never read")
    flat = raw.view(t.dtype) if t.dtype is not None else raw
    if len(t.size) != len(t.stride):
        raise TorchCheckpointError(f"{source}: tensor size {t.size} and stride {t.stride} differ")
    if any(s == 0 for s in t.size):
        return np.zeros(t.size, flat.dtype)
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if t.offset < 0 or any(s < 0 for s in t.stride) or last >= flat.size:
        raise TorchCheckpointError(
            f"{source}: tensor (offset {t.offset}, size {t.size}, stride {t.stride}) reaches past "
            f"its storage {t.storage.key!r} of {flat.size} elements"
        )
    base = flat[t.offset :]
    strides = tuple(s * flat.itemsize for s in t.stride)
    view = np.lib.stride_tricks.as_strided(base, shape=t.size, strides=strides, writeable=False)
    return np.array(view, copy=True)


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise TorchCheckpointError(
                f"{path}: zip archive without exactly one '<root>/data.pkl' (found {pkl}); "
                "not a torch.save file"
            )
        root = pkl[0][: -len("data.pkl")]
        order_file = root + "byteorder"
        if order_file in names and zf.read(order_file).decode().strip() != "little":
            raise TorchCheckpointError(f"{path}: big-endian checkpoints are not supported")
        storages: dict[str, _Storage] = {}
        unpickler = _RestrictedUnpickler(
            io.BytesIO(zf.read(pkl[0])), path, lambda pid: _storage_from_pid(pid, storages, path)
        )
        obj = unpickler.load()
        for key, st in storages.items():
            member = f"{root}data/{key}"
            if member not in names:
                raise TorchCheckpointError(f"{path}: storage file {member!r} missing from archive")
            buf = zf.read(member)
            need = st.numel * st.dtype.itemsize
            if len(buf) < need:
                raise TorchCheckpointError(
                    f"{path}: storage {member!r} holds {len(buf)} bytes, expected {need}"
                )
            st.data = np.frombuffer(buf[:need], dtype=st.dtype.newbyteorder("<"))
    return _materialise(obj, path)


def _load_legacy(path: str) -> Any:
    with open(path, "rb") as f:
        data = f.read()
    stream = io.BytesIO(data)

    def plain() -> Any:
        return _RestrictedUnpickler(stream, path, _no_storage(path)).load()

    try:
        magic = plain()
    except UnsafeCheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any pickle failure means "not a checkpoint"
        raise TorchCheckpointError(f"{path}: not a PyTorch checkpoint ({e})") from e
    if magic != _LEGACY_MAGIC:
        raise TorchCheckpointError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    protocol = plain()
    if protocol != 1001:
        raise TorchCheckpointError(f"{path}: unsupported legacy protocol version {protocol}")
    sys_info = plain()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise TorchCheckpointError(f"{path}: big-endian checkpoints are not supported")
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(
        stream, path, lambda pid: _storage_from_pid(pid, storages, path)
    ).load()
    keys = plain()
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise TorchCheckpointError(f"{path}: storage key {key!r} not referenced by any tensor")
        header = stream.read(8)
        if len(header) != 8:
            raise TorchCheckpointError(f"{path}: truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", header)
        nbytes = numel * st.dtype.itemsize
        buf = stream.read(nbytes)
        if len(buf) != nbytes:
            raise TorchCheckpointError(f"{path}: truncated inside storage {key!r}")
        st.data = np.frombuffer(buf, dtype=st.dtype.newbyteorder("<"))
    return _materialise(obj, path)


def _no_storage(path: str) -> Callable[[tuple], _Storage]:
    def refuse(pid: tuple) -> _Storage:
        raise TorchCheckpointError(f"{path}: unexpected storage reference {pid!r} in a header")

    return refuse


def load_checkpoint(path: str | os.PathLike) -> Any:
    """Loads a ``torch.save`` file into plain Python containers of numpy arrays.

    Args:
      path: a ``.pth``/``.pt`` file written by ``torch.save`` (zip or legacy format).

    Returns:
      The saved object with every tensor replaced by a numpy array (dtype, shape, strides and
      storage offset honoured; arrays are C-contiguous copies).

    Raises:
      FileNotFoundError: the file does not exist.
      UnsafeCheckpointError: the pickle references anything but tensor-rebuilding globals.
      TorchCheckpointError: the file is not a readable PyTorch checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"PyTorch checkpoint not found: {path}")
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)


def _is_tensor_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())
    )


def select_state_dict(obj: Any, source: str = "<checkpoint>") -> dict[str, np.ndarray]:
    """Picks the state dict out of a loaded checkpoint object (rules in the module docstring).

    Args:
      obj: what :func:`load_checkpoint` returned.
      source: the file name, for error messages.

    Returns:
      ``{name: array}`` in the checkpoint's order, ``module.`` prefix removed when all keys have it.

    Raises:
      TorchCheckpointError: no state dict found.
    """
    found = _find_tensor_dict(obj)
    if found is None:
        if isinstance(obj, Mapping):
            desc = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:20])
            raise TorchCheckpointError(
                f"{source}: no state dict found. Expected a dict of tensors, or one under a key in "
                f"{_WRAPPER_KEYS}; top-level entries are {{{desc}}}"
            )
        raise TorchCheckpointError(
            f"{source}: no state dict found; the checkpoint holds a {type(obj).__name__}"
        )
    state = dict(found)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _find_tensor_dict(obj: Any) -> Mapping | None:
    if _is_tensor_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj:
                inner = _find_tensor_dict(obj[key])
                if inner is not None:
                    return inner
    return None


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads the state dict of a PyTorch checkpoint as ``{name: np.ndarray}``, without torch.

    Args:
      path: a ``.pth``/``.pt`` file written by ``torch.save``.

    Returns:
      The parameter/buffer arrays by name (see :func:`select_state_dict` for nested checkpoints
      and the ``module.`` prefix).

    Raises:
      FileNotFoundError, UnsafeCheckpointError, TorchCheckpointError: see :func:`load_checkpoint`.
    """
    return select_state_dict(load_checkpoint(path), os.fspath(path))
