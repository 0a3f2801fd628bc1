"""ResNet-38d trunk: structure, parameter count, frozen weights, and parity with a torch replica.

The torch replica (``reference/torch_replica.py``) is written from the reference spec
(section 2.2-2.4: PSA/SEAM ``resnet38d.py`` / ``resnet38_aff.py``), with every width scaled by
``w / 64`` so it runs in milliseconds; at ``w = 64`` it is the reference network (used on the
meta device for names/shapes).
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import randomise_torch_batchnorm
from flax import nnx

from alcfcn_jax.models.alcfcn import ALCFCN
from alcfcn_jax.models.heads import AffinityHead
from alcfcn_jax.models.layers import Frozen
from alcfcn_jax.models.resnet38 import ResBlock, ResBlockBot, ResNet38d
from alcfcn_jax.weights.common import WeightImportError, apply_mapping
from alcfcn_jax.weights.resnet38 import (
    export_resnet38,
    load_resnet38,
    resnet38_mapping,
    torch_style_mapping,
)

REFERENCE_PARAM_COUNT = 106_492_224  # resnet38_aff.Net(2) incl. f8_*, f9, fc8 (spec 2.2)


def _count(model, types) -> int:
    return sum(
        int(np.prod(v.shape))
        for _, v in nnx.to_flat_state(nnx.state(model))
        if isinstance(v, types)
    )


def test_full_size_param_count_and_shapes():
    abstract = nnx.eval_shape(lambda: ALCFCN(ResNet38d(rngs=nnx.Rngs(0)), 2, rngs=nnx.Rngs(1)))
    # torch parameters() = conv weights + BN weight/bias; running stats are buffers.
    assert _count(abstract, (nnx.Param, Frozen)) == REFERENCE_PARAM_COUNT
    graphdef, state = nnx.split(abstract)
    x = jax.ShapeDtypeStruct((1, 256, 455, 3), jnp.float32)
    cam, aff = jax.eval_shape(lambda s, im: nnx.merge(graphdef, s).features(im), state, x)
    assert cam.shape == (1, 256, 455, 2)
    assert aff.shape == (1, 32, 57, 448)
    taps = jax.eval_shape(lambda s, im: nnx.merge(graphdef, s).trunk(im), state, x)
    assert {k: v.shape for k, v in taps.items()} == {
        "conv4": (1, 32, 57, 512),
        "conv5": (1, 32, 57, 1024),
        "conv6": (1, 32, 57, 4096),
    }
    assert abstract.trunk.tap_channels == (512, 1024, 4096)


@pytest.mark.parametrize("hw", [(24, 40), (17, 30), (9, 9), (1, 1)])
def test_stride8_any_size(hw):
    trunk = nnx.eval_shape(lambda: ResNet38d(width=4, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(trunk)
    x = jax.ShapeDtypeStruct((2, *hw, 3), jnp.float32)
    taps = jax.eval_shape(lambda s, im: nnx.merge(graphdef, s)(im), state, x)
    h8, w8 = -(-hw[0] // 8), -(-hw[1] // 8)
    assert {k: v.shape for k, v in taps.items()} == {
        "conv4": (2, h8, w8, 32),
        "conv5": (2, h8, w8, 64),
        "conv6": (2, h8, w8, 256),
    }


def _values(model, kind):
    return {p: np.array(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, kind))}


def test_frozen_structure_and_dropout_only_in_train():
    trunk = ResNet38d(width=4, rngs=nnx.Rngs(params=0, dropout=1))
    # conv1a and b2* (the reference's not_training) are Frozen throughout; every BatchNorm has a
    # Frozen scale/shift and BatchStat statistics; all other convs are trainable Params.
    # (The Adam step leaving Frozen weights bit-identical is tested on the whole model in
    # test_alcfcn_model.py, with a faster trunk.)
    for path, var in nnx.to_flat_state(nnx.state(trunk)):
        name = ".".join(map(str, path))
        if path[-1] in ("mean", "var"):
            assert isinstance(var, nnx.BatchStat), name
        elif path[0] in ("conv1a", "b2", "b2_1", "b2_2") or path[-1] in ("scale", "bias"):
            assert type(var) is Frozen, name
        elif path[-1] == "kernel":
            assert type(var) is nnx.Param, name
    assert _count(trunk, nnx.Param) > 0 and _count(trunk, Frozen) > 0
    x = jax.random.normal(jax.random.key(0), (1, 8, 8, 3))
    fwd = nnx.jit(lambda m, im, train: m(im, train=train)["conv6"], static_argnames="train")
    np.testing.assert_array_equal(fwd(trunk, x, False), fwd(trunk, x, False))
    # Dropout masks differ between calls (the module's dropout stream advances).
    assert not np.allclose(fwd(trunk, x, True), fwd(trunk, x, True))


def test_export_import_roundtrip(tmp_path):
    src = ALCFCN(ResNet38d(width=4, rngs=nnx.Rngs(0)), 2, rngs=nnx.Rngs(1))
    # Non-trivial BN so the statistics matter for the comparison.
    rng = np.random.default_rng(0)
    for _, v in nnx.to_flat_state(nnx.state(src, Frozen)):
        v[...] = jnp.asarray(rng.uniform(0.5, 1.5, v.shape), jnp.float32)
    arrays = export_resnet38(src)
    assert "b6.conv_branch2b2.weight" in arrays and arrays["conv1a.weight"].shape == (4, 3, 3, 3)
    dst = ALCFCN(ResNet38d(width=4, rngs=nnx.Rngs(5)), 2, rngs=nnx.Rngs(6))
    assert load_resnet38(dst, arrays) == []
    x = jax.random.normal(jax.random.key(1), (1, 16, 24, 3))
    features = nnx.jit(lambda m, im: m.features(im))
    ref = features(src, x)
    for a, b in zip(ref, features(dst, x)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # Through an .npz file as well.
    from alcfcn_jax.weights.common import save_npz

    save_npz(tmp_path / "w.npz", arrays)
    dst2 = ALCFCN(ResNet38d(width=4, rngs=nnx.Rngs(7)), 2, rngs=nnx.Rngs(8))
    load_resnet38(dst2, tmp_path / "w.npz")
    np.testing.assert_array_equal(np.asarray(ref[1]), np.asarray(features(dst2, x)[1]))


# ----------------------------------------------------------------------------- torch replica


def _torch_replica(w: int, n_classes: int = 2):
    """ResNet-38d + resnet38_aff heads in PyTorch (reference/torch_replica.py), widths w/64.

    Returns ``(torch, TNet, TResBlock, TResBlockBot)`` with ``TNet()`` building the network.
    """
    torch = pytest.importorskip("torch")
    from reference.torch_replica import torch_namespace

    ns = torch_namespace()

    def TNet():
        return ns.ResNet38Aff(w, n_classes)

    return torch, TNet, ns.ResBlock, ns.ResBlockBot


def _state_np(module):
    return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def _nchw(x):
    return np.asarray(x).transpose(0, 3, 1, 2)


def _assert_close(jax_out, torch_out, tol=1e-5):
    ref = torch_out.detach().numpy()
    got = _nchw(jax_out)
    scale = max(1.0, float(np.abs(ref).max()))
    err = float(np.abs(got - ref).max()) / scale
    assert err < tol, f"relative max error {err:.2e}"
    return err


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(in_ch=8, mid_ch=16, out_ch=16, stride=2),
        dict(in_ch=16, mid_ch=16, out_ch=16),
        dict(in_ch=16, mid_ch=16, out_ch=32, first_dilation=1, dilation=2),
    ],
)
def test_resblock_matches_torch(kwargs):
    torch, _, TResBlock, _ = _torch_replica(64)
    torch.manual_seed(0)
    tkw = dict(kwargs)
    tblock = TResBlock(tkw.pop("in_ch"), tkw.pop("mid_ch"), tkw.pop("out_ch"), **tkw)
    randomise_torch_batchnorm(tblock)
    block = ResBlock(**kwargs, rngs=nnx.Rngs(0))
    apply_mapping(block, _state_np(tblock), torch_style_mapping(block),
                  ignore=lambda k: k.endswith("num_batches_tracked"))  # fmt: skip
    x = np.random.default_rng(0).normal(size=(2, 13, 18, kwargs["in_ch"])).astype(np.float32)
    with torch.no_grad():
        ty, ta = tblock(torch.from_numpy(_nchw(x)))
    y, a = block(jnp.asarray(x))
    _assert_close(y, ty)
    _assert_close(a, ta)


def test_resblock_bot_matches_torch_in_eval():
    torch, _, _, TResBlockBot = _torch_replica(64)
    torch.manual_seed(1)
    tblock = TResBlockBot(16, 32, dilation=4, dropout=0.3)
    randomise_torch_batchnorm(tblock, seed=1)
    block = ResBlockBot(16, 32, dilation=4, dropout=0.3, rngs=nnx.Rngs(0))
    apply_mapping(block, _state_np(tblock), torch_style_mapping(block),
                  ignore=lambda k: k.endswith("num_batches_tracked"))  # fmt: skip
    x = np.random.default_rng(1).normal(size=(1, 11, 14, 16)).astype(np.float32)
    with torch.no_grad():
        ty, ta = tblock(torch.from_numpy(_nchw(x)))
    y, a = block(jnp.asarray(x), train=False)
    _assert_close(y, ty)
    _assert_close(a, ta)


def test_affinity_head_matches_torch():
    torch = pytest.importorskip("torch")
    torch.manual_seed(2)
    convs = {
        "f8_3": torch.nn.Conv2d(32, 64, 1, bias=False),
        "f8_4": torch.nn.Conv2d(64, 128, 1, bias=False),
        "f8_5": torch.nn.Conv2d(96, 256, 1, bias=False),
        "f9": torch.nn.Conv2d(448, 448, 1, bias=False),
    }
    head = AffinityHead((32, 64, 96), rngs=nnx.Rngs(0))
    arrays = {f"{k}.weight": m.weight.detach().numpy() for k, m in convs.items()}
    apply_mapping(head, arrays, torch_style_mapping(head))
    rng = np.random.default_rng(2)
    taps = {k: rng.normal(size=(1, 5, 7, c)).astype(np.float32)
            for k, c in (("conv4", 32), ("conv5", 64), ("conv6", 96))}  # fmt: skip
    elu = torch.nn.functional.elu
    with torch.no_grad():
        t = {k: torch.from_numpy(_nchw(v)) for k, v in taps.items()}
        ref = elu(convs["f9"](torch.cat([elu(convs["f8_3"](t["conv4"])),
                                         elu(convs["f8_4"](t["conv5"])),
                                         elu(convs["f8_5"](t["conv6"]))], 1)))  # fmt: skip
    out = head({k: jnp.asarray(v) for k, v in taps.items()})
    assert out.shape == (1, 5, 7, 448)
    _assert_close(out, ref)


def _published_names():
    """{name: shape} of the resnet38_aff checkpoints (SEAM / PSA naming), written out once with
    PyTorch (``tests/fixtures/weight_names/resnet38_aff.json``): independent of the mapping."""
    path = pathlib.Path(__file__).parent / "fixtures" / "weight_names" / "resnet38_aff.json"
    return {k: tuple(v) for k, v in json.loads(path.read_text())["shapes"].items()}


def test_published_names_fixture_is_the_torch_replica():
    torch, TNet, _, _ = _torch_replica(64)
    with torch.device("meta"):
        tnet = TNet()
    assert {k: tuple(v.shape) for k, v in tnet.state_dict().items()} == _published_names()


def test_full_reference_names_and_shapes_match_mapping():
    ref = _published_names()
    assert "conv1a.weight" in ref and "b2.bn_branch2a.running_var" in ref and "f9.weight" in ref
    abstract = nnx.eval_shape(lambda: ALCFCN(ResNet38d(rngs=nnx.Rngs(0)), 2, rngs=nnx.Rngs(1)))
    mapping = resnet38_mapping(abstract)
    expected = {k for k in ref if not k.endswith("num_batches_tracked")}
    assert set(mapping) == expected
    flat = {tuple(p): v for p, v in nnx.to_flat_state(nnx.state(abstract))}
    for name, (target, transform) in mapping.items():
        dummy = np.empty(ref[name], np.float32)
        assert transform.to_model(dummy).shape == tuple(flat[tuple(target)].shape), name


def test_reduced_network_matches_torch_end_to_end(tmp_path):
    torch, TNet, _, _ = _torch_replica(8)
    torch.manual_seed(3)
    tnet = TNet()
    randomise_torch_batchnorm(tnet, seed=3)
    path = tmp_path / "resnet38_aff.pth"
    sd = tnet.state_dict()
    del sd["fc8.weight"]  # as in SEAM's checkpoint: fc8 is initialised fresh
    torch.save(sd, path)

    model = ALCFCN(ResNet38d(width=8, rngs=nnx.Rngs(0)), 2, rngs=nnx.Rngs(1))
    assert load_resnet38(model, path) == ["fc8.weight"]
    # fc8 is fresh: copy it over explicitly to compare the activation branch too.
    model.cam_head.fc8.kernel[...] = jnp.asarray(
        tnet.fc8.weight.detach().numpy().transpose(2, 3, 1, 0)
    )
    x = np.random.default_rng(3).normal(size=(1, 24, 40, 3)).astype(np.float32)
    with torch.no_grad():
        t4, t5, t6, tcam8, taff = tnet(torch.from_numpy(_nchw(x)))
    taps = model.trunk(jnp.asarray(x))
    errs = [
        _assert_close(taps["conv4"], t4),
        _assert_close(taps["conv5"], t5),
        _assert_close(taps["conv6"], t6),
        _assert_close(model.cam_head(taps["conv6"]), tcam8),
        _assert_close(model.aff_head(taps), taff),
    ]
    print("max relative errors conv4/conv5/conv6/cam8/aff:", [f"{e:.1e}" for e in errs])


TORCH_FREE = pathlib.Path(__file__).parent / "fixtures" / "torch_free"


def test_reduced_network_matches_committed_torch_outputs():
    """The PyTorch replica at width 4 (tests/fixtures/torch_free/make_fixtures.py): its float16
    checkpoint imported without torch reproduces its taps, fc8 map and affinity features."""
    model = ALCFCN(ResNet38d(width=4, rngs=nnx.Rngs(0)), 2, rngs=nnx.Rngs(1))
    assert load_resnet38(model, TORCH_FREE / "resnet38_w4.pth") == []
    with np.load(TORCH_FREE / "resnet38_w4_outputs.npz") as f:
        taps = model.trunk(jnp.asarray(f["x"]))
        got = {
            "conv4": taps["conv4"],
            "conv5": taps["conv5"],
            "conv6": taps["conv6"],
            "cam8": model.cam_head(taps["conv6"]),
            "aff": model.aff_head(taps),
        }
        for name, value in got.items():
            want = f[name]
            scale = float(np.abs(want).max())
            assert scale > 0, name
            np.testing.assert_allclose(np.asarray(value), want, atol=1e-5 * scale, rtol=0)


def test_two_pass_eval_forward_matches_committed_torch_outputs():
    """The reference's eval forward (two trunk passes, dense walk) on an 85x93 image."""
    model = ALCFCN(ResNet38d(width=4, rngs=nnx.Rngs(0)), 2, trunk_mode="two_pass", rngs=nnx.Rngs(1))
    load_resnet38(model, TORCH_FREE / "resnet38_w4.pth")
    with np.load(TORCH_FREE / "resnet38_w4_outputs.npz") as f:
        logits, aux = model(jnp.asarray(f["x2"]), train=False, return_aux=True)
        scale = float(np.abs(f["refined"]).max())
        np.testing.assert_allclose(np.asarray(aux["cam"]), f["cam"], atol=1e-5 * scale, rtol=0)
        np.testing.assert_allclose(np.asarray(logits), f["refined"], atol=1e-5 * scale, rtol=0)
        assert np.abs(f["refined"] - f["cam"]).max() > 0.05 * scale  # the walk changed them


def test_importer_lists_missing_unexpected_misshaped(tmp_path):
    torch, TNet, _, _ = _torch_replica(8)
    sd = TNet().state_dict()
    del sd["b4_3.bn_branch2b1.running_var"]
    sd["b9.conv_branch2a.weight"] = torch.zeros(1)
    sd["f9.weight"] = torch.zeros(448, 448, 3, 3)
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": sd}, path)
    model = ALCFCN(ResNet38d(width=8, rngs=nnx.Rngs(0)), 2, rngs=nnx.Rngs(1))
    before = np.array(model.trunk.b3.conv_branch2a.kernel[...])
    with pytest.raises(WeightImportError) as err:
        load_resnet38(model, path)
    msg = str(err.value)
    assert "bad.pth" in msg
    assert "missing from the checkpoint (1): ['b4_3.bn_branch2b1.running_var']" in msg
    assert "unexpected in the checkpoint (1): ['b9.conv_branch2a.weight']" in msg
    assert "f9.weight: checkpoint (448, 448, 3, 3)" in msg
    np.testing.assert_array_equal(np.array(model.trunk.b3.conv_branch2a.kernel[...]), before)


def test_lcfcn_baseline_ignores_affinity_keys():
    torch, TNet, _, _ = _torch_replica(8)
    arrays = _state_np(TNet())
    model = ALCFCN(ResNet38d(width=8, rngs=nnx.Rngs(0)), 2, with_affinity=False, rngs=nnx.Rngs(1))
    assert load_resnet38(model, arrays) == []  # fc8 present here, f8_*/f9 ignored by name
    np.testing.assert_array_equal(
        np.asarray(model.cam_head.fc8.kernel[...]), arrays["fc8.weight"].transpose(2, 3, 1, 0)
    )
