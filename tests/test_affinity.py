"""Tests for alcfcn_jax.ops.affinity against the reference pair indices and affinity matrices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_fixture

from alcfcn_jax.ops import affinity as af


def _feats(key, shape, scale=0.2):
    return scale * jax.random.normal(jax.random.key(key), shape, jnp.float32)


def test_neighbor_offsets_reference_order():
    offs = af.neighbor_offsets(5)
    assert offs.shape == (34, 2)
    np.testing.assert_array_equal(offs[:5], [[0, 1], [0, 2], [0, 3], [0, 4], [1, -4]])
    np.testing.assert_array_equal(offs[-5:], [[4, -2], [4, -1], [4, 0], [4, 1], [4, 2]])
    assert len(af.neighbor_offsets(3)) == 12
    assert af.neighbor_offsets(1).shape == (0, 2)
    signed = af.signed_offsets(5)
    assert signed.shape == (69, 2)
    np.testing.assert_array_equal(signed[34:68], -offs)
    np.testing.assert_array_equal(signed[68], [0, 0])


@pytest.mark.parametrize("name", ["pairs_r3_8x12", "pairs_r5_12x20", "pairs_r5_32x57"])
def test_pair_indices_equal_reference(name):
    fx = load_fixture(name)
    ind_from, ind_to = af.pair_indices(fx["radius"], fx["h"], fx["w"])
    assert ind_from.dtype == np.int64 and ind_to.dtype == np.int64
    np.testing.assert_array_equal(ind_from, fx["ind_from"])
    np.testing.assert_array_equal(ind_to, fx["ind_to"])


def test_pair_indices_edge_cases():
    f, t = af.pair_indices(1, 4, 4)
    assert f.size == 0 and t.size == 0
    with pytest.raises(ValueError, match="effective_radius"):
        af.pair_indices(5, 4, 20)


@pytest.mark.parametrize(
    "h,w,radius,expected",
    [
        (32, 57, 5, 5),
        (11, 11, 5, 5),
        (10, 40, 5, 4),
        (8, 12, 5, 3),
        (40, 9, 5, 4),
        (3, 3, 5, 1),
        (2, 7, 5, 0),
        (20, 20, 3, 3),
        (6, 20, 3, 2),
    ],
)
def test_effective_radius(h, w, radius, expected):
    assert af.effective_radius(h, w, radius) == expected
    # Idempotent, so applying it twice (refine, then the affinity functions) is harmless.
    assert af.effective_radius(h, w, expected) == expected


@pytest.mark.parametrize("name", ["rw_small", "rw_tiny_radius_fallback"])
def test_dense_affinity_matches_reference(name):
    fx = load_fixture(name)
    feats = jnp.asarray(fx["aff_feats"].transpose(0, 2, 3, 1))
    a = np.asarray(af.dense_affinity(feats, 5))[0]
    assert a.shape == fx["A"].shape
    np.testing.assert_allclose(a, fx["A"], atol=1e-6, rtol=0)
    assert (a != 0).sum() == (fx["A"] != 0).sum()


def test_dense_affinity_structure():
    feats = _feats(0, (2, 13, 17, 8))
    a = np.asarray(af.dense_affinity(feats, 5))
    np.testing.assert_array_equal(a, a.transpose(0, 2, 1))
    np.testing.assert_array_equal(a[:, np.arange(221), np.arange(221)], 1.0)
    ind_from, ind_to = af.pair_indices(5, 13, 17)
    assert ((a[0] != 0).sum() - 221) == 2 * ind_to.size


def test_valid_mask_counts_every_edge_twice():
    for h, w, r in [(13, 17, 5), (8, 12, 3), (5, 9, 2)]:
        valid = af.valid_mask(h, w, r)
        ind_from, ind_to = af.pair_indices(r, h, w)
        kk = len(af.neighbor_offsets(r))
        assert valid[..., :kk].sum() == ind_to.size
        assert valid[..., kk : 2 * kk].sum() == ind_to.size
        assert valid[..., 2 * kk].all()


@pytest.mark.parametrize(
    "shape,radius",
    [((2, 13, 17, 8), 5), ((1, 8, 12, 16), 5), ((1, 11, 23, 448), 5), ((1, 5, 3, 4), 5)],
)
def test_sparse_scatters_to_dense(shape, radius):
    feats = _feats(1, shape)
    _, h, w, _ = shape
    r = af.effective_radius(h, w, radius)
    dense = np.asarray(af.dense_affinity(feats, radius))
    for fast in (False, True):
        aff, valid = af.sparse_affinity(feats, radius, fast=fast)
        assert aff.shape == shape[:3] + (2 * len(af.neighbor_offsets(r)) + 1,)
        assert valid.shape == (1,) + aff.shape[1:] and valid.dtype == jnp.bool_
        assert float(jnp.abs(jnp.where(valid, 0, aff)).max()) == 0.0
        scattered = np.asarray(af.sparse_to_dense(aff, valid, r))
        # Same edge set exactly; values agree to float32 rounding (XLA may order the channel sum
        # differently in each kernel, and the fast path sums in 8 lanes).
        np.testing.assert_allclose(scattered, dense, atol=1.5e-7 if not fast else 3e-7, rtol=0)
        assert ((scattered != 0) == (dense != 0)).all()


def test_sparse_affinity_radius_fallback_and_jit():
    feats = _feats(2, (1, 8, 12, 16))
    aff, valid = jax.jit(af.sparse_affinity, static_argnums=1)(feats, 5)
    assert aff.shape[-1] == 2 * 12 + 1  # radius 3 -> 12 half-disk offsets
    tiny = _feats(3, (1, 2, 9, 4))
    aff, valid = af.sparse_affinity(tiny, 5)  # radius 0: only self
    assert aff.shape == (1, 2, 9, 1) and bool(valid.all())
    np.testing.assert_array_equal(np.asarray(af.dense_affinity(tiny, 5))[0], np.eye(18))


def test_neighbour_l1_fast_matches_reference_values_and_grads():
    feats = _feats(4, (2, 9, 14, 24), scale=1.0)
    offs = af.neighbor_offsets(4)
    ref = af.neighbour_l1_reference(feats, offs)
    fast = af.neighbour_l1(feats, offs)
    np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), atol=1e-6, rtol=1e-6)
    ct = jax.random.normal(jax.random.key(5), ref.shape)
    g_ref = jax.vjp(lambda f: af.neighbour_l1_reference(f, offs), feats)[1](ct)[0]
    g_fast = jax.jit(jax.vjp(lambda f: af.neighbour_l1(f, offs), feats)[1])(ct)[0]
    np.testing.assert_allclose(np.asarray(g_fast), np.asarray(g_ref), atol=1e-5, rtol=1e-5)


def test_affinity_gradients_reach_features():
    feats = _feats(6, (1, 12, 12, 8))
    g_dense = jax.grad(lambda f: af.dense_affinity(f, 5).sum())(feats)
    g_sparse = jax.grad(lambda f: af.sparse_affinity(f, 5)[0].sum())(feats)
    assert float(jnp.abs(g_dense).max()) > 0
    np.testing.assert_allclose(np.asarray(g_sparse), np.asarray(g_dense), atol=1e-5, rtol=1e-4)


def test_bad_feature_shapes():
    with pytest.raises(ValueError, match="B, h, w, C"):
        af.dense_affinity(jnp.zeros((4, 4, 8)), 5)
    with pytest.raises(ValueError, match="B, h, w, C"):
        af.sparse_affinity(jnp.zeros((4, 4, 8)), 5)
