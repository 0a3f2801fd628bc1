"""Tests of the sharded evaluation core against hand-computed numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alcfcn_jax import sharding as shd
from alcfcn_jax.eval import evaluation


class ThresholdModel(nnx.Module):
    """Stand-in segmentation model: fish wherever the image's first channel is positive.

    Its output is exactly the chosen prediction map, so the expected metrics can be worked out by
    hand; the parameter makes it a real NNX module with state to replicate.
    """

    def __init__(self):
        self.scale = nnx.Param(jnp.asarray(4.0))

    def __call__(self, x, *, train=False, return_aux=False):
        fish = x[..., 0] * self.scale[...]
        logits = jnp.stack([-fish, fish], axis=-1)
        if return_aux:
            return logits, {"cam": logits * 0.5}
        return logits


def images_for(pred: np.ndarray) -> np.ndarray:
    """(B,H,W,3) images that ThresholdModel maps to the 0/1 map ``pred``."""
    img = np.where(pred[..., None] == 1, 1.0, -1.0).astype(np.float32)
    return np.repeat(img, 3, axis=-1)


def make_batch(pred, mask, points, ids, habitats, **extra):
    b = {
        "image": images_for(np.asarray(pred)),
        "mask": np.asarray(mask, np.int32),
        "points": np.asarray(points, np.int32),
        "count": np.asarray([(np.asarray(p) == 1).sum() for p in points], np.int32),
        "id": np.asarray(ids),
        "habitat": np.asarray(habitats),
    }
    b.update(extra)
    return b


def two_image_split():
    """Two 8x8 images with known predictions, masks and points."""
    h = w = 8
    pred = np.zeros((2, h, w), np.int32)
    mask = np.zeros((2, h, w), np.int32)
    pts = np.full((2, h, w), 255, np.int32)
    # Image 0: one true fish 2x2 at (1,1); prediction covers it plus one extra column (TP 4, FP 2),
    # and a separate false blob at (6,6) (FP 1).
    mask[0, 1:3, 1:3] = 1
    pts[0, 1, 1] = 1
    pred[0, 1:3, 1:4] = 1
    pred[0, 6, 6] = 1
    # Image 1: two true fish, the prediction finds one (TP 4), misses the other (FN 2);
    # one pixel is unknown (255) and must not count.
    mask[1, 0:2, 0:2] = 1
    mask[1, 5, 5:7] = 1
    mask[1, 7, 7] = 255
    pred[1, 0:2, 0:2] = 1
    pred[1, 7, 7] = 1  # on the ignored pixel
    pts[1, 0, 0] = 1
    pts[1, 5, 5] = 1
    return pred, mask, pts


def expected_confusion(pred, mask):
    cf = np.zeros((2, 2), np.int64)
    for p, t in zip(pred.ravel(), mask.ravel()):
        if t != 255:
            cf[p, t] += 1
    return cf


def test_confusion_iou_counts_against_hand_computed():
    pred, mask, pts = two_image_split()
    batch = make_batch(pred, mask, pts, ["a/1", "a/2"], ["h1", "h2"])
    res = evaluation.evaluate(ThresholdModel(), [batch], per_image=True)
    cf = expected_confusion(pred, mask)
    # Worked by hand: TP = 4 + 4, FP = 2 + 1 (the pixel on 255 is ignored), FN = 2.
    assert cf[1, 1] == 8 and cf[1, 0] == 3 and cf[0, 1] == 2
    assert cf.sum() == 127
    np.testing.assert_array_equal(np.asarray(res["confusion"]), cf)
    iou_fish = 8 / (8 + 3 + 2)
    iou_bg = cf[0, 0] / (cf[0, 0] + 3 + 2)
    assert res["iou_fish"] == pytest.approx(iou_fish)
    assert res["iou_bg"] == pytest.approx(iou_bg)
    assert res["miou"] == pytest.approx((iou_fish + iou_bg) / 2)
    # Counts: image 0 predicts 2 blobs for 1 fish; image 1 predicts 2 blobs (incl. the one on the
    # ignored pixel) for 2 fish -> MAE = (1 + 0) / 2.
    assert res["mae"] == pytest.approx(0.5)
    assert [r["pred_count"] for r in res["per_image"]] == [2, 2]
    assert [r["true_count"] for r in res["per_image"]] == [1, 2]
    # GAME(L=0) is the absolute count error, in both conventions (the reference divides by L+1).
    assert res["game_l0"] == pytest.approx(0.5)
    assert res["game_l0_ref"] == pytest.approx(0.5)
    # GAME(L=1) on 8x8: image 0's extra blob (6,6) and its fish (1,1) are in different quadrants
    # (|1-1| + |0-1| = 1); image 1's missed fish (5,5) and the blob on the ignored pixel (7,7)
    # share the bottom-right quadrant (0). Mean 0.5; the reference divides by 2.
    assert res["game_l1"] == pytest.approx(0.5)
    assert res["game_l1_ref"] == pytest.approx(0.25)
    assert set(res["per_habitat"]) == {"h1", "h2"}
    assert res["per_habitat"]["h1"]["mae"] == pytest.approx(1.0)
    assert res["per_habitat"]["h2"]["mae"] == pytest.approx(0.0)
    cf0 = expected_confusion(pred[:1], mask[:1])
    assert res["per_habitat"]["h1"]["iou_fish"] == pytest.approx(cf0[1, 1] / (4 + 2 + 1))
    assert res["per_image"][0]["iou_fish"] == pytest.approx(4 / 7)


def test_game_matches_reference_fixture_convention():
    from conftest import load_fixture

    fx = load_fixture("game_96x160")
    pred_points = np.asarray(fx["pred_points"])
    gt_points = np.asarray(fx["gt_points"])
    # A model that predicts single pixels at the predicted points gives one blob per point.
    pred = (pred_points > 0).astype(np.int32)[None]
    mask = np.zeros_like(pred)
    batch = make_batch(pred, mask, gt_points[None], ["x"], ["h"])
    res = evaluation.evaluate(ThresholdModel(), [batch])
    # The fixture's predicted points are isolated pixels, so each is its own blob and centroid.
    assert _points_are_isolated(pred[0])
    assert res["game"] == pytest.approx(float(fx["game_L3_div4"]), abs=1e-6)
    assert res["game_l3"] == pytest.approx(4 * float(fx["game_L3_div4"]), abs=1e-6)


def _points_are_isolated(p):
    import skimage.measure

    return skimage.measure.label(p, connectivity=2).max() == p.sum()


def test_sharded_matches_single_device_with_padding_rows():
    rng = np.random.default_rng(0)
    b, h, w = 5, 16, 24
    pred = (rng.random((b, h, w)) > 0.8).astype(np.int32)
    mask = (rng.random((b, h, w)) > 0.7).astype(np.int32)
    mask[:, 0, :3] = 255
    pts = np.full((b, h, w), 255, np.int32)
    for i in range(b):
        ys, xs = np.nonzero(mask[i] == 1)
        pts[i, ys[: i + 1], xs[: i + 1]] = 1
    ids = [f"im{i}" for i in range(b)]
    habs = ["p", "q", "p", "q", "p"]
    # The last row is pipeline padding (valid=False) and must be ignored.
    valid = np.array([True] * 4 + [False])
    batches = [make_batch(pred, mask, pts, ids, habs, valid=valid)]
    mesh = shd.make_mesh()
    assert jax.device_count() == 8
    single = evaluation.evaluate(ThresholdModel(), batches, per_image=True)
    sharded = evaluation.evaluate(ThresholdModel(), batches, mesh=mesh, per_image=True)
    assert single["num_images"] == 4
    np.testing.assert_array_equal(single["confusion"], expected_confusion(pred[:4], mask[:4]))
    for key in ["miou", "iou_fish", "mae", "game", "game_l2"]:
        assert sharded[key] == pytest.approx(single[key])
    assert sharded["confusion"] == single["confusion"]
    assert [r["id"] for r in sharded["per_image"]] == ids[:4]


def test_padded_sizes_use_only_valid_pixels():
    # Image 1 is 6x5 padded to 8x8: predictions in the padding must not count.
    pred = np.zeros((2, 8, 8), np.int32)
    pred[1, 7, 7] = 1
    pred[1, 0, 0] = 1
    mask = np.zeros((2, 8, 8), np.int32)
    mask[1, 0, 0] = 1
    pad = np.ones((2, 8, 8), bool)
    pad[1, 6:, :] = False
    pad[1, :, 5:] = False
    pts = np.full((2, 8, 8), 255, np.int32)
    pts[1, 0, 0] = 1
    batch = make_batch(pred, mask, pts, ["a", "b"], ["h", "h"], pad=pad)
    res = evaluation.evaluate(ThresholdModel(), [batch])
    cf = np.asarray(res["confusion"])
    assert cf.sum() == 64 + 30
    assert cf[1, 0] == 0 and cf[1, 1] == 1
    assert res["mae"] == 0.0


def test_box_mode_hit_rate_and_precision():
    h, w = 16, 16
    pred = np.zeros((1, h, w), np.int32)
    pred[0, 2:4, 2:4] = 1  # blob centroid (2,2) inside box A
    pred[0, 12, 12] = 1  # a blob outside every box
    boxes = np.array([[[1.0, 1.0, 5.0, 5.0], [8.0, 0.0, 11.0, 4.0], [np.nan] * 4]], np.float32)
    batch = make_batch(pred, np.full((1, h, w), 255), np.full((1, h, w), 255), ["f"], ["h"])
    batch["boxes"] = boxes
    res = evaluation.evaluate(ThresholdModel(), [batch], boxes=True, per_image=True)
    assert res["num_boxes"] == 2
    assert res["box_hit_rate"] == pytest.approx(0.5)
    assert res["box_precision"] == pytest.approx(0.5)
    assert res["mae"] == 0.0  # 2 boxes, 2 blobs
    assert res["per_image"][0]["true_count"] == 2
    # No pixel mask: the IoU figures are undefined rather than made up.
    assert np.asarray(res["confusion"]).sum() == 0


def test_empty_split_is_a_clear_error():
    with pytest.raises(ValueError, match="no images"):
        evaluation.evaluate(ThresholdModel(), [])


def test_bad_image_shape_is_a_clear_error():
    batch = {"image": np.zeros((1, 4, 4), np.float32)}
    with pytest.raises(ValueError, match=r"\(B,H,W,3\)"):
        evaluation.evaluate(ThresholdModel(), [batch])


def test_box_mode_extent_figures():
    # Blob 1 (2x2) lies in box A (4x4 pixels): coverage 1/4, box IoU 4/16 (no match at 0.5);
    # blob 2 is outside every box; box B gets nothing.
    h, w = 16, 16
    pred = np.zeros((1, h, w), np.int32)
    pred[0, 2:4, 2:4] = 1
    pred[0, 12, 12] = 1
    boxes = np.array([[[1.0, 1.0, 5.0, 5.0], [8.0, 0.0, 11.0, 4.0]]], np.float32)
    batch = make_batch(pred, np.full((1, h, w), 255), np.full((1, h, w), 255), ["f"], ["h"])
    batch["boxes"] = boxes
    res = evaluation.evaluate(ThresholdModel(), [batch], boxes=True, per_image=True, extents=True)
    assert res["ap50"] == 0.0 and res["ap30"] == 0.0 and res["num_instances"] == 2
    assert res["best_iou_median"] == pytest.approx(0.125)  # 0.25 and 0
    assert res["box_coverage_median"] == pytest.approx(0.125)
    assert res["pixel_precision"] == pytest.approx(4 / 5)
    row = res["per_image"][0]
    assert row["num_instances"] == 2 and row["true_positives"] == 0
    assert row["box_coverage_median"] == pytest.approx(0.125)
    # Without extents the figures are not computed.
    res = evaluation.evaluate(ThresholdModel(), [batch], boxes=True)
    assert "ap50" not in res
