"""Device mesh, batch placement and every multi-host exchange of host data.

One mesh axis, ``"data"``: the batch is split over it and everything else (parameters, optimizer
state) is replicated. The same code runs on one CPU, 8 fake CPU devices, a GPU box or a multi-host
pod; on a pod every process passes only its local slice of the batch (``to_global``) and gets
its own rows back (``to_host``). Host values (metric rows, ids, iterator states, flags) travel
between processes only through the gathers and the barrier at the end of this module, which are
exact (bytes, not float32 collectives) and no-ops on a single process.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(num_devices: int | None = None) -> jax.sharding.Mesh:
    """A 1-D ``("data",)`` mesh over the first ``num_devices`` devices (all by default).

    Auto axis types: pure data parallelism needs no explicit sharding annotations inside the model,
    and the compiler inserts the gradient all-reduce.
    """
    n = jax.device_count() if num_devices is None else num_devices
    if n < 1 or n > jax.device_count():
        raise ValueError(f"num_devices={n} but {jax.device_count()} devices are available")
    return jax.make_mesh(
        (n,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:n]
    )


def data_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding of batch arrays: leading axis split over ``"data"``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
    """Sharding of parameters and optimizer state: a full copy on every device."""
    return NamedSharding(mesh, P())


def check_batch_size(global_batch: int, mesh: jax.sharding.Mesh) -> int:
    """Returns the per-process batch size, or raises if the batch does not split evenly."""
    n_dev = mesh.devices.size
    if global_batch % n_dev:
        raise ValueError(
            f"train.batch_size={global_batch} must be a multiple of the number of devices ({n_dev})"
        )
    return global_batch // jax.process_count()


def to_global(batch: Mapping[str, np.ndarray], mesh: jax.sharding.Mesh) -> dict:
    """Builds global, data-sharded jax arrays from this process's slice of a batch.

    Numeric arrays become ``jax.Array`` sharded over ``"data"``; string / object entries (ids,
    habitats) stay on the host as numpy arrays, because they never enter a jitted function.
    """
    sharding = data_sharding(mesh)
    out = {}
    for key, value in batch.items():
        arr = np.asarray(value)
        if arr.dtype.kind in "biuf":
            out[key] = jax.make_array_from_process_local_data(sharding, arr)
        else:
            out[key] = arr
    return out


def to_host(x: jax.Array, mesh: jax.sharding.Mesh | None) -> np.ndarray:
    """This process's rows of a data-sharded global array, as numpy."""
    if mesh is None or jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.global_array_to_host_local_array(x, mesh, P(DATA_AXIS)))


# --------------------------------------------------------------------------------------------
# Multi-host collectives of host data (no-ops on one process). Every process must make the same
# calls in the same order.


def barrier(name: str) -> None:
    """Waits until every process reaches the barrier ``name``."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def gather_bytes(data: bytes) -> list[bytes]:
    """Every process's ``data``, in process order, bit for bit (any lengths)."""
    if jax.process_count() == 1:
        return [data]
    from jax.experimental import multihost_utils

    raw = np.frombuffer(data, np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.asarray([raw.size], np.int64)))
    lengths = lengths.reshape(-1)
    padded = np.zeros((max(int(lengths.max()), 1),), np.uint8)
    padded[: raw.size] = raw
    rows = np.asarray(multihost_utils.process_allgather(padded))
    return [bytes(rows[p, : int(lengths[p])]) for p in range(len(lengths))]


def gather_json(obj: Any) -> list[Any]:
    """Every process's JSON-able ``obj``, in process order."""
    return [json.loads(b.decode("utf-8")) for b in gather_bytes(json.dumps(obj).encode("utf-8"))]


def gather_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Concatenates every process's arrays along axis 0, exactly (float64 stays float64)."""
    if jax.process_count() == 1:
        return {k: np.asarray(v) for k, v in arrays.items()}
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    parts = [np.load(io.BytesIO(b)) for b in gather_bytes(buf.getvalue())]
    return {k: np.concatenate([p[k] for p in parts]) for k in arrays}


def sum_processes(n: int) -> int:
    """The sum of ``n`` over all processes."""
    return sum(gather_json(int(n)))


def any_process(flag: bool) -> bool:
    """True when ``flag`` is true on any process."""
    return any(gather_json(bool(flag)))
