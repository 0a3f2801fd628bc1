"""Issue 14: bad input and faults give one clear message, never silent wrong data or lost results.

Each test reproduces one reported case on tiny generated files (seconds each, CPU).
"""

import json
import shutil

import jax
import pytest

import configs.deepfish
from alcfcn_jax import checkpoint
from alcfcn_jax import sharding as shd
from alcfcn_jax.checkpoint import Checkpointer, CheckpointError
from alcfcn_jax.train import state as train_state


@pytest.fixture(scope="module")
def smoke():
    config = configs.deepfish.get_config("smoke")
    mesh = shd.make_mesh()
    with jax.set_mesh(mesh):
        graphs, state = train_state.create_train_state(config, mesh)
    return config, mesh, graphs, state


def _save(ckpt, step, state, config, *, metrics=None):
    ckpt.save(
        step,
        model_state=state["model"],
        opt_state=state["opt"],
        meta=train_state.checkpoint_meta(config, state, {"step": None, "score": None}),
        data_state=None,
        metrics=metrics,
    )


# --- item 5: a refused resume leaves config.json as it was -----------------------------------


def test_refused_resume_does_not_touch_config_json(tmp_path, smoke):
    from alcfcn_jax.train import loop

    config, _, _, state = smoke
    ckpt = Checkpointer(tmp_path)
    _save(ckpt, 1, state, config)
    ckpt.close()
    (tmp_path / "config.json").write_text('{"original": true}\n')
    changed = configs.deepfish.get_config("smoke")
    changed.model.with_affinity = False
    with pytest.raises(CheckpointError, match="model.with_affinity"):
        loop.run(changed, str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text()) == {"original": True}


# --- item 13: adding clip_grad_norm on resume names the key -----------------------------------


def test_resume_with_new_optimizer_setting_names_the_key(tmp_path, smoke):
    config, mesh, _, state = smoke
    ckpt = Checkpointer(tmp_path)
    _save(ckpt, 1, state, config)
    ckpt.wait()
    clipped = configs.deepfish.get_config("smoke")
    clipped.optim.clip_grad_norm = 1.0
    with jax.set_mesh(mesh):
        _, new_state = train_state.create_train_state(clipped, mesh)
        with pytest.raises(CheckpointError, match=r"config\.optim\.clip_grad_norm: checkpoint 0"):
            train_state.restore_state(ckpt, 1, clipped, new_state, mesh)
    ckpt.close()


# --- item 11: incomplete checkpoint steps are never offered -----------------------------------


def test_half_deleted_checkpoint_is_not_listed(tmp_path, smoke):
    config, _, _, state = smoke
    ckpt = Checkpointer(tmp_path, keep=5)
    _save(ckpt, 5, state, config)
    _save(ckpt, 10, state, config)
    ckpt.close()
    for item in ("model", "meta", "data"):  # a kill during deletion left only opt/
        shutil.rmtree(tmp_path / "checkpoints" / "10" / item)
    ckpt = Checkpointer(tmp_path, read_only=True)
    assert ckpt.all_steps() == [5] and ckpt.latest_step() == 5
    with pytest.raises(CheckpointError, match=r"no checkpoint at step 10 .*available: \[5\]"):
        ckpt.resolve(10)
    assert ckpt.resolve("latest") == 5
    ckpt.close()


# --- item 10: stage 2 uses the stage-1 run's own selection metric -----------------------------


def test_stage2_best_step_uses_stage1_metric(tmp_path, smoke):
    from alcfcn_jax.train import data as train_data

    config, _, _, state = smoke
    stage1 = configs.deepfish.get_config("smoke")
    stage1.train.select_metric = "mae"
    ckpt = Checkpointer(tmp_path, keep=1, best_metric="val_mae")
    _save(ckpt, 3, state, stage1, metrics={"val_mae": 1.0})
    _save(ckpt, 6, state, stage1, metrics={"val_mae": 2.0})
    ckpt.close()
    stage2 = configs.deepfish.get_config("smoke")  # select_metric miou
    stage2.stage1 = {"workdir": str(tmp_path), "which": "best", "allow_stale": False}
    from alcfcn_jax.train.config import resolve

    assert train_data._expected_step(resolve(stage2)) == 3
    assert checkpoint.run_selection_metric(tmp_path) == "val_mae"
