"""PAMR (ops/pamr.py) against a direct per-pixel loop, and what it does at colour edges."""

import numpy as np
import pytest

from alcfcn_jax.ops import pamr


def _loop_pamr(image, maps, iters, dilations):
    """Pixel by pixel, as the module docstring defines it (edges repeated)."""
    h, w, _ = image.shape
    ring = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]

    def at(a, y, x):
        return a[min(max(y, 0), h - 1), min(max(x, 0), w - 1)]

    weights = np.zeros((h, w, 8 * len(dilations)))
    for y in range(h):
        for x in range(w):
            window = [at(image, y + dy * d, x + dx * d) for d in dilations for dy, dx in ring]
            window += [image[y, x]] * len(dilations)
            sigma = np.std(np.asarray(window), axis=0, ddof=1)
            nb = [at(image, y + dy * d, x + dx * d) for d in dilations for dy, dx in ring]
            a = np.array([np.mean(-np.abs(image[y, x] - n) / (1e-8 + 0.1 * sigma)) for n in nb])
            e = np.exp(a - a.max())
            weights[y, x] = e / e.sum()
    offsets = [(dy * d, dx * d) for d in dilations for dy, dx in ring]
    m = maps.astype(np.float64)
    for _ in range(iters):
        new = np.zeros_like(m)
        for y in range(h):
            for x in range(w):
                new[y, x] = sum(
                    weights[y, x, p] * at(m, y + dy, x + dx) for p, (dy, dx) in enumerate(offsets)
                )
        m = new
    return m


def test_matches_the_per_pixel_definition():
    rng = np.random.default_rng(0)
    image = rng.uniform(0, 1, (7, 9, 3))
    maps = rng.uniform(0, 1, (7, 9, 2))
    got = np.asarray(pamr.pamr(image[None], maps[None], iters=3, dilations=(1, 2)))[0]
    np.testing.assert_allclose(got, _loop_pamr(image, maps, 3, (1, 2)), rtol=1e-5, atol=1e-6)


def test_spreads_inside_a_region_and_stops_at_an_edge():
    # Left half dark, right half bright (with a little texture so sigma is not zero); a fish
    # probability of 1 on a 2x2 patch of the left half.
    rng = np.random.default_rng(1)
    image = np.zeros((16, 16, 3))
    image[:, 8:] = 1.0
    image += rng.normal(0, 0.01, image.shape)
    prob = np.zeros((16, 16, 1))
    prob[7:9, 3:5] = 1.0
    out = np.asarray(pamr.pamr(image[None], prob[None], iters=10, dilations=(1, 2)))[0, ..., 0]
    assert out[:, :8].sum() > 0.99 * out.sum()  # what spread stayed on the dark side
    assert out[5:11, 1:7].mean() > 0.05 and (out[:, :8] > 0.01).sum() > 30  # it spread there
    assert out[:, 9:].max() < 1e-3


def test_constant_maps_stay_constant_and_probabilities_stay_probabilities():
    rng = np.random.default_rng(2)
    image = rng.uniform(0, 1, (1, 12, 10, 3))
    const = np.full((1, 12, 10, 2), 0.25)
    np.testing.assert_allclose(np.asarray(pamr.pamr(image, const, iters=4)), 0.25, rtol=1e-5)
    p = rng.uniform(0, 1, (1, 12, 10, 1))
    two = np.concatenate([p, 1 - p], -1)
    out = np.asarray(pamr.pamr(image, two, iters=4))
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-5)
    assert out.min() >= 0 and out.max() <= 1


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="share"):
        pamr.pamr(np.zeros((1, 4, 4, 3)), np.zeros((1, 4, 5, 1)))
