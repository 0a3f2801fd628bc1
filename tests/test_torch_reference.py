"""The PyTorch replica of the reference training step (reference/torch_replica.py).

Checks the replica against the reference fixtures (pairs, affinity matrix, random walk, LCFCN loss
and gradient), against our JAX random walk and two_pass model, and the reference's training
semantics (frozen BN / conv1a / b2*, active dropout, Adam touching trainable weights only).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_fixture, randomise_torch_batchnorm
from flax import nnx

from alcfcn_jax.models.alcfcn import ALCFCN
from alcfcn_jax.models.resnet38 import ResNet38d
from alcfcn_jax.models.vgg16_fcn8 import bilinear_upsampling_kernel
from alcfcn_jax.ops import random_walk as rw
from alcfcn_jax.weights.resnet38 import load_resnet38
from reference import torch_replica as tr

try:
    import torch
except ImportError:  # each test that needs it is reported as skipped on its own
    torch = None
F = torch.nn.functional if torch is not None else None
ns = tr.torch_namespace() if torch is not None else None
needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch: pip install -e '.[torch]'")

SMALL_VGG = {"channels": (8, 8, 8, 8, 8), "fc_width": 8}


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x))


def _nhwc(x):
    return np.asarray(x).transpose(0, 2, 3, 1)


def test_importing_the_module_does_not_need_torch():
    import subprocess
    import sys

    code = (
        "import sys; import reference.torch_replica as t; "
        "t.get_indices_of_pairs(5, (12, 20)); t.make_inputs(8, 9); "
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tr.ROOT)


@needs_torch
@pytest.mark.parametrize("name", ["pairs_r5_12x20", "pairs_r5_32x57", "pairs_r3_8x12"])
def test_pairs_match_reference(name):
    fx = load_fixture(name)
    ind_from, ind_to = tr.get_indices_of_pairs(fx["radius"], (fx["h"], fx["w"]))
    np.testing.assert_array_equal(ind_from, fx["ind_from"])
    np.testing.assert_array_equal(ind_to, fx["ind_to"])
    assert len(tr.search_offsets(5)) == 34
    assert [tr.reference_radius(*hw) for hw in ((32, 57), (8, 12), (5, 9), (11, 11))] == [
        5,
        3,
        2,
        5,
    ]


@needs_torch
@pytest.mark.parametrize("name", ["rw_small", "rw_tiny_radius_fallback"])
def test_affinity_and_random_walk_match_reference_fixtures(name):
    fx = load_fixture(name)
    feats = _t(fx["aff_feats"])
    np.testing.assert_allclose(ns.dense_affinity(feats).numpy(), fx["A"], atol=1e-6, rtol=0)
    out = ns.random_walk(feats, _t(fx["logits_in"]), beta=fx["beta"], logt=fx["logt"])
    np.testing.assert_allclose(out.numpy(), fx["logits_rw"], atol=1e-5, rtol=0)


@needs_torch
@pytest.mark.parametrize("hw", [(37, 53), (91, 99)])  # radius fallback 2 / radius 5
def test_random_walk_and_gradients_match_jax_refine(hw):
    rng = np.random.default_rng(hw[0])
    h8, w8 = -(-hw[0] // 8), -(-hw[1] // 8)
    logits = (2.0 * rng.normal(size=(1, 2, *hw))).astype(np.float32)
    # Small feature scale -> affinities near 0.8, so beta=8 still leaves a real walk.
    feats = (0.05 * rng.normal(size=(1, 32, h8, w8))).astype(np.float32)
    weights = rng.normal(size=(1, 2, *hw)).astype(np.float32)

    lt, ft = _t(logits).requires_grad_(), _t(feats).requires_grad_()
    out_t = ns.random_walk(ft, lt, beta=8, logt=4)
    (out_t * _t(weights)).sum().backward()

    def f(lg, fe):
        out = rw.refine(lg, fe, beta=8, logt=4, radius=5, method="dense")
        return jnp.sum(out * jnp.asarray(_nhwc(weights))), out

    (_, out_j), (gl, gf) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
        jnp.asarray(_nhwc(logits)), jnp.asarray(_nhwc(feats))
    )
    np.testing.assert_allclose(np.asarray(out_j), _nhwc(out_t.detach()), atol=1e-5, rtol=0)
    assert float(jnp.abs(out_j - jnp.asarray(_nhwc(logits))).max()) > 0.1  # the walk mixes
    gl_t, gf_t = _nhwc(lt.grad), _nhwc(ft.grad)
    np.testing.assert_allclose(np.asarray(gl), gl_t, atol=1e-5, rtol=0)
    assert np.abs(gf_t).max() > 0  # gradient reaches the features through sparse -> dense A
    np.testing.assert_allclose(np.asarray(gf), gf_t, atol=1e-4 * np.abs(gf_t).max(), rtol=0)


@needs_torch
@pytest.mark.parametrize("name", ["lcfcn_iid_5pts", "lcfcn_many", "lcfcn_bg_only"])
def test_lcfcn_loss_and_gradient_match_reference(name):
    fx = load_fixture(name)
    logits = _t(fx["logits"]).requires_grad_()
    loss = ns.lcfcn_loss(F.softmax(logits, 1)[:, 1][0], fx["points"][0])
    loss.backward()
    assert abs(loss.item() - fx["loss"]) <= 1e-5 * abs(fx["loss"])
    np.testing.assert_allclose(logits.grad.numpy(), fx["dloss_dlogits"], atol=1e-5, rtol=0)


@needs_torch
def test_vgg_head_initialisation():
    vgg = ns.FCN8VGG16Torch(2, **SMALL_VGG)
    for name in ("upscore2", "upscore_pool4", "upscore8"):
        w = getattr(vgg, name).weight.detach().numpy()
        np.testing.assert_array_equal(
            w, bilinear_upsampling_kernel(2, w.shape[-1]).transpose(2, 3, 0, 1)
        )
    for name in ("scoring_layer", "score_pool4", "score_pool3"):
        assert not getattr(vgg, name).weight.detach().any()
    out = vgg.eval()(torch.randn(1, 3, 17, 30))
    assert out.shape == (1, 2, 17, 30) and not out.detach().any()  # zero scorers, as the ref


def _tiny_reference(seed=0):
    torch.manual_seed(seed)
    model = ns.ALCFCNReference(width=8, n_classes=2, with_vgg=True, vgg_kwargs=SMALL_VGG)
    return model


@needs_torch
def test_train_mode_semantics():
    model = _tiny_reference()
    model.train()
    aff = model.model_aff
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert not m.training and not m.weight.requires_grad and not m.bias.requires_grad
        if isinstance(m, torch.nn.Dropout2d | torch.nn.Dropout):
            assert m.training
    for name in tr.NOT_TRAINING:
        assert not any(p.requires_grad for p in getattr(aff, name).parameters()), name
    for name in ("b3", "b4_5", "b7", "f9", "fc8"):
        assert any(p.requires_grad for p in getattr(aff, name).parameters()), name
    # eval() goes through the same override and still returns the module.
    assert model.eval() is model and not model.model_aff.dropout7.training


@needs_torch
def test_reference_step_updates_trainable_weights_only():
    model = _tiny_reference(seed=1)
    model.train()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    opt = ns.make_optimizer(model)
    assert opt.defaults["lr"] == 1e-6 and opt.defaults["betas"] == (0.99, 0.999)
    image, points = tr.make_inputs(40, 72, n_points=4, seed=3)
    out = ns.reference_train_step(model, opt, _t(image), points)
    assert np.isfinite(out["loss"]) and out["loss"] > 0
    assert out["step_s"] >= out["forward_s"] > 0
    params = dict(model.named_parameters())
    after = model.state_dict()
    for name, p in params.items():
        if name.startswith("model_aff.") and p.requires_grad:
            assert p.grad is not None and float(p.grad.abs().max()) > 0, name
            assert not torch.equal(after[name], before[name]), name
        else:  # frozen trunk parts, BN, and the dead VGG branch: no grad, untouched
            assert p.grad is None, name
            assert torch.equal(after[name], before[name]), name
    for name, buf in model.named_buffers():  # BN statistics stay frozen (eval-mode BN)
        assert torch.equal(buf, before[name]), name
    # Dropout is active: two eval-free forwards of the same image differ.
    with torch.no_grad():
        a, b = model(_t(image)), model(_t(image))
    assert not torch.allclose(a, b)


@needs_torch
def test_eval_forward_matches_jax_two_pass_model():
    torch.manual_seed(4)
    net = ns.ResNet38Aff(8, 2)
    randomise_torch_batchnorm(net, seed=4)
    # 85x93 -> padded 88x96 -> 11x12 grid: radius 5, and a real rescale 96 -> 93.
    x = np.random.default_rng(4).normal(size=(1, 3, 85, 93)).astype(np.float32)
    with torch.no_grad():
        cam = net.output_logits(_t(x))
        ref = net.apply_affinity(_t(x), cam)
    model = ALCFCN(ResNet38d(width=8, rngs=nnx.Rngs(0)), 2, trunk_mode="two_pass", rngs=nnx.Rngs(1))
    state = {k: v.detach().numpy() for k, v in net.state_dict().items()}
    assert load_resnet38(model, state) == []
    logits, aux = model(jnp.asarray(_nhwc(x)), train=False, return_aux=True)
    scale = float(ref.abs().max())
    np.testing.assert_allclose(np.asarray(aux["cam"]), _nhwc(cam), atol=1e-5 * scale, rtol=0)
    np.testing.assert_allclose(np.asarray(logits), _nhwc(ref), atol=1e-5 * scale, rtol=0)
    assert float((ref - cam).abs().max()) > 0.05 * scale  # the walk really changed the logits
