"""Trains a model: ``python train.py --config=configs/deepfish.py --workdir=runs/alcfcn``.

Any config value can be overridden (``--config.optim.lr=1e-5``); presets are chosen with
``--config=configs/deepfish.py:lcfcn``. Rerunning the same command resumes from the latest
checkpoint in ``--workdir``. A pseudo-mask config with ``--config.pm.rounds=R`` (R > 1) trains R
rounds of stage 2 in ``<workdir>/round_<r>/`` (``alcfcn_jax.train.rounds``).
"""

from __future__ import annotations

from alcfcn_jax.apps import entry

entry.define_flags(checkpoint=False)


def main(argv: list[str]) -> None:
    config, workdir, _ = entry.start(argv, resolve=False)
    from alcfcn_jax.train.runner import run

    run(config, workdir)


if __name__ == "__main__":
    entry.run(main)
