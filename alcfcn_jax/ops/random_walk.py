"""Affinity random walk that refines activation logits (reference ``apply_affinity``).

Reference (spec 2.7): pad the logits right/bottom to multiples of 8, 8 x 8 average-pool them to
the stride-8 grid (N = h8*w8 nodes), ``T = A**beta / A.sum(0)`` (column-normalised), ``logt``
squarings ``T <- T @ T``, ``rw = cam_vec @ T``, then bilinear (align_corners=False) up to the
padded size and a second bilinear *rescale* (not a crop) to the input size.

Because A is symmetric, ``cam_vec @ T`` is ``P @ cam`` per node with the row-stochastic
``P = D^-1 A**beta`` (d_i = sum_j A_ij**beta): node i's new value is the affinity-weighted mean of
its neighbours' values. ``method="sparse"`` applies that ``t = 2**logt`` times with the
(h8, w8, 2K+1) neighbour layout of ``sparse_affinity`` -- O(N*K) memory instead of O(N^2).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from alcfcn_jax.ops.affinity import (
    dense_affinity,
    effective_radius,
    signed_offsets,
    sparse_affinity,
)
from alcfcn_jax.ops.resize import avg_pool, pad_to_multiple, resize_bilinear

__all__ = ["AUTO_DENSE_MAX_NODES", "STRIDE", "refine", "walk_dense", "walk_sparse"]

STRIDE = 8

# method="auto" uses the dense walk up to this many stride-8 nodes and the sparse walk above.
# Measured with `python -m benchmarks.random_walk` (jit'd refine, forward + backward w.r.t. logits
# and features, 448 channels, 2 classes, beta 8, logt 4) on the 2-core AMD EPYC dev CPU at load
# ~7, dense vs sparse seconds: 60 nodes 0.0007 vs 0.0008, 96 nodes 0.0020 vs 0.0014, 240 nodes
# 0.013 vs 0.011, 448 nodes 0.056 vs 0.016, 1032 nodes 0.90 vs 0.030, 1824 nodes (DeepFish
# 256x455) 4.07 vs 0.052. Dense costs O(N^3) time and O(N^2) memory, sparse O(N*K*C); the
# crossover lies between 60 and 96 nodes. On the same CPU at load ~1 (benchmarks/results/
# cpu-2cores.json) dense was faster up to 240 nodes (0.006 vs 0.010 s) and slower from 448 on
# (0.029 vs 0.011 s): the crossover moves with load, and below ~240 nodes both cost milliseconds,
# so the threshold sits at the low end, where a wrong choice costs least. Both agree to ~1e-5 (tests/test_random_walk.py).
AUTO_DENSE_MAX_NODES = 64

_HIGHEST = jax.lax.Precision.HIGHEST


def walk_dense(
    cam: jnp.ndarray, feats: jnp.ndarray, *, beta: float, logt: int, radius: int
) -> jnp.ndarray:
    """Reference random walk on the stride-8 grid with the dense N x N transition matrix.

    Args:
        cam: (B, h, w, K) pooled logits.
        feats: (B, h, w, C) affinity features.
        beta: affinity exponent.
        logt: number of squarings (t = 2**logt steps).
        radius: configured radius (``effective_radius`` applied).

    Returns:
        (B, h, w, K) walked logits.
    """
    b, h, w, k = cam.shape
    a = dense_affinity(feats, radius) ** beta
    t = a / jnp.sum(a, axis=1, keepdims=True)
    for _ in range(logt):
        t = jnp.matmul(t, t, precision=_HIGHEST)
    rw = jnp.einsum("bik,bij->bjk", cam.reshape(b, h * w, k), t, precision=_HIGHEST)
    return rw.reshape(b, h, w, k)


def _window(x: jnp.ndarray, m: int, dy: int, dx: int) -> jnp.ndarray:
    """Window of an m-padded (..., h+2m, w+2m) plane stack shifted by (dy, dx)."""
    h, w = x.shape[-2] - 2 * m, x.shape[-1] - 2 * m
    return x[..., m + dy : m + dy + h, m + dx : m + dx + w]


def _pad_planes(x: jnp.ndarray, m: int) -> jnp.ndarray:
    return jnp.pad(x, ((0, 0), (0, 0), (m, m), (m, m)))


def _step(p_planes: jnp.ndarray, x: jnp.ndarray, offsets, m: int) -> jnp.ndarray:
    """``y[:, :, p] = sum_e P[e, :, p] x[:, :, p + o_e]`` on planes (classes or offsets, B, h, w)."""
    xp = _pad_planes(x, m)
    total = None
    for e, (dy, dx) in enumerate(offsets):
        term = p_planes[e] * _window(xp, m, dy, dx)
        total = term if total is None else total + term
    return total


def _walk_fwd_scan(p_planes, x0, offsets, steps, m):
    def body(x, _):
        return _step(p_planes, x, offsets, m), x

    return jax.lax.scan(body, x0, None, length=steps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _walk_planes(p_planes, x0, offsets, steps):
    m = max((max(abs(dy), abs(dx)) for dy, dx in offsets), default=0)
    return _walk_fwd_scan(p_planes, x0, offsets, steps, m)[0]


def _walk_planes_fwd(p_planes, x0, offsets, steps):
    m = max((max(abs(dy), abs(dx)) for dy, dx in offsets), default=0)
    out, xs = _walk_fwd_scan(p_planes, x0, offsets, steps, m)
    return out, (p_planes, xs)


def _walk_planes_bwd(offsets, steps, res, g):
    # Hand-written transpose of the linear step (autodiff of the shifted windows inside a scan
    # produced a slow, slow-to-compile program): with y_p = sum_e P[e,p] x[p+o_e],
    #   dx_q = sum_e P[e, q-o_e] dy[q-o_e]      and      dP[e,p] = sum_c dy[c,p] x[c, p+o_e].
    p_planes, xs = res
    m = max((max(abs(dy), abs(dx)) for dy, dx in offsets), default=0)
    pp = _pad_planes(p_planes, m)

    def body(carry, x):
        gy, gp = carry
        xp = _pad_planes(x, m)
        gyp = _pad_planes(gy, m)
        # Explicit sums over the few classes: a reduce inside this 2K+1-way stack is far slower.
        cols = []
        for dy, dx in offsets:
            win = _window(xp, m, dy, dx)
            col = gy[0] * win[0]
            for c in range(1, gy.shape[0]):
                col = col + gy[c] * win[c]
            cols.append(col)
        gp = gp + jnp.stack(cols, axis=0)
        gx = None
        for e, (dy, dx) in enumerate(offsets):
            term = _window(pp[e : e + 1], m, -dy, -dx)[0] * _window(gyp, m, -dy, -dx)
            gx = term if gx is None else gx + term
        return (gx, gp), None

    (gx, gp), _ = jax.lax.scan(body, (g, jnp.zeros_like(p_planes)), xs, reverse=True)
    return gp, gx


_walk_planes.defvjp(_walk_planes_fwd, _walk_planes_bwd)


def walk_sparse(
    cam: jnp.ndarray,
    feats: jnp.ndarray,
    *,
    beta: float,
    logt: int,
    radius: int,
    fast: bool = True,
) -> jnp.ndarray:
    """Random walk as 2**logt steps of the row-stochastic neighbour operator (never N x N).

    Each step is ``y_i = sum_e W[i, e] x_{i + o_e} / sum_e W[i, e]`` with ``W = aff**beta`` over the
    2K+1 signed offsets ``o_e`` of ``sparse_affinity``; equal to the dense walk up to rounding.

    Args:
        cam: (B, h, w, K) pooled logits.
        feats: (B, h, w, C) affinity features.
        beta: affinity exponent.
        logt: log2 of the number of steps.
        radius: configured radius (``effective_radius`` applied).
        fast: use the custom-VJP affinity kernel and walk (``False``: the plain-jnp reference
            path, a gather per step and autodiff throughout; tested equal).

    Returns:
        (B, h, w, K) walked logits.
    """
    _, h, w, _ = cam.shape
    r = effective_radius(h, w, radius)
    aff, valid = sparse_affinity(feats, r, fast=fast)
    # aff is exactly 0 off the edge set; the where keeps d(aff**beta)/d(aff) finite at 0 for beta<1.
    wgt = jnp.where(valid, jnp.where(valid, aff, 1) ** beta, 0)
    p = wgt / jnp.sum(wgt, axis=-1, keepdims=True)
    offs = signed_offsets(r)
    steps = 2**logt
    if fast:
        # Planes layout (classes, B, h, w) / (offsets, B, h, w): every step is one fused
        # elementwise sum of 2K+1 shifted windows, vectorised along w; custom VJP.
        offs_t = tuple((int(dy), int(dx)) for dy, dx in offs)
        out = _walk_planes(
            jnp.transpose(p, (3, 0, 1, 2)), jnp.transpose(cam, (3, 0, 1, 2)), offs_t, steps
        )
        return jnp.transpose(out, (1, 2, 3, 0))
    # Reference path: one gather of all neighbours per step, plain autodiff.
    b, _, _, k = cam.shape
    m = int(np.abs(offs).max()) if offs.size else 0
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    idx = (yy[..., None] + m + offs[:, 0]) * (w + 2 * m) + xx[..., None] + m + offs[:, 1]
    idx = jnp.asarray(idx.reshape(-1))

    def step(x, _):
        xp = jnp.pad(x, ((0, 0), (m, m), (m, m), (0, 0))).reshape(b, -1, k)
        nb = xp[:, idx].reshape(b, h, w, len(offs), k)
        return jnp.einsum("bhwe,bhwek->bhwk", p, nb), None

    out, _ = jax.lax.scan(step, cam, None, length=steps)
    return out


@functools.partial(jax.jit, static_argnames=("beta", "logt", "radius", "method"))
def refine(
    logits: jnp.ndarray,
    aff_feats: jnp.ndarray,
    *,
    beta: float = 8,
    logt: int = 4,
    radius: int = 5,
    method: str = "dense",
) -> jnp.ndarray:
    """Refines activation logits with the affinity random walk (reference ``apply_affinity``).

    Args:
        logits: (B, H, W, K) activation logits at image resolution.
        aff_feats: (B, ceil(H/8), ceil(W/8), C) affinity features of the padded image.
        beta: affinity exponent (reference default 8).
        logt: number of squarings; the walk has t = 2**logt steps (reference default 4).
        radius: neighbour radius (reference 5), reduced on small maps by ``effective_radius``.
        method: "dense" (reference N x N matrix power, exact parity), "sparse" (O(N*K) memory
            neighbour walk, same numbers) or "auto" (dense up to ``AUTO_DENSE_MAX_NODES`` nodes).

    Returns:
        (B, H, W, K) refined logits. Differentiable w.r.t. ``logits`` and ``aff_feats``.

    Raises:
        ValueError: on bad shapes or an unknown method.
    """
    if logits.ndim != 4 or aff_feats.ndim != 4:
        raise ValueError(
            "refine: logits must be (B, H, W, K) and aff_feats (B, h8, w8, C), got "
            f"{tuple(logits.shape)} and {tuple(aff_feats.shape)}"
        )
    b, hh, ww, _ = logits.shape
    hp, wp = -(-hh // STRIDE) * STRIDE, -(-ww // STRIDE) * STRIDE
    h8, w8 = hp // STRIDE, wp // STRIDE
    if aff_feats.shape[:3] != (b, h8, w8):
        raise ValueError(
            f"refine: aff_feats must be (B={b}, {h8}, {w8}, C) for logits of size {hh}x{ww} "
            f"(ceil(size/8) grid of the padded image), got {tuple(aff_feats.shape)}"
        )
    if logt < 0:
        raise ValueError(f"refine: logt must be >= 0, got {logt}")
    if method == "auto":
        method = "dense" if h8 * w8 <= AUTO_DENSE_MAX_NODES else "sparse"
    if method not in ("dense", "sparse"):
        raise ValueError(f"refine: method must be 'dense', 'sparse' or 'auto', got {method!r}")
    # The walk always runs in float32 (16 chained steps amplify bfloat16 rounding); the result is
    # cast back to the dtype of the logits.
    cam = avg_pool(pad_to_multiple(logits.astype(jnp.float32), STRIDE), STRIDE)
    walk = walk_dense if method == "dense" else walk_sparse
    rw = walk(cam, aff_feats.astype(jnp.float32), beta=beta, logt=logt, radius=radius)
    rw = resize_bilinear(rw, (hp, wp), align_corners=False)
    return resize_bilinear(rw, (hh, ww), align_corners=False).astype(logits.dtype)
