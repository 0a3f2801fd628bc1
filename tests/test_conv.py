"""The CPU convolution path (ops/conv.py) gives lax's values and gradients for every geometry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from alcfcn_jax.ops import conv as conv_ops

GEOMETRIES = [
    # (kernel, stride, dilation, padding, in_hw)
    (1, 1, 1, ((0, 0), (0, 0)), (7, 9)),
    (1, 2, 1, ((0, 0), (0, 0)), (7, 9)),
    (1, 1, 1, ((1, 0), (0, 2)), (5, 6)),
    (3, 1, 1, ((1, 1), (1, 1)), (7, 9)),
    (3, 2, 1, ((1, 1), (1, 1)), (7, 9)),
    (3, 1, 2, ((2, 2), (2, 2)), (8, 11)),
    (3, 1, 4, ((4, 4), (4, 4)), (9, 10)),
    (3, 2, 1, ((0, 1), (2, 0)), (6, 9)),
    (7, 1, 1, ((3, 3), (3, 3)), (5, 8)),
    (2, 3, 1, ((0, 0), (1, 1)), (10, 7)),
    (3, 1, 1, "SAME", (6, 7)),
    (3, 2, 2, "SAME", (9, 10)),
    (4, 1, 1, "VALID", (6, 7)),
]


def _lax(x, k, stride, dilation, padding):
    return lax.conv_general_dilated(
        x, k, (stride, stride), padding, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip


def _ours(x, k, stride, dilation, padding):
    return conv_ops.conv_general_dilated(
        x, k, (stride, stride), padding, rhs_dilation=(dilation, dilation),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )  # fmt: skip


@pytest.fixture
def taps():
    previous = conv_ops.set_conv_impl("taps")
    yield
    conv_ops.set_conv_impl(previous)


@pytest.mark.parametrize("kernel,stride,dilation,padding,hw", GEOMETRIES)
def test_values_and_gradients_match_lax(taps, kernel, stride, dilation, padding, hw):
    rng = np.random.default_rng(kernel * 100 + stride * 10 + dilation)
    x = jnp.asarray(rng.normal(size=(2, *hw, 5)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 4)), jnp.float32)
    # A loss that weights output pixels differently, so a misplaced tap cannot cancel out.
    w = jnp.asarray(rng.normal(size=_lax(x, k, stride, dilation, padding).shape), jnp.float32)

    def loss(fn):
        return lambda xx, kk: jnp.sum(w * jnp.tanh(fn(xx, kk, stride, dilation, padding)))

    want = jax.jit(jax.value_and_grad(loss(_lax), argnums=(0, 1)))(x, k)
    got = jax.jit(jax.value_and_grad(loss(_ours), argnums=(0, 1)))(x, k)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1][0], want[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1][1], want[1][1], rtol=1e-4, atol=1e-5)


def test_kernel_grad_by_taps_against_float64_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 9, 11, 3))
    g = rng.normal(size=(2, 4, 3, 6))  # output of a 3x3, stride (2, 3), dilation 2, pad 1 conv
    padding, strides, dilation = ((1, 1), (1, 1)), (2, 3), (2, 2)
    got = conv_ops.kernel_grad_by_taps(
        jnp.asarray(x, jnp.float32), jnp.asarray(g, jnp.float32), (3, 3), strides, padding, dilation
    )
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((3, 3, 3, 6))
    for i in range(3):
        for j in range(3):
            for ho in range(4):
                for wo in range(3):
                    src = xp[:, ho * 2 + i * 2, wo * 3 + j * 2, :]  # (N, Cin)
                    want[i, j] += src.T @ g[:, ho, wo, :]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


DEPTHWISE = [
    # (kernel, stride, dilation, padding, in_hw): EfficientNet-Lite's depthwise geometries
    (3, 1, 1, "SAME", (7, 9)),
    (3, 2, 1, "SAME", (7, 9)),
    (5, 2, 1, "SAME", (10, 11)),
    (5, 1, 2, "SAME", (9, 8)),
    (3, 1, 4, "SAME", (11, 12)),
    (3, 1, 1, ((1, 0), (0, 2)), (5, 6)),
]


@pytest.mark.parametrize("kernel,stride,dilation,padding,hw", DEPTHWISE)
def test_depthwise_by_shifts_matches_lax(taps, kernel, stride, dilation, padding, hw):
    rng = np.random.default_rng(kernel * 100 + stride * 10 + dilation)
    x = jnp.asarray(rng.normal(size=(2, *hw, 6)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(kernel, kernel, 1, 6)), jnp.float32)
    geometry = dict(
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        rhs_dilation=(dilation, dilation),
        feature_group_count=6,
    )
    out_shape = lax.conv_general_dilated(x, k, (stride, stride), padding, **geometry).shape
    w = jnp.asarray(rng.normal(size=out_shape), jnp.float32)

    def loss(conv):
        return lambda xx, kk: jnp.sum(
            w * jnp.tanh(conv(xx, kk, (stride, stride), padding, **geometry))
        )

    want = jax.jit(jax.value_and_grad(loss(lax.conv_general_dilated), argnums=(0, 1)))(x, k)
    got_fn = jax.value_and_grad(loss(conv_ops.conv_general_dilated), argnums=(0, 1))
    got = jax.jit(got_fn)(x, k)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got[1][0], want[1][0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[1][1], want[1][1], rtol=1e-4, atol=1e-5)
    # It really is the shifted-sum path: no convolution left in the program.
    assert "conv_general_dilated" not in str(jax.make_jaxpr(got_fn)(x, k))


def test_unsupported_geometry_falls_back_to_lax(taps):
    # Grouped (not depthwise) and input-dilated convolutions keep lax's implementation.
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 6, 7, 4)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
    kwargs = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=2)
    np.testing.assert_array_equal(
        conv_ops.conv_general_dilated(x, k, (1, 1), "SAME", **kwargs),
        lax.conv_general_dilated(x, k, (1, 1), "SAME", **kwargs),
    )
    k2 = jnp.asarray(rng.normal(size=(3, 3, 4, 2)), jnp.float32)
    kwargs = dict(dimension_numbers=("NHWC", "HWIO", "NHWC"), lhs_dilation=(2, 2))
    np.testing.assert_array_equal(
        conv_ops.conv_general_dilated(x, k2, (1, 1), ((2, 2), (2, 2)), **kwargs),
        lax.conv_general_dilated(x, k2, (1, 1), ((2, 2), (2, 2)), **kwargs),
    )


def test_impl_selection():
    assert conv_ops.set_conv_impl("xla") == "auto"
    try:
        assert not conv_ops._use_taps()
        conv_ops.set_conv_impl("auto")
        assert conv_ops._use_taps() == (jax.default_backend() == "cpu")
        with pytest.raises(ValueError, match="'auto', 'taps' or 'xla'"):
            conv_ops.set_conv_impl("cudnn")
    finally:
        conv_ops.set_conv_impl("auto")


def test_model_convs_use_it_and_sharded_gradients_match(taps):
    """nnx.Conv built by layers.conv2d takes this path; under a data-sharded jit on the 8 fake
    devices the kernel gradient equals the single-device lax one."""
    from alcfcn_jax.models.layers import conv2d

    conv = conv2d(3, 4, 3, stride=2, padding=1, dilation=1, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(2).normal(size=(8, 9, 10, 3)), jnp.float32)
    # nnx.Conv passes lax.ConvDimensionNumbers; the fast path (a custom_vjp) must still be taken.
    assert "custom_vjp_call" in str(jax.make_jaxpr(conv)(x))
    kernel = conv.kernel[...]

    def loss(k, xx, fn):
        return jnp.sum(jnp.sin(fn(xx, k, 2, 1, ((1, 1), (1, 1)))))

    want = jax.grad(loss)(kernel, x, _lax)
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
    with jax.set_mesh(mesh):
        xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
        got = jax.jit(jax.grad(loss), static_argnums=2)(kernel, xs, _ours)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_auto_keeps_xla_gradient_for_narrow_kxk_kernels():
    """Under "auto" on CPU: narrow kxk kernels (Cin * Cout < SMALL_KXK_PAIRS) stay plain lax
    convolutions (XLA's gradient is faster there), wide ones and every 1x1 take the taps."""
    if jax.default_backend() != "cpu":
        pytest.skip("the taps are a CPU path")
    assert conv_ops.set_conv_impl("auto") == "auto"
    x = jnp.zeros((1, 6, 7, 96), jnp.float32)

    def path(kh, cin, cout):
        k = jnp.zeros((kh, kh, cin, cout), jnp.float32)
        fn = lambda xx: _ours(xx[..., :cin], k, 1, 1, "SAME")  # noqa: E731
        return "taps" if "custom_vjp_call" in str(jax.make_jaxpr(fn)(x)) else "lax"

    assert path(3, 96, 96) == "lax"  # the decoder's 3x3 convolutions
    assert path(3, 96, 384) == "taps"  # 36,864 pairs >= SMALL_KXK_PAIRS
    assert path(1, 96, 96) == "taps"  # 1x1: a matrix product either way
    assert 96 * 96 < conv_ops.SMALL_KXK_PAIRS <= 96 * 384
