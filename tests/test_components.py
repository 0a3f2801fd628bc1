"""Connected components and watershed helpers against scipy / scikit-image."""

import jax
import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import label
from skimage.segmentation import find_boundaries

from alcfcn_jax.ops import components as cc


def snake(h, w):
    """One 8-connected serpentine component (worst case for label propagation)."""
    m = np.zeros((h, w), bool)
    m[::2, :] = True
    for i, r in enumerate(range(1, h, 2)):
        m[r, -1 if i % 2 == 0 else 0] = True
    return m


def diagonal_staircase(n):
    """Components connected only through diagonal steps."""
    m = np.zeros((n, n), bool)
    np.fill_diagonal(m, True)
    m[::-1][np.arange(0, n, 3), np.arange(0, n, 3)] = True
    return m


MASKS = {
    "empty": np.zeros((7, 9), bool),
    "full": np.ones((6, 11), bool),
    "snake": snake(15, 12),
    "diagonal": diagonal_staircase(12),
    "single": np.pad(np.ones((1, 1), bool), 3),
    "row": np.ones((1, 13), bool),
    "column": np.ones((9, 1), bool),
}


def random_masks():
    rng = np.random.default_rng(0)
    out = {}
    for i, density in enumerate([0.2, 0.45, 0.6, 0.8]):
        out[f"random{i}"] = (
            rng.random((int(rng.integers(5, 30)), int(rng.integers(5, 30)))) < density
        )
    return out


@pytest.mark.parametrize("name, mask", list({**MASKS, **random_masks()}.items()))
def test_label_jax_and_label8_partition_equals_skimage(name, mask):
    want = label(mask, connectivity=2)
    got = np.asarray(jax.jit(cc.label_jax)(mask))
    assert cc.same_partition(got, want), name
    # Label = 1 + the component's smallest flat index.
    for u in np.unique(got[got > 0]):
        assert u - 1 == np.flatnonzero(got == u).min()
    host, n = cc.label8(mask)
    assert n == want.max()
    assert cc.same_partition(host, want)
    assert host.dtype == np.int32


def test_same_partition_detects_merges_and_splits():
    a = np.array([[1, 1, 0, 2]])
    assert cc.same_partition(a, a * 7)
    assert not cc.same_partition(a, np.array([[1, 1, 0, 1]]))
    assert not cc.same_partition(a, np.array([[1, 3, 0, 2]]))
    assert not cc.same_partition(a, np.array([[1, 1, 1, 2]]))


def test_blob_sizes():
    labels, n = cc.label8(np.array([[1, 0, 1], [0, 0, 1], [1, 0, 0]]))
    np.testing.assert_array_equal(cc.blob_sizes(labels, n), [5, 1, 2, 1])


@pytest.mark.parametrize("shape", [(1, 1), (2, 3), (7, 7), (13, 40), (64, 33)])
@pytest.mark.parametrize("size", [3, 7])
def test_black_tophat_is_bit_identical_to_scipy(shape, size):
    rng = np.random.default_rng(sum(shape) + size)
    for quantised in (False, True):
        x = rng.random(shape).astype(np.float32)
        if quantised:
            x = np.round(x * 3) / 3
        want = ndimage.black_tophat(x, size)
        got = cc.black_tophat_square(x, size)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_black_tophat_rejects_even_size():
    with pytest.raises(ValueError, match="odd"):
        cc.black_tophat_square(np.zeros((3, 3), np.float32), 4)


@pytest.mark.parametrize("shape", [(1, 1), (1, 6), (5, 1), (9, 14)])
def test_thick_boundaries_equal_find_boundaries(shape):
    rng = np.random.default_rng(shape[0] * 31 + shape[1])
    for n_labels in (1, 2, 4):
        seg = rng.integers(0, n_labels, shape)
        np.testing.assert_array_equal(cc.thick_boundaries(seg), find_boundaries(seg))


def test_marker_image_numbers_row_major():
    pts = np.zeros((3, 4), int)
    pts[2, 0] = pts[0, 3] = pts[1, 1] = 1
    m = cc.marker_image(pts)
    assert m.dtype == np.int32
    assert (m[0, 3], m[1, 1], m[2, 0]) == (1, 2, 3)
    assert (m > 0).sum() == 3


def test_label_inputs_must_be_2d():
    with pytest.raises(ValueError, match="2-D"):
        cc.label8(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="2-D"):
        cc.label_jax(np.zeros((2, 2, 2), bool))


@pytest.mark.parametrize("use_kernel", [True, False])
def test_watershed_runner_equals_skimage(monkeypatch, use_kernel):
    from skimage.segmentation import watershed

    if not use_kernel:
        monkeypatch.setattr(cc, "_KERNEL_STATE", [False])
    rng = np.random.default_rng(4)
    for shape in [(1, 5), (9, 1), (17, 23)]:
        img = (np.round(rng.random(shape) * 5) / 5).astype(np.float32)
        flood = cc.Watershed(img)
        assert (flood._flat is not None) == (use_kernel and cc._kernel_ok())
        for _ in range(3):
            markers = cc.marker_image(rng.random(shape) < 0.2)
            if markers.max() == 0:
                markers.flat[0] = 1
            np.testing.assert_array_equal(flood(markers), watershed(img, markers))
