"""The two branches on top of a stride-8 trunk: activation logits and affinity features.

Names follow the reference (``resnet38_aff.Net``): ``dropout7``/``fc8`` for the activation branch,
``f8_3``/``f8_4``/``f8_5``/``f9`` for the affinity branch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from alcfcn_jax.models.layers import conv2d, dropout2d, normal_init, torch_conv_init, uniform_init


def kaiming_normal(fan_in: int):
    """torch ``kaiming_normal_`` defaults (fan_in, gain sqrt(2)): N(0, 2 / fan_in), untruncated."""
    return normal_init(math.sqrt(2.0 / fan_in))


def xavier_uniform(fan_in: int, fan_out: int, gain: float):
    """torch ``xavier_uniform_(gain)``: U(-b, b) with ``b = gain * sqrt(6 / (fan_in + fan_out))``."""
    return uniform_init(gain * math.sqrt(6.0 / (fan_in + fan_out)))


class ActivationHead(nnx.Module):
    """``fc8(Dropout2d(0.5)(conv6))``: bias-free 1x1 conv to class logits at stride 8.

    ``fc8`` is absent from the SEAM checkpoint, so its init is PyTorch's default Conv2d init,
    U(+-1/sqrt(fan_in)).
    Upsampling to image size is done by the model (it differs between trunk modes).
    """

    def __init__(
        self,
        in_ch: int,
        n_classes: int,
        *,
        dropout: float = 0.5,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        self.dropout7 = dropout2d(dropout, rngs=rngs)
        self.fc8 = conv2d(
            in_ch,
            n_classes,
            1,
            kernel_init=torch_conv_init(in_ch),
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, conv6: jax.Array, *, train: bool = False) -> jax.Array:
        """Returns stride-8 logits (B, h, w, n_classes) in float32."""
        return self.fc8(self.dropout7(conv6, deterministic=not train)).astype(jnp.float32)


class AffinityHead(nnx.Module):
    """``elu(f9(concat[elu(f8_3(conv4)), elu(f8_4(conv5)), elu(f8_5(conv6))]))``.

    Args:
      in_channels: channels of the trunk taps (conv4, conv5, conv6) - the trunk's
        ``tap_channels``.
      widths: output widths of f8_3/f8_4/f8_5; the reference's (64, 128, 256) give 448 features.
      dtype: compute dtype.
      rngs: init stream.
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        widths: Sequence[int] = (64, 128, 256),
        *,
        dtype=jnp.float32,
        rngs: nnx.Rngs,
    ):
        if len(in_channels) != 3 or len(widths) != 3:
            raise ValueError(
                f"AffinityHead needs 3 input taps and 3 widths, got {in_channels} and {widths}"
            )
        c4, c5, c6 = (int(c) for c in in_channels)
        w3, w4, w5 = (int(w) for w in widths)
        self.out_channels = w3 + w4 + w5
        self.f8_3 = conv2d(c4, w3, 1, kernel_init=kaiming_normal(c4), dtype=dtype, rngs=rngs)
        self.f8_4 = conv2d(c5, w4, 1, kernel_init=kaiming_normal(c5), dtype=dtype, rngs=rngs)
        self.f8_5 = conv2d(c6, w5, 1, kernel_init=kaiming_normal(c6), dtype=dtype, rngs=rngs)
        self.f9 = conv2d(
            self.out_channels,
            self.out_channels,
            1,
            kernel_init=xavier_uniform(self.out_channels, self.out_channels, 4.0),
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, taps: dict[str, jax.Array]) -> jax.Array:
        """Returns affinity features (B, h, w, sum(widths)) in the compute dtype."""
        f = jnp.concatenate(
            [
                jax.nn.elu(self.f8_3(taps["conv4"])),
                jax.nn.elu(self.f8_4(taps["conv5"])),
                jax.nn.elu(self.f8_5(taps["conv6"])),
            ],
            axis=-1,
        )
        return jax.nn.elu(self.f9(f))
