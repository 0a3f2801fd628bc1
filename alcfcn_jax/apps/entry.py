"""What every command-line entry point shares: its flags, its start, ``--checkpoint``.

``train.py``, ``evaluate.py``, ``python -m alcfcn_jax.predict`` and ``python -m
alcfcn_jax.apps.instances`` each call :func:`define_flags` (``--config`` with ``--config.*``
overrides, ``--workdir``, ``--checkpoint`` where a checkpoint is read, the process flags of
``distributed``), :func:`start` in their ``main`` (no stray arguments, JAX's own flags, the
multi-process start, the config resolved once) and :func:`run` (bad ``--config.*`` overrides
reported as one line).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

from alcfcn_jax import distributed

CHECKPOINTS = ("best", "latest")


def define_flags(*, checkpoint: bool = True, config_help: str = "Experiment config file.") -> None:
    """``--config`` (locked: an unknown ``--config.*`` key is refused), ``--workdir``, optionally
    ``--checkpoint``, and the process flags; ``--config`` and ``--workdir`` are required."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config", None, f"{config_help} (configs/*.py[:preset])", lock_config=True
    )
    flags.DEFINE_string("workdir", None, "The run's directory (checkpoints/, metrics, config).")
    if checkpoint:
        flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
    flags.mark_flags_as_required(["config", "workdir"])
    distributed.define_flags()


def parse_checkpoint(value: str) -> str | int:
    """``best``, ``latest`` or a step number, else ``app.UsageError`` naming the flag."""
    if value in CHECKPOINTS:
        return value
    if value.isdigit():
        return int(value)
    raise app.UsageError(f"--checkpoint must be best, latest or a step number, got {value!r}")


def start(argv: Sequence[str], *, resolve: bool = True) -> tuple[Any, str, str | int | None]:
    """The start of every ``main``: refuses stray arguments, applies JAX's flags, starts the
    multi-process job (``distributed``), resolves the config (``train.config.resolve``, once).

    Returns:
      ``(config, workdir, which)``: the config (resolved unless ``resolve=False``: ``train.py``
      hands it to ``train.runner.run``, which resolves), ``--workdir``, and ``--checkpoint``
      parsed (None when the entry point has no such flag).
    """
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
    import jax

    jax.config.parse_flags_with_absl()
    distributed.initialize_from_flags()
    f = flags.FLAGS
    config = f.config
    if resolve:
        from alcfcn_jax.train.config import resolve as resolve_config

        config = resolve_config(config)
    which = parse_checkpoint(f.checkpoint) if "checkpoint" in f else None
    return config, str(f.workdir), which


def run(main: Callable[[list[str]], Any]) -> None:
    """``absl.app.run(main)`` with the one-line report of bad ``--config.*`` overrides."""
    from alcfcn_jax.config_utils import parse_flags

    app.run(main, flags_parser=parse_flags)
