"""FCN8-VGG16: torch parity of the whole network (small widths), shapes, init, dropout, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alcfcn_jax.models.vgg16_fcn8 import (
    FCN8VGG16,
    INPUT_FORMATS,
    bilinear_upsampling_kernel,
    conv_transpose_torch,
    convert_input,
    max_pool_ceil,
    vgg16_conv_names,
)

# Equal small widths keep the number of distinct init shapes (one XLA compile each) low.
SMALL = {"channels": (8, 8, 8, 8, 8), "fc_width": 8}


def _small_model(seed=0, **kw):
    return FCN8VGG16(3, rngs=nnx.Rngs(seed, dropout=seed + 1), **{**SMALL, **kw})


def _randomise_head(model, seed=0):
    """Non-zero scorers and random upsamplers so the head's crops and sums are all exercised."""
    rng = np.random.default_rng(seed)
    for name in ("score_fr", "score_pool4", "score_pool3"):
        conv = getattr(model, name)
        conv.kernel[...] = jnp.asarray(rng.normal(0, 0.5, conv.kernel.shape), jnp.float32)
        conv.bias[...] = jnp.asarray(rng.normal(0, 0.5, conv.bias.shape), jnp.float32)
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        up = getattr(model, name)
        up.kernel[...] = jnp.asarray(rng.normal(0, 0.3, up.kernel.shape), jnp.float32)


def _torch_forward(model, x_nhwc):
    """Eval-mode torch replica of the reference FCN8VGG16 with the model's weights.

    The replica lives in reference/torch_replica.py (spec 2.9).
    """
    torch = pytest.importorskip("torch")
    from reference.torch_replica import FCN8VGG16Torch

    def as_torch(a, axes):
        return torch.from_numpy(np.transpose(np.asarray(a), axes).copy())

    names = vgg16_conv_names()
    channels = tuple(getattr(model, f"conv{b}_1").kernel.shape[-1] for b in range(1, 6))
    net = FCN8VGG16Torch(
        model.score_fr.kernel.shape[-1], channels=channels, fc_width=model.fc6.kernel.shape[-1]
    ).eval()
    state = {}
    torch_names = {"score_fr": "scoring_layer"}
    for name in (*names, "fc6", "fc7", "score_fr", "score_pool4", "score_pool3"):
        conv = getattr(model, name)
        state[f"{torch_names.get(name, name)}.weight"] = as_torch(conv.kernel[...], (3, 2, 0, 1))
        state[f"{torch_names.get(name, name)}.bias"] = as_torch(conv.bias[...], (0,))
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        state[f"{name}.weight"] = as_torch(getattr(model, name).kernel[...], (2, 3, 0, 1))
    net.load_state_dict(state, strict=True)
    with torch.no_grad():
        out = net(as_torch(x_nhwc, (0, 3, 1, 2)))
    return np.transpose(out.numpy(), (0, 2, 3, 1))


@pytest.mark.parametrize("hw", [(13, 21), (37, 53)])
def test_matches_torch_replica(hw):
    model = _small_model()
    _randomise_head(model)
    x = np.random.default_rng(1).normal(size=(2, *hw, 3)).astype(np.float32)
    ours = np.asarray(nnx.jit(lambda m, v: m(v))(model, jnp.asarray(x)))
    ref = _torch_forward(model, x)
    assert ours.shape == ref.shape == (2, *hw, 3)
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(ours, ref, atol=1e-4 * scale, rtol=1e-4)


def test_conv_transpose_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    for k, s, hw in [(4, 2, (5, 7)), (16, 8, (3, 4)), (4, 2, (1, 1))]:
        x = rng.normal(size=(2, *hw, 3)).astype(np.float32)
        kern = rng.normal(size=(k, k, 3, 2)).astype(np.float32)
        ours = np.asarray(conv_transpose_torch(jnp.asarray(x), jnp.asarray(kern), s))
        ref = torch.nn.functional.conv_transpose2d(
            torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
            torch.from_numpy(kern.transpose(2, 3, 0, 1).copy()),
            stride=s,
        ).numpy()
        assert ours.shape == (2, (hw[0] - 1) * s + k, (hw[1] - 1) * s + k, 2)
        np.testing.assert_allclose(ours, ref.transpose(0, 2, 3, 1), atol=1e-5)


def test_max_pool_ceil_mode():
    x = np.arange(2 * 5 * 7 * 1, dtype=np.float32).reshape(2, 5, 7, 1) * -1.0
    out = np.asarray(max_pool_ceil(jnp.asarray(x)))
    assert out.shape == (2, 3, 4, 1)
    for i in range(3):
        for j in range(4):
            window = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2, 0]
            np.testing.assert_array_equal(out[:, i, j, 0], window.max(axis=(1, 2)))


def test_bilinear_kernel():
    k4 = bilinear_upsampling_kernel(3, 4)
    taps = np.array([0.25, 0.75, 0.75, 0.25], np.float32)
    for c in range(3):
        np.testing.assert_allclose(k4[:, :, c, c], np.outer(taps, taps))
    off_diag = k4.copy()
    off_diag[:, :, range(3), range(3)] = 0
    assert not off_diag.any()
    k16 = bilinear_upsampling_kernel(2, 16)
    assert k16.shape == (16, 16, 2, 2)
    # Each output phase of a stride-8 bilinear upsampler sums to 1: constant maps stay constant.
    up = np.asarray(conv_transpose_torch(jnp.ones((1, 4, 4, 2)), jnp.asarray(k16), 8))
    np.testing.assert_allclose(up[0, 8:-8, 8:-8], 1.0, atol=1e-6)
    # The model's upsamplers start with exactly these kernels and are trainable.
    model = _small_model()
    np.testing.assert_array_equal(
        np.asarray(model.upscore8.kernel[...]), bilinear_upsampling_kernel(3, 16)
    )
    params = nnx.state(model, nnx.Param)
    assert "upscore2" in params and "conv1_1" in params and "fc6" in params


@pytest.mark.parametrize("hw", [(1, 1), (3, 2), (31, 17), (45, 64)])
def test_output_size_equals_input_size(hw):
    model = _small_model()
    out = jax.eval_shape(lambda v: model(v), jax.ShapeDtypeStruct((1, *hw, 3), jnp.float32))
    assert out.shape == (1, *hw, 3)


def test_fresh_model_outputs_zero_and_aux():
    # Zero-initialised scorers: an untrained FCN8 predicts all-zero logits, as the reference does.
    model = _small_model()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 37, 53, 3)), jnp.float32)
    logits, aux = nnx.jit(lambda m, v: m(v, return_aux=True))(model, x)
    assert logits.shape == (1, 37, 53, 3) and logits.dtype == jnp.float32
    assert not np.asarray(logits).any()
    np.testing.assert_array_equal(np.asarray(aux["cam"]), np.asarray(logits))


def test_dropout_only_in_training():
    model = _small_model()
    _randomise_head(model)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 19, 23, 3)), jnp.float32)
    fwd = nnx.jit(lambda m, v, train: m(v, train=train), static_argnames="train")
    eval1, eval2 = fwd(model, x, False), fwd(model, x, False)
    np.testing.assert_array_equal(np.asarray(eval1), np.asarray(eval2))
    train = fwd(model, x, True)
    assert not np.allclose(np.asarray(train), np.asarray(fwd(model, x, True)))  # fresh masks
    assert np.all(np.isfinite(np.asarray(train)))
    assert not np.allclose(np.asarray(train), np.asarray(eval1))


def test_bfloat16_compute():
    m32 = _small_model()
    _randomise_head(m32)
    m16 = _small_model(dtype=jnp.bfloat16)
    nnx.update(m16, nnx.state(m32, nnx.Param))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 21, 19, 3)), jnp.float32)
    y32 = np.asarray(nnx.jit(lambda m, v: m(v))(m32, x))
    y16 = nnx.jit(lambda m, v: m(v))(m16, x)
    assert y16.dtype == jnp.float32
    y16 = np.asarray(y16)
    assert np.all(np.isfinite(y16))
    assert np.abs(y16 - y32).max() <= 0.05 * np.abs(y32).max() + 1e-3


def test_default_architecture_shapes():
    # The real VGG-16 sizes, checked without allocating the 134M parameters.
    model = nnx.eval_shape(lambda: FCN8VGG16(2, rngs=nnx.Rngs(0)))
    assert model.conv1_1.kernel.shape == (3, 3, 3, 64)
    assert model.conv1_1.padding == [(100, 100), (100, 100)]
    assert model.conv5_3.kernel.shape == (3, 3, 512, 512)
    assert model.fc6.kernel.shape == (7, 7, 512, 4096)
    assert model.fc7.kernel.shape == (1, 1, 4096, 4096)
    assert model.score_fr.kernel.shape == (1, 1, 4096, 2)
    assert model.score_pool4.kernel.shape == (1, 1, 512, 2)
    assert model.score_pool3.kernel.shape == (1, 1, 256, 2)
    assert model.upscore8.kernel.shape == (16, 16, 2, 2)
    n = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
    # torchvision VGG-16 without classifier.6 (134,260,544) + FCN8 head (514*2 + 512*2 + 256*2 +
    # 3 bias-free upsamplers 2*2*(16+16+256)).
    assert n == 134_260_544 + (4097 + 513 + 257) * 2 + 4 * (16 + 16 + 256)


def test_input_formats():
    rgb01 = np.random.default_rng(0).uniform(size=(1, 4, 5, 3)).astype(np.float32)
    imnet = INPUT_FORMATS["imagenet"]
    x = ((rgb01 - np.array(imnet["mean"])) / np.array(imnet["std"])).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(convert_input(jnp.asarray(x), "imagenet")), x)
    caffe = np.asarray(convert_input(jnp.asarray(x, jnp.float32), "caffe_bgr"))
    expect = rgb01[..., ::-1] * 255.0 - np.array([103.939, 116.779, 123.68])
    np.testing.assert_allclose(caffe, expect, atol=1e-3)
    lite = np.asarray(convert_input(jnp.asarray(x, jnp.float32), "tf_lite"))
    np.testing.assert_allclose(lite, (rgb01 * 255.0 - 127.0) / 128.0, atol=1e-5)
    with pytest.raises(ValueError, match="input_format"):
        _small_model(input_format="bgr")


def test_gradients_reach_trunk_and_upsamplers():
    model = _small_model()
    _randomise_head(model)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 15, 18, 3)), jnp.float32)

    @nnx.jit
    def grads(m, v):
        return nnx.grad(lambda mm: jnp.mean(mm(v, train=True) ** 2))(m)

    g = grads(model, x)
    for name in ("conv1_1", "fc6", "score_pool3", "upscore2", "upscore_pool4", "upscore8"):
        leaves = jax.tree.leaves(g[name])
        assert leaves and all(np.all(np.isfinite(np.asarray(a))) for a in leaves), name
        assert any(np.abs(np.asarray(a)).max() > 0 for a in leaves), name
