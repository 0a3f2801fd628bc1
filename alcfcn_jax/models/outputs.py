"""What every model returns and how it is read: logits -> fish probability and class map.

All models return (B, H, W, C) logits at the input size: C = 2 (softmax background/fish) or
C = 1 (sigmoid fish). Label maps share one convention: 1 fish, 0 background, ``IGNORE`` (255)
unlabelled. The affinity branch and the random walk work on the ``STRIDE``-8 grid.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from alcfcn_jax.labels import IGNORE
from alcfcn_jax.ops.random_walk import STRIDE

__all__ = ["IGNORE", "STRIDE", "fish_probability", "prediction", "upsample_logits"]


def fish_probability(logits: jax.Array) -> jax.Array:
    """(B,H,W) float32 fish probability: softmax channel 1, or sigmoid for a one-channel head."""
    if logits.shape[-1] == 1:
        return jax.nn.sigmoid(logits[..., 0].astype(jnp.float32))
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)[..., 1]


def prediction(logits: jax.Array) -> jax.Array:
    """(B,H,W) int32 class map: argmax, or logit > 0 for a one-channel (sigmoid) head."""
    if logits.shape[-1] == 1:
        return (logits[..., 0] > 0).astype(jnp.int32)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def upsample_logits(logits: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear (half-pixel, no antialiasing) resize of (B,h,w,C) logits to ``size``.

    A no-op for the models of this package, which already return input-size logits.
    """
    if tuple(logits.shape[1:3]) == tuple(size):
        return logits
    b, c = logits.shape[0], logits.shape[-1]
    return jax.image.resize(logits, (b, *size, c), method="bilinear", antialias=False)
