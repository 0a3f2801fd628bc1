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


def randomise_torch_batchnorm(module, seed: int = 0) -> None:
    """Gives every torch BatchNorm2d in ``module`` random affine weights and running statistics
    (so a parity test cannot pass on the identity init) and puts the module in eval mode."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            with torch.no_grad():
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
    module.eval()
