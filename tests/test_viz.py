"""What an evaluation overlay contains: its tiles, their order and their pixels."""

from __future__ import annotations

import numpy as np
import pytest

from alcfcn_jax.eval import viz

H, W = 40, 60


def _tiles(panel, n, columns, title=True, title_px=14):
    """Cuts a tile_grid canvas back into its (zoomed) tiles, row-major."""
    arr = np.asarray(panel)
    zoom = -(-192 // H)
    h, w = H * zoom, W * zoom
    top = title_px + 6 if title else 0
    out = []
    for k in range(n):
        r, c = divmod(k, columns)
        x, y = c * (w + 2), top + r * (h + title_px + 4) + title_px + 2
        out.append(arr[y : y + h : zoom, x : x + w : zoom])  # back to H x W
    return out


def test_eval_panel_tiles_in_order():
    rng = np.random.default_rng(0)
    image = rng.integers(40, 200, (H, W, 3), np.uint8)
    pred = np.zeros((H, W), np.int32)
    pred[10:20, 5:15] = 1  # one blob
    pred[25:30, 40:50] = 1  # another
    pred_points = np.zeros((H, W), np.int32)
    pred_points[15, 10] = pred_points[27, 45] = 1
    gt_points = np.zeros((H, W), np.int32)
    gt_points[2, 2] = 1
    cam = np.linspace(0, 1, H * W).reshape(H, W)
    prob = cam[::-1]
    panel = viz.eval_panel(
        image,
        pred=pred,
        pred_points=pred_points,
        gt_points=gt_points,
        cam_prob=cam,
        fish_prob=prob,
        title="img_7",
    )
    tiles = _tiles(panel, 6, columns=3)
    np.testing.assert_array_equal(tiles[0], image)  # 1: the image as it is
    # 2: ground truth: the click drawn (cyan circle around it), the rest of the image untouched.
    changed = (tiles[1] != image).any(-1)
    assert changed.any() and not changed[15:, 15:].any()
    # 3: prediction: tinted inside the predicted fish only, red dominant there.
    changed = (tiles[2] != image).any(-1)
    np.testing.assert_array_equal(changed, pred == 1)
    assert (tiles[2][pred == 1][:, 0] >= tiles[2][pred == 1][:, 2]).all()
    # 4: blobs: the two blobs in two different colours.
    c1, c2 = tiles[3][12, 7], tiles[3][28, 47]
    assert not np.array_equal(c1, c2)
    # 5 and 6: the activation before and the probability after the walk, as heatmaps.
    np.testing.assert_array_equal(tiles[4], viz.heatmap(cam))
    np.testing.assert_array_equal(tiles[5], viz.heatmap(prob))
    assert not np.array_equal(tiles[4], tiles[5])


def test_eval_panel_without_maps_has_four_tiles_in_two_columns():
    image = np.full((H, W, 3), 100, np.uint8)
    pred = np.zeros((H, W), np.int32)
    panel = viz.eval_panel(image, pred=pred, pred_points=pred)
    zoom = -(-192 // H)
    assert panel.size == (2 * W * zoom + 2, 2 * (H * zoom + 18))
    tiles = _tiles(panel, 4, columns=2, title=False)
    for t in tiles:
        np.testing.assert_array_equal(t, image)  # nothing predicted, nothing drawn


def test_tile_grid_rejects_mismatched_tiles():
    with pytest.raises(ValueError, match="expected"):
        viz.tile_grid([("a", np.zeros((4, 4, 3))), ("b", np.zeros((5, 4, 3)))])
    with pytest.raises(ValueError, match="at least one"):
        viz.tile_grid([])
