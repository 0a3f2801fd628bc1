"""The one trainer entry: ``run(config, workdir)``, what ``train.py`` calls.

It resolves the config once (``train.config.resolve``), logs it, and trains either a single run
(``train.loop.train_and_evaluate``) or, for a config on pseudo masks with ``pm.rounds`` > 1, the
pseudo-mask rounds (``train.rounds.run_rounds``), which hand the same resolved config, changed
per round, to the same loop. Rerunning the same command resumes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
from absl import logging

from alcfcn_jax import config_utils
from alcfcn_jax.train import loop, rounds
from alcfcn_jax.train.config import resolve
from alcfcn_jax.train.metric_writer import quiet_library_logs


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains (or resumes) ``config`` in ``workdir``: a single run, or the pseudo-mask rounds.

    Returns:
      The run's final figures (``final.json``), or the rounds' summary (``rounds.json``).

    Raises:
      ConfigError: an invalid config (before anything is read or written).
      RoundsError: the workdir holds the other kind of run (a single run vs. rounds).
    """
    quiet_library_logs()
    config = resolve(config)
    logging.info("Config:\n%s", config_utils.config_to_json(config))
    n_rounds = rounds.num_rounds(config)
    if n_rounds > 1:
        return rounds.run_rounds(config, workdir)
    rounds.check_workdir(workdir, n_rounds)
    final = loop.train_and_evaluate(config, str(workdir))
    logging.info("Final: %s", json.dumps(final, default=str))
    return final
