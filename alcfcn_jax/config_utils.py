"""Config plumbing every layer may use: the error type, batch sizes, plain JSON, diffs.

What a training config must hold, its defaults and its validation live in
``alcfcn_jax.train.config`` (it knows every layer's names).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config value is missing or invalid; the message names the key."""


def resolve_batch_size(value: int, num_devices: int, key: str) -> int:
    """A global batch size: ``value``, or one image per device when ``value`` is 0.

    Raises:
      ConfigError: the batch does not split evenly over the devices.
    """
    batch = num_devices if value == 0 else value
    if batch % num_devices:
        raise ConfigError(
            f"config.{key}={value} does not split over {num_devices} devices; use a multiple of "
            f"{num_devices} (or 0 for one image per device)"
        )
    return batch


def to_plain(value: Any) -> Any:
    """ConfigDict / FieldReference / tuples -> plain JSON-able Python (dicts, lists, scalars)."""
    if isinstance(value, ml_collections.FieldReference):
        value = value.get()
    if isinstance(value, (ml_collections.ConfigDict, Mapping)):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    return repr(value)


def config_to_json(config: ml_collections.ConfigDict) -> str:
    """The resolved config as indented, key-sorted JSON."""
    return json.dumps(to_plain(config), indent=2, sort_keys=True)


def diff_configs(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain (JSON) configs, sorted."""
    keys = sorted(set(old) | set(new))
    out: list[str] = []
    for k in keys:
        path = f"{prefix}{k}"
        a, b = old.get(k, "<missing>"), new.get(k, "<missing>")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out.extend(diff_configs(a, b, prefix=path + "."))
        elif a != b:
            out.append(path)
    return out


def parse_flags(argv: Sequence[str]) -> list[str]:
    """``absl.app.run``'s ``flags_parser`` for the entry points: a bad ``--config.*`` override
    (a misspelt key, a value of the wrong type) exits with one line naming the argument and
    ml_collections' suggestion, not a traceback from inside the flag parser.
    """
    from absl import flags

    try:
        return flags.FLAGS(list(argv))
    except flags.Error:
        raise  # absl prints these as one line with the usage hint already
    except Exception as err:  # noqa: BLE001 - config_flags raises many types
        text = " ".join(str(err).replace("\\n", " ").replace("\n", " ").split())
        text = text.strip("'\"").replace("\\'", "'")
        key = re.search(r"'([A-Za-z_][\w]*)'", text)
        arg = None
        if key:
            arg = next((a for a in argv if re.search(rf"\.{key.group(1)}(=|$)", a)), None)
        arg = arg or next((a for a in argv[1:] if a.startswith("--config.")), "")
        hint = re.search(r'Did you mean "([^"]+)"', text)
        if key and hint:
            line = f"{arg}: no config key {key.group(1)!r}; did you mean {hint.group(1)!r}?"
        else:
            line = f"{arg}: {text}" if arg else text
        print(f"FATAL Flags parsing error: {line}", file=sys.stderr)
        sys.exit(2)
