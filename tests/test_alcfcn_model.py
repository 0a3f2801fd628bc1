"""A-LCFCN model wiring (both trunk modes, LCFCN baseline, bf16, frozen weights) on a tiny trunk."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from alcfcn_jax.models import ALCFCN, ResNet38d, TinyTrunk, build_model
from alcfcn_jax.models.layers import Frozen
from alcfcn_jax.ops import random_walk
from alcfcn_jax.ops.resize import pad_to_multiple, resize_bilinear
from alcfcn_jax.weights import build_pretrained
from alcfcn_jax.weights import load_weights as load_model_weights
from configs.deepfish import model_config

WIDTHS = (8, 8, 16)


def _model(mode="two_pass", *, with_affinity=True, dtype=jnp.float32, seed=0):
    rngs = nnx.Rngs(params=seed, dropout=seed + 1)
    return ALCFCN(
        TinyTrunk(dtype=dtype, rngs=rngs),
        2,
        with_affinity=with_affinity,
        trunk_mode=mode,
        affinity_widths=WIDTHS,
        dtype=dtype,
        rngs=rngs,
    )


def _image(h, w, b=1, seed=0):
    return jax.random.normal(jax.random.key(seed), (b, h, w, 3))


@pytest.mark.parametrize("mode", ["two_pass", "single_pass"])
@pytest.mark.parametrize("hw", [(13, 21), (16, 24)])
def test_shapes_and_aux(mode, hw):
    model = _model(mode)
    logits, aux = model(_image(*hw, b=2), return_aux=True)
    h8, w8 = -(-hw[0] // 8), -(-hw[1] // 8)
    assert logits.shape == (2, *hw, 2) and logits.dtype == jnp.float32
    assert aux["cam"].shape == (2, *hw, 2)
    assert aux["aff_feats"].shape == (2, h8, w8, sum(WIDTHS))
    assert bool(jnp.all(jnp.isfinite(logits)))


def test_two_pass_wiring_matches_definition():
    model = _model("two_pass")
    x = _image(13, 21)
    logits, aux = model(x, return_aux=True)
    cam8 = model.cam_head(model.trunk(x)["conv6"])
    cam = resize_bilinear(cam8, (13, 21), align_corners=True)
    aff = model.aff_head(model.trunk(pad_to_multiple(x, 8)))
    np.testing.assert_allclose(aux["cam"], cam, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(aux["aff_feats"], aff, rtol=1e-6, atol=1e-6)
    expected = random_walk.refine(cam, aff, beta=8.0, logt=4, radius=5, method="dense")
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_single_pass_wiring_matches_definition():
    model = _model("single_pass")
    x = _image(13, 21)
    logits, aux = model(x, return_aux=True)
    taps = model.trunk(pad_to_multiple(x, 8))
    cam = resize_bilinear(model.cam_head(taps["conv6"]), (16, 24), align_corners=True)
    np.testing.assert_allclose(aux["cam"], cam[:, :13, :21], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(aux["aff_feats"], model.aff_head(taps), rtol=1e-6, atol=1e-6)
    expected = random_walk.refine(aux["cam"], aux["aff_feats"], beta=8.0, logt=4, radius=5)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)


def test_modes_agree_on_multiples_of_8_and_differ_otherwise():
    two, one = _model("two_pass", seed=3), _model("single_pass", seed=3)
    x = _image(16, 24)
    np.testing.assert_allclose(two(x), one(x), rtol=1e-5, atol=1e-6)
    y = _image(13, 21)
    _, a2 = two(y, return_aux=True)
    _, a1 = one(y, return_aux=True)
    np.testing.assert_allclose(a2["aff_feats"], a1["aff_feats"], rtol=1e-6, atol=1e-6)
    assert not np.allclose(a2["cam"], a1["cam"], atol=1e-4)


def test_lcfcn_baseline_has_no_affinity_branch():
    model = _model(with_affinity=False)
    assert not hasattr(model, "aff_head")
    x = _image(13, 21)
    logits, aux = model(x, return_aux=True)
    assert set(aux) == {"cam"}
    np.testing.assert_array_equal(logits, aux["cam"])
    cam8 = model.cam_head(model.trunk(x)["conv6"])
    np.testing.assert_allclose(
        logits, resize_bilinear(cam8, (13, 21), align_corners=True), rtol=1e-6, atol=1e-6
    )


def test_two_pass_draws_independent_dropout_masks():
    model = _model("two_pass")
    x = _image(16, 16)
    np.testing.assert_array_equal(model(x), model(x))  # eval: deterministic
    count = lambda: int(model.trunk.dropout.rngs.count[...])
    c0 = count()
    a = model(x, train=True)
    assert count() == c0 + 2  # two trunk runs, two fresh masks
    assert not np.allclose(a, model(x, train=True))
    single = _model("single_pass")
    c0 = int(single.trunk.dropout.rngs.count[...])
    single(x, train=True)
    assert int(single.trunk.dropout.rngs.count[...]) == c0 + 1


def _values(model, kind):
    return {p: np.array(v[...]) for p, v in nnx.to_flat_state(nnx.state(model, kind))}


@pytest.mark.parametrize("mode", ["two_pass", "single_pass"])
def test_adam_step_updates_params_only(mode):
    model = _model(mode)
    # A 5x6 stride-8 grid: effective radius 2, so the affinity graph has edges (radius 0 or 1
    # would leave A = I and no gradient for the affinity head).
    x = _image(40, 48)
    before = {k: _values(model, k) for k in (Frozen, nnx.BatchStat, nnx.Param)}
    assert before[Frozen] and before[nnx.BatchStat] and before[nnx.Param]
    opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    @nnx.jit
    def step(m, o, im):
        def loss_fn(mm):
            probs = jax.nn.softmax(mm(im, train=True), axis=-1)[..., 1]
            return jnp.mean((probs - 0.3) ** 2)

        loss, grads = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, nnx.Param))(m)
        o.update(m, grads)
        return loss

    assert np.isfinite(float(step(model, opt, x)))
    for kind in (Frozen, nnx.BatchStat):
        for p, v in _values(model, kind).items():
            np.testing.assert_array_equal(v, before[kind][p], err_msg=str(p))
    after = _values(model, nnx.Param)
    unchanged = [p for p, v in after.items() if np.array_equal(v, before[nnx.Param][p])]
    # Gradients reach the trunk, the activation head and (through the random walk) f8_*/f9.
    assert unchanged == []


def test_bfloat16_compute_float32_params_and_outputs():
    m32, m16 = _model(seed=5), _model(dtype=jnp.bfloat16, seed=5)
    for _, v in nnx.to_flat_state(nnx.state(m16, nnx.Param)):
        assert v[...].dtype == jnp.float32
    x = _image(16, 24)
    assert m16.trunk(x)["conv6"].dtype == jnp.bfloat16
    l16, aux16 = m16(x, return_aux=True)
    l32 = m32(x)
    assert l16.dtype == aux16["cam"].dtype == aux16["aff_feats"].dtype == jnp.float32
    scale = float(jnp.abs(l32).max())
    assert float(jnp.abs(l16 - l32).max()) < 0.05 * scale + 1e-3


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="trunk_mode"):
        _model("three_pass")
    with pytest.raises(ValueError, match=r"\(B, H, W, 3\)"):
        _model()(jnp.ones((1, 8, 8)))


def _cfg(**kw):
    """The real ``config.model`` block of configs/deepfish.py, on the tiny trunk."""
    return model_config(**{"backbone": "tiny", **kw})


def test_build_model_dispatch():
    model = build_model(_cfg(trunk_mode="single_pass", beta=6.0), rngs=nnx.Rngs(0))
    assert isinstance(model.trunk, TinyTrunk) and model.trunk_mode == "single_pass"
    assert model.beta == 6.0 and model(_image(9, 10)).shape == (1, 9, 10, 2)
    abstract = nnx.eval_shape(lambda: build_model(_cfg(backbone="resnet38"), rngs=nnx.Rngs(0)))
    assert isinstance(abstract.trunk, ResNet38d)
    with pytest.raises(ValueError, match="backbone"):
        build_model(_cfg(backbone="resnet50"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.name"):
        build_model(_cfg(name="unet"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.dtype"):
        build_model(_cfg(dtype="float16"), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="no weight importer for backbone 'tiny'"):
        build_pretrained(_cfg(weights="/nowhere.pth"), rngs=nnx.Rngs(0))
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        cfg = _cfg(backbone="resnet38", weights="/nowhere.pth")
        nnx.eval_shape(lambda: build_pretrained(cfg, rngs=nnx.Rngs(0)))


@pytest.mark.parametrize(
    "cfg",
    [dict(backbone="efficientnet_lite0"), dict(name="fcn8_vgg16", dtype="bfloat16")],
    ids=["efficientnet_lite0", "fcn8_vgg16"],
)
def test_build_model_other_networks(cfg):
    """The other networks build and map an image to per-pixel 2-class logits (shapes only)."""
    from alcfcn_jax.models.vgg16_fcn8 import FCN8VGG16

    model_cfg = _cfg(**cfg)

    def forward():
        model = build_model(model_cfg, rngs=nnx.Rngs(0))
        return model, model(jnp.zeros((2, 45, 70, 3), jnp.float32))

    model, logits = nnx.eval_shape(forward)
    assert logits.shape == (2, 45, 70, 2)
    if model_cfg.name == "fcn8_vgg16":
        assert isinstance(model, FCN8VGG16)
    else:
        assert isinstance(model, ALCFCN) and model.with_affinity
        assert type(model.trunk).__name__ == "EfficientNetLite0Trunk"
        assert logits.dtype == jnp.float32


def test_weights_hook_loads_resnet38(tmp_path):
    from alcfcn_jax.weights.common import save_npz
    from alcfcn_jax.weights.resnet38 import export_resnet38

    src = ALCFCN(ResNet38d(width=4, rngs=nnx.Rngs(0)), 2, rngs=nnx.Rngs(1))
    arrays = export_resnet38(src)
    del arrays["fc8.weight"]
    save_npz(tmp_path / "w.npz", arrays)
    dst = ALCFCN(ResNet38d(width=4, rngs=nnx.Rngs(2)), 2, rngs=nnx.Rngs(3))
    load_model_weights(dst, "resnet38", tmp_path / "w.npz")
    np.testing.assert_array_equal(
        np.asarray(dst.aff_head.f9.kernel[...]), np.asarray(src.aff_head.f9.kernel[...])
    )
    assert not np.array_equal(  # fc8 allowed missing by default: keeps its fresh init
        np.asarray(dst.cam_head.fc8.kernel[...]), np.asarray(src.cam_head.fc8.kernel[...])
    )


def test_without_walk_is_the_activation_branch():
    from alcfcn_jax.models.alcfcn import WithoutWalk

    model = build_model(_cfg(trunk_mode="single_pass", rw_method="sparse"), rngs=nnx.Rngs(0))
    x = _image(40, 56)
    wrapped = WithoutWalk(model)
    np.testing.assert_array_equal(np.asarray(wrapped(x)), np.asarray(model(x, walk=False)))
    assert np.abs(np.asarray(wrapped(x)) - np.asarray(model(x))).max() > 1e-6  # the walk acts
    taps = model.trunk(model.trunk_input(x))
    np.testing.assert_array_equal(
        np.asarray(wrapped.from_taps(taps, (40, 56))),
        np.asarray(model.from_taps(taps, (40, 56), walk=False)),
    )
    with pytest.raises(ValueError, match="affinity branch"):
        WithoutWalk(build_model(_cfg(with_affinity=False), rngs=nnx.Rngs(0)))
