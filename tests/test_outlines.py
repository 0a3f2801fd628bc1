"""Instance outlines (eval/outlines.py): GrabCut grows blobs to the fish in drawn images."""

import numpy as np
import pytest
import scipy.ndimage as ndi

from alcfcn_jax.config_utils import ConfigError
from alcfcn_jax.eval import outlines


def _ellipse(shape, cy, cx, ry, rx):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _scene(shape, fish):
    """Murky green water with noise; each fish a silver ellipse."""
    rng = np.random.default_rng(0)
    img = np.empty(shape + (3,))
    img[:] = (40, 110, 100)
    img += rng.normal(0, 8, img.shape)
    for m in fish:
        img[m] = (190, 200, 205) + rng.normal(0, 8, (int(m.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_grabcut_grows_a_small_blob_to_the_whole_fish():
    shape = (48, 72)
    fish = _ellipse(shape, 24, 36, 7, 16)
    image = _scene(shape, [fish])
    core = _ellipse(shape, 24, 36, 3, 5).astype(np.int32)  # a blob in the fish's middle
    assert _iou(core > 0, fish) < 0.2
    out = outlines.grabcut_outlines(image, core)
    assert out.max() == 1
    assert _iou(out == 1, fish) > 0.9


def test_grabcut_trims_the_outer_ring_and_keeps_fish_apart():
    shape = (40, 80)
    a = _ellipse(shape, 20, 20, 4, 6)
    b = _ellipse(shape, 20, 58, 6, 12)
    image = _scene(shape, [a, b])
    labels = np.zeros(shape, np.int32)
    # One pixel too wide around fish a: only the blob shrunk by a pixel is certain fish.
    labels[ndi.binary_dilation(a)] = 1
    labels[_ellipse(shape, 20, 58, 2, 4)] = 2  # too small in fish b
    out = outlines.grabcut_outlines(image, labels)
    assert out.max() == 2 and out[20, 20] != out[20, 58]  # numbered in raster order
    assert _iou(out == out[20, 20], a) > 0.9 and _iou(out == out[20, 58], b) > 0.9


def test_no_instance_and_bad_shapes():
    image = np.zeros((8, 8, 3), np.uint8)
    assert outlines.grabcut_outlines(image, np.zeros((8, 8), np.int32)).max() == 0
    with pytest.raises(ValueError, match=r"\(H,W,3\)"):
        outlines.grabcut_outlines(image, np.zeros((8, 9), np.int32))


def test_an_instance_grabcut_cannot_model_stays_as_cut():
    # A uniform image: both colour models are one colour; the blob must not vanish or explode.
    image = np.full((20, 20, 3), 100, np.uint8)
    labels = np.zeros((20, 20), np.int32)
    labels[8:12, 8:12] = 1
    out = outlines.grabcut_outlines(image, labels)
    assert out[9:11, 9:11].all() and (out > 0).sum() < 200


def test_instance_fn_cuts_then_outlines():
    shape = (48, 72)
    fish = _ellipse(shape, 24, 36, 7, 16)
    image = _scene(shape, [fish])
    prob = np.where(_ellipse(shape, 24, 36, 3, 5), 0.9, 0.1)
    blobs = outlines.instance_fn(outlines.InstanceSettings())(prob, image)
    grown = outlines.instance_fn(outlines.InstanceSettings(outline="grabcut"))(prob, image)
    assert blobs.max() == grown.max() == 1
    assert (grown > 0).sum() > 3 * (blobs > 0).sum()
    with pytest.raises(ValueError, match="needs the image"):
        outlines.instance_fn(outlines.InstanceSettings(outline="grabcut"))(prob, None)


def test_settings_are_checked():
    with pytest.raises(ValueError, match="outline"):
        outlines.InstanceSettings(outline="crf")
    with pytest.raises(ValueError, match="threshold"):
        outlines.InstanceSettings(threshold=1.0)
    with pytest.raises(ValueError, match="unknown"):
        outlines.InstanceSettings.from_config({"outlines": "grabcut"})
    assert outlines.InstanceSettings.from_config({"outline": "grabcut"}).grabcut_iters == 4


def test_resolve_refuses_bad_instance_settings():
    from alcfcn_jax.train.config import resolve
    from configs import frames

    config = frames.get_config("smoke")
    config.instances.outline = "crf"
    with pytest.raises(ConfigError, match="instances"):
        resolve(config)


def test_click_instances_one_per_click():
    shape = (40, 90)
    a = _ellipse(shape, 10, 12, 4, 6)  # one click
    b = _ellipse(shape, 25, 40, 5, 9) | _ellipse(shape, 25, 56, 5, 9)  # two fish, one blob
    c = _ellipse(shape, 10, 75, 3, 5)  # no click: a false positive by the labels
    prob = np.where(a | b | c, 0.9, 0.05)
    points = np.zeros(shape, np.int32)
    for y, x in [(10, 12), (25, 36), (25, 60), (35, 80)]:  # the last one is in no blob
        points[y, x] = 1
    labels = outlines.click_instances(prob, points, outlines.InstanceSettings(split=False))
    assert labels.max() == 4
    ids = {labels[y, x] for y, x in [(10, 12), (25, 36), (25, 60), (35, 80)]}
    assert len(ids) == 4 and 0 not in ids  # every click in its own instance
    assert labels[c].max() == 0  # the clickless blob is gone
    assert (labels == labels[10, 12]).sum() == a.sum()  # a single-click blob is kept whole
    split = (labels == labels[25, 36]) | (labels == labels[25, 60])
    assert (split == b).all()  # the two-click blob is shared between its clicks
    assert (labels == labels[35, 80]).sum() == 25  # a 5x5 seed for the missed click
