"""A tiny stride-8 trunk with the ResNet-38d trunk interface, for fast tests and smoke runs.

It exercises every code path of the real trunk that matters to the model: a frozen stem (Frozen
weights), frozen BatchNorm, dilated convolutions, channel dropout active only in training, three
taps at stride 8 (``ceil(H/8)`` for any H).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from alcfcn_jax.models.layers import FrozenBatchNorm, conv2d, dropout2d, freeze, torch_conv_init


def _conv(in_ch: int, out_ch: int, kernel: int, **kwargs) -> nnx.Conv:
    return conv2d(in_ch, out_ch, kernel, kernel_init=torch_conv_init(in_ch * kernel**2), **kwargs)


class TinyTrunk(nnx.Module):
    """Six small convolutions: stride 2, 2, 2, then dilated 2 and 4.

    Args:
      channels: widths of the conv4, conv5 and conv6 taps.
      dropout: Dropout2d rate before the last conv (active when ``train=True``).
      dtype: compute dtype (parameters stay float32).
      rngs: ``params`` and ``dropout`` streams.
    """

    def __init__(
        self,
        channels: tuple[int, int, int] = (16, 32, 64),
        *,
        dropout: float = 0.3,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        c4, c5, c6 = (int(c) for c in channels)
        self.dtype = dtype
        self.tap_channels = (c4, c5, c6)
        self.stem = _conv(3, 8, 3, stride=2, padding=1, dtype=dtype, rngs=rngs)
        self.bn_stem = FrozenBatchNorm(8, dtype=dtype)
        self.conv2 = _conv(8, c4, 3, stride=2, padding=1, dtype=dtype, rngs=rngs)
        self.conv3 = _conv(c4, c4, 3, stride=2, padding=1, dtype=dtype, rngs=rngs)
        self.bn4 = FrozenBatchNorm(c4, dtype=dtype)
        self.conv5 = _conv(c4, c5, 3, padding=2, dilation=2, dtype=dtype, rngs=rngs)
        self.dropout = dropout2d(dropout, rngs=rngs)
        self.conv6 = _conv(c5, c6, 3, padding=4, dilation=4, dtype=dtype, rngs=rngs)
        self.bn6 = FrozenBatchNorm(c6, dtype=dtype)
        freeze(self.stem)  # like the reference's frozen conv1a

    def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Returns ``{"conv4", "conv5", "conv6"}`` at stride 8 (``ceil(H/8) x ceil(W/8)``)."""
        x = jax.nn.relu(self.bn_stem(self.stem(x.astype(self.dtype))))
        x = jax.nn.relu(self.conv2(x))
        x = self.conv3(x)
        conv4 = jax.nn.relu(self.bn4(x))
        conv5 = jax.nn.relu(self.conv5(conv4))
        y = self.conv6(self.dropout(conv5, deterministic=not train))
        conv6 = jax.nn.relu(self.bn6(y))
        return {"conv4": conv4, "conv5": conv5, "conv6": conv6}
