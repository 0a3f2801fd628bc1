"""Pixel affinities on the stride-8 feature grid, as in the reference AffinityNet head.

The reference (PSA / SEAM ``get_indices_of_pairs`` + ``resnet38_aff.Net.forward``) links every
pixel ``p`` of a "from" region (all rows but the last ``r-1``, all columns but the first and last
``r-1``) to ``p + d`` for the K half-disk offsets ``d`` of ``neighbor_offsets(r)``, and sets
``a_pq = a_qp = exp(-mean_c |f_pc - f_qc|)``, diagonal 1, zero elsewhere.

Two layouts of the same numbers:

* ``dense_affinity`` -- the reference's dense symmetric (B, N, N) matrix, N = h*w row-major.
* ``sparse_affinity`` -- per pixel and per signed offset, (B, h, w, 2K+1) values plus a validity
  mask; O(N*K) memory, for the sparse random walk at high resolution.

Sparse channel layout (``signed_offsets``): channel ``k < K`` is the forward offset ``+d_k``,
channel ``K + k`` the reverse offset ``-d_k``, and the last channel ``2K`` is the pixel itself
(value 1, always valid). Entry ``[b, y, x, e]`` holds ``a_pq`` for ``p = (y, x)``,
``q = p + offset_e``.

The expensive part, the mean absolute difference over C (=448) channels for every pixel and
forward offset, lives in ``neighbour_l1`` (a ``jax.custom_vjp`` with a sign-based backward); the
reverse offsets are derived from the forward ones by shifting, since ``|f_p - f_q|`` is symmetric.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "dense_affinity",
    "effective_radius",
    "neighbor_offsets",
    "neighbour_l1",
    "neighbour_l1_reference",
    "pair_indices",
    "shift_channels",
    "signed_offsets",
    "sparse_affinity",
    "sparse_to_dense",
    "valid_mask",
]


def neighbor_offsets(radius: int) -> np.ndarray:
    """Half-disk neighbour offsets (dy, dx) in the reference order.

    ``(0, 1..r-1)`` first, then rows ``dy = 1..r-1`` with ``dx = -(r-1)..r-1`` and
    ``dx^2 + dy^2 < r^2``. K = 34 for r = 5; empty for r <= 1.

    Args:
        radius: neighbourhood radius r.

    Returns:
        int64 array of shape (K, 2).
    """
    r = int(radius)
    offs = [(0, x) for x in range(1, r)]
    offs += [(y, x) for y in range(1, r) for x in range(-r + 1, r) if x * x + y * y < r * r]
    return np.asarray(offs, dtype=np.int64).reshape(-1, 2)


def signed_offsets(radius: int) -> np.ndarray:
    """Offsets of the sparse layout: the K forward offsets, their K negations, then (0, 0).

    Args:
        radius: neighbourhood radius r.

    Returns:
        int64 array of shape (2K + 1, 2).
    """
    fwd = neighbor_offsets(radius)
    return np.concatenate([fwd, -fwd, np.zeros((1, 2), np.int64)], axis=0)


def effective_radius(h: int, w: int, radius: int = 5) -> int:
    """Radius actually used on an h x w map (the reference's small-map fallback).

    The reference uses r = 5 unless ``min(h, w) < 11``, where it drops to
    ``(min(h, w) - 1) // 2``. Written as ``min(radius, (min(h, w) - 1) // 2)`` this is identical
    for r = 5 and generalises to any configured radius (the largest half-disk that fits). It is
    idempotent, so functions below may apply it to an already-effective radius.

    Args:
        h: map height.
        w: map width.
        radius: configured radius.

    Returns:
        The effective radius (may be 0 or 1 on tiny maps, meaning no edges).
    """
    if h < 1 or w < 1 or radius < 0:
        raise ValueError(
            f"effective_radius: need h, w >= 1 and radius >= 0, got {h}, {w}, {radius}"
        )
    return min(int(radius), (min(h, w) - 1) // 2)


def pair_indices(radius: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference's neighbour pairs ``(ind_from, ind_to)`` on an h x w map (no fallback).

    ``ind_from`` lists the "from" pixels row-major; ``ind_to`` is offset-major: for each offset of
    ``neighbor_offsets(radius)`` in order, the targets of all from-pixels. For r <= 1 there are no
    edges and both arrays are empty (the reference cannot build that case at all).

    Args:
        radius: neighbourhood radius r (used as given; see ``effective_radius``).
        h: map height.
        w: map width.

    Returns:
        (ind_from (Nf,), ind_to (K * Nf,)), int64 flat row-major indices.

    Raises:
        ValueError: if the radius does not fit the map (the from-region would be empty).
    """
    offs = neighbor_offsets(radius)
    if len(offs) == 0:
        return np.zeros((0,), np.int64), np.zeros((0,), np.int64)
    rf = int(radius) - 1
    ch, cw = h - rf, w - 2 * rf
    if ch <= 0 or cw <= 0:
        raise ValueError(
            f"pair_indices: radius {radius} does not fit a {h}x{w} map; "
            f"use effective_radius(h, w, radius) = {effective_radius(h, w, radius)}"
        )
    full = np.arange(h * w, dtype=np.int64).reshape(h, w)
    ind_from = full[:ch, rf : rf + cw].reshape(-1)
    ind_to = np.concatenate(
        [full[dy : dy + ch, rf + dx : rf + dx + cw].reshape(-1) for dy, dx in offs]
    )
    return ind_from, ind_to


def _check_feats(feats: jnp.ndarray, fn: str) -> None:
    if feats.ndim != 4:
        raise ValueError(f"{fn}: feats must be (B, h, w, C), got shape {tuple(feats.shape)}")


@functools.partial(jax.jit, static_argnames=("radius",))
def dense_affinity(feats: jnp.ndarray, radius: int) -> jnp.ndarray:
    """Dense symmetric affinity matrix of the reference, ``a_ij = exp(-mean_c |f_i - f_j|)``.

    Applies ``effective_radius`` (as the reference forward does). Memory is O(N^2): meant for the
    training resolution (32 x 57 grid) and tests.

    Args:
        feats: (B, h, w, C) affinity features.
        radius: configured radius.

    Returns:
        (B, N, N) float array, N = h*w row-major, symmetric with unit diagonal, non-zero only on
        the reference's edge set.
    """
    _check_feats(feats, "dense_affinity")
    b, h, w, c = feats.shape
    n = h * w
    r = effective_radius(h, w, radius)
    ind_from, ind_to = pair_indices(r, h, w)
    eye = jnp.broadcast_to(jnp.eye(n, dtype=feats.dtype), (b, n, n))
    if ind_to.size == 0:
        return eye
    k = ind_to.size // ind_from.size
    flat = feats.reshape(b, n, c)
    src = np.tile(ind_from, k)
    aff = jnp.exp(-jnp.mean(jnp.abs(flat[:, ind_to] - flat[:, src]), axis=-1))
    # No duplicate pairs and no self pairs exist, so two plain scatters give the reference matrix.
    return eye.at[:, src, ind_to].set(aff).at[:, ind_to, src].set(aff)


def valid_mask(h: int, w: int, radius: int) -> np.ndarray:
    """Validity of each (pixel, signed offset) entry of the sparse layout (reference edge set).

    Args:
        h: map height.
        w: map width.
        radius: radius used as given (apply ``effective_radius`` first).

    Returns:
        bool array (h, w, 2K + 1).
    """
    offs = neighbor_offsets(radius)
    kk = len(offs)
    valid = np.zeros((h, w, 2 * kk + 1), bool)
    valid[..., 2 * kk] = True
    if kk == 0:
        return valid
    rf = int(radius) - 1
    from_region = np.zeros((h, w), bool)
    from_region[: h - rf, rf : w - rf] = True
    for k, (dy, dx) in enumerate(offs):
        valid[..., k] = from_region
        # Entry (q, -d) is the edge (q - d, q): valid when q - d is a from-pixel.
        valid[dy:, max(dx, 0) : w + min(dx, 0), kk + k] = from_region[
            : h - dy, max(-dx, 0) : w - max(dx, 0)
        ]
    return valid


def _shift(x: jnp.ndarray, dy: int, dx: int) -> jnp.ndarray:
    """``out[:, y, x] = x[:, y + dy, x + dx]`` on (B, h, w, ...) with zeros outside."""
    h, w = x.shape[1], x.shape[2]
    pad = [(0, 0), (max(-dy, 0), max(dy, 0)), (max(-dx, 0), max(dx, 0))]
    pad += [(0, 0)] * (x.ndim - 3)
    xp = jnp.pad(x, pad)
    y0, x0 = max(dy, 0), max(dx, 0)
    return xp[:, y0 : y0 + h, x0 : x0 + w]


@functools.partial(jax.jit, static_argnames=("offsets",))
def _l1_reference(feats: jnp.ndarray, offsets: tuple[tuple[int, int], ...]) -> jnp.ndarray:
    cols = [jnp.mean(jnp.abs(feats - _shift(feats, dy, dx)), -1) for dy, dx in offsets]
    return jnp.stack(cols, axis=-1)


def shift_channels(x: jnp.ndarray, offsets: np.ndarray) -> jnp.ndarray:
    """``out[b, y, x, k] = x[b, y + dy_k, x + dx_k, k]`` (zeros outside), one static gather.

    A single gather instead of one pad/slice per channel: XLA compiles a stack of dozens of
    shifted slices very slowly, and the gather is as fast at run time.

    Args:
        x: (B, h, w, K) array.
        offsets: (K, 2) int (dy, dx), one per channel.

    Returns:
        (B, h, w, K) array.
    """
    b, h, w, k = x.shape
    m = int(np.abs(offsets).max()) if offsets.size else 0
    hp, wp = h + 2 * m, w + 2 * m
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    src = ((yy[..., None] + m + offsets[:, 0]) * wp + xx[..., None] + m + offsets[:, 1]) * k
    src = src + np.arange(k)
    xp = jnp.pad(x, ((0, 0), (m, m), (m, m), (0, 0))).reshape(b, hp * wp * k)
    return xp[:, src.reshape(-1)].reshape(b, h, w, k)


def neighbour_l1_reference(feats: jnp.ndarray, offsets: np.ndarray) -> jnp.ndarray:
    """Plain-jnp ``D[b, y, x, k] = mean_c |f[b, y, x] - f[b, y + dy_k, x + dx_k]|`` (zeros outside).

    Readable definition that ``neighbour_l1`` is tested against; autodiff gives its gradient.
    """
    offs = tuple((int(dy), int(dx)) for dy, dx in np.asarray(offsets).reshape(-1, 2))
    if not offs:
        return jnp.zeros(feats.shape[:3] + (0,), feats.dtype)
    return _l1_reference(feats, offs)


# Channels handled per scan step of the fast kernel. It works on (C, B, h, w) planes and writes
# each channel's contribution as an explicit elementwise sum, so XLA emits vectorised loops over
# the minor (w) axis: a reduction over the minor channel axis of NHWC is a serial scalar chain
# (float adds are not reassociated) and a reduce over a small major axis is no better; measured
# 5-10x slower on CPU. The chunk sizes balance loop overhead against the size (and compile time)
# of the unrolled expressions (forward: one term per offset and channel; backward: vectorised
# over the chunk's channels, two terms per offset).
_CHUNK_FWD = 8
_CHUNK_BWD = 16


def _planes(feats: jnp.ndarray, m: int, chunk: int) -> jnp.ndarray:
    """(B, h, w, C) -> (C/chunk, chunk, B, h + 2m, w + 2m), zero-padded (channels and space)."""
    c = feats.shape[-1]
    planes = jnp.transpose(feats, (3, 0, 1, 2))
    planes = jnp.pad(planes, ((0, -c % chunk), (0, 0), (m, m), (m, m)))
    return planes.reshape((-1, chunk) + planes.shape[1:])


def _window(plane: jnp.ndarray, m: int, dy: int, dx: int, h: int, w: int) -> jnp.ndarray:
    return plane[:, m + dy : m + dy + h, m + dx : m + dx + w]


def _l1_forward(feats: jnp.ndarray, offsets: tuple[tuple[int, int], ...]) -> jnp.ndarray:
    b, h, w, c = feats.shape
    m = max(max(abs(dy), abs(dx)) for dy, dx in offsets)

    def body(acc, chunk):
        cols = []
        for dy, dx in offsets:
            total = None
            for j in range(_CHUNK_FWD):
                term = jnp.abs(
                    _window(chunk[j], m, 0, 0, h, w) - _window(chunk[j], m, dy, dx, h, w)
                )
                total = term if total is None else total + term
            cols.append(total)
        return acc + jnp.stack(cols, axis=0), None

    acc0 = jnp.zeros((len(offsets), b, h, w), feats.dtype)
    acc, _ = jax.lax.scan(body, acc0, _planes(feats, m, _CHUNK_FWD))
    return jnp.transpose(acc, (1, 2, 3, 0)) / c


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _l1_fast(feats: jnp.ndarray, offsets: tuple[tuple[int, int], ...]) -> jnp.ndarray:
    return _l1_forward(feats, offsets)


def _l1_fast_fwd(feats, offsets):
    return _l1_forward(feats, offsets), feats


def _l1_fast_bwd(offsets, feats, g):
    # d/df_p of sum_k g[p,k] |f_p - f_{p+d_k}| / C: each edge contributes sign(f_p - f_q) g / C to
    # p and the opposite to q. Gathering both terms at p gives one elementwise sum over the 2K
    # signed offsets (no scatter), recomputing the signs instead of storing a (K,h,w,C) tensor.
    # sign(0) = 0 matches jax's derivative of abs, so this equals autodiff of the reference path.
    b, h, w, c = feats.shape
    m = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    offs = np.asarray(offsets)
    g_k = jnp.transpose(g, (3, 0, 1, 2))  # (K, B, h, w)
    g_back = jnp.transpose(shift_channels(g, -offs), (3, 0, 1, 2))  # g[p - d_k, k]

    def body(_, chunk):
        # chunk: (_CHUNK_BWD, B, h+2m, w+2m): all its channels at once, two terms per offset.
        centre = chunk[:, :, m : m + h, m : m + w]
        total = None
        for k, (dy, dx) in enumerate(offsets):
            fwd_nb = chunk[:, :, m + dy : m + dy + h, m + dx : m + dx + w]
            bwd_nb = chunk[:, :, m - dy : m - dy + h, m - dx : m - dx + w]
            term = jnp.sign(centre - fwd_nb) * g_k[k] + jnp.sign(centre - bwd_nb) * g_back[k]
            total = term if total is None else total + term
        return None, total

    _, grads = jax.lax.scan(body, None, _planes(feats, m, _CHUNK_BWD))
    grads = grads.reshape((-1,) + grads.shape[2:])[:c]  # (C, B, h, w)
    return (jnp.transpose(grads, (1, 2, 3, 0)) / c,)


_l1_fast.defvjp(_l1_fast_fwd, _l1_fast_bwd)
_l1_fast_jit = jax.jit(_l1_fast, static_argnums=(1,))


def neighbour_l1(feats: jnp.ndarray, offsets: np.ndarray) -> jnp.ndarray:
    """Fast ``neighbour_l1_reference``: same values (to float32 rounding) and same gradient.

    Args:
        feats: (B, h, w, C) features.
        offsets: (K, 2) int offsets (dy, dx); positions outside the map read zeros.

    Returns:
        (B, h, w, K) mean absolute differences.
    """
    offs = tuple((int(dy), int(dx)) for dy, dx in np.asarray(offsets).reshape(-1, 2))
    if not offs:
        return jnp.zeros(feats.shape[:3] + (0,), feats.dtype)
    return _l1_fast_jit(feats, offs)


@functools.partial(jax.jit, static_argnames=("radius", "fast"))
def sparse_affinity(
    feats: jnp.ndarray, radius: int, *, fast: bool = True
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Affinities of every pixel to its 2K signed neighbours and itself (sparse layout).

    Applies ``effective_radius``. Channel layout: see the module docstring / ``signed_offsets``.
    Entries outside the reference edge set are 0 in ``aff`` and False in ``valid``; scattering the
    valid entries into an N x N matrix gives exactly ``dense_affinity``.

    Args:
        feats: (B, h, w, C) affinity features.
        radius: configured radius.
        fast: use the custom-VJP ``neighbour_l1``; ``False`` uses the plain-jnp reference path.

    Returns:
        (aff (B, h, w, 2K+1), valid (1, h, w, 2K+1) bool).
    """
    _check_feats(feats, "sparse_affinity")
    _, h, w, _ = feats.shape
    r = effective_radius(h, w, radius)
    offs = neighbor_offsets(r)
    kk = len(offs)
    valid = jnp.asarray(valid_mask(h, w, r))[None]
    if kk == 0:
        return jnp.ones(feats.shape[:3] + (1,), feats.dtype), valid
    dist = (neighbour_l1 if fast else neighbour_l1_reference)(feats, offs)
    fwd = jnp.exp(-dist)
    # The reverse entry (q, -d) is the forward entry (q - d, +d): a shift, not a recomputation.
    rev = shift_channels(fwd, -offs)
    ones = jnp.ones(feats.shape[:3] + (1,), feats.dtype)
    aff = jnp.concatenate([fwd, rev, ones], axis=-1)
    return jnp.where(valid, aff, 0), valid


@functools.partial(jax.jit, static_argnames=("radius",))
def sparse_to_dense(aff: jnp.ndarray, valid: jnp.ndarray, radius: int) -> jnp.ndarray:
    """Scatters a sparse-layout affinity (as from ``sparse_affinity``) into (B, N, N).

    Args:
        aff: (B, h, w, 2K+1) values.
        valid: (1 or B, h, w, 2K+1) bool mask.
        radius: the effective radius the layout was built with.

    Returns:
        (B, N, N) dense matrix (invalid entries dropped).
    """
    b, h, w, e = aff.shape
    offs = signed_offsets(radius)
    if len(offs) != e:
        raise ValueError(f"sparse_to_dense: radius {radius} implies {len(offs)} channels, got {e}")
    n = h * w
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    src = np.broadcast_to((yy * w + xx)[..., None], (h, w, e))
    ty = np.clip(yy[..., None] + offs[:, 0], 0, h - 1)
    tx = np.clip(xx[..., None] + offs[:, 1], 0, w - 1)
    dst = ty * w + tx
    vals = jnp.where(jnp.broadcast_to(valid, aff.shape), aff, 0).reshape(b, -1)
    # Invalid entries may alias valid targets after clipping; they add 0 so the sum is exact.
    dense = jnp.zeros((b, n, n), aff.dtype)
    return dense.at[:, src.reshape(-1), dst.reshape(-1)].add(vals)
