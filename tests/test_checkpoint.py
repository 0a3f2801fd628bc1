"""Checkpoints: round trip, retention (latest N + best), mismatches, interrupted saves, inference."""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import configs.deepfish
from alcfcn_jax import checkpoint, config_utils
from alcfcn_jax import sharding as shd
from alcfcn_jax.checkpoint import Checkpointer, CheckpointError
from alcfcn_jax.eval import inference
from alcfcn_jax.train import state as train_state

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke():
    config = configs.deepfish.get_config("smoke")
    mesh = shd.make_mesh(8)
    with jax.set_mesh(mesh):
        graphs, state = train_state.create_train_state(config, mesh)
    return config, mesh, graphs, state


def _save(ckpt, step, state, config, *, val=None, data_state=None):
    ckpt.save(
        step,
        model_state=state["model"],
        opt_state=state["opt"],
        meta={"config": config_utils.to_plain(config), "note": f"step {step}"},
        data_state=data_state,
        metrics=None if val is None else {"val_miou": val},
    )


def test_round_trip_is_bitwise_with_meta_and_data_state(tmp_path, smoke):
    config, mesh, _, state = smoke
    ckpt = Checkpointer(tmp_path, keep=2)
    _save(ckpt, 3, state, config, data_state={"next_index": 17, "epoch": [1, 2]})
    ckpt.wait()
    with jax.set_mesh(mesh):
        model, opt, meta, data_state = ckpt.restore(
            3, model_state=state["model"], opt_state=state["opt"]
        )
    ckpt.close()
    assert meta["step"] == 3 and meta["note"] == "step 3"
    assert data_state == {"next_index": 17, "epoch": [1, 2]}
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(state["model"])):
        if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
    for a, b in zip(jax.tree.leaves(opt), jax.tree.leaves(state["opt"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_bytes_iterator_state_round_trips(tmp_path, smoke):
    config, mesh, _, state = smoke
    ckpt = Checkpointer(tmp_path)
    _save(ckpt, 1, state, config, data_state=b'{"pos": 4}')
    ckpt.wait()
    with jax.set_mesh(mesh):
        *_, data_state = ckpt.restore(1, model_state=state["model"], opt_state=state["opt"])
    ckpt.close()
    assert data_state == b'{"pos": 4}'


def test_keeps_latest_n_plus_best(tmp_path, smoke):
    config, _, _, state = smoke
    ckpt = Checkpointer(tmp_path, keep=2)
    scores = {1: 0.5, 2: None, 3: 0.9, 4: 0.6, 5: None, 6: 0.9, 7: None, 8: 0.1}
    for step, val in scores.items():
        _save(ckpt, step, state, config, val=val)
        ckpt.wait()
    # Latest two (7, 8) plus the best (6: a tie with 3 goes to the later step, as ">=").
    assert ckpt.all_steps() == [6, 7, 8]
    assert ckpt.resolve("best") == 6 and ckpt.resolve("latest") == 8 and ckpt.resolve(7) == 7
    with pytest.raises(CheckpointError, match="no checkpoint at step 3"):
        ckpt.resolve(3)
    ckpt.close()


def test_mae_selection_is_minimised(tmp_path, smoke):
    config, _, _, state = smoke
    ckpt = Checkpointer(tmp_path, keep=1, best_metric="val_mae")
    for step, mae in {1: 2.0, 2: 0.5, 3: 1.0}.items():
        ckpt.save(
            step,
            model_state=state["model"],
            opt_state=state["opt"],
            meta={},
            metrics={"val_mae": mae},
        )
        ckpt.wait()
    assert ckpt.all_steps() == [2, 3] and ckpt.resolve("best") == 2
    ckpt.close()


def test_different_model_is_a_clear_error(tmp_path, smoke):
    config, mesh, _, state = smoke
    ckpt = Checkpointer(tmp_path)
    _save(ckpt, 1, state, config)
    ckpt.close()
    other = configs.deepfish.get_config("smoke")
    other.model.with_affinity = False  # no affinity head: a smaller parameter tree
    with jax.set_mesh(mesh):
        _, other_state = train_state.create_train_state(other, mesh)
    ckpt = Checkpointer(tmp_path)
    with pytest.raises(CheckpointError, match="does not match") as err:
        ckpt.restore(1, model_state=other_state["model"], opt_state=other_state["opt"])
    assert "aff_head" in str(err.value)
    with pytest.raises(CheckpointError, match="model.with_affinity"):
        ckpt.check_config(1, other)
    ckpt.close()


def test_shape_mismatch_is_named():
    saved = {"head": {"kernel": jax.ShapeDtypeStruct((1, 1, 8, 2), jnp.float32)}}
    target = {"head": {"kernel": jax.ShapeDtypeStruct((1, 1, 8, 3), jnp.float32)}}
    with pytest.raises(CheckpointError, match=r"head/kernel: checkpoint shape \(1, 1, 8, 2\)"):
        checkpoint.compare_structures(saved, target, what="model")


def test_interrupted_save_leaves_previous_checkpoint(tmp_path):
    """Kill the process inside Orbax's final commit of step 2: step 1 must stay restorable."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        import jax.numpy as jnp
        from orbax.checkpoint._src.path import atomicity
        from alcfcn_jax.checkpoint import Checkpointer

        ckpt = Checkpointer(sys.argv[1], keep=3)
        def save(step):
            ckpt.save(step, model_state={"w": jnp.arange(4.0) + step},
                      opt_state={"c": jnp.zeros(())}, meta={"s": step},
                      data_state={"next_index": step})
            ckpt.wait()
        save(1)

        async def die(*args, **kwargs):
            os.kill(os.getpid(), signal.SIGKILL)

        atomicity.AtomicRenameTemporaryPath.finalize = die
        save(2)
        print("save(2) completed: the interruption did not happen")
        """
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stdout + proc.stderr
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert any(name.startswith("2") and name != "2" for name in leftovers), leftovers

    target = {"w": jax.ShapeDtypeStruct((4,), jnp.float32)}
    ckpt = Checkpointer(tmp_path, keep=3)
    assert ckpt.all_steps() == [1]
    model, _, meta, data_state = ckpt.restore(1, model_state=target, opt_state=None)
    np.testing.assert_array_equal(np.asarray(model["w"]), np.arange(4.0) + 1)
    assert meta["s"] == 1 and data_state == {"next_index": 1}
    # The same step can be saved again after the crash.
    ckpt.save(2, model_state={"w": jnp.ones(4)}, opt_state={"c": jnp.zeros(())}, meta={})
    ckpt.wait()
    assert ckpt.all_steps() == [1, 2]
    ckpt.close()


def test_restore_for_inference(tmp_path, smoke):
    config, _, graphs, state = smoke
    with pytest.raises(CheckpointError, match="no checkpoints"):
        inference.restore_model(config, tmp_path)
    ckpt = Checkpointer(tmp_path)
    _save(ckpt, 1, state, config, val=0.7)
    bumped = dict(state, model=jax.tree.map(lambda x: x, state["model"]))
    kernel = bumped["model"]["cam_head"]["fc8"]["kernel"]
    kernel.set_value(kernel[...] + 1.0)
    _save(ckpt, 2, bumped, config, val=0.2)
    ckpt.close()

    model, step, meta = inference.restore_model(config, tmp_path, "best")
    assert step == 1 and meta["step"] == 1
    reference = nnx.merge(graphs.model, state["model"])
    images = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 48, 3)), jnp.float32)
    np.testing.assert_allclose(
        np.asarray(model(images)), np.asarray(reference(images)), rtol=1e-6, atol=1e-6
    )
    _, step, _ = inference.restore_model(config, tmp_path, "latest")
    assert step == 2
    _, step, _ = inference.restore_model(config, tmp_path, 2)
    assert step == 2
    with pytest.raises(CheckpointError, match="no checkpoint at step 5"):
        inference.restore_model(config, tmp_path, 5)
    other = configs.deepfish.get_config("smoke")
    other.model.n_classes = 3
    with pytest.raises(CheckpointError, match="model.n_classes"):
        inference.restore_model(other, tmp_path)
