"""The jitted train step: sharding parity, frozen weights, skipped updates, dropout seeding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import configs.deepfish
from alcfcn_jax import sharding as shd
from alcfcn_jax.losses import affinity as affinity_losses
from alcfcn_jax.losses import registry as loss_registry
from alcfcn_jax.models.layers import Frozen
from alcfcn_jax.train import loop, optim
from alcfcn_jax.train import state as train_state
from alcfcn_jax.train import step as train_step

H, W = 32, 48


def _config(**optim):
    config = configs.deepfish.get_config("smoke")
    config.optim.update(optim)
    return config


def _batch(n: int = 8, seed: int = 0, hw: tuple[int, int] = (H, W)) -> dict[str, np.ndarray]:
    """Random images with 0-3 clicked fish each (the rest unlabelled)."""
    rng = np.random.default_rng(seed)
    h, w = hw
    points = np.full((n, h, w), 255, np.int32)
    for i in range(n):
        for _ in range(i % 4):
            points[i, rng.integers(h), rng.integers(w)] = 1
    return {
        "image": rng.normal(size=(n, h, w, 3)).astype(np.float32),
        "points": points,
        "mask": np.full((n, h, w), 255, np.int32),
    }


class _Stepper:
    """A train step compiled once per (mesh, loss) and fresh replicated states on demand."""

    def __init__(self, config, mesh, loss_fn=None):
        self.config, self.mesh = config, mesh
        with jax.set_mesh(mesh):
            self.graphs, _ = train_state.create_train_state(config, mesh)
            self.fn = train_step.make_train_step(
                self.graphs,
                mesh,
                loss_name=config.loss.name,
                learning_rate=config.optim.lr,
                loss_fn=loss_fn,
            )

    def fresh(self):
        with jax.set_mesh(self.mesh):
            return train_state.create_train_state(self.config, self.mesh)[1]

    def __call__(self, batch, state=None):
        state = self.fresh() if state is None else state
        with jax.set_mesh(self.mesh):
            new_state, metrics = self.fn(state, shd.to_global(batch, self.mesh))
            return jax.device_get(new_state), jax.device_get(metrics)


@pytest.fixture(scope="module")
def step8():
    return _Stepper(_config(), shd.make_mesh(8))


def _leaves(state, kind):
    return jax.tree.leaves(nnx.filter_state(state["model"], kind))


def test_eight_devices_match_one_device(step8):
    """One step on a global batch of 8 over 8 devices == the same 8 images on one device."""
    assert jax.device_count() == 8
    batch = _batch()
    s8, m8 = step8(batch)
    s1, m1 = _Stepper(_config(), shd.make_mesh(1))(batch)
    assert m8["loss"] > 0
    np.testing.assert_allclose(m8["loss"], m1["loss"], rtol=1e-5, atol=1e-6)
    for k in m1:
        if k.startswith("loss_"):
            np.testing.assert_allclose(m8[k], m1[k], rtol=1e-5, atol=1e-6, err_msg=k)
    p8, p1 = _leaves(s8, nnx.Param), _leaves(s1, nnx.Param)
    assert len(p8) == len(p1) > 0
    for a, b in zip(p8, p1):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(s8["opt"]), jax.tree.leaves(s1["opt"])):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_frozen_weights_and_statistics_are_not_updated(step8):
    before = jax.device_get(step8.fresh())
    after, metrics = step8(_batch())
    assert metrics["skipped"] == 0 and metrics["update_norm"] > 0
    frozen_b, frozen_a = _leaves(before, Frozen), _leaves(after, Frozen)
    assert frozen_b, "the tiny model has frozen weights (stem, BatchNorm)"
    for a, b in zip(frozen_a, frozen_b):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(_leaves(after, nnx.BatchStat), _leaves(before, nnx.BatchStat)):
        np.testing.assert_array_equal(a, b)
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(_leaves(after, nnx.Param), _leaves(before, nnx.Param))
    ]
    assert any(changed)
    assert int(after["step"]) == 1


def test_zero_or_nonfinite_loss_leaves_state_unchanged():
    """The reference skips opt.step when the loss is 0; NaN/inf never reaches the weights."""

    def loss_fn(logits, batch):
        # The loss value is read from the batch so one compiled step covers 0 and NaN.
        return jnp.sum(logits, axis=(1, 2, 3)) * 0.0 + batch["image"][:, 0, 0, 0], {}

    stepper = _Stepper(_config(), shd.make_mesh(8), loss_fn=loss_fn)
    before = jax.device_get(stepper.fresh())
    for value in (0.0, float("nan")):
        batch = _batch()
        batch["image"][:, 0, 0, 0] = value
        after, metrics = stepper(batch)
        assert metrics["skipped"] == 1.0
        assert metrics["nonfinite"] == (0.0 if value == 0 else 1.0)
        for a, b in zip(jax.tree.leaves(after["opt"]), jax.tree.leaves(before["opt"])):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(_leaves(after, nnx.Param), _leaves(before, nnx.Param)):
            np.testing.assert_array_equal(a, b)
        assert int(after["step"]) == 1  # the step still counts, as the reference's iteration
    batch = _batch()
    batch["image"][:, 0, 0, 0] = 1.0
    _, metrics = stepper(batch)
    assert metrics["skipped"] == 0.0 and metrics["nonfinite"] == 0.0


def test_step_is_deterministic_and_dropout_depends_on_step(step8):
    batch = _batch()
    a, ma = step8(batch)
    b, mb = step8(batch)
    assert ma["loss"] == mb["loss"]
    for x, y in zip(_leaves(a, nnx.Param), _leaves(b, nnx.Param)):
        np.testing.assert_array_equal(x, y)
    fresh = step8.fresh()
    later = dict(fresh, step=jax.device_put(jnp.int32(5), shd.replicated(step8.mesh)))
    _, mc = step8(batch, state=later)
    assert mc["loss"] != ma["loss"], "dropout masks must change with the step"


def test_trunk_lr_multiplier_scales_only_the_trunk():
    from alcfcn_jax.models import build_model

    config = _config(trunk_lr_mult=0.1)
    model = build_model(config.model, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    grads = jax.tree.map(jnp.ones_like, params)
    tx = optim.make_optimizer(config.optim)
    updates = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[0])(grads, params)
    lr = config.optim.lr
    trunk = jax.tree.leaves(updates["trunk"])
    head = jax.tree.leaves(updates["cam_head"])
    assert trunk and head
    for u in trunk:
        np.testing.assert_allclose(u, -0.1 * lr, rtol=1e-4)
    for u in head:
        np.testing.assert_allclose(u, -lr, rtol=1e-4)


def test_adam_weight_decay_is_l2_in_the_gradient():
    """torch Adam(weight_decay=wd) adds wd * p to the gradient before the moments.

    The values are chosen so that decoupled AdamW and another wd give other parameters: after the
    first step AdamW would move ``w`` by -lr * (sign(g) + wd * p) = (0, -0.2), L2 moves it by
    -lr * sign(g + wd * p) = (+0.1, -0.1); the second step checks the moments too.
    """
    import ml_collections

    lr, b1, b2, eps, wd = 0.1, 0.9, 0.999, 1e-8, 0.5
    cfg = ml_collections.ConfigDict(
        dict(
            name="adam",
            lr=lr,
            b1=b1,
            b2=b2,
            eps=eps,
            weight_decay=wd,
            trunk_lr_mult=1.0,
            clip_grad_norm=0.0,
            schedule="constant",
        )
    )
    tx = optim.make_optimizer(cfg)
    grads = [np.array([-3.0, 0.5]), np.array([1.0, 0.25])]
    params = {"w": jnp.array([2.0, 2.0])}
    state = tx.init(params)
    # torch.optim.Adam written out (float64).
    p, m, v = np.array([2.0, 2.0]), np.zeros(2), np.zeros(2)
    expected = []
    for t, g in enumerate(grads, start=1):
        g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        expected.append(p.copy())
    got = []
    for g in grads:
        upd, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, params)
        params = {"w": params["w"] + upd["w"]}
        got.append(np.asarray(params["w"]))
    np.testing.assert_allclose(got[0], [2.1, 1.9], rtol=1e-6)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-6)


def test_prepare_batch_marks_padding_unlabelled():
    batch = _batch(2)
    batch["points"][:, 0, 0] = 1
    batch["mask"][:] = 1
    pad = np.ones((2, H, W), bool)
    pad[:, 0, :] = False
    out = train_step.prepare_batch({**batch, "pad": pad, "id": np.array(["a", "b"])})
    assert set(out) == {"image", "points", "mask"}
    assert (out["points"][:, 0, :] == 255).all() and (out["mask"][:, 0, :] == 255).all()
    assert (out["mask"][:, 1:, :] == 1).all()


def _loss_of(stepper, batch, *, walk, affinity=None):
    """The step's loss recomputed by hand: same dropout masks, LCFCN loss (+ affinity term)."""
    from alcfcn_jax.losses.affinity import affinity_labels, affinity_loss

    state = jax.device_get(stepper.fresh())
    model = nnx.merge(stepper.graphs.model, state["model"])
    nnx.reseed(model, dropout=jax.random.fold_in(state["rng"], state["step"]))
    logits, aux = model(jnp.asarray(batch["image"]), train=True, return_aux=True, walk=walk)
    per_image, _ = loss_registry.per_image_loss("lcfcn", logits, batch)
    if affinity is None:
        return float(jnp.mean(per_image)), None
    labels = affinity_labels(aux["cam"], batch["points"], fg=affinity.fg, bg=affinity.bg)
    aff = affinity_loss(aux["aff_feats"], labels, radius=affinity.radius)
    return float(jnp.mean(per_image + affinity.weight * aff)), float(jnp.mean(aff))


def test_walk_warmup_step_trains_the_activation_logits(step8):
    config = _config()
    mesh = shd.make_mesh(1)
    batch = _batch(2)
    with jax.set_mesh(mesh):
        graphs, _ = train_state.create_train_state(config, mesh)
        warm = train_step.make_train_step(
            graphs, mesh, loss_name="lcfcn", learning_rate=config.optim.lr, walk=False
        )
    stepper = _Stepper(config, mesh)
    stepper.fn = warm
    _, metrics = stepper(batch)
    want, _ = _loss_of(stepper, batch, walk=False)
    with_walk, _ = _loss_of(stepper, batch, walk=True)
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
    assert abs(with_walk - want) > 1e-3 * abs(want)


def test_affinity_term_is_added_with_its_weight():
    config = _config()
    mesh = shd.make_mesh(1)
    # Thresholds around 0.5: the untrained tiny model gives p(fish) in [0.497, 0.502].
    aff = affinity_losses.AffinityLoss(
        weight=0.25, fg=0.5005, bg=0.4995, radius=config.model.radius
    )
    with jax.set_mesh(mesh):
        graphs, _ = train_state.create_train_state(config, mesh)
        fn = train_step.make_train_step(
            graphs, mesh, loss_name="lcfcn", learning_rate=config.optim.lr, affinity=aff
        )
    stepper = _Stepper(config, mesh)
    stepper.fn = fn
    batch = _batch(2, hw=(64, 96))  # an 8 x 12 grid: radius 3 after the small-map fallback
    _, metrics = stepper(batch)
    want, want_aff = _loss_of(stepper, batch, walk=True, affinity=aff)
    assert want_aff > 0
    np.testing.assert_allclose(metrics["loss_affinity"], want_aff, rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], want, rtol=1e-5)
    assert loop.affinity_loss_from_config(config) is None  # off in the reference presets
    config.loss.affinity_weight = 0.5
    assert loop.affinity_loss_from_config(config).weight == 0.5


def test_cosine_schedule_and_the_reported_lr():
    config = _config()
    assert optim.learning_rate_schedule(config.optim, 10)(5) == config.optim.lr  # constant
    config.optim.schedule = "cosine"
    sched = optim.learning_rate_schedule(config.optim, 10)
    np.testing.assert_allclose(
        [float(sched(s)) for s in (0, 5, 10)],
        [config.optim.lr, config.optim.lr / 2, 0.0],
        atol=1e-9,
    )
    # Adam's first step moves every parameter by lr: with the schedule, by lr(0); at step 5 the
    # update is half as large.
    tx = optim.make_optimizer(config.optim, 10)
    p = {"w": jnp.zeros((3,))}
    g = {"w": jnp.ones((3,))}
    state = tx.init(p)
    sizes = []
    for _ in range(6):
        upd, state = tx.update(g, state, p)
        sizes.append(float(jnp.abs(upd["w"]).max()))
    np.testing.assert_allclose(sizes[0], config.optim.lr, rtol=1e-4)
    np.testing.assert_allclose(sizes[5], config.optim.lr / 2, rtol=1e-3)


def _split_config():
    """The smoke config with the decoder head (no dropout there)."""
    config = _config()
    config.model.cam_head = "decoder"
    return config


def _model(config, *, dropout: bool = True):
    """The config's model; ``dropout=False`` switches the tiny trunk's Dropout2d(0.3) off, so
    nothing random depends on the batch a forward sees."""
    model = train_state.build_model_from_config(config)
    if not dropout:
        model.trunk.dropout.rate = 0.0
    return model


def test_split_parts_keep_every_image_on_its_device():
    x = jnp.arange(16)
    parts = train_step.split_parts({"x": x}, 2, 4)
    # Device d holds images 4d..4d+3; part j takes images 4d + j and 4d + 2 + j.
    np.testing.assert_array_equal(parts[0]["x"], [0, 2, 4, 6, 8, 10, 12, 14])
    np.testing.assert_array_equal(parts[1]["x"], [1, 3, 5, 7, 9, 11, 13, 15])
    assert train_step.split_parts({"x": x}, 1, 4)[0]["x"] is x
    with pytest.raises(ValueError, match="loss_splits=3 does not divide"):
        train_step.split_parts({"x": x}, 3, 4)


def test_auto_loss_splits_only_where_nothing_random_depends_on_the_batch():
    decoder = _model(_split_config(), dropout=False)
    auto = train_step.auto_loss_splits
    assert jax.default_backend() == "cpu"
    assert auto(decoder, "lcfcn", 8) == train_step.AUTO_LOSS_SPLITS == 4
    assert auto(decoder, "lcfcn", 6) == 3 and auto(decoder, "lcfcn", 1) == 1
    assert auto(decoder, "lcfcn", 8, embedding=True) == 1
    assert auto(decoder, "cross_entropy", 8) == 1  # no host callback to overlap
    # Dropout draws its masks for the batch a forward sees: the trunk's, or fc8's Dropout2d(0.5).
    assert auto(_model(_split_config()), "lcfcn", 8) == 1
    assert auto(_model(_config(), dropout=False), "lcfcn", 8) == 1


@pytest.mark.parametrize("devices", [1, 8])
def test_loss_splits_give_the_same_step(devices):
    """The loss in parts of each device's batch (8 parts of 2 images on one device, 2 parts of
    1 image on each of 8): the same losses and update to float32 rounding."""
    config, mesh = _split_config(), shd.make_mesh(devices)
    batch = _batch(n=16)
    with jax.set_mesh(mesh):
        graphs, _ = train_state.create_train_state(
            config, mesh, model=_model(config, dropout=False)
        )
        out = {}
        for splits in (1, 8 if devices == 1 else 2):
            fn = train_step.make_train_step(
                graphs,
                mesh,
                loss_name="lcfcn",
                learning_rate=config.optim.lr,
                loss_splits=splits,
            )
            fresh = train_state.create_train_state(
                config, mesh, model=_model(config, dropout=False)
            )[1]
            out[splits] = jax.device_get(fn(fresh, shd.to_global(batch, mesh)))
    (s1, m1), (sk, mk) = out.values()
    assert m1["loss"] > 0 and m1["skipped"] == 0
    for k in m1:
        np.testing.assert_allclose(mk[k], m1[k], rtol=1e-5, atol=1e-6, err_msg=k)
    for a, b in zip(_leaves(sk, nnx.Param), _leaves(s1, nnx.Param)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
