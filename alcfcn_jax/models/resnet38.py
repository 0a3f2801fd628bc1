"""ResNet-38d (wide ResNet-38, PSA/SEAM variant) trunk with output stride 8.

Pre-activation residual blocks, bias-free convolutions, frozen BatchNorm (eval statistics,
untrained scale/shift) and frozen ``conv1a``/``b2*``, exactly as the reference
(``scripts/SEAM/network/resnet38d.py``). Attribute names follow the PyTorch module names so the
weight importer maps ``b4_3.conv_branch2b1.weight`` to ``trunk.b4_3.conv_branch2b1.kernel``.

Trunk interface (shared with the EfficientNet-Lite0 trunk): ``trunk(x (B,H,W,3), *, train)``
returns ``{"conv4", "conv5", "conv6"}``, all at stride 8 (spatial size ``ceil(H/8) x ceil(W/8)``),
with channel counts ``trunk.tap_channels``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from alcfcn_jax.models.layers import FrozenBatchNorm, conv2d, dropout2d, freeze, torch_conv_init


def _conv(in_ch: int, out_ch: int, kernel: int, **kwargs) -> nnx.Conv:
    # PyTorch's default Conv2d init (the reference never re-initialises trunk convs).
    return conv2d(in_ch, out_ch, kernel, kernel_init=torch_conv_init(in_ch * kernel**2), **kwargs)


class ResBlock(nnx.Module):
    """Pre-activation basic block: ``relu(bn) -> 3x3 -> bn -> relu -> 3x3`` plus shortcut.

    The shortcut is the identity when shapes agree, else a 1x1 (strided) conv of the
    pre-activated input.
    """

    def __init__(
        self,
        in_ch: int,
        mid_ch: int,
        out_ch: int,
        *,
        stride: int = 1,
        first_dilation: int | None = None,
        dilation: int = 1,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        first_dilation = dilation if first_dilation is None else first_dilation
        self.same_shape = in_ch == out_ch and stride == 1
        self.bn_branch2a = FrozenBatchNorm(in_ch, dtype=dtype)
        self.conv_branch2a = _conv(
            in_ch,
            mid_ch,
            3,
            stride=stride,
            padding=first_dilation,
            dilation=first_dilation,
            dtype=dtype,
            rngs=rngs,
        )
        self.bn_branch2b1 = FrozenBatchNorm(mid_ch, dtype=dtype)
        self.conv_branch2b1 = _conv(
            mid_ch, out_ch, 3, padding=dilation, dilation=dilation, dtype=dtype, rngs=rngs
        )
        if not self.same_shape:
            self.conv_branch1 = _conv(in_ch, out_ch, 1, stride=stride, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Returns ``(block output, relu(bn_branch2a(x)))`` (the second is a feature tap)."""
        del train  # no dropout in this block; kept for a uniform block interface
        a = jax.nn.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(a)
        y = self.conv_branch2a(a)
        y = jax.nn.relu(self.bn_branch2b1(y))
        y = self.conv_branch2b1(y)
        return shortcut + y, a


class ResBlockBot(nnx.Module):
    """Pre-activation bottleneck block (``ResBlock_bot``) with channel dropout inside.

    ``1x1 (out/4) -> bn -> relu -> Dropout2d -> 3x3 dilated (out/2) -> bn -> relu -> Dropout2d ->
    1x1 (out)``; the shortcut is a 1x1 conv of the pre-activated input when shapes differ.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        stride: int = 1,
        dilation: int = 1,
        dropout: float = 0.0,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.same_shape = in_ch == out_ch and stride == 1
        self.bn_branch2a = FrozenBatchNorm(in_ch, dtype=dtype)
        self.conv_branch2a = _conv(in_ch, out_ch // 4, 1, stride=stride, dtype=dtype, rngs=rngs)
        self.bn_branch2b1 = FrozenBatchNorm(out_ch // 4, dtype=dtype)
        self.dropout_2b1 = dropout2d(dropout, rngs=rngs)
        self.conv_branch2b1 = _conv(
            out_ch // 4, out_ch // 2, 3, padding=dilation, dilation=dilation, dtype=dtype, rngs=rngs
        )
        self.bn_branch2b2 = FrozenBatchNorm(out_ch // 2, dtype=dtype)
        self.dropout_2b2 = dropout2d(dropout, rngs=rngs)
        self.conv_branch2b2 = _conv(out_ch // 2, out_ch, 1, dtype=dtype, rngs=rngs)
        if not self.same_shape:
            self.conv_branch1 = _conv(in_ch, out_ch, 1, stride=stride, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool = False) -> tuple[jax.Array, jax.Array]:
        """Returns ``(block output, relu(bn_branch2a(x)))``; dropout is active iff ``train``."""
        a = jax.nn.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(a)
        y = self.conv_branch2a(a)
        y = jax.nn.relu(self.bn_branch2b1(y))
        y = self.dropout_2b1(y, deterministic=not train)
        y = self.conv_branch2b1(y)
        y = jax.nn.relu(self.bn_branch2b2(y))
        y = self.dropout_2b2(y, deterministic=not train)
        y = self.conv_branch2b2(y)
        return shortcut + y, a


# (name, kind, args) in execution order; widths scale with ``width`` for reduced test models.
def _block_specs(w: int) -> list[tuple[str, str, dict]]:
    specs: list[tuple[str, str, dict]] = [
        ("b2", "res", dict(in_ch=w, mid_ch=2 * w, out_ch=2 * w, stride=2)),
        ("b2_1", "res", dict(in_ch=2 * w, mid_ch=2 * w, out_ch=2 * w)),
        ("b2_2", "res", dict(in_ch=2 * w, mid_ch=2 * w, out_ch=2 * w)),
        ("b3", "res", dict(in_ch=2 * w, mid_ch=4 * w, out_ch=4 * w, stride=2)),
        ("b3_1", "res", dict(in_ch=4 * w, mid_ch=4 * w, out_ch=4 * w)),
        ("b3_2", "res", dict(in_ch=4 * w, mid_ch=4 * w, out_ch=4 * w)),
        ("b4", "res", dict(in_ch=4 * w, mid_ch=8 * w, out_ch=8 * w, stride=2)),
    ]
    specs += [
        (f"b4_{i}", "res", dict(in_ch=8 * w, mid_ch=8 * w, out_ch=8 * w)) for i in range(1, 6)
    ]
    specs += [
        ("b5", "res", dict(in_ch=8 * w, mid_ch=8 * w, out_ch=16 * w, first_dilation=1, dilation=2)),
        ("b5_1", "res", dict(in_ch=16 * w, mid_ch=8 * w, out_ch=16 * w, dilation=2)),
        ("b5_2", "res", dict(in_ch=16 * w, mid_ch=8 * w, out_ch=16 * w, dilation=2)),
        ("b6", "bot", dict(in_ch=16 * w, out_ch=32 * w, dilation=4, dropout=0.3)),
        ("b7", "bot", dict(in_ch=32 * w, out_ch=64 * w, dilation=4, dropout=0.5)),
    ]
    return specs


BLOCK_NAMES: tuple[str, ...] = tuple(name for name, _, _ in _block_specs(64))
FROZEN_BLOCKS: tuple[str, ...] = ("conv1a", "b2", "b2_1", "b2_2")


class ResNet38d(nnx.Module):
    """ResNet-38d trunk, output stride 8 (dilations 2 in b5*, 4 in b6/b7).

    Args:
      width: channels of ``conv1a`` (64 in the reference). Every stage scales with it, so a small
        width gives a structurally identical network for fast tests.
      dtype: compute dtype (parameters stay float32).
      rngs: parameter init and ``dropout`` streams.
    """

    def __init__(self, *, width: int = 64, dtype=jnp.float32, rngs: nnx.Rngs):
        if width < 4 or width % 4:
            raise ValueError(f"ResNet38d width must be a positive multiple of 4, got {width}")
        self.width = width
        self.dtype = dtype
        self.tap_channels = (8 * width, 16 * width, 64 * width)
        self.conv1a = _conv(3, width, 3, padding=1, dtype=dtype, rngs=rngs)
        for name, kind, kwargs in _block_specs(width):
            cls = ResBlock if kind == "res" else ResBlockBot
            setattr(self, name, cls(**kwargs, dtype=dtype, rngs=rngs))
        self.bn7 = FrozenBatchNorm(64 * width, dtype=dtype)
        # The reference never trains conv1a and b2* (``not_training``); BN is frozen inside
        # FrozenBatchNorm already.
        for name in FROZEN_BLOCKS:
            freeze(getattr(self, name))

    def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Runs the trunk.

        Args:
          x: images (B, H, W, 3), any H, W >= 1.
          train: enables the Dropout2d layers of b6/b7 (BatchNorm is always in eval mode).

        Returns:
          ``{"conv4": (B,h,w,8*width), "conv5": (B,h,w,16*width), "conv6": (B,h,w,64*width)}``
          with ``h = ceil(H/8), w = ceil(W/8)``, in the compute dtype.
        """
        x = self.conv1a(x.astype(self.dtype))
        taps: dict[str, jax.Array] = {}
        for name in BLOCK_NAMES:
            x, pre = getattr(self, name)(x, train=train)
            # Taps are the pre-activations feeding b5 and b6 (conv3 = b4's is unused).
            if name == "b5":
                taps["conv4"] = pre
            elif name == "b6":
                taps["conv5"] = pre
        taps["conv6"] = jax.nn.relu(self.bn7(x))
        return taps
