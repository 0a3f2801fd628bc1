"""Host LCFCN targets: identical to the straight reference port on fixtures and random cases."""

import numpy as np
import pytest
from conftest import load_fixture
from scipy import ndimage

from alcfcn_jax.losses import lcfcn_targets as lt
from reference import lcfcn_numpy as ref

LCFCN_FIXTURES = (
    "lcfcn_iid_5pts",
    "lcfcn_bg_only",
    "lcfcn_one_point",
    "lcfcn_many",
    "lcfcn_crowded",
    "lcfcn_deepfish_size",
)


def fixture_inputs(name):
    d = load_fixture(name)
    logits = d["logits"][0].astype(np.float32)
    e = np.exp(logits - logits.max(0))
    probs = (e[1] / e.sum(0)).astype(np.float32)
    return probs, d["points"][0], d


def assert_same_targets(probs, points):
    """Fast weight maps == the reference port's targets (per term), and the same loss."""
    t = lt.compute_targets(probs, points)
    tgts = ref.get_tgt_list(points, probs)
    for name in lt.TERM_NAMES:
        fg = np.zeros(probs.size)
        bg = np.zeros(probs.size)
        for tg in tgts:
            if tg["term"] == name:
                w = fg if tg["label"] == 1 else bg
                np.add.at(w, tg["ind_list"], float(tg["scale"]) / len(tg["ind_list"]))
        got_fg, got_bg = t.term_map(name)
        np.testing.assert_allclose(got_fg.ravel(), fg, rtol=1e-6, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(got_bg.ravel(), bg, rtol=1e-6, atol=1e-9, err_msg=name)
        # Same pixel sets, not only close weights.
        np.testing.assert_array_equal(got_fg.ravel() != 0, fg != 0, err_msg=name)
        np.testing.assert_array_equal(got_bg.ravel() != 0, bg != 0, err_msg=name)
    got = sum(lt.loss_from_targets(probs, t).values())
    want = ref.compute_loss(points, probs)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-9)
    return t


@pytest.mark.parametrize("name", LCFCN_FIXTURES)
def test_fixture_targets_and_loss(name):
    probs, points, d = fixture_inputs(name)
    t = assert_same_targets(probs, points)
    got = sum(lt.loss_from_targets(probs, t).values())
    assert got == pytest.approx(d["loss"], rel=1e-5)


def blobby_probs(rng, h, w, n_bumps, noise=0.15, ties=False):
    """Probabilities with a few blobs (smoothed bumps) plus noise, float32."""
    field = np.zeros((h, w))
    for _ in range(n_bumps):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sy, sx = rng.uniform(1.5, 6), rng.uniform(1.5, 8)
        yy, xx = np.mgrid[0:h, 0:w]
        field += rng.uniform(2, 5) * np.exp(-((yy - cy) ** 2 / sy**2 + (xx - cx) ** 2 / sx**2))
    field += noise * rng.standard_normal((h, w)) * 4 - 1.5
    p = 1 / (1 + np.exp(-field))
    if ties:
        p = np.round(p * 8) / 8
    return p.astype(np.float32)


def random_points(rng, probs, kind):
    h, w = probs.shape
    pts = np.zeros((h, w), np.int64)
    blobs, n = ndimage.label(probs > 0.5, structure=np.ones((3, 3)))
    if kind == "none":
        return pts
    if kind == "one":
        pts[rng.integers(h), rng.integers(w)] = 1
        return pts
    if kind == "border":
        for _ in range(rng.integers(2, 6)):
            side = rng.integers(4)
            y = [0, h - 1, rng.integers(h), rng.integers(h)][side]
            x = [rng.integers(w), rng.integers(w), 0, w - 1][side]
            pts[y, x] = 1
        return pts
    if kind == "same_blob" and n:
        u = rng.integers(1, n + 1)
        ys, xs = np.nonzero(blobs == u)
        k = min(len(ys), rng.integers(2, 6))
        sel = rng.choice(len(ys), size=k, replace=False)
        pts[ys[sel], xs[sel]] = 1
        return pts
    # "mixed": some points in blobs (several per blob possible) and some on background
    for _ in range(rng.integers(2, 9)):
        pts[rng.integers(h), rng.integers(w)] = 1
    if n:
        ys, xs = np.nonzero(blobs > 0)
        sel = rng.choice(len(ys), size=min(len(ys), 4), replace=False)
        pts[ys[sel], xs[sel]] = 1
    return pts


@pytest.mark.parametrize("seed", range(40))
def test_random_cases_match_reference(seed):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(6, 40)), int(rng.integers(6, 48))
    probs = blobby_probs(rng, h, w, int(rng.integers(0, 7)), ties=seed % 5 == 0)
    kind = ["none", "one", "border", "same_blob", "mixed"][seed % 5]
    points = random_points(rng, probs, kind)
    assert_same_targets(probs, points)


def test_all_foreground_and_every_pixel_a_point():
    rng = np.random.default_rng(3)
    probs = rng.uniform(0.6, 0.99, (9, 11)).astype(np.float32)
    points = np.zeros((9, 11), np.int64)
    points[[0, 4, 8], [0, 5, 10]] = 1
    t = assert_same_targets(probs, points)
    assert t.n_blobs == 1 and t.n_local_splits == 1 and t.n_false_pos == 0
    # Every pixel annotated: no 0 in points, so the reference has no image-level bg term.
    small = rng.uniform(0.1, 0.9, (3, 3)).astype(np.float32)
    assert_same_targets(small, np.ones((3, 3), np.int64))


def test_blob_with_all_points_reuses_global_watershed():
    rng = np.random.default_rng(7)
    probs = blobby_probs(rng, 30, 40, 1, noise=0.05)
    blobs, _ = ndimage.label(probs > 0.5, structure=np.ones((3, 3)))
    ys, xs = np.nonzero(blobs == 1)
    points = np.zeros_like(blobs, dtype=np.int64)
    points[ys[[0, len(ys) // 2, -1]], xs[[0, len(ys) // 2, -1]]] = 1
    t = assert_same_targets(probs, points)
    assert t.n_local_splits == 1


def test_threaded_batch_equals_sequential():
    rng = np.random.default_rng(11)
    probs = np.stack([blobby_probs(rng, 20, 30, 4) for _ in range(5)])
    points = np.stack([random_points(rng, p, "mixed") for p in probs])
    a = lt.batch_maps(probs, points, per_term=True, threads=True)
    b = lt.batch_maps(probs, points, per_term=True, threads=False)
    np.testing.assert_array_equal(a, b)
    one = lt.compute_targets(probs[0], points[0], executor=lt.default_pool())
    np.testing.assert_array_equal(one.maps, b[0])


@pytest.mark.parametrize(
    "probs, points, match",
    [
        (np.full((4, 5), 0.3, np.float32), np.zeros((4, 6), int), "does not match"),
        (np.full((4, 5), 0.3, np.float32), np.full((4, 5), 255), "points must be 0/1"),
        (np.full((4, 5), 0.3, np.float32), np.full((4, 5), 2), "found values \\[2\\]"),
        (np.array([[0.1, np.nan]], np.float32), np.zeros((1, 2), int), "NaN or inf"),
        (np.array([[0.1, np.inf]], np.float32), np.zeros((1, 2), int), "NaN or inf"),
        (np.array([[0.1, 1.5]], np.float32), np.zeros((1, 2), int), "in \\[0, 1\\]"),
        (np.zeros((2, 2, 2), np.float32), np.zeros((2, 2, 2), int), "must be \\(H, W\\)"),
        (np.zeros((2, 2), np.int32), np.zeros((2, 2), int), "floating point"),
    ],
)
def test_bad_inputs_raise(probs, points, match):
    with pytest.raises(ValueError, match=match):
        lt.compute_targets(probs, points)


def test_batch_validates_before_work():
    probs = np.full((2, 4, 4), 0.2, np.float32)
    points = np.zeros((2, 4, 4), int)
    points[1, 0, 0] = 3
    with pytest.raises(ValueError, match="points must be 0/1"):
        lt.compute_targets_batch(probs, points)


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (7, 1), (2, 2)])
def test_degenerate_shapes_match_reference(shape):
    rng = np.random.default_rng(shape[0] * 10 + shape[1])
    for _ in range(4):
        probs = rng.random(shape).astype(np.float32)
        points = (rng.random(shape) < 0.4).astype(np.int64)
        assert_same_targets(probs, points)
