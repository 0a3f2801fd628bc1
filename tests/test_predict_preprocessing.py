"""``predict`` and ``evaluate`` prepare images exactly as training did (the preprocessing recorded
with the checkpoint): on the shipped letterboxed frames, predict's count equals evaluate's."""

import csv
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import configs.frames
from alcfcn_jax import checkpoint
from alcfcn_jax import sharding as shd
from alcfcn_jax.apps import predict
from alcfcn_jax.data import boxes
from alcfcn_jax.data.preprocess import Preprocessing
from alcfcn_jax.eval import inference
from alcfcn_jax.eval import report as eval_report
from alcfcn_jax.train import state as train_state
from configs.deepfish import model_config

SAMPLE_VAL = pathlib.Path(boxes.__file__).parent / "sample" / "val" / "images"


def _config(short_side=64):
    config = configs.frames.get_config("smoke")
    config.model = model_config(
        backbone="tiny", trunk_mode="single_pass", rw_method="sparse", cam_head="fc8"
    )
    config.data.image_short_side = short_side
    config.train.feature_cache = "off"
    config.train.eval_batch_size = 8
    return config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A checkpoint of a random tiny model whose activation head finds 'fish' somewhere."""
    config = _config()
    path = tmp_path_factory.mktemp("run")
    mesh = shd.make_mesh(1)
    with jax.set_mesh(mesh):
        graphs, state = train_state.create_train_state(config, mesh)
    fc8 = state["model"]["cam_head"]["fc8"]["kernel"]
    rng = np.random.default_rng(0)
    fc8.set_value(jnp.asarray(rng.normal(size=fc8.shape) * 3.0, jnp.float32))
    ckpt = checkpoint.Checkpointer(path, keep=1, best_metric="val_mae")
    ckpt.save(
        1,
        model_state=state["model"],
        opt_state=state["opt"],
        meta=train_state.checkpoint_meta(
            config, state, {"step": 1, "score": 1.0, "metric": "val_mae"}
        ),
        metrics={"val_mae": 1.0},
    )
    ckpt.wait()
    ckpt.close()
    return path


def test_checkpoint_records_its_preprocessing(workdir):
    meta = checkpoint.Checkpointer(workdir, read_only=True).read_meta(1)
    assert meta["preprocessing"] == {"short_side": 64, "letterbox": "crop"}
    # A config that disagrees is overruled by the checkpoint's record.
    assert inference.recorded_preprocessing(meta, _config(short_side=128)) == Preprocessing(
        64, "crop"
    )
    old = {"config": {"data": {"dataset": "boxes", "image_short_side": 96}}}
    assert inference.recorded_preprocessing(old, _config()) == Preprocessing(96, "crop")


def test_predict_count_equals_evaluate_count(workdir, tmp_path):
    # The given config asks for another size: both tools must use the checkpoint's 64.
    config = _config(short_side=128)
    result = eval_report.run_evaluation(
        config, str(workdir), split="val", which="latest", num_overlays=0
    )
    evaluated = {r["id"]: r["pred_count"] for r in result["per_image"]}
    model, _, meta = inference.restore_model(config, str(workdir), "latest")
    out = tmp_path / "pred"
    predict.predict_folder(
        model,
        SAMPLE_VAL,
        out,
        preprocessing=inference.recorded_preprocessing(meta, config),
        overlays=False,
    )
    with open(out / "images.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(evaluated) == 80
    predicted = {boxes.frame_id(pathlib.Path(r["image"]).stem): int(r["blob_count"]) for r in rows}
    assert predicted == evaluated
    assert sum(predicted.values()) > 20, "the random head must find something to compare"
    # The letterbox bars were cropped: 202 x 360 pictures at short side 64.
    assert {(int(r["model_height"]), int(r["model_width"])) for r in rows} == {(64, 114)}
    with open(out / "fish.csv") as f:
        fish = list(csv.DictReader(f))
    assert fish
    # Every fish lies in the picture (rows 79-281 of the 360 x 360 frame), none on a bar.
    assert all(78.0 <= float(r["bbox_y0_orig"]) and float(r["bbox_y1_orig"]) <= 282.0 for r in fish)
