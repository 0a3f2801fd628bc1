"""Affinity learning (losses/affinity.py): cell labels from the activation map, and the balanced
AffinityNet loss against a direct evaluation over every pair."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alcfcn_jax.losses.affinity import affinity_labels, affinity_loss
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
                    if li == lj == 1:
                        sums["fg"].append(d)
                    elif li == lj == 0:
                        sums["bg"].append(d)
                    else:
                        sums["neg"].append(-np.log(max(1 - np.exp(-d), 1e-5)))
        out.append(sum((2.0 if k == "neg" else 1.0) * np.mean(v) for k, v in sums.items() if v))
    return np.asarray(out)


@pytest.mark.parametrize("hw,radius", [((7, 9), 3), ((12, 13), 5), ((4, 11), 5)])
def test_loss_matches_a_direct_evaluation(hw, radius):
    rng = np.random.default_rng(sum(hw))
    feats = rng.normal(size=(2, *hw, 6)).astype(np.float64) * 0.5
    labels = rng.choice([0, 1, 255], size=(2, *hw), p=[0.5, 0.3, 0.2]).astype(np.int32)
    labels[1] = np.where(labels[1] == 1, 0, labels[1])  # image 2: no fish pairs at all
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
