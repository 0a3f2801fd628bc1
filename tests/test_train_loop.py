"""End-to-end loop on the smoke config: resume after a crash is bitwise identical; NaN handling."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

import configs.deepfish
from alcfcn_jax.checkpoint import Checkpointer
from alcfcn_jax.eval import inference
from alcfcn_jax.losses import registry as loss_registry
from alcfcn_jax.train import loop, metric_writer, runner
from alcfcn_jax.train import step as train_step


@pytest.fixture(scope="module", autouse=True)
def compilation_cache(tmp_path_factory):
    """Each run jits a fresh step function; a persistent cache compiles it once for all runs."""
    names = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    old = {n: getattr(jax.config, n) for n in names}
    jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    yield
    for n, v in old.items():
        jax.config.update(n, v)


def _config():
    return configs.deepfish.get_config("smoke")  # 6 steps, validate + checkpoint every 3


class _Crash(Exception):
    pass


_ORIGINAL_PREPARE = train_step.prepare_batch


def _record_batches(monkeypatch, log: list, crash_after: int | None = None):
    """Records the ids of every training batch; optionally crashes when a batch is fetched."""
    real = _ORIGINAL_PREPARE

    def recording(batch):
        if crash_after is not None and len(log) == crash_after:
            raise _Crash(f"simulated crash while fetching batch {len(log) + 1}")
        log.append(tuple(str(i) for i in batch["id"]))
        return real(batch)

    monkeypatch.setattr(loop, "prepare_batch", recording)


def _params(workdir, step):
    model, _, meta = inference.restore_model(_config(), workdir, step)
    ckpt = Checkpointer(workdir, read_only=True)
    data = ckpt.manager.restore(step, args=ocp.args.Composite(data=ocp.args.JsonRestore())).data
    ckpt.close()
    return jax.tree.leaves(nnx.state(model, nnx.Param)), meta, data


def test_resume_after_crash_is_identical(tmp_path, monkeypatch):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    order_a: list = []
    _record_batches(monkeypatch, order_a)
    final_a = runner.run(_config(), str(straight))
    assert final_a["step"] == 6 and len(order_a) == 6

    order_b: list = []
    _record_batches(monkeypatch, order_b, crash_after=4)  # dies fetching batch 5
    with pytest.raises(_Crash):
        runner.run(_config(), str(resumed))
    assert Checkpointer(resumed, read_only=True).all_steps() == [3]
    order_c: list = []
    _record_batches(monkeypatch, order_c)
    final_b = runner.run(_config(), str(resumed))
    assert final_b["step"] == 6

    # Same data order: the resumed run replays batch 4 and continues with 5, 6.
    assert order_b[:4] == order_a[:4]
    assert order_c == order_a[3:]
    # Identical parameters, bitwise, and identical validation figures.
    pa, meta_a, data_a = _params(straight, 6)
    pb, meta_b, data_b = _params(resumed, 6)
    assert len(pa) == len(pb) > 0
    for a, b in zip(pa, pb):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    timing = ("val_eval_seconds", "val_images_per_second")
    val_a = {k: v for k, v in meta_a["val"].items() if k not in timing}
    val_b = {k: v for k, v in meta_b["val"].items() if k not in timing}
    assert val_a == val_b and meta_a["rng"] == meta_b["rng"]
    assert data_a == data_b

    # Logs: per-step metrics incl. every LCFCN term, validation rows, the resolved config.
    rows = metric_writer.read_metrics(straight, kind="train")
    assert [r["step"] for r in rows] == [2, 4, 6]
    for key in ("loss", "grad_norm", "param_norm", "lr", "steps_per_second", "data_seconds"):
        assert key in rows[0], key
    for term in loss_registry.LCFCN_TERMS:
        assert f"loss_{term}" in rows[0]
    vals = metric_writer.read_metrics(straight, kind="val")
    assert [r["step"] for r in vals] == [3, 6] and "val_miou" in vals[0]
    saved_config = json.loads((straight / "config.json").read_text())
    assert saved_config["model"]["backbone"] == "tiny"

    # Rerunning a finished run does nothing but report.
    order_d: list = []
    _record_batches(monkeypatch, order_d)
    again = runner.run(_config(), str(straight))
    assert order_d == [] and again["step"] == 6 and again["best"] == final_a["best"]


def test_nonfinite_loss_stops_with_step_and_term(tmp_path, monkeypatch):
    real_prepare, real_loss = train_step.prepare_batch, loss_registry.per_image_loss
    calls = []

    def poison_second_batch(batch):
        out = real_prepare(batch)
        calls.append(1)
        if len(calls) == 2:
            out["mask"][0, 0, 0] = 7  # marker read by the loss below
        return out

    def loss_with_nan_term(name, logits, batch):
        total, terms = real_loss(name, logits, batch)
        bad = jnp.where(jnp.any(batch["mask"] == 7), jnp.nan, 0.0)
        terms = dict(terms, split_local=terms["split_local"] + bad)
        return total + bad, terms

    monkeypatch.setattr(loop, "prepare_batch", poison_second_batch)
    monkeypatch.setattr(train_step, "per_image_loss", loss_with_nan_term)
    with pytest.raises(FloatingPointError, match=r"step 2: term\(s\) split_local=nan"):
        runner.run(_config(), str(tmp_path))
    # The last good state (after step 1) was kept as a checkpoint; resuming replays batch 2.
    ckpt = Checkpointer(tmp_path, read_only=True)
    assert ckpt.all_steps() == [1]
    meta = ckpt.read_meta(1)
    ckpt.close()
    assert meta["step"] == 1
    errors = metric_writer.read_metrics(tmp_path, kind="error")
    assert errors and "split_local" in errors[0]["error"]
    model, step, _ = inference.restore_model(_config(), tmp_path, "latest")
    assert step == 1
    for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)):
        assert np.isfinite(np.asarray(leaf)).all()
