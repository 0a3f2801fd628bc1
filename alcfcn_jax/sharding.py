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
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
T = TypeVar("T")


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


def put_replicated(tree: Any, mesh: jax.sharding.Mesh) -> Any:
    """Every array of ``tree`` replicated over ``mesh`` (every process passes the same values).

    Leaves may be numpy arrays, Python scalars, or jax arrays on this process's devices (typed
    PRNG keys included). On a mesh that spans processes a host value cannot be ``device_put``
    onto devices of another process; each process instead supplies its copy
    (``jax.make_array_from_process_local_data``). Arrays already on the target sharding pass
    through untouched.
    """
    rep = replicated(mesh)
    if jax.process_count() == 1:
        return jax.device_put(tree, rep)

    def put(x):
        if isinstance(x, jax.Array) and x.sharding.is_equivalent_to(rep, x.ndim):
            return x
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            data = put(jax.random.key_data(x))
            return jax.jit(lambda d: jax.random.wrap_key_data(d, impl=impl), out_shardings=rep)(
                data
            )
        host = np.asarray(x)
        return jax.make_array_from_process_local_data(rep, host, host.shape)

    return jax.tree.map(put, tree)


def localize(tree: Any) -> Any:
    """A copy of ``tree`` whose arrays live on this process's first device only.

    For work one process does alone (process 0 drawing overlays) on a state replicated over a
    mesh that spans processes: a jitted call on such a state would wait for the other processes.
    """
    device = jax.local_devices()[0]

    def local(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return x
        for shard in x.addressable_shards:
            if shard.device == device:
                return shard.data
        return x.addressable_data(0)

    return jax.tree.map(local, tree)


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


def interleave_order(lengths: list[int]) -> np.ndarray:
    """Indices into the concatenation of per-process parts of ``lengths`` rows that deal them
    round robin: process 0's first row, process 1's first row, ..., process 0's second row...

    Rows of a source read as ``source[process_index::process_count]`` (``data.pipeline``) come
    back in the source's own order, as on one process.
    """
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    order = [
        starts[p] + j
        for j in range(max(lengths, default=0))
        for p in range(len(lengths))
        if j < lengths[p]
    ]
    return np.asarray(order, np.int64)


def gather_arrays(
    arrays: Mapping[str, np.ndarray], *, interleave: bool = False
) -> dict[str, np.ndarray]:
    """Concatenates every process's arrays along axis 0, exactly (float64 stays float64).

    ``interleave``: rows dealt round robin over processes (:func:`interleave_order`) instead of
    process after process; every array must then have the same number of rows.
    """
    if jax.process_count() == 1:
        return {k: np.asarray(v) for k, v in arrays.items()}
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    parts = [np.load(io.BytesIO(b)) for b in gather_bytes(buf.getvalue())]
    out = {k: np.concatenate([p[k] for p in parts]) for k in arrays}
    if interleave and arrays:
        first = next(iter(arrays))
        order = interleave_order([len(p[first]) for p in parts])
        out = {k: v[order] for k, v in out.items()}
    return out


def gather_list(items: list[Any], *, interleave: bool = False) -> list[Any]:
    """Every process's JSON-able ``items`` in one list: process after process, or dealt round
    robin (``interleave``, as :func:`gather_arrays`)."""
    parts = gather_json(list(items))
    flat = [x for part in parts for x in part]
    if not interleave:
        return flat
    return [flat[i] for i in interleave_order([len(p) for p in parts])]


def process_zero_first(name: str, fn: Callable[[], T]) -> T:
    """Runs ``fn`` on process 0 first, then on the others (collective: every process calls it).

    For preparations that write shared files (dataset builds, caches): process 0 builds while
    the others wait at the barrier ``name``; they then call ``fn`` too, which finds the finished
    files (shared storage) or builds its own copy (storage local to each host). When process 0
    fails, the others are still released and try for themselves.
    """
    if jax.process_count() == 1:
        return fn()
    if jax.process_index() == 0:
        try:
            result = fn()
        finally:
            barrier(name)
        return result
    barrier(name)
    return fn()


def sum_processes(n: int) -> int:
    """The sum of ``n`` over all processes."""
    return sum(gather_json(int(n)))


def any_process(flag: bool) -> bool:
    """True when ``flag`` is true on any process."""
    return any(gather_json(bool(flag)))
