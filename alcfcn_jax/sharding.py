"""Device mesh and batch placement for data-parallel training and evaluation.

One mesh axis, ``"data"``: the batch is split over it and everything else (parameters, optimizer
state) is replicated. The same code runs on one CPU, 8 fake CPU devices, a GPU box or a multi-host
pod; on a pod every process passes only its local slice of the batch.
"""

from __future__ import annotations

from collections.abc import Mapping

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
