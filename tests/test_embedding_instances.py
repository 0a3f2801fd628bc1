"""WISE's test-time assignment (eval/measure.embedding_instance_labels) on drawn touching fish."""

import numpy as np

from alcfcn_jax.eval import measure


def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _touching_fish():
    """Two fish lying side by side, touching along their length: one blob with no neck."""
    shape = (56, 90)
    a = _ellipse(shape, 21, 44, 6, 30)
    b = _ellipse(shape, 32, 44, 6, 30) & ~a
    prob = np.where(a | b, 0.9, 0.05)
    emb = np.zeros(shape + (3,))
    emb[..., 2] = 3.0  # background
    emb[a] = (0.0, 0.0, 0.0)
    emb[b] = (3.0, 0.0, 0.0)
    # The localisation map (the activation map before the walk): one small blob per fish.
    seeds = np.where(_ellipse(shape, 20, 44, 2, 4) | _ellipse(shape, 33, 44, 2, 4), 0.8, 0.1)
    return prob, emb, seeds, a, b


def test_embedding_separates_fish_the_watershed_merges():
    prob, emb, seeds, a, b = _touching_fish()
    ws = measure.instance_labels(prob)
    assert ws.max() == 1  # the watershed sees one thick body
    labels = measure.embedding_instance_labels(prob, emb, seed_prob=seeds)
    assert labels.max() == 2
    np.testing.assert_array_equal(labels == 1, a)
    np.testing.assert_array_equal(labels == 2, b)
    # And the box evaluation sees it: two instances, one per fish.
    rows = measure.measure_fish(labels, prob)
    assert [r["area_px"] for r in rows] == [a.sum(), b.sum()]


def test_pixels_like_the_background_are_dropped_and_no_seed_no_fish():
    prob, emb, seeds, a, b = _touching_fish()
    emb = emb.copy()
    emb[20:23, 14:20] = (0.0, 0.0, 3.0)  # a patch of fish A that looks like water
    labels = measure.embedding_instance_labels(prob, emb, seed_prob=seeds)
    assert (labels[20:23, 14:20] == 0).all() and labels.max() == 2
    # With the refined map's blobs as locations (the default) the merged blob has one seed.
    assert measure.embedding_instance_labels(prob, emb).max() == 1
    assert measure.embedding_instance_labels(np.zeros((8, 8)), np.zeros((8, 8, 2))).max() == 0


def test_kmeans_finds_two_clusters_and_is_seeded():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 0.1, (50, 2)), rng.normal(5, 0.1, (60, 2))])
    c = measure.kmeans(x, 2, seed=3)
    np.testing.assert_allclose(sorted(c[:, 0]), [0, 5], atol=0.1)
    np.testing.assert_array_equal(c, measure.kmeans(x, 2, seed=3))
    assert len(measure.kmeans(np.ones((5, 2)), 3)) == 1  # no more centres than distinct points
