"""The process flags and the auto-detection of a multi-process job (no processes started here;
tests/test_multiprocess.py runs a real two-process job)."""

import numpy as np
import pytest

from alcfcn_jax import distributed
from alcfcn_jax import sharding as shd


def test_three_flags_give_explicit_arguments():
    args = distributed.resolve("127.0.0.1:1234", 2, 1, env={})
    assert args == {"coordinator_address": "127.0.0.1:1234", "num_processes": 2, "process_id": 1}


@pytest.mark.parametrize(
    "given",
    [("127.0.0.1:1", None, None), (None, 2, 0), ("127.0.0.1:1", 2, None), (None, None, 0)],
)
def test_some_but_not_all_flags_are_refused(given):
    with pytest.raises(distributed.DistributedError, match="all\\s+three"):
        distributed.resolve(*given, env={})


@pytest.mark.parametrize("given", [("h:1", 2, 2), ("h:1", 0, 0), ("h:1", 2, -1), ("h", 2, 0)])
def test_bad_values_are_refused(given):
    with pytest.raises(distributed.DistributedError):
        distributed.resolve(*given, env={})


def test_off_contradicts_the_flags():
    with pytest.raises(distributed.DistributedError, match="off"):
        distributed.resolve("h:1", 2, 0, "off", env={})


@pytest.mark.parametrize(
    "env,kind",
    [
        ({}, None),
        ({"SLURM_NTASKS": "1", "SLURM_PROCID": "0"}, None),
        ({"SLURM_NTASKS": "4", "SLURM_PROCID": "2"}, "slurm"),
        ({"OMPI_COMM_WORLD_SIZE": "2"}, "openmpi"),
        ({"OMPI_COMM_WORLD_SIZE": "1"}, None),
        ({"TPU_WORKER_HOSTNAMES": "t1"}, None),
        ({"TPU_WORKER_HOSTNAMES": "t1,t2"}, "tpu_pod"),
        ({"JAX_COORDINATOR_ADDRESS": "h:1"}, "jax_coordinator"),
    ],
)
def test_multiprocess_env(env, kind):
    assert distributed.multiprocess_env(env) == kind


def test_auto_initialises_exactly_for_a_multiprocess_environment():
    assert distributed.resolve(None, None, None, env={}) is None
    assert distributed.resolve(None, None, None, env={"SLURM_NTASKS": "1"}) is None
    assert distributed.resolve(None, None, None, env={"SLURM_NTASKS": "2"}) == {}
    assert distributed.resolve(None, None, None, "on", env={}) == {}
    assert distributed.resolve(None, None, None, "off", env={"SLURM_NTASKS": "2"}) is None
    # A coordinator address alone says neither how many processes nor which one this is.
    with pytest.raises(distributed.DistributedError, match="--num_processes"):
        distributed.resolve(None, None, None, env={"JAX_COORDINATOR_ADDRESS": "h:1"})


def test_interleave_order_deals_rows_back_into_source_order():
    n, count = 7, 3
    parts = [list(range(p, n, count)) for p in range(count)]  # what each process read
    flat = np.concatenate(parts)
    assert flat[shd.interleave_order([len(p) for p in parts])].tolist() == list(range(n))
    assert shd.interleave_order([]).tolist() == []


def test_single_process_collectives_are_plain_calls():
    assert shd.process_zero_first("x", lambda: 5) == 5
    assert shd.gather_list(["a", "b"], interleave=True) == ["a", "b"]
    out = shd.gather_arrays({"v": np.asarray([1.0, 2.0], np.float64)}, interleave=True)
    assert out["v"].dtype == np.float64 and out["v"].tolist() == [1.0, 2.0]
