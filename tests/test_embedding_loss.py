"""The WISE embedding loss (losses/embedding.py): value and gradient against a direct numpy
evaluation, the proposals, the seeded sampling."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alcfcn_jax.losses import embedding as emb


def _np_sample(grid, y, x):
    """Bilinear read of a (h, w, d) stride-8 grid at pixel (y, x), half-pixel centres."""
    h, w, _ = grid.shape

    def coord(p, n):
        c = min(max((p + 0.5) / 8 - 0.5, 0.0), n - 1)
        lo = int(np.floor(c))
        return lo, min(lo + 1, n - 1), c - lo

    y0, y1, wy = coord(y, h)
    x0, x1, wx = coord(x, w)
    return (
        grid[y0, x0] * (1 - wy) * (1 - wx)
        + grid[y0, x1] * (1 - wy) * wx
        + grid[y1, x0] * wy * (1 - wx)
        + grid[y1, x1] * wy * wx
    )


def _np_loss(grid, pixels, ids):
    """Direct evaluation: every ordered pair, S = exp(-||Ei - Ej||^2), two means."""
    e = [_np_sample(grid, y, x) for y, x in pixels]
    pos, neg = [], []
    for i, j in itertools.permutations(range(len(pixels)), 2):
        if ids[i] < 0 or ids[j] < 0:
            continue
        d2 = float(np.sum((e[i] - e[j]) ** 2))
        s = np.exp(-d2)
        if ids[i] == ids[j] and ids[i] > 0:
            pos.append(-np.log(s))
        elif ids[i] != ids[j]:
            neg.append(-np.log(max(1 - s, 1e-5)))
    return (np.mean(pos) if pos else 0.0) + (np.mean(neg) if neg else 0.0)


def test_value_and_gradient_match_numpy():
    rng = np.random.default_rng(0)
    grid = rng.normal(scale=0.4, size=(2, 3, 4))  # covers a 16 x 24 image
    width = 21
    pixels = [(1, 2), (3, 5), (9, 14), (12, 17), (15, 0), (6, 20), (4, 4)]
    ids = [1, 1, 2, 2, 0, 0, -1]
    flat = jnp.asarray([[y * width + x for y, x in pixels]], jnp.int32)
    ids_j = jnp.asarray([ids], jnp.int32)

    def f(g):
        return emb.pair_loss(emb.sample_embedding(g, flat, width), ids_j)[0]

    g32 = jnp.asarray(grid[None], jnp.float32)
    value, grad = jax.value_and_grad(f)(g32)
    assert float(value) == pytest.approx(_np_loss(grid, pixels, ids), rel=1e-5)
    num = np.zeros_like(grid)
    eps = 1e-6
    for k in np.ndindex(grid.shape):
        d = np.zeros_like(grid)
        d[k] = eps
        num[k] = (_np_loss(grid + d, pixels, ids) - _np_loss(grid - d, pixels, ids)) / (2 * eps)
    np.testing.assert_allclose(np.asarray(grad)[0], num, rtol=2e-3, atol=2e-5)
    assert np.abs(num).max() > 1e-2  # the case exercises the gradient


def test_upsample_equals_sampling_every_pixel():
    rng = np.random.default_rng(1)
    grid = jnp.asarray(rng.normal(size=(1, 3, 4, 2)), jnp.float32)
    h, w = 19, 27
    up = emb.upsample_embedding(grid, (h, w))
    flat = jnp.arange(h * w, dtype=jnp.int32)[None]
    pts = emb.sample_embedding(grid, flat, w).reshape(1, h, w, 2)
    np.testing.assert_allclose(np.asarray(up), np.asarray(pts), atol=1e-5)


def test_object_map_proposals():
    prob = np.zeros((10, 16))
    prob[1:4, 1:5] = 0.9  # blob A: one click -> its object
    prob[5:9, 2:12] = 0.9  # blob B: two clicks -> only the clicks
    points = np.zeros((10, 16), np.int32)
    points[1, 14] = 1  # click 1 (raster order; no blob)
    points[2, 2] = 1  # click 2 (A)
    points[6, 3] = 1  # click 3 (B)
    points[7, 10] = 1  # click 4 (B)
    points[9, 15] = 255
    obj = emb.object_map(prob, points)
    assert (obj[1:4, 1:5] == 2).all()
    assert obj[6, 3] == 3 and obj[7, 10] == 4 and obj[1, 14] == 1
    assert (obj[5:9, 2:12] == -1).sum() == 4 * 10 - 2
    assert obj[9, 15] == -1 and obj[0, 0] == 0


def test_sampling_is_seeded_and_fixed_size():
    prob = np.zeros((2, 12, 16), np.float32)
    prob[:, 2:6, 2:8] = 0.9
    points = np.zeros((2, 12, 16), np.int32)
    points[:, 3, 4] = 1
    settings = emb.EmbeddingLoss(weight=1.0, per_object=4, background=6, max_objects=2)
    run = jax.jit(lambda p, q, s: emb.sample_pixels(p, q, s, settings))
    idx, ids = run(prob, points, jnp.uint32(7))
    idx2, ids2 = run(prob, points, jnp.uint32(7))
    idx3, _ = run(prob, points, jnp.uint32(8))
    assert idx.shape == ids.shape == (2, settings.num_samples)
    np.testing.assert_array_equal(idx, idx2)
    assert not np.array_equal(idx, idx3)
    ids = np.asarray(ids)
    assert ids[0].tolist() == [1] * 4 + [-1] * 4 + [0] * 6
    ys, xs = np.asarray(idx[0, :4]) // 16, np.asarray(idx[0, :4]) % 16
    assert (prob[0, ys, xs] > 0.5).all()
    ys, xs = np.asarray(idx[0, 8:]) // 16, np.asarray(idx[0, 8:]) % 16
    assert (prob[0, ys, xs] < 0.5).all()


def test_loss_separates_objects_when_embedding_does():
    prob = np.zeros((1, 16, 32), np.float32)
    prob[0, 2:14, 2:14] = 0.9
    prob[0, 2:14, 18:30] = 0.9
    points = np.zeros((1, 16, 32), np.int32)
    points[0, 8, 8] = points[0, 8, 24] = 1
    settings = emb.EmbeddingLoss(weight=1.0)
    good = np.zeros((1, 2, 4, 3), np.float32)  # the left fish at 0, the right one far away
    good[0, :, 2:] = 3.0
    good_loss = emb.embedding_loss(jnp.asarray(good), prob, points, jnp.uint32(0), settings)
    flat = emb.embedding_loss(jnp.zeros((1, 2, 4, 3)), prob, points, jnp.uint32(0), settings)
    assert float(flat[0]) > float(good_loss[0]) and np.isfinite(good_loss).all()
