"""Test-suite setup: 8 fake CPU devices so sharding code is exercised everywhere."""

import os

# Must be set before jax is imported anywhere in the test session.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "reference"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES


def load_fixture(name: str) -> dict:
    """Loads one reference fixture as a dict of numpy arrays / python scalars."""
    with np.load(FIXTURES / f"{name}.npz") as d:
        return {k: (d[k].item() if d[k].ndim == 0 else d[k]) for k in d.files}
