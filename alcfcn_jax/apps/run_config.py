"""A config file for ``--config``: the config a run was trained with, or the shipped model's.

Entry points that read a trained model take ``--workdir`` alone: ``apps.entry`` then passes
``--config=<this file>:<workdir>``, so the run's own ``config.json`` is the config and
``--config.<key>=...`` overrides still apply (the keys that may differ from training are in
``apps.entry.check_against_run``). ``:shipped`` gives the shipped model's config
(``apps.shipped``).
"""

from __future__ import annotations

import json
import pathlib

import ml_collections

SHIPPED = "shipped"
# Fields that may be None, typed so that a command line can set them.
_TYPED_NONE = {("data", "image_short_side"): int, ("data", "fixed_size"): tuple}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The saved config of ``<arg>/config.json`` (a run's workdir), or the shipped model's.

    Raises:
      FileNotFoundError: the workdir has no ``config.json`` (give ``--config`` instead).
    """
    if not arg:
        raise ValueError("run_config.py needs ':<workdir>' or ':shipped' after the file name")
    if arg == SHIPPED:
        from alcfcn_jax.apps import shipped

        plain = shipped.read_record()["config"]
    else:
        path = pathlib.Path(arg).expanduser() / "config.json"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: not found: --workdir {arg} holds no trained run's config; give "
                "--config=configs/<file>.py as well"
            )
        plain = json.loads(path.read_text())
    # A run saved before a key existed: the key at its default (what such a run did), so that
    # every key can be overridden on the command line.
    from alcfcn_jax.train.config import with_defaults

    config = with_defaults(ml_collections.ConfigDict(plain))
    for (section, key), kind in _TYPED_NONE.items():
        if section in config and key in config[section] and config[section][key] is None:
            config[section][key] = ml_collections.config_dict.placeholder(kind)
    return config
