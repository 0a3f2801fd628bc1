"""Trains a model: ``python train.py --config=configs/deepfish.py --workdir=runs/alcfcn``.

Any config value can be overridden (``--config.optim.lr=1e-5``); presets are chosen with
``--config=configs/deepfish.py:lcfcn``. Rerunning the same command resumes from the latest
checkpoint in ``--workdir``.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:preset]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "on", "off"],
    "Call jax.distributed.initialize(): 'auto' does so when the environment describes a "
    "multi-process job (JAX coordinator, SLURM, Open MPI or Cloud TPU pod variables).",
)
flags.mark_flags_as_required(["config", "workdir"])

# Environment variables that mean "this process is one of several" for jax.distributed.
_MULTIPROCESS_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "COORDINATOR_ADDRESS",
    "MEGASCALE_COORDINATOR_ADDRESS",
    "TPU_WORKER_HOSTNAMES",
)


def _is_multiprocess_env() -> bool:
    if any(os.environ.get(k) for k in _MULTIPROCESS_ENV):
        hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
        return "," in hosts or not hosts
    for key in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        if int(os.environ.get(key, "1") or 1) > 1:
            return True
    return False


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    jax.config.parse_flags_with_absl()
    if _DISTRIBUTED.value == "on" or (_DISTRIBUTED.value == "auto" and _is_multiprocess_env()):
        jax.distributed.initialize()
        logging.info("jax.distributed: process %d of %d", jax.process_index(), jax.process_count())
    from alcfcn_jax.train import loop

    loop.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    from alcfcn_jax.config_utils import parse_flags

    app.run(main, flags_parser=parse_flags)
