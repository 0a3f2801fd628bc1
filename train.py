"""Trains a model: ``python train.py --config=configs/deepfish.py --workdir=runs/alcfcn``.

Any config value can be overridden (``--config.optim.lr=1e-5``); presets are chosen with
``--config=configs/deepfish.py:lcfcn``. Rerunning the same command resumes from the latest
checkpoint in ``--workdir``. A pseudo-mask config with ``--config.pm.rounds=R`` (R > 1) trains R
rounds of stage 2 in ``<workdir>/round_<r>/`` (``alcfcn_jax.train.rounds``).
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from alcfcn_jax import distributed

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py[:preset]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")
flags.mark_flags_as_required(["config", "workdir"])
distributed.define_flags()


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    import jax

    jax.config.parse_flags_with_absl()
    distributed.initialize_from_flags()
    from alcfcn_jax.train.runner import run

    run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    from alcfcn_jax.config_utils import parse_flags

    app.run(main, flags_parser=parse_flags)
