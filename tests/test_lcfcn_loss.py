"""Device LCFCN loss: reference fixtures (loss + gradient), edge cases, jit, sharded batches."""

import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import load_fixture
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from test_lcfcn_targets import LCFCN_FIXTURES, blobby_probs, random_points

from alcfcn_jax.losses import lcfcn
from alcfcn_jax.losses.lcfcn import lcfcn_loss, lcfcn_terms
from reference import lcfcn_numpy as ref


def loss_of_logits(logits_nchw, points):
    probs = jax.nn.softmax(logits_nchw, axis=1)[:, 1]
    return lcfcn_loss(probs, points)[0]


@pytest.mark.parametrize("name", LCFCN_FIXTURES)
def test_fixture_loss_and_gradient(name):
    d = load_fixture(name)
    logits = jnp.asarray(d["logits"])
    points = jnp.asarray(d["points"], jnp.int32)
    loss, grad = jax.jit(jax.value_and_grad(loss_of_logits))(logits, points)
    rel = abs(float(loss) - d["loss"]) / abs(d["loss"])
    gerr = float(jnp.max(jnp.abs(grad - d["dloss_dlogits"])))
    print(f"{name}: loss rel err {rel:.3g}, grad max abs err {gerr:.3g}")
    assert rel <= 1e-5
    assert gerr <= 1e-4


@pytest.mark.parametrize("name", ["lcfcn_many", "lcfcn_bg_only"])
def test_terms_sum_to_loss_and_match_reference(name):
    d = load_fixture(name)
    probs = jax.nn.softmax(jnp.asarray(d["logits"]), axis=1)[:, 1]
    points = jnp.asarray(d["points"], jnp.int32)
    terms = lcfcn_terms(probs, points)
    assert set(terms) == {"image", "point", "split_global", "split_local", "false_pos"}
    total = sum(float(v[0]) for v in terms.values())
    assert total == pytest.approx(float(lcfcn_loss(probs, points)[0]), rel=1e-6)
    want = ref.compute_terms(np.asarray(d["points"][0]), np.asarray(probs[0]))
    for k, v in terms.items():
        assert float(v[0]) == pytest.approx(want[k], rel=1e-5, abs=1e-6), k


def synthetic_case(kind, seed=0):
    rng = np.random.default_rng(seed)
    probs = blobby_probs(rng, 24, 32, 4, noise=0.1)
    if kind == "background_only":
        return probs, np.zeros(probs.shape, np.int64)
    return probs, random_points(rng, probs, kind)


@pytest.mark.parametrize("kind", ["background_only", "one", "same_blob", "border", "mixed"])
def test_synthetic_cases_match_reference(kind):
    probs, points = synthetic_case(kind, seed=5)
    got = float(lcfcn_loss(probs[None], points[None])[0])
    assert got == pytest.approx(ref.compute_loss(points, probs), rel=1e-5)
    # Gradient wrt probs equals the torch BCE gradient of the reference's targets.
    w_fg, w_bg = ref.target_weight_maps(points, probs)
    p = probs.astype(np.float64)
    want = (w_fg * (p - 1) + w_bg * p) / np.maximum(p * (1 - p), 1e-12)
    grad = jax.grad(lambda q: lcfcn_loss(q, points[None])[0])(jnp.asarray(probs[None]))
    np.testing.assert_allclose(np.asarray(grad[0]), want, rtol=1e-4, atol=1e-5)


def test_saturated_probabilities_follow_torch_gradient():
    probs = np.full((1, 6, 6), 0.2, np.float32)
    probs[0, 2:4, 2:4] = 1.0  # a false-positive blob with p == 1 exactly
    points = np.zeros((1, 6, 6), np.int32)
    loss = lcfcn_loss(probs, points)
    assert np.isfinite(float(loss[0]))
    # -log(1 - 1) is clamped at 100 (torch); the gradient uses max(p (1 - p), 1e-12).
    grad = jax.grad(lambda q: lcfcn_loss(q, points)[0])(jnp.asarray(probs))
    assert float(grad[0, 2, 2]) == pytest.approx(0.25 / 1e-12, rel=1e-5)


def make_batch(b=8):
    rng = np.random.default_rng(42)
    kinds = ["background_only", "one", "same_blob", "border", "mixed"]
    probs, points = [], []
    for i in range(b):
        p = blobby_probs(rng, 16, 20, 3, noise=0.1)
        probs.append(p)
        if kinds[i % 5] == "background_only":
            points.append(np.zeros(p.shape, np.int64))
        else:
            points.append(random_points(rng, p, kinds[i % 5]))
    return np.stack(probs), np.stack(points).astype(np.int32)


@pytest.fixture
def call_log(monkeypatch):
    """Records the batch shape seen by every host callback invocation."""
    calls = []
    lock = threading.Lock()
    original = lcfcn._host_maps

    def counting(probs, points, *, per_term):
        with lock:
            calls.append(np.shape(probs))
        return original(probs, points, per_term=per_term)

    monkeypatch.setattr(lcfcn, "_host_maps", counting)
    return calls


def test_unsharded_jit_batch_one_callback(call_log):
    probs, points = make_batch(4)
    got = jax.jit(lcfcn_loss)(probs, points)
    want = [ref.compute_loss(points[i], probs[i]) for i in range(4)]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    assert call_log == [(4, 16, 20)]


@pytest.mark.parametrize("axis_type", [jax.sharding.AxisType.Explicit, jax.sharding.AxisType.Auto])
def test_sharded_batch_one_callback_per_shard(call_log, axis_type):
    assert jax.device_count() == 8
    probs, points = make_batch(8)
    singles = [float(lcfcn_loss(probs[i : i + 1], points[i : i + 1])[0]) for i in range(8)]
    call_log.clear()
    mesh = jax.make_mesh((8,), ("data",), axis_types=(axis_type,))
    sharding = NamedSharding(mesh, P("data"))

    @jax.jit
    def step(p, pts):
        loss, grad = jax.value_and_grad(lambda q: lcfcn_loss(q, pts).sum())(p)
        return lcfcn_loss(p, pts), grad

    with jax.set_mesh(mesh):
        p_dev = jax.device_put(probs, sharding)
        pts_dev = jax.device_put(points, sharding)
        losses, grad = step(p_dev, pts_dev)
        losses = np.asarray(losses)
    np.testing.assert_allclose(losses, singles, rtol=1e-6)
    assert grad.shape == probs.shape
    # Two loss evaluations in the step, each one callback per device on its own (1,H,W) shard.
    assert len(call_log) == 16
    assert all(s == (1, 16, 20) for s in call_log)


def test_explicit_mesh_argument(call_log):
    probs, points = make_batch(8)
    mesh = jax.make_mesh((4,), ("data",), devices=jax.devices()[:4])
    got = jax.jit(lambda p, q: lcfcn_loss(p, q, mesh=mesh))(probs, points)
    want = [ref.compute_loss(points[i], probs[i]) for i in range(8)]
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5)
    assert sorted(call_log) == [(2, 16, 20)] * 4


def test_vmap_over_extra_axis():
    probs, points = make_batch(4)
    got = jax.vmap(lcfcn_loss)(probs.reshape(2, 2, 16, 20), points.reshape(2, 2, 16, 20))
    np.testing.assert_allclose(
        np.asarray(got).ravel(), np.asarray(lcfcn_loss(probs, points)), rtol=1e-6
    )


@pytest.mark.parametrize(
    "probs, points, match",
    [
        (np.full((1, 4, 5), 0.3, np.float32), np.zeros((1, 4, 6), np.int32), "does not match"),
        (np.full((4, 5), 0.3, np.float32), np.zeros((4, 5), np.int32), "must be \\(B, H, W\\)"),
        (np.full((1, 4, 5), 0.3, np.float32), np.full((1, 4, 5), 255, np.int32), "0/1"),
        (np.full((1, 4, 5), np.nan, np.float32), np.zeros((1, 4, 5), np.int32), "NaN"),
        (np.full((1, 4, 5), 0.3, np.float32), np.zeros((1, 4, 5), np.float32), "integer/bool"),
    ],
)
def test_bad_inputs_raise_eagerly(call_log, probs, points, match):
    with pytest.raises(ValueError, match=match):
        lcfcn_loss(probs, points)
    assert call_log == []


def test_bad_values_under_jit_fail_the_computation():
    probs = np.full((1, 4, 5), 0.3, np.float32)
    points = np.full((1, 4, 5), 7, np.int32)
    with pytest.raises(Exception, match="points must be 0/1"):
        jax.block_until_ready(jax.jit(lcfcn_loss)(probs, points))


def test_indivisible_batch_on_mesh_raises():
    mesh = jax.make_mesh((8,), ("data",))
    probs, points = make_batch(4)
    with pytest.raises(ValueError, match="not divisible"):
        lcfcn_loss(probs, points, mesh=mesh)
