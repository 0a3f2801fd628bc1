"""Metrics: reference GAME fixture, hand-made confusion cases, blob points, empty images."""

import numpy as np
import pytest
from conftest import load_fixture
from skimage.measure import label, regionprops

from alcfcn_jax.eval import metrics


def reference_game(pred, gt, L):
    """The reference's compute_game loop (cells h//2^L x w//2^L, divided by L+1)."""
    n = 2**L
    h, w = pred.shape
    hs, ws = h // n, w // n
    se = 0.0
    for i in range(n):
        for j in range(n):
            sl = (slice(hs * i, hs * (i + 1)), slice(ws * j, ws * (j + 1)))
            se += abs(gt[sl].sum() - pred[sl].sum())
    return se / (L + 1)


def test_game_fixture_reference_convention():
    d = load_fixture("game_96x160")
    got = metrics.game(d["pred_points"], d["gt_points"], 3, divide_by_4=True)
    assert got == pytest.approx(d["game_L3_div4"], abs=1e-12)


@pytest.mark.parametrize("shape", [(96, 160), (256, 455), (7, 5), (3, 2)])
@pytest.mark.parametrize("L", [0, 1, 2, 3])
def test_game_both_conventions_against_loops(shape, L):
    rng = np.random.default_rng(L + shape[0])
    pred = (rng.random(shape) < 0.05).astype(int)
    gt = (rng.random(shape) < 0.05).astype(int)
    assert metrics.game(pred, gt, L, divide_by_4=True) == pytest.approx(reference_game(pred, gt, L))
    # Standard GAME: an even split that covers every pixel once.
    n = 2**L
    ye = (np.arange(n + 1) * shape[0]) // n
    xe = (np.arange(n + 1) * shape[1]) // n
    want = sum(
        abs(
            gt[ye[i] : ye[i + 1], xe[j] : xe[j + 1]].sum()
            - pred[ye[i] : ye[i + 1], xe[j] : xe[j + 1]].sum()
        )
        for i in range(n)
        for j in range(n)
    )
    assert metrics.game(pred, gt, L) == pytest.approx(want)
    if L == 0:
        assert metrics.game(pred, gt, 0) == abs(gt.sum() - pred.sum())


def test_game_drops_remainder_only_in_reference_convention():
    pred = np.zeros((9, 9), int)
    gt = np.zeros((9, 9), int)
    gt[8, 8] = 1  # in the remainder row/column for L=1 (cells 4x4)
    assert metrics.game(pred, gt, 1, divide_by_4=True) == 0.0
    assert metrics.game(pred, gt, 1) == 1.0


def test_game_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        metrics.game(np.zeros((3, 3)), np.zeros((3, 4)), 1)
    with pytest.raises(ValueError, match="L must be"):
        metrics.game(np.zeros((3, 3)), np.zeros((3, 3)), -1)


def test_confusion_and_iou_hand_case():
    pred = np.array([[0, 1, 1], [0, 0, 1]])
    gt = np.array([[0, 1, 0], [255, 1, 1]])
    cf = metrics.confusion(pred, gt)
    # cf[pred, true]: pred0/true0 = 1, pred1/true1 = 2, pred1/true0 = 1, pred0/true1 = 1
    np.testing.assert_array_equal(cf, [[1, 1], [1, 2]])
    iou = metrics.iou_from_confusion(cf)
    assert iou["iou_bg"] == pytest.approx(1 / 3)
    assert iou["iou_fish"] == pytest.approx(2 / 4)
    assert iou["miou"] == pytest.approx((1 / 3 + 1 / 2) / 2)


def test_iou_only_over_classes_present():
    cf = metrics.confusion(np.zeros((4, 4), int), np.zeros((4, 4), int))
    iou = metrics.iou_from_confusion(cf)
    assert iou["iou_bg"] == 1.0 and iou["iou_fish"] == 0.0 and iou["miou"] == 1.0
    empty = metrics.iou_from_confusion(np.zeros((2, 2)))
    assert np.isnan(empty["miou"]) and np.isnan(empty["iou_bg"]) and np.isnan(empty["iou_fish"])


def test_confusion_rejects_out_of_range():
    with pytest.raises(ValueError, match="pred values"):
        metrics.confusion(np.array([[2]]), np.array([[0]]))
    with pytest.raises(ValueError, match="shape"):
        metrics.confusion(np.zeros((2, 2), int), np.zeros((2, 3), int))


def test_blobs_to_points_matches_regionprops():
    rng = np.random.default_rng(0)
    for _ in range(10):
        mask = rng.random((30, 41)) < 0.3
        want = np.zeros(mask.shape, np.int32)
        for r in regionprops(label(mask, connectivity=2)):
            y, x = r.centroid
            want[int(y), int(x)] = 1
        np.testing.assert_array_equal(metrics.blobs_to_points(mask), want)
        assert metrics.count_blobs(mask) == label(mask, connectivity=2).max()


def test_blobs_to_points_ring_centroid_outside_and_empty():
    ring = np.ones((5, 5), bool)
    ring[1:4, 1:4] = False
    pts = metrics.blobs_to_points(ring)
    assert pts[2, 2] == 1 and pts.sum() == 1  # centroid lies in the hole
    assert metrics.blobs_to_points(np.zeros((4, 4), bool)).sum() == 0
    assert metrics.count_blobs(np.zeros((4, 4), bool)) == 0


def test_segmeter_accumulates_and_merges():
    pred_a = np.zeros((16, 16), int)
    pred_a[2:5, 2:5] = 1
    pred_a[10:12, 10:12] = 1
    mask_a = np.zeros((16, 16), int)
    mask_a[2:5, 2:6] = 1
    pred_b = np.zeros((16, 16), int)  # empty prediction on an empty image
    mask_b = np.zeros((16, 16), int)

    one = metrics.SegMeter()
    one.update(pred_a, mask_a)
    one.update(pred_b, mask_b)
    a, b = metrics.SegMeter(), metrics.SegMeter()
    a.update(pred_a, mask_a)
    b.update(pred_b, mask_b)
    merged = a.merge(b)
    from_raw = metrics.SegMeter.from_raw(a.raw())
    for m in (one, merged, from_raw):
        s = m.summary()
        assert s["n_images"] == 2
        assert s["mae"] == pytest.approx(0.5)  # image a: 2 predicted blobs vs 1 true
        cf = metrics.confusion(pred_a, mask_a) + metrics.confusion(pred_b, mask_b)
        assert s["miou"] == pytest.approx(metrics.iou_from_confusion(cf)["miou"])
        gt_pts = metrics.blobs_to_points(mask_a == 1)
        g = metrics.game(metrics.blobs_to_points(pred_a), gt_pts, 3, divide_by_4=True)
        assert s["game"] == pytest.approx(g / 2)


def test_segmeter_empty_and_valid_crop():
    m = metrics.SegMeter()
    s = m.summary()
    assert np.isnan(s["mae"]) and np.isnan(s["miou"]) and s["n_images"] == 0
    pred = np.zeros((6, 8), int)
    pred[:, 6:] = 1  # predictions on padding must not count
    valid = np.zeros((6, 8), bool)
    valid[:, :6] = True
    m.update(pred, np.zeros((6, 8), int), valid=valid)
    assert m.summary()["mae"] == 0 and m.cf[1].sum() == 0
    with pytest.raises(ValueError, match="merge"):
        m.merge(metrics.SegMeter(game_level=2))
