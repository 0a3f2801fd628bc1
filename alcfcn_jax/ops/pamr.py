"""Pixel-adaptive mask refinement (PAMR, Araslanov & Roth, CVPR 2020) in jax.numpy.

A map (class probabilities) is averaged over each pixel's neighbours, again and again, with
weights from how alike the neighbours' colours are, so it spreads inside regions of one colour and
stops at colour edges. For every pixel ``i`` and each of its ``P = 8 * len(dilations)``
neighbours ``j`` (the 8 neighbours of a 3x3 window at every dilation; the borders repeat the edge
pixels):

  * ``sigma_i`` (per colour channel) = the standard deviation (unbiased) of the ``9 * len(dilations)``
    values of the windows around ``i`` (centre included once per dilation);
  * ``a_ij = mean over channels of -|I_i - I_j| / (1e-8 + 0.1 * sigma_i)``;
  * ``w_ij = softmax_j(a_ij)`` (over the ``P`` neighbours; the centre is not a neighbour);
  * ``iters`` times: ``M_i <- sum_j w_ij M_j``.

The weights depend on the image only; the map may be any number of channels (fish probability,
two-class softmax). Everything is a pure function, jit- and grad-able; the shifted copies are
summed one by one, so memory stays O(H W P) for the weights and O(H W K) for the map.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["DILATIONS", "neighbour_offsets", "pamr", "pamr_weights"]

DILATIONS = (1, 2, 4, 8, 12, 24)  # the paper's

_RING = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def neighbour_offsets(dilations: tuple[int, ...] = DILATIONS) -> tuple[tuple[int, int], ...]:
    """The (dy, dx) of the 8 neighbours at each dilation, dilation after dilation."""
    return tuple((dy * d, dx * d) for d in dilations for dy, dx in _RING)


def _shift(xp: jax.Array, m: int, dy: int, dx: int, h: int, w: int) -> jax.Array:
    """x[b, y+dy, x+dx] from an edge-padded (by ``m``) copy ``xp``."""
    return xp[:, m + dy : m + dy + h, m + dx : m + dx + w]


def _pad(x: jax.Array, m: int) -> jax.Array:
    return jnp.pad(x, ((0, 0), (m, m), (m, m), (0, 0)), mode="edge")


@functools.partial(jax.jit, static_argnames=("dilations",))
def pamr_weights(image: jax.Array, dilations: tuple[int, ...] = DILATIONS) -> jax.Array:
    """(B,H,W,P) neighbour weights ``w_ij`` of an image (B,H,W,C) (module docstring)."""
    image = image.astype(jnp.float32)
    h, w = image.shape[1:3]
    offsets = neighbour_offsets(dilations)
    m = max(dilations)
    xp = _pad(image, m)
    # sigma over the 3x3 window of every dilation (its 8 neighbours and the centre), from running
    # sums: no (B,H,W,P,C) stack.
    n = 9 * len(dilations)
    s1 = len(dilations) * image
    s2 = len(dilations) * image**2
    for dy, dx in offsets:
        v = _shift(xp, m, dy, dx, h, w)
        s1 = s1 + v
        s2 = s2 + v**2
    var = jnp.maximum(s2 - s1**2 / n, 0.0) / (n - 1)
    scale = 1e-8 + 0.1 * jnp.sqrt(var)
    logits = jnp.stack(
        [
            jnp.mean(-jnp.abs(image - _shift(xp, m, dy, dx, h, w)) / scale, axis=-1)
            for dy, dx in offsets
        ],
        axis=-1,
    )
    return jax.nn.softmax(logits, axis=-1)


@functools.partial(jax.jit, static_argnames=("iters", "dilations"))
def pamr(
    image: jax.Array,
    maps: jax.Array,
    *,
    iters: int = 10,
    dilations: tuple[int, ...] = DILATIONS,
) -> jax.Array:
    """Refines ``maps`` (B,H,W,K) by the colours of ``image`` (B,H,W,C) (module docstring).

    Returns:
      (B,H,W,K) float32; each step is a convex combination, so probabilities stay probabilities.
    """
    if image.shape[:3] != maps.shape[:3]:
        raise ValueError(f"image {image.shape} and maps {maps.shape} must share (B,H,W)")
    weights = pamr_weights(image, dilations)
    offsets = neighbour_offsets(dilations)
    m = max(dilations)
    h, w = maps.shape[1:3]

    def step(x, _):
        xp = _pad(x, m)
        out = jnp.zeros_like(x)
        for k, (dy, dx) in enumerate(offsets):
            out = out + weights[..., k : k + 1] * _shift(xp, m, dy, dx, h, w)
        return out, None

    out, _ = jax.lax.scan(step, maps.astype(jnp.float32), None, length=iters)
    return out
