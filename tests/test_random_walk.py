"""Tests for alcfcn_jax.ops.random_walk.refine against the reference random walk fixtures."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_fixture

from alcfcn_jax.ops import random_walk as rw


def _nhwc(x):
    return jnp.asarray(np.asarray(x).transpose(0, 2, 3, 1))


def _inputs(key, b, hh, ww, c=16, k=2):
    k1, k2 = jax.random.split(jax.random.key(key))
    logits = 2.0 * jax.random.normal(k1, (b, hh, ww, k))
    # Small feature scale -> affinities near 0.8, so beta=8 still leaves a real walk.
    feats = 0.05 * jax.random.normal(k2, (b, -(-hh // 8), -(-ww // 8), c))
    return logits, feats


@pytest.mark.parametrize("method", ["dense", "sparse"])
@pytest.mark.parametrize("name", ["rw_small", "rw_tiny_radius_fallback"])
def test_refine_matches_reference(name, method):
    fx = load_fixture(name)
    out = rw.refine(
        _nhwc(fx["logits_in"]),
        _nhwc(fx["aff_feats"]),
        beta=int(fx["beta"]),
        logt=int(fx["logt"]),
        method=method,
    )
    ref = fx["logits_rw"].transpose(0, 2, 3, 1)
    assert out.shape == ref.shape
    err = float(np.abs(np.asarray(out) - ref).max())
    assert err <= 1e-4, f"{name}/{method}: max abs err {err}"


@pytest.mark.parametrize("hw", [(37, 53), (91, 99)])
def test_dense_and_sparse_agree(hw):
    # 37x53 -> 5x7 grid (radius falls back to 2); 91x99 -> 12x13 grid (radius 5).
    logits, feats = _inputs(0, 1, *hw)
    dense = rw.refine(logits, feats, method="dense")
    sparse = rw.refine(logits, feats, method="sparse")
    np.testing.assert_allclose(np.asarray(sparse), np.asarray(dense), atol=1e-5, rtol=0)
    # The walk really mixes nodes (otherwise agreement would be trivial).
    assert float(jnp.abs(dense - rw.refine(logits, feats, logt=0)).max()) > 0.1


def test_sparse_fast_equals_reference_path_with_grads():
    logits, feats = _inputs(1, 1, 91, 99)
    cam = jax.random.normal(jax.random.key(2), (1, 12, 13, 2))

    def loss(fast):
        def f(c, a):
            out = rw.walk_sparse(c, a, beta=8, logt=3, radius=3, fast=fast)
            return jnp.sum(out * jnp.sin(jnp.arange(out.size).reshape(out.shape)))

        return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(cam, feats)

    (v_fast, (gc_fast, gf_fast)), (v_ref, (gc_ref, gf_ref)) = loss(True), loss(False)
    np.testing.assert_allclose(float(v_fast), float(v_ref), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(gc_fast), np.asarray(gc_ref), atol=1e-5, rtol=1e-5)
    scale = float(jnp.abs(gf_ref).max())
    np.testing.assert_allclose(np.asarray(gf_fast), np.asarray(gf_ref), atol=1e-4 * scale)


def test_dense_and_sparse_gradients_agree_and_are_finite():
    logits, feats = _inputs(3, 1, 91, 99)
    weights = jax.random.normal(jax.random.key(4), logits.shape)

    def grads(method):
        f = lambda lg, ft: jnp.sum(rw.refine(lg, ft, method=method) * weights)
        return jax.jit(jax.grad(f, argnums=(0, 1)))(logits, feats)

    gl_d, gf_d = grads("dense")
    gl_s, gf_s = grads("sparse")
    for g in (gl_d, gf_d, gl_s, gf_s):
        assert bool(jnp.isfinite(g).all())
    assert float(jnp.abs(gf_d).max()) > 0  # gradient reaches the affinity features through A
    for a, b in ((gl_s, gl_d), (gf_s, gf_d)):
        scale = float(jnp.abs(b).max())
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4 * scale, rtol=0)


def test_batch_equals_singles():
    logits, feats = _inputs(5, 2, 37, 53)
    for method in ("dense", "sparse"):
        both = rw.refine(logits, feats, method=method)
        for i in range(2):
            one = rw.refine(logits[i : i + 1], feats[i : i + 1], method=method)
            np.testing.assert_allclose(np.asarray(both[i : i + 1]), np.asarray(one), atol=1e-6)


def test_walk_preserves_constant_logits():
    # Row-stochastic transitions map a constant field to itself (before resizing).
    cam = jnp.full((1, 6, 9, 2), 3.0)
    feats = _inputs(6, 1, 48, 72)[1]
    for walk in (rw.walk_dense, rw.walk_sparse):
        out = walk(cam, feats, beta=8, logt=4, radius=5)
        np.testing.assert_allclose(np.asarray(out), 3.0, rtol=1e-5)


def test_auto_method_and_errors(monkeypatch):
    # 37x53 -> 35 nodes (dense), 91x99 -> 156 nodes (sparse) with the measured threshold. The
    # two walks agree to ~1e-8, so the choice itself is checked by recording which one ran.
    assert 35 <= rw.AUTO_DENSE_MAX_NODES < 156
    calls = []
    for name in ("walk_dense", "walk_sparse"):
        original = getattr(rw, name)

        def recording(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(rw, name, recording)
    for hw, expected in (((37, 53), "dense"), ((91, 99), "sparse")):
        logits, feats = _inputs(7, 1, *hw)
        calls.clear()
        auto = rw.refine(logits, feats, method="auto")
        assert calls == [f"walk_{expected}"], (hw, calls)
        ref = rw.refine(logits, feats, method=expected)
        np.testing.assert_allclose(np.asarray(auto), np.asarray(ref), atol=1e-7)
    with pytest.raises(ValueError, match="method"):
        rw.refine(logits, feats, method="magic")
    with pytest.raises(ValueError, match="aff_feats must be"):
        rw.refine(logits, feats[:, :-1], method="dense")
    with pytest.raises(ValueError, match="B, H, W, K"):
        rw.refine(logits[0], feats, method="dense")


def test_bfloat16_logits_walk_in_float32():
    logits, feats = _inputs(8, 1, 37, 53)
    ref = rw.refine(logits, feats, method="dense")
    out = rw.refine(logits.astype(jnp.bfloat16), feats, method="dense")
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref), atol=0.05)
