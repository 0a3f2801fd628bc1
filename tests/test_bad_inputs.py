"""Issue 14: bad input and faults give one clear message, never silent wrong data or lost results.

Each test reproduces one reported case on tiny generated files (seconds each, CPU).
"""

import json
import logging
import pathlib
import shutil

import jax
import numpy as np
import pytest

import configs.deepfish
from alcfcn_jax import checkpoint
from alcfcn_jax import sharding as shd
from alcfcn_jax.checkpoint import Checkpointer, CheckpointError
from alcfcn_jax.data.errors import DataError
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
    from alcfcn_jax.train import runner

    config, _, _, state = smoke
    ckpt = Checkpointer(tmp_path)
    _save(ckpt, 1, state, config)
    ckpt.close()
    (tmp_path / "config.json").write_text('{"original": true}\n')
    changed = configs.deepfish.get_config("smoke")
    changed.model.with_affinity = False
    with pytest.raises(CheckpointError, match="model.with_affinity"):
        runner.run(changed, str(tmp_path))
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
    from alcfcn_jax.train import inputs

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

    assert inputs._expected_step(resolve(stage2)) == 3
    assert checkpoint.run_selection_metric(tmp_path) == "val_mae"


# --- data helpers ------------------------------------------------------------------------------


def _rgb(path, h=16, w=24, value=120):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((h, w, 3), value, np.uint8)).save(path)


def _boxes_dir(root, names, label="0 0.5 0.5 0.2 0.2\n"):
    for name in names:
        _rgb(root / "images" / name)
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / (pathlib.Path(name).stem + ".txt")).write_text(label)
    return root


# --- item 2: 16-bit images are scaled, not clipped --------------------------------------------


def test_16bit_png_is_scaled_not_washed_out(tmp_path):
    from PIL import Image

    from alcfcn_jax.data import preprocess as pp

    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I")
    rgb = np.asarray(pp.load_image(path))
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 64, 3)
    np.testing.assert_array_equal(rgb[..., 0], np.round(ramp / 257.0).astype(np.uint8))
    assert (rgb == 255).mean() < 0.05  # was 99.8 % white
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "float.tif")
    with pytest.raises(DataError, match=r"float\.tif: image mode 'F'"):
        pp.load_image(tmp_path / "float.tif")


# --- item 3: duplicate clicks, and clicks colliding after resizing ----------------------------


def test_duplicate_click_row_is_dropped_with_warning(tmp_path, caplog):
    from alcfcn_jax.data.points import click_source

    _rgb(tmp_path / "images" / "a.jpg", 40, 40)
    (tmp_path / "points.csv").write_text("image,x,y\na.jpg,5,5\na.jpg,30,30\na.jpg,5,5\n")
    with caplog.at_level(logging.WARNING, logger="alcfcn_jax.data"):
        src = click_source(
            tmp_path, "all", points_csv="", val_percent=0, skip_bad_examples=False, short_side=None
        )
        ex = src[0]
    assert int(ex["count"]) == 2 and int((ex["points"] == 1).sum()) == 2
    assert "line 4 = line 2 (a.jpg)" in caplog.text


def test_clicks_colliding_after_resize_keep_one_pixel_each(tmp_path, caplog):
    from alcfcn_jax.data.points import click_source

    _rgb(tmp_path / "images" / "a.jpg", 64, 64)
    (tmp_path / "points.csv").write_text("image,x,y\na.jpg,10,10\na.jpg,11,11\na.jpg,40,40\n")
    with caplog.at_level(logging.WARNING, logger="alcfcn_jax.data"):
        ex = click_source(
            tmp_path, "all", points_csv="", val_percent=0, skip_bad_examples=False, short_side=8
        )[0]
    assert int(ex["count"]) == 3 and int((ex["points"] == 1).sum()) == 3
    assert "fell on the pixel of another" in caplog.text and "a.jpg" in caplog.text


def test_box_centres_colliding_after_resize_keep_one_pixel_each(tmp_path):
    from alcfcn_jax.data.boxes import box_source

    root = _boxes_dir(tmp_path, ["a.jpg"], "0 0.50 0.5 0.1 0.1\n0 0.51 0.5 0.1 0.1\n")
    ex = box_source(
        root, "all", val_percent=0, skip_bad_examples=False, short_side=4, letterbox="none"
    )[0]
    assert int(ex["count"]) == 2 and int((ex["points"] == 1).sum()) == 2


# --- item 6: one list of image extensions; skipped and orphaned files reported ----------------


def test_bmp_images_are_read_and_orphans_reported(tmp_path, caplog):
    from alcfcn_jax.apps import predict
    from alcfcn_jax.data import preprocess as pp
    from alcfcn_jax.data.boxes import IMAGE_SUFFIXES, box_source

    assert predict.IMAGE_EXTENSIONS is pp.IMAGE_EXTENSIONS is IMAGE_SUFFIXES
    root = _boxes_dir(tmp_path, ["a.jpg", "b.bmp"])
    (root / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    (root / "images" / "notes.txt").write_text("not an image")
    with caplog.at_level(logging.WARNING, logger="alcfcn_jax.data"):
        src = box_source(
            root, "all", val_percent=0, skip_bad_examples=False, short_side=None, letterbox="none"
        )
    assert len(src) == 2 and {src[i]["id"] for i in range(2)} == {"a", "b"}
    assert "1 label file(s) have no image" in caplog.text and "ghost.txt" in caplog.text
    assert "1 file(s) that are not images" in caplog.text and "notes.txt" in caplog.text


# --- item 13: YOLO sizes above 1 --------------------------------------------------------------


def test_yolo_box_larger_than_image_is_refused(tmp_path):
    from alcfcn_jax.data.boxes import read_yolo

    (tmp_path / "a.txt").write_text("0 0.5 0.5 1.5 0.2\n")
    with pytest.raises(
        DataError, match=r"a\.txt, line 1: box width and height must be in \(0, 1\]"
    ):
        read_yolo(tmp_path / "a.txt")


# --- item 4: predict outputs are unique per input ---------------------------------------------


def test_predict_inputs_sharing_a_stem_keep_their_own_outputs(tmp_path):
    import csv

    from PIL import Image

    from alcfcn_jax.apps import predict
    from tests.test_predict import ThresholdModel

    photos = tmp_path / "photos"
    _rgb(photos / "frame1.jpg", 16, 16, value=10)
    _rgb(photos / "frame1.png", 16, 16, value=230)
    _rgb(photos / "other.png", 16, 16, value=230)
    out = tmp_path / "out"
    predict.predict_folder(ThresholdModel(), photos, out, short_side=None)
    with open(out / "images.csv") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    assert rows["frame1.jpg"]["instance_mask"] == "instances/frame1.jpg.png"
    assert rows["frame1.png"]["instance_mask"] == "instances/frame1.png.png"
    assert rows["other.png"]["instance_mask"] == "instances/other.png"
    dark = np.asarray(Image.open(out / "instances" / "frame1.jpg.png"))
    bright = np.asarray(Image.open(out / "instances" / "frame1.png.png"))
    assert dark.max() == 0 and bright.max() == 1


# --- items 12 and 13: output folders are checked before any work ------------------------------


def test_output_dir_that_is_a_file_or_unwritable_is_refused_first(tmp_path, monkeypatch):
    from alcfcn_jax.apps import predict
    from alcfcn_jax.eval import inference, report
    from alcfcn_jax.io import OutputDirError
    from tests.test_predict import ThresholdModel

    _rgb(tmp_path / "photos" / "a.png")
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputDirError, match=r"--output_dir .*afile is a file, not a folder"):
        predict.predict_folder(ThresholdModel(), tmp_path / "photos", tmp_path / "afile")

    def no_restore(*args, **kwargs):
        raise AssertionError("restored a checkpoint before checking the output folder")

    monkeypatch.setattr(inference, "restore", no_restore)
    config = configs.deepfish.get_config("smoke")
    with pytest.raises(OutputDirError, match=r"--output_dir .*afile/eval is not writable"):
        report.run_evaluation(config, tmp_path, output_dir=tmp_path / "afile" / "eval")
    # The default folder inside an unwritable workdir names the flag to use instead.
    with pytest.raises(OutputDirError, match=r"evaluation output folder \(--output_dir\)"):
        report.run_evaluation(config, tmp_path / "afile")


# --- item 7: diverged weights with the LCFCN loss stop with the step, before the callback -----


def test_diverging_lcfcn_run_stops_naming_the_step(tmp_path):
    from alcfcn_jax.train import metric_writer, runner

    config = configs.deepfish.get_config("smoke")
    config.optim.lr = 1e30
    with pytest.raises(FloatingPointError) as err:
        runner.run(config, str(tmp_path))
    message = str(err.value)
    assert "non-finite loss at step" in message and "outputs are NaN/inf" in message
    assert "CpuCallback" not in message and "optim.lr" in message
    errors = metric_writer.read_metrics(tmp_path, kind="error")
    assert errors and errors[0]["nonfinite_output"] == 1.0
    # No checkpoint holds the diverged weights.
    ckpt = Checkpointer(tmp_path, read_only=True) if (tmp_path / "checkpoints").is_dir() else None
    if ckpt is not None:
        assert all(s < errors[0]["step"] - 1 for s in ckpt.all_steps())
        ckpt.close()


# --- item 1: prepared DeepFish data is keyed by its source tree -------------------------------


def test_prepared_deepfish_data_is_never_reused_for_another_tree(tmp_path, monkeypatch):
    from alcfcn_jax.data import default_data_config, get_source, synthetic

    small = synthetic.SyntheticSpec(height=32, width=48, seg_sizes=(3, 2, 2), loc_sizes=(3, 2, 2))
    large = synthetic.SyntheticSpec(height=32, width=48, seg_sizes=(6, 2, 2), loc_sizes=(7, 2, 2))
    tree_a = synthetic.write_tree(tmp_path / "A", small)
    tree_b = synthetic.write_tree(tmp_path / "B", large)
    monkeypatch.setenv("ALCFCN_CACHE", str(tmp_path / "cache"))

    def cfg(root, tfds_dir=""):
        c = default_data_config("deepfish")
        c.update(data_dir=str(root), tfds_dir=tfds_dir, image_short_side=None)
        return c

    raw = default_data_config("deepfish")
    raw.update(data_dir=str(tree_b), reader="raw", image_short_side=None)
    n_a, n_b = len(get_source(cfg(tree_a), "train")), len(get_source(cfg(tree_b), "train"))
    assert n_b == len(get_source(raw, "train")) != n_a  # B's own images, not A's
    assert len(list((tmp_path / "cache" / "tensorflow_datasets").glob("deepfish-*"))) == 2
    shared = str(tmp_path / "shared")
    get_source(cfg(tree_a, shared), "train")
    with pytest.raises(DataError, match=r"data\.tfds_dir .*shared holds DeepFish data prepared"):
        get_source(cfg(tree_b, shared), "train")


# --- item 8: every file is checked before the first step --------------------------------------


def _boxes_config(root):
    from alcfcn_jax.data import default_data_config
    from alcfcn_jax.train.config import resolve

    config = configs.deepfish.get_config("smoke")
    config.data = default_data_config("boxes")
    config.data.data_dir = str(root)
    config.data.letterbox = "none"
    config.train.select_metric = "mae"
    return resolve(config)


def test_corrupt_image_is_found_before_training(tmp_path, caplog):
    from alcfcn_jax.data.source import validate_source
    from alcfcn_jax.train import inputs

    root = _boxes_dir(tmp_path, [f"f{i}.jpg" for i in range(12)])
    good = (root / "images" / "f7.jpg").read_bytes()
    (root / "images" / "f7.jpg").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match=r"f7\.jpg: cannot decode.*data\.skip_bad_examples=True"):
        inputs.build(_boxes_config(root), local_batch=1, eval_batch_local=1)
    # A 6000x4000 image (as stored) warns about memory and names the setting.
    (root / "images" / "f7.jpg").write_bytes(good)
    _rgb(root / "images" / "f3.jpg", 4000, 6000)
    from alcfcn_jax.data import get_source

    with caplog.at_level(logging.WARNING, logger="alcfcn_jax.data"):
        validate_source(get_source(_boxes_config(root).data, "all"), "all")
    assert "set data.image_short_side" in caplog.text and "6000x4000" in caplog.text


# --- item 9: one definition of "up to date" for the pseudo-mask writer and stage 2 ------------


def test_grown_training_set_makes_masks_stale_for_both(tmp_path):
    from PIL import Image

    from alcfcn_jax.data import default_data_config, get_source
    from alcfcn_jax.data import pseudo_masks as pm
    from alcfcn_jax.data.source import example_ids
    from alcfcn_jax.train import mask_writer as writer

    root = _boxes_dir(tmp_path / "data", ["a.jpg", "b.jpg"])
    cfg = default_data_config("boxes")
    cfg.update(data_dir=str(root), letterbox="none")
    masks = tmp_path / "pseudo_masks"
    masks.mkdir()
    for i in ("a", "b"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(masks / f"{i}.png")
    manifest = {"checkpoint_step": 5, "ids": ["a", "b"], "count": 2}
    ids = example_ids(get_source(cfg, "all"))
    assert ids == ["a", "b"] and pm.is_complete(manifest, 5, masks, ids)
    _boxes_dir(root, ["c.jpg"])  # the training set grows
    src = get_source(cfg, "all")
    ids = example_ids(src)
    reason = pm.stale_reason(manifest, 5, masks, ids, len(src))
    assert reason and "'c'" in reason
    assert not pm.is_complete(manifest, 5, masks, ids, len(src))  # the writer regenerates
    with pytest.raises(pm.StalePseudoMasksError, match=r"not up to date: 1 training image"):
        pm.check_coverage(len(src), manifest, masks, ids)  # stage 2 agrees
    assert "stale_reason" in writer.write_pseudo_masks.__code__.co_names


# --- item 13: smaller ones --------------------------------------------------------------------


def test_misspelt_key_is_one_line_with_the_suggestion(tmp_path):
    import subprocess
    import sys

    root = pathlib.Path(__file__).resolve().parents[1]
    args = [sys.executable, "train.py", "--config=configs/deepfish.py:smoke"]
    args += [f"--workdir={tmp_path}", "--config.train.nmu_steps=3"]
    proc = subprocess.run(args, cwd=root, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr
    assert lines[-1].endswith(
        "--config.train.nmu_steps=3: no config key 'nmu_steps'; did you mean 'num_steps'?"
    )


def test_none_default_fields_can_be_overridden():
    # config_flags overrides a field by its type; a plain None field has none and was refused
    # (--config.data.image_short_side=32). The default is now a typed placeholder.
    from alcfcn_jax.data import default_data_config

    cfg = default_data_config("boxes")
    ref = cfg.get_ref("image_short_side")
    assert ref.get_type() is int and ref.get() is None
    cfg.lock()
    cfg.image_short_side = 32  # a locked config accepts an int
    assert cfg.to_dict()["image_short_side"] == 32
    assert default_data_config("boxes").to_dict()["image_short_side"] is None


def test_box_data_selects_by_count_error():
    from alcfcn_jax.data import default_data_config
    from alcfcn_jax.train.config import resolve

    config = configs.deepfish.get_config("smoke")
    config.data = default_data_config("boxes")
    assert resolve(config).train.select_metric == "mae"
    assert resolve(configs.deepfish.get_config("smoke")).train.select_metric == "miou"
