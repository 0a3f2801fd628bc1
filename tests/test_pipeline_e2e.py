"""End to end on a tiny synthetic tree: stage 1 -> evaluate -> pseudo masks -> stage 2 -> evaluate.

Runs the library entry points the CLIs call (``runner.run``, ``eval_report.run_evaluation``,
``pseudo_masks.write_pseudo_masks``) with the ``smoke`` presets, then checks every file a user
looks at, the clear errors for bad inputs, and prediction on a folder with the trained model.
"""

import json

import ml_collections
import numpy as np
import pytest
from PIL import Image

from alcfcn_jax import checkpoint
from alcfcn_jax.apps import predict
from alcfcn_jax.eval import inference
from alcfcn_jax.eval import report as eval_report
from alcfcn_jax.train import mask_writer as pm
from alcfcn_jax.train import runner


def smoke_config():
    from configs import deepfish

    cfg = deepfish.get_config("smoke")
    # One image per fake device (8) per step needs at least 8 training images.
    cfg.data.synthetic.loc_sizes = (12, 2, 2)
    cfg.train.num_steps = 2
    cfg.train.eval_every = 2
    cfg.train.checkpoint_every = 2
    return cfg


def stage2_config(stage1_workdir):
    """FS-FCN-style stage 2 on the pseudo masks (configs/deepfish_pm.py's smoke preset if any)."""
    try:
        from configs import deepfish_pm
    except ImportError:
        deepfish_pm = None
    if deepfish_pm is not None:
        cfg = deepfish_pm.get_config("smoke")
        cfg.data.synthetic.loc_sizes = (12, 2, 2)
    else:
        cfg = smoke_config()
        cfg.model.with_affinity = False
        cfg.loss.name = "cross_entropy"
        cfg.stage1 = ml_collections.ConfigDict({"workdir": "", "which": "best"})
    cfg.stage1.workdir = str(stage1_workdir)
    cfg.train.num_steps = 2
    cfg.train.eval_every = 2
    cfg.train.checkpoint_every = 2
    return cfg


def test_stage1_pseudo_masks_stage2_evaluate(tmp_path, monkeypatch):
    w1, w2 = tmp_path / "stage1", tmp_path / "stage2"
    cfg1 = smoke_config()
    runner.run(cfg1, str(w1))

    res1 = eval_report.run_evaluation(cfg1, w1, split="test", num_overlays=2)
    out = w1 / "eval" / "test"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["meta"]["method"] == "A-LCFCN"
    assert metrics["miou"] == pytest.approx((metrics["iou_bg"] + metrics["iou_fish"]) / 2)
    assert metrics["miou"] == pytest.approx(res1["miou"])
    # The count MAE is the mean of the per-image rows written beside it.
    rows = (out / "per_image.csv").read_text().splitlines()
    head = rows[0].split(",")
    t, p = head.index("true_count"), head.index("pred_count")
    errors = [abs(float(r.split(",")[t]) - float(r.split(",")[p])) for r in rows[1:]]
    assert len(errors) == res1["num_images"] and metrics["mae"] == pytest.approx(np.mean(errors))
    assert metrics["num_images"] == res1["num_images"] == len(res1["per_image"])
    assert "Paper Table 1" not in (out / "report.md").read_text()  # synthetic, not DeepFish
    assert (out / "per_image.csv").read_text().startswith("id,habitat,true_count,pred_count")
    assert len(list((out / "overlays").glob("*.png"))) == 2

    manifest = pm.write_pseudo_masks(cfg1, w1)
    step1 = manifest["checkpoint_step"]
    masks = sorted((w1 / "pseudo_masks").rglob("*.png"))
    assert len(masks) == manifest["count"] > 0
    assert set(np.unique(np.asarray(Image.open(masks[0])))) <= {0, 255}
    assert manifest["quality"] is None  # stage 1 trains on FishLoc: no true masks to score
    before = {p: p.read_bytes() for p in masks}
    written = []
    save = pm.save_png_atomic
    monkeypatch.setattr(
        pm,
        "save_png_atomic",
        lambda image, path, *a, **k: written.append(path) or save(image, path, *a, **k),
    )
    again = pm.write_pseudo_masks(cfg1, w1)  # same checkpoint: nothing rewritten
    assert again["checkpoint_step"] == step1 and written == []
    assert {p: p.read_bytes() for p in masks} == before

    cfg2 = stage2_config(w1)
    runner.run(cfg2, str(w2))
    res2 = eval_report.run_evaluation(cfg2, w2, split="test", num_overlays=1)
    assert json.loads((w2 / "eval" / "test" / "metrics.json").read_text())["meta"]["method"] == (
        "A-LCFCN + PM"
    )
    metrics2 = json.loads((w2 / "eval" / "test" / "metrics.json").read_text())
    assert res2["miou"] == pytest.approx(metrics2["miou"])
    assert metrics2["miou"] == pytest.approx((metrics2["iou_bg"] + metrics2["iou_fish"]) / 2)

    # Prediction on a folder with the stage-1 model, including an odd-sized and an empty image.
    model, _, _ = inference.restore_model(cfg1, str(w1), "best")
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (37, 53, 3), np.uint8)).save(photos / "odd.png")
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(photos / "empty.png")
    summary = predict.predict_folder(model, photos, tmp_path / "pred", short_side=None)
    assert summary["num_images"] == 2
    assert (tmp_path / "pred" / "fish.csv").exists()
    assert np.asarray(Image.open(tmp_path / "pred" / "instances" / "odd.png")).shape == (37, 53)

    # Stale pseudo masks are a clear error for stage 2.
    manifest_path = w1 / "pseudo_masks" / "manifest.json"
    stale = json.loads(manifest_path.read_text())
    stale["checkpoint_step"] = step1 + 1000
    manifest_path.write_text(json.dumps(stale))
    with pytest.raises(Exception, match="stale"):
        runner.run(stage2_config(w1), str(tmp_path / "stage2b"))


def test_bad_inputs_are_clear_errors(tmp_path):
    cfg = smoke_config()
    with pytest.raises(checkpoint.CheckpointError):
        eval_report.run_evaluation(cfg, tmp_path / "no_run", num_overlays=0)
    with pytest.raises(checkpoint.CheckpointError):
        pm.write_pseudo_masks(cfg, tmp_path / "no_run")
