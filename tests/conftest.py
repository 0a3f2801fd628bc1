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


def example_state_dict(torch):
    """One small state dict that exercises the torch-free reader: float32, a transposed view, an
    int64 view with a storage offset, float16, bfloat16, bool, a 0-d tensor, a Parameter and an
    empty tensor (tests/test_weights_torch.py and tests/fixtures/torch_free/make_fixtures.py)."""
    import collections

    g = torch.Generator().manual_seed(0)
    sd = collections.OrderedDict()
    sd["conv.weight"] = torch.randn(4, 3, 3, 3, generator=g)
    sd["transposed"] = torch.randn(5, 7, generator=g).t()  # non-contiguous strides
    sd["view"] = torch.arange(30, dtype=torch.int64)[7:19].view(3, 4)  # storage offset
    sd["half"] = torch.randn(6, generator=g).half()
    sd["bf16"] = torch.randn(6, generator=g).bfloat16()
    sd["flag"] = torch.tensor([True, False])
    sd["scalar"] = torch.tensor(7)
    sd["param"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    sd["empty"] = torch.zeros(0, 3)
    return sd


def torch_joint_loss(torch, pred, mask):
    """The reference's joint loss (weighted BCE + weighted IoU, reference spec section 4) written
    out in torch, NCHW with one channel; per image."""
    F = torch.nn.functional
    weit = 1 + 5 * torch.abs(F.avg_pool2d(mask, kernel_size=31, stride=1, padding=15) - mask)
    wbce = F.binary_cross_entropy_with_logits(pred, mask, reduction="none")
    wbce = (weit * wbce).sum(dim=(2, 3)) / weit.sum(dim=(2, 3))
    p = torch.sigmoid(pred)
    inter = ((p * mask) * weit).sum(dim=(2, 3))
    union = ((p + mask) * weit).sum(dim=(2, 3))
    wiou = 1 - (inter + 1) / (union - inter + 1)
    return (wbce + wiou)[:, 0]
