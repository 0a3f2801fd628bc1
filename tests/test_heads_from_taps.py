"""Heads on precomputed taps: ``model(x) == model.from_taps(trunk(trunk_input(x)), size)``, the
undilated EfficientNet-Lite0 trunk with chosen taps, and the decoder head."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from alcfcn_jax.models import build_model
from alcfcn_jax.models.efficientnet_lite import EfficientNetLite0Trunk, check_taps
from alcfcn_jax.models.heads import align
from configs.deepfish import model_config


def _model(**kw):
    cfg = model_config(
        backbone=kw.pop("backbone", "efficientnet_lite0"),
        trunk_mode="single_pass",
        rw_method="sparse",
        **kw,
    )
    model = build_model(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    if cfg.cam_head == "decoder":
        # The classifier starts at zero (p = 0.5 everywhere); give it weights to compare.
        cls = model.cam_head.cls.kernel
        cls[...] = jnp.asarray(np.random.default_rng(2).normal(size=cls.shape), jnp.float32)
    return model


def _close(a, b, rtol=1e-5):
    """Equal up to float32 rounding, relative to the largest value (random trunks give tiny
    logits, so an absolute tolerance alone would pass anything)."""
    a, b = np.asarray(a), np.asarray(b)
    scale = float(np.abs(b).max())
    assert scale > 0
    np.testing.assert_allclose(a, b, rtol=0, atol=rtol * scale)


def _differs(a, b, rel=1e-3):
    a, b = np.asarray(a), np.asarray(b)
    return float(np.abs(a - b).max()) > rel * float(np.abs(b).max())


def _images(h, w, b=2, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=(b, h, w, 3)), jnp.float32)


# (model settings, image size): odd sizes exercise the padding and the crops.
CASES = [
    (dict(output_stride=32, trunk_taps=("s3", "s5", "s6"), cam_head="decoder"), (40, 72)),
    (dict(output_stride=32, trunk_taps=("s3", "s5", "s6"), cam_head="decoder"), (37, 50)),
    (dict(output_stride=32, trunk_taps=("s3", "s5", "s6"), cam_head="fc8"), (37, 50)),
    (dict(output_stride=32, trunk_taps=("s2", "s3", "s4"), with_affinity=False), (37, 50)),
    (dict(output_stride=8, trunk_taps=("s2", "s3", "s4"), cam_head="decoder"), (37, 50)),
    (dict(backbone="tiny", cam_head="fc8", with_affinity=False), (37, 50)),
    (dict(backbone="tiny", cam_head="decoder"), (40, 72)),
]


@pytest.mark.parametrize(
    "kw,hw",
    CASES,
    ids=lambda v: (
        "-".join(f"{x}" for x in dict(v).values()) if isinstance(v, dict) else "x".join(map(str, v))
    ),
)
def test_model_equals_heads_on_trunk_taps(kw, hw):
    model = _model(**dict(kw))
    x = _images(*hw)
    logits, aux = model(x, return_aux=True)
    taps = model.trunk(model.trunk_input(x), train=False)
    logits2, aux2 = model.from_taps(taps, hw, return_aux=True)
    assert logits.shape == (2, *hw, 2)
    _close(logits2, logits)
    _close(aux2["cam"], aux["cam"])
    if model.with_affinity:
        h8, w8 = -(-hw[0] // 8), -(-hw[1] // 8)
        assert aux["aff_feats"].shape[:3] == (2, h8, w8)
        # The walk changes the logits; walk=False gives the activation logits.
        assert _differs(logits, aux["cam"])
        _close(aux2["aff_feats"], aux["aff_feats"])
        np.testing.assert_array_equal(
            np.asarray(model(x, walk=False)), np.asarray(model(x, return_aux=True)[1]["cam"])
        )


def test_undilated_trunk_pads_to_its_deepest_stride():
    model = _model(output_stride=32, trunk_taps=("s3", "s5", "s6"), cam_head="decoder")
    assert model.trunk.tap_strides == (8, 16, 32)
    assert model.trunk.input_multiple == 32 and model.input_multiple == 32
    assert model.trunk_input(_images(37, 50)).shape == (2, 64, 64, 3)
    taps = model.trunk(model.trunk_input(_images(37, 50)))
    assert {k: v.shape[1:] for k, v in taps.items()} == {
        "conv4": (8, 8, 40),
        "conv5": (4, 4, 112),
        "conv6": (2, 2, 192),
    }
    no_aff = _model(output_stride=32, trunk_taps=("s3", "s4", "s5"), with_affinity=False)
    assert no_aff.input_multiple == 16
    # The reference trunks keep the reference's padding: none without the affinity branch.
    tiny = _model(backbone="tiny", with_affinity=False)
    assert tiny.input_multiple == 1 and tiny.trunk_input(_images(37, 50)).shape[1:3] == (37, 50)


def test_truncated_trunk_stops_at_its_deepest_tap():
    trunk = EfficientNetLite0Trunk(rngs=nnx.Rngs(0), dilated=False, taps=("s2", "s3", "s4"))
    assert len(trunk.blocks) == 1 + 2 + 2 + 3 and not trunk.has_head
    assert trunk.tap_channels == (24, 40, 80)
    full = EfficientNetLite0Trunk(rngs=nnx.Rngs(0), dilated=False)
    assert len(full.blocks) == 16 and full.tap_channels == (40, 112, 1280)
    with pytest.raises(ValueError, match="three of"):
        check_taps(("s3", "s5"))
    with pytest.raises(ValueError, match="shallow to deep"):
        check_taps(("s5", "s3", "head"))
    with pytest.raises(ValueError, match="fixed stride-8 trunk"):
        _model(backbone="tiny", output_stride=32)


def test_align_commutes_with_a_1x1_convolution():
    # Why the heads resample after their first 1x1 conv: it equals resampling the wide taps.
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(1, 5, 7, 6)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(3,)), jnp.float32)
    a = align(x @ k + b, (10, 14))
    c = align(x, (10, 14)) @ k + b
    _close(a, c)
    assert align(x, (5, 7)) is x


def test_decoder_head_trains_and_its_dropout_is_seeded():
    model = _model(
        output_stride=32, trunk_taps=("s2", "s3", "s4"), cam_head="decoder", decoder_dropout=0.3
    )
    x = _images(32, 48)
    a = model(x, train=True)
    nnx.reseed(model, dropout=3)
    b = model(x, train=True)
    nnx.reseed(model, dropout=3)
    c = model(x, train=True)
    assert _differs(a, b)
    np.testing.assert_array_equal(np.asarray(b), np.asarray(c))
    grads = nnx.grad(lambda m: jnp.mean(m(x, walk=False) ** 2))(model)
    assert float(jnp.abs(grads["cam_head"]["conv1"]["kernel"][...]).sum()) > 0
