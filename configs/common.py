"""What every config file shares: the one parser of ``--config=configs/<file>.py:<arg>``."""

from __future__ import annotations

from collections.abc import Mapping


def parse_arg(
    arg: str | None,
    *,
    file: str,
    presets: tuple[str, ...],
    options: Mapping[str, tuple[str, ...]] | None = None,
) -> tuple[str, tuple[str, ...]]:
    """``"preset,opt1,opt2"`` -> (preset, options), checked against the known names.

    Args:
      arg: the text after the colon (None or empty: the first preset).
      file: the config file, for messages (``configs/deepfish.py``).
      presets: the presets it knows; the first is the default.
      options: per preset, the options it accepts (none when absent).

    Raises:
      ValueError: an unknown preset or option, naming the allowed ones.
    """
    parts = [p.strip() for p in (arg or "").split(",") if p.strip()]
    preset, chosen = (parts[0] if parts else presets[0]), tuple(parts[1:])
    if preset not in presets:
        raise ValueError(f"{file}: unknown preset {preset!r}; expected one of {presets}")
    allowed = (options or {}).get(preset, ())
    for opt in chosen:
        if opt not in allowed:
            raise ValueError(
                f"{file}: unknown option {opt!r} for preset {preset!r}; "
                f"allowed: {allowed or 'none'}"
            )
    return preset, chosen
