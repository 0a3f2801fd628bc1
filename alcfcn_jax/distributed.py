"""Starting a multi-process job: the one ``jax.distributed`` set-up of every entry point.

``train.py``, ``evaluate.py`` and ``python -m alcfcn_jax.predict`` call :func:`define_flags` at
import and :func:`initialize_from_flags` first thing in ``main``:

* ``--coordinator_address=HOST:PORT --num_processes=N --process_id=I`` (all three or none) start
  process ``I`` of ``N`` explicitly (two processes on one machine, any cluster without
  auto-detection);
* with none of them, ``jax.distributed.initialize()`` auto-detects the job (SLURM, Open MPI, Cloud
  TPU pods, ...) exactly when the environment describes more than one process
  (:func:`multiprocess_env`), and a single process runs without it;
* ``--distributed=on`` forces the auto-detecting call (a TPU pod whose environment we do not
  recognise), ``--distributed=off`` forbids it.

Every process then runs the same program on the same flags; ``alcfcn_jax.sharding`` does every
exchange between them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from absl import flags, logging


class DistributedError(ValueError):
    """The process flags are incomplete, inconsistent, or describe no job."""


def define_flags() -> None:
    """Defines ``--coordinator_address``, ``--num_processes``, ``--process_id`` and
    ``--distributed`` (once; safe to call again)."""
    if "coordinator_address" in flags.FLAGS:
        return
    flags.DEFINE_string(
        "coordinator_address",
        None,
        "HOST:PORT of process 0's coordinator (with --num_processes and --process_id).",
    )
    flags.DEFINE_integer("num_processes", None, "Number of processes of the job.")
    flags.DEFINE_integer("process_id", None, "This process's index, 0 .. num_processes - 1.")
    flags.DEFINE_enum(
        "distributed",
        "auto",
        ["auto", "on", "off"],
        "Without the three process flags: 'auto' calls jax.distributed.initialize() when the "
        "environment describes a multi-process job (SLURM, Open MPI, Cloud TPU pod variables), "
        "'on' always, 'off' never.",
    )


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env.get(key, "") or 0)
    except ValueError:
        return 0


def multiprocess_env(env: Mapping[str, str] | None = None) -> str | None:
    """The kind of multi-process job ``env`` describes (``"slurm"``, ``"openmpi"``,
    ``"tpu_pod"``, ``"jax_coordinator"``), or None for a single process."""
    env = os.environ if env is None else env
    if _int(env, "SLURM_NTASKS") > 1 or _int(env, "SLURM_STEP_NUM_TASKS") > 1:
        return "slurm"
    if _int(env, "OMPI_COMM_WORLD_SIZE") > 1:
        return "openmpi"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS") or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        return "tpu_pod"
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "jax_coordinator"
    return None


def resolve(
    coordinator_address: str | None,
    num_processes: int | None,
    process_id: int | None,
    distributed: str = "auto",
    env: Mapping[str, str] | None = None,
) -> dict | None:
    """What to pass to ``jax.distributed.initialize``: a dict of the explicit arguments, ``{}``
    for auto-detection, or None for a single process without it.

    Raises:
      DistributedError: some but not all of the three flags, bad values, or ``--distributed=off``
        with them.
    """
    given = {
        "coordinator_address": coordinator_address or None,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    present = [k for k, v in given.items() if v is not None]
    if present:
        if len(present) != 3:
            missing = sorted(set(given) - set(present))
            raise DistributedError(
                f"--{', --'.join(present)} given without --{', --'.join(missing)}: pass all "
                "three process flags or none"
            )
        if distributed == "off":
            raise DistributedError("--distributed=off contradicts the process flags")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise DistributedError(
                f"--process_id={process_id} must be in [0, --num_processes={num_processes})"
            )
        if ":" not in coordinator_address:
            raise DistributedError(
                f"--coordinator_address={coordinator_address!r} must be HOST:PORT"
            )
        return given
    if distributed == "on":
        return {}
    if distributed == "off":
        return None
    kind = multiprocess_env(env)
    if kind is None:
        return None
    if kind == "jax_coordinator":
        raise DistributedError(
            "JAX_COORDINATOR_ADDRESS is set but nothing gives the number of processes and this "
            "process's index: pass --coordinator_address, --num_processes and --process_id"
        )
    return {}


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    distributed: str = "auto",
) -> bool:
    """Calls ``jax.distributed.initialize`` as :func:`resolve` decides; True when it did.

    Must run before anything touches a JAX device.
    """
    args = resolve(coordinator_address, num_processes, process_id, distributed)
    if args is None:
        return False
    import jax

    jax.distributed.initialize(**args)
    logging.info(
        "jax.distributed: process %d of %d, %d local of %d devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )
    return True


def initialize_from_flags() -> bool:
    """:func:`initialize` with the values of the flags :func:`define_flags` defined."""
    from absl import app

    f = flags.FLAGS
    try:
        return initialize(f.coordinator_address, f.num_processes, f.process_id, f.distributed)
    except DistributedError as err:
        raise app.UsageError(str(err)) from err
