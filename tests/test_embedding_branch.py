"""The WISE embedding branch: its head on images and on cached taps, its config keys and its
term in the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import configs.deepfish
from alcfcn_jax import sharding as shd
from alcfcn_jax.config_utils import ConfigError
from alcfcn_jax.losses.embedding import EmbeddingLoss
from alcfcn_jax.models import EmbeddingHead, build_model
from alcfcn_jax.train import loop
from alcfcn_jax.train import state as train_state
from alcfcn_jax.train import step as train_step
from alcfcn_jax.train.config import resolve, validate_config
from configs.deepfish import model_config


def test_embedding_from_images_equals_from_taps():
    hw = (37, 50)  # odd: the padding and the crop
    cfg = model_config(
        backbone="tiny", trunk_mode="single_pass", rw_method="sparse", embedding_dim=5
    )
    model = build_model(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, *hw, 3)), jnp.float32)
    _, aux = model(x, return_aux=True)
    taps = model.trunk(model.trunk_input(x), train=False)
    _, aux2 = model.from_taps(taps, hw, return_aux=True)
    assert aux["embedding"].shape == (2, 5, 7, 5) and aux["embedding"].dtype == jnp.float32
    scale = float(np.abs(np.asarray(aux["embedding"])).max())
    assert scale > 0
    np.testing.assert_allclose(aux2["embedding"], aux["embedding"], atol=1e-5 * scale)


def test_head_brings_coarse_taps_to_the_stride8_grid():
    head = EmbeddingHead((3, 4, 6), 7, width=8, rngs=nnx.Rngs(0))
    taps = {
        "conv4": jnp.ones((1, 8, 12, 3)),
        "conv5": jnp.ones((1, 4, 6, 4)),
        "conv6": jnp.ones((1, 2, 3, 6)),
    }
    assert head(taps).shape == (1, 8, 12, 7)
    assert head(taps, grid=(8, 12)).dtype == jnp.float32


def test_off_by_default_and_no_aux_entry():
    model = build_model(model_config(backbone="tiny"), rngs=nnx.Rngs(params=0, dropout=1))
    assert model.embedding_dim == 0 and not hasattr(model, "emb_head")
    _, aux = model(jnp.zeros((1, 16, 24, 3)), return_aux=True)
    assert "embedding" not in aux
    for preset in ("", "lcfcn", "smoke"):
        config = resolve(configs.deepfish.get_config(preset))
        assert config.model.embedding_dim == 0 and config.loss.embedding_weight == 0.0


def test_config_validation():
    config = configs.deepfish.get_config("smoke")
    config.loss.embedding_weight = 0.1
    with pytest.raises(ConfigError, match="embedding_dim"):
        validate_config(config)
    config.model.embedding_dim = 8
    validate_config(config)
    config.loss.embedding_per_object = 0
    with pytest.raises(ConfigError, match="embedding_per_object"):
        validate_config(config)
    config.loss.embedding_per_object = 4
    config.model.embedding_dim = -1
    with pytest.raises(ConfigError, match="embedding_dim"):
        validate_config(config)


def test_train_step_adds_the_weighted_term_and_trains_the_head():
    config = configs.deepfish.get_config("smoke")
    config.model.embedding_dim = 4
    config.model.with_affinity = False  # no walk: a quicker compile
    config = resolve(config)
    mesh = shd.make_mesh(1)
    rng = np.random.default_rng(0)
    n, h, w = 2, 32, 48
    points = np.full((n, h, w), 255, np.int32)
    points[0, 8, 10] = points[0, 20, 30] = points[1, 5, 40] = 1
    batch = {
        "image": rng.normal(size=(n, h, w, 3)).astype(np.float32),
        "points": points,
        "mask": np.full((n, h, w), 255, np.int32),
    }
    emb = EmbeddingLoss(weight=0.5, per_object=4, background=8, max_objects=4)
    with jax.set_mesh(mesh):
        graphs, state0 = train_state.create_train_state(config, mesh)
        kw = dict(loss_name="lcfcn", learning_rate=config.optim.lr)
        plain = train_step.make_train_step(graphs, mesh, **kw)
        with_emb = train_step.make_train_step(graphs, mesh, embedding=emb, **kw)
        glob = shd.to_global(batch, mesh)
        state1, m1 = jax.device_get(with_emb(state0, glob))
        state0 = train_state.create_train_state(config, mesh)[1]
        _, m0 = jax.device_get(plain(state0, glob))
    assert np.isfinite(m1["loss_embedding"]) and m1["loss_embedding"] > 0
    np.testing.assert_allclose(m1["loss"], m0["loss"] + 0.5 * m1["loss_embedding"], rtol=1e-5)
    fresh = train_state.create_train_state(config, mesh)[1]
    moved = [
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in zip(
            jax.tree.leaves(fresh["model"]["emb_head"]),
            jax.tree.leaves(state1["model"]["emb_head"]),
        )
    ]
    assert max(moved) > 0
    assert loop.embedding_loss_from_config(config) is None
    config.loss.embedding_weight = 0.1
    assert loop.embedding_loss_from_config(config).weight == 0.1
