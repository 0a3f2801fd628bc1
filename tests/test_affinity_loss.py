"""Affinity learning (losses/affinity.py): cell labels from the activation map, and the balanced
AffinityNet loss against a direct evaluation over every pair."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alcfcn_jax.losses.affinity import affinity_labels, affinity_loss, mask_affinity_labels
from alcfcn_jax.ops.affinity import effective_radius, neighbor_offsets, valid_mask


def _logits_for(prob):
    """2-class logits whose softmax fish probability is ``prob``."""
    p = np.clip(prob, 1e-6, 1 - 1e-6)
    return np.stack([np.zeros_like(p), np.log(p / (1 - p))], -1).astype(np.float32)


def test_labels_from_pooled_probability_and_clicks():
    prob = np.full((1, 16, 24), 0.5, np.float32)
    prob[0, :8, :8] = 0.9  # cell (0, 0): fish
    prob[0, :8, 8:16] = 0.1  # cell (0, 1): background
    prob[0, 8:, :8] = 0.95
    prob[0, 8:12, :8] = 0.05  # cell (1, 0): mean 0.5 -> neutral
    points = np.full((1, 16, 24), 255, np.int32)
    points[0, 12, 20] = 1  # a click in cell (1, 2), whose map says neutral
    points[0, 3, 12] = 0  # a background point is not a click
    labels = np.asarray(affinity_labels(jnp.asarray(_logits_for(prob)), points, fg=0.7, bg=0.3))
    np.testing.assert_array_equal(labels, [[[1, 0, 255], [255, 255, 1]]])
    # Odd sizes: the map is padded to the stride-8 grid (zeros count as background there).
    odd = affinity_labels(
        jnp.asarray(_logits_for(prob[:, :13, :19])), points[:, :13, :19], fg=0.7, bg=0.3
    )
    assert odd.shape == (1, 2, 3)
    with pytest.raises(ValueError, match="bg < fg"):
        affinity_labels(jnp.asarray(_logits_for(prob)), points, fg=0.3, bg=0.7)


def _direct(feats, labels, radius):
    """The loss by looping over every pair of the walk's edge set (float64 numpy)."""
    b, h, w, _ = feats.shape
    r = effective_radius(h, w, radius)
    offs = neighbor_offsets(r)
    edges = valid_mask(h, w, r)
    out = []
    for n in range(b):
        sums = {"fg": [], "bg": [], "neg": []}
        for y in range(h):
            for x in range(w):
                for k, (dy, dx) in enumerate(offs):
                    if not edges[y, x, k]:
                        continue
                    li, lj = labels[n, y, x], labels[n, y + dy, x + dx]
                    if 255 in (li, lj):
                        continue
                    d = np.abs(feats[n, y, x] - feats[n, y + dy, x + dx]).mean()
                    if li == lj and li >= 1:  # one fish (k >= 1 says which)
                        sums["fg"].append(d)
                    elif li == lj == 0:
                        sums["bg"].append(d)
                    else:
                        sums["neg"].append(-np.log(max(1 - np.exp(-d), 1e-5)))
        out.append(sum((2.0 if k == "neg" else 1.0) * np.mean(v) for k, v in sums.items() if v))
    return np.asarray(out)


@pytest.mark.parametrize(
    "hw,radius,fish", [((7, 9), 3, 1), ((12, 13), 5, 1), ((4, 11), 5, 1), ((9, 10), 4, 3)]
)
def test_loss_matches_a_direct_evaluation(hw, radius, fish):
    # fish > 1: cells of several fish, whose pairs across fish are negatives.
    rng = np.random.default_rng(sum(hw))
    feats = rng.normal(size=(2, *hw, 6)).astype(np.float64) * 0.5
    values = [0, *range(1, fish + 1), 255]
    probs = [0.5, *[0.3 / fish] * fish, 0.2]
    labels = rng.choice(values, size=(2, *hw), p=probs).astype(np.int32)
    labels[1] = np.where((labels[1] >= 1) & (labels[1] < 255), 0, labels[1])  # image 2: no fish
    got = np.asarray(
        affinity_loss(jnp.asarray(feats, jnp.float32), jnp.asarray(labels), radius=radius)
    )
    want = _direct(feats, labels, radius)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_gradient_pulls_same_class_together_and_pushes_boundaries_apart():
    rng = np.random.default_rng(0)
    feats = jnp.asarray(rng.normal(size=(1, 6, 8, 4)), jnp.float32)
    labels = np.zeros((1, 6, 8), np.int32)
    labels[0, :, 4:] = 1
    loss = lambda f: affinity_loss(f, jnp.asarray(labels), radius=3)[0]
    g = jax.grad(loss)(feats)
    # One small step along -g lowers the loss; the gradient equals a finite difference.
    assert float(loss(feats - 0.05 * g)) < float(loss(feats))
    e = np.zeros(feats.shape, np.float32)
    e[0, 2, 3, 1] = 1e-2
    fd = (float(loss(feats + e)) - float(loss(feats - e))) / 2e-2
    np.testing.assert_allclose(float(g[0, 2, 3, 1]), fd, rtol=2e-2, atol=1e-4)


def test_no_edges_and_no_labels_give_zero():
    feats = jnp.ones((1, 2, 2, 3), jnp.float32)
    assert float(affinity_loss(feats, jnp.zeros((1, 2, 2), jnp.int32), radius=5)[0]) == 0.0
    feats = jnp.asarray(np.random.default_rng(1).normal(size=(1, 6, 6, 3)), jnp.float32)
    assert float(affinity_loss(feats, jnp.full((1, 6, 6), 255, jnp.int32), radius=3)[0]) == 0.0


def test_mask_labels_split_fish_cells_between_their_clicks():
    # A 16x32 image (2x4 cells): a fish mask over the top row of cells, a click near each end;
    # cell (1, 3) is half fish (neutral) and cell (1, 0) is padding (neutral).
    mask = np.zeros((1, 16, 32), np.int32)
    mask[0, :8, :] = 1
    mask[0, 8:, 24:28] = 1
    mask[0, 8:, :8] = 255
    points = np.full((1, 16, 32), 255, np.int32)
    points[0, 4, 3] = 1  # in cell (0, 0)
    points[0, 2, 29] = 1  # in cell (0, 3)
    labels = np.asarray(
        mask_affinity_labels(jnp.asarray(mask), jnp.asarray(points), fg=0.7, bg=0.3)
    )
    # Raster order: (2, 29) comes before (4, 3), so it is fish 1 and (4, 3) fish 2.
    np.testing.assert_array_equal(labels, [[[2, 2, 1, 1], [255, 0, 0, 255]]])
    # Without clicks every fish cell is fish 1 (one fish: no pair is split).
    none = mask_affinity_labels(jnp.asarray(mask), jnp.full((1, 16, 32), 255), fg=0.7, bg=0.3)
    np.testing.assert_array_equal(np.asarray(none), [[[1, 1, 1, 1], [255, 0, 0, 255]]])
