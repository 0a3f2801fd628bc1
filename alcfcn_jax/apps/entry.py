"""What every command-line entry point shares: its flags, its start, ``--checkpoint``.

``train.py``, ``evaluate.py``, ``python -m alcfcn_jax.predict``, ``python -m
alcfcn_jax.apps.instances`` and ``python -m alcfcn_jax.apps.shipped`` each call
:func:`define_flags` (``--config`` with ``--config.*`` overrides, ``--workdir``, ``--checkpoint``
where a checkpoint is read, the process flags of ``distributed``), :func:`start` in their
``main`` (no stray arguments, JAX's own flags, the multi-process start, the config resolved once)
and :func:`run` (bad ``--config.*`` overrides reported as one line).

Entry points that read a trained run need no ``--config``: the run's own ``config.json`` is used
(``apps/run_config.py``), with any ``--config.<key>=`` overrides; ``predict`` without
``--workdir`` uses the shipped model's. A config given to such an entry point may differ from the
run's in every key but the model's (:func:`check_against_run`): the data (folders, splits,
readers), the instances, the evaluation batch and the training schedule are free; the network is
the one that was trained.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from absl import app, flags

from alcfcn_jax import distributed

CHECKPOINTS = ("best", "latest")


RUN_CONFIG = str(pathlib.Path(__file__).with_name("run_config.py"))
# Model keys that may differ from the run's: where its pretrained weights were read at training.
_FREE_MODEL_KEYS = ("weights", "weights_allow_missing")


def define_flags(
    *,
    checkpoint: bool = True,
    config_help: str = "Experiment config file.",
    workdir_required: bool = True,
) -> None:
    """``--config`` (locked: an unknown ``--config.*`` key is refused), ``--workdir``, optionally
    ``--checkpoint``, and the process flags. Entry points with ``--checkpoint`` read a trained
    run and default ``--config`` to its ``config.json``; ``train.py`` requires ``--config``."""
    from ml_collections import config_flags

    config_flags.DEFINE_config_file(
        "config",
        None,
        f"{config_help} (configs/*.py[:preset]"
        + ("; default: the run's own config.json)" if checkpoint else ")"),
        lock_config=True,
    )
    flags.DEFINE_string("workdir", None, "The run's directory (checkpoints/, metrics, config).")
    required = ["config"] if not checkpoint else []
    if checkpoint:
        flags.DEFINE_string("checkpoint", "best", "best | latest | a step number.")
    if workdir_required:
        required.append("workdir")
    flags.mark_flags_as_required(required)
    distributed.define_flags()


def _value(argv: Sequence[str], name: str) -> str | None:
    """The value of ``--name=V`` or ``--name V`` in ``argv``, None when absent."""
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
        if arg == f"--{name}" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def with_saved_config(argv: Sequence[str], *, shipped: bool = False) -> list[str]:
    """``argv`` with ``--config=<run_config.py>:<workdir>`` added when it has no ``--config``
    (``:shipped`` without a ``--workdir`` when ``shipped``); unchanged otherwise."""
    argv = list(argv)
    if _value(argv, "config") is not None:
        return argv
    workdir = _value(argv, "workdir")
    if workdir:
        return [argv[0], f"--config={RUN_CONFIG}:{workdir}", *argv[1:]]
    if shipped:
        return [argv[0], f"--config={RUN_CONFIG}:shipped", *argv[1:]]
    return argv


def check_against_run(config: Any, workdir: str | os.PathLike) -> None:
    """Refuses, in one line, a config whose model differs from the run's ``config.json`` (the
    only block that must stay as trained; the others are free). No ``config.json``: nothing to
    check (the checkpoint's own structural check still applies)."""
    from alcfcn_jax.config_utils import diff_configs, to_plain
    from alcfcn_jax.io import read_json

    saved = read_json(pathlib.Path(workdir).expanduser() / "config.json")
    if not saved or "model" not in saved:
        return
    given = json.loads(json.dumps(to_plain(config.model)))
    trained = {k: v for k, v in saved["model"].items() if k not in _FREE_MODEL_KEYS}
    given = {k: v for k, v in given.items() if k not in _FREE_MODEL_KEYS}
    keys = [k for k in diff_configs(trained, given) if k.split(".")[0] in trained]
    if keys:
        raise app.UsageError(
            f"the config's model differs from the run's ({workdir}/config.json) in "
            + ", ".join(f"model.{k}" for k in keys)
            + ": only the data, the instances, the evaluation batch and the schedule may differ "
            "from training; drop --config to use the run's own"
        )


def parse_checkpoint(value: str) -> str | int:
    """``best``, ``latest`` or a step number, else ``app.UsageError`` naming the flag."""
    if value in CHECKPOINTS:
        return value
    if value.isdigit():
        return int(value)
    raise app.UsageError(f"--checkpoint must be best, latest or a step number, got {value!r}")


def start(argv: Sequence[str], *, resolve: bool = True) -> tuple[Any, str | None, str | int | None]:
    """The start of every ``main``: refuses stray arguments, applies JAX's flags, starts the
    multi-process job (``distributed``), resolves the config (``train.config.resolve``, once).

    Returns:
      ``(config, workdir, which)``: the config (resolved unless ``resolve=False``: ``train.py``
      hands it to ``train.runner.run``, which resolves), ``--workdir`` (None when not given),
      and ``--checkpoint`` parsed (None when the entry point has no such flag). An entry point
      with ``--checkpoint`` reads a trained run: its config is checked against the run's
      (:func:`check_against_run`).
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
    workdir = str(f.workdir) if f.workdir else None
    if which is not None and workdir:
        check_against_run(config, workdir)
    return config, workdir, which


def run(
    main: Callable[[list[str]], Any], *, saved_config: bool = False, shipped: bool = False
) -> None:
    """``absl.app.run(main)`` with the one-line report of bad ``--config.*`` overrides; with
    ``saved_config`` a missing ``--config`` means the run's own (:func:`with_saved_config`)."""
    from alcfcn_jax.config_utils import parse_flags

    def parser(argv: Sequence[str]) -> list[str]:
        if saved_config:
            argv = with_saved_config(argv, shipped=shipped)
        return parse_flags(argv)

    app.run(main, flags_parser=parser)
