"""Tests for alcfcn_jax.ops.resize (torch F.interpolate / avg_pool2d / pad semantics)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alcfcn_jax.ops.resize import avg_pool, pad_to_multiple, resize_bilinear


def _img(rows):
    return jnp.asarray(np.asarray(rows, np.float32)[None, :, :, None])


def test_upsample_half_pixel_hand_computed():
    # 1-D taps for 2 -> 4 with half-pixel centres: src = (d + .5) / 2 - .5 = -.25 (clamped to 0),
    # .25, .75, 1.25 (i1 clamped to the last pixel) -> [a, .75a + .25b, .25a + .75b, b].
    out = resize_bilinear(_img([[0.0, 4.0]]), (1, 4), align_corners=False)
    np.testing.assert_allclose(np.asarray(out)[0, 0, :, 0], [0.0, 1.0, 3.0, 4.0], atol=1e-6)


def test_downsample_half_pixel_averages_pairs_without_antialias():
    x = _img([[1.0, 3.0, 10.0, 20.0, 5.0, 5.0, 0.0, 8.0]])
    out = resize_bilinear(x, (1, 4), align_corners=False)
    np.testing.assert_allclose(np.asarray(out)[0, 0, :, 0], [2.0, 15.0, 5.0, 4.0], atol=1e-6)
    # 4 -> 2 along both axes: src = 0.5, 2.5 -> mean of each 2x2 block.
    y = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(
        np.asarray(resize_bilinear(y, (2, 2), align_corners=False))[0, ..., 0],
        [[2.5, 4.5], [10.5, 12.5]],
        atol=1e-6,
    )


def test_align_corners_hand_computed():
    x = _img([[0.0, 2.0], [4.0, 10.0]])
    out = np.asarray(resize_bilinear(x, (3, 3), align_corners=True))[0, ..., 0]
    np.testing.assert_allclose(out, [[0, 1, 2], [2, 4, 6], [4, 7, 10]], atol=1e-6)
    # Output size 1 samples the first pixel (torch uses scale 0).
    one = resize_bilinear(x, (1, 1), align_corners=True)
    assert float(one[0, 0, 0, 0]) == 0.0


def test_same_size_is_identity_and_dtype_kept():
    x = jax.random.normal(jax.random.key(0), (2, 5, 7, 3))
    for ac in (False, True):
        out = resize_bilinear(x, (5, 7), align_corners=ac)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(x))
    xb = x.astype(jnp.bfloat16)
    assert resize_bilinear(xb, (9, 4), align_corners=False).dtype == jnp.bfloat16


def test_resize_jit_and_grad():
    x = jax.random.normal(jax.random.key(1), (1, 6, 9, 2))
    f = jax.jit(lambda v: resize_bilinear(v, (13, 5), align_corners=True).sum())
    g = jax.grad(f)(x)
    # Linear interpolation weights of every output pixel sum to 1.
    np.testing.assert_allclose(float(g.sum()), 13 * 5 * 2, rtol=1e-5)


def test_resize_bad_inputs():
    with pytest.raises(ValueError, match="B, H, W, C"):
        resize_bilinear(jnp.zeros((4, 4)), (2, 2), align_corners=False)
    with pytest.raises(ValueError, match="size"):
        resize_bilinear(jnp.zeros((1, 4, 4, 1)), (0, 2), align_corners=False)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize(
    "src,dst",
    [
        ((7, 11), (23, 5)),
        ((32, 57), (256, 456)),
        ((256, 456), (256, 455)),
        ((9, 13), (4, 6)),
        ((5, 3), (1, 1)),
        ((1, 4), (3, 9)),
        ((15, 20), (15, 61)),
    ],
)
def test_resize_matches_torch(src, dst, align_corners):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 3) + src).astype(np.float32)
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(x), size=dst, mode="bilinear", align_corners=align_corners
    ).numpy()
    out = resize_bilinear(jnp.asarray(x.transpose(0, 2, 3, 1)), dst, align_corners=align_corners)
    np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), ref, atol=1e-6, rtol=0)


def test_avg_pool_and_pad_hand_computed():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(np.asarray(avg_pool(x, 2))[0, ..., 0], [[2.5, 4.5], [10.5, 12.5]])
    p = pad_to_multiple(jnp.ones((1, 5, 9, 2)), 8)
    assert p.shape == (1, 8, 16, 2)
    assert float(p.sum()) == 5 * 9 * 2
    assert float(p[0, 5:].sum()) == 0.0 and float(p[0, :, 9:].sum()) == 0.0
    aligned = jnp.ones((1, 8, 16, 1))
    assert pad_to_multiple(aligned, 8) is aligned
    with pytest.raises(ValueError, match="multiple of k=8"):
        avg_pool(jnp.ones((1, 9, 8, 1)), 8)
    with pytest.raises(ValueError, match="m must be"):
        pad_to_multiple(aligned, 0)


def test_avg_pool_matches_torch():
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(1).normal(size=(2, 3, 24, 40)).astype(np.float32)
    ref = torch.nn.functional.avg_pool2d(torch.from_numpy(x), 8, 8).numpy()
    out = avg_pool(jnp.asarray(x.transpose(0, 2, 3, 1)), 8)
    np.testing.assert_allclose(np.asarray(out).transpose(0, 3, 1, 2), ref, atol=1e-6)
