"""Tests of fish instances, measurements and folder prediction."""

import csv
import math

import jax.numpy as jnp
import numpy as np
import pytest
from absl import app
from flax import nnx
from PIL import Image

from alcfcn_jax.apps import entry, predict
from alcfcn_jax.data.errors import DataError
from alcfcn_jax.eval import measure


def ellipse(h, w, cy, cx, a, b, angle_deg=0.0):
    """Boolean ellipse with semi-axes a (along angle, screen-counter-clockwise) and b."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = math.radians(angle_deg)
    # Screen y points down: a counter-clockwise screen angle has direction (cos t, -sin t).
    u = (xx - cx) * math.cos(t) - (yy - cy) * math.sin(t)
    v = (xx - cx) * math.sin(t) + (yy - cy) * math.cos(t)
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


def test_touching_fish_are_split_and_single_fish_is_not():
    h, w = 60, 100
    pair = ellipse(h, w, 20, 30, 14, 6) | ellipse(h, w, 20, 55, 14, 6)
    lone = ellipse(h, w, 45, 70, 20, 4, angle_deg=30)
    prob = np.where(pair | lone, 0.9, 0.05)
    labels = measure.instance_labels(prob)
    assert labels.max() == 3
    # The two touching ellipses are one 8-connected blob but two instances.
    import scipy.ndimage as ndi

    assert ndi.label(pair, structure=np.ones((3, 3)))[1] == 1
    assert len(np.unique(labels[pair])) == 2
    assert len(np.unique(labels[lone])) == 1
    no_split = measure.instance_labels(prob, split=False)
    assert no_split.max() == 2


def test_measurements_of_known_shapes():
    h, w = 80, 120
    fish = ellipse(h, w, 40, 60, 30, 6, angle_deg=30)
    prob = np.where(fish, 0.8, 0.1)
    labels = measure.instance_labels(prob)
    (row,) = measure.measure_fish(labels, prob, original_size=(160, 240))
    assert row["length_px"] == pytest.approx(60, abs=2.0)
    assert row["width_px"] == pytest.approx(12, abs=2.0)
    assert row["feret_px"] >= row["length_px"] - 1.0
    assert row["orientation_deg_px"] == pytest.approx(30, abs=2.0)
    assert row["centroid_x_px"] == pytest.approx(60, abs=0.5)
    assert row["centroid_y_px"] == pytest.approx(40, abs=0.5)
    assert row["area_px"] == fish.sum()
    assert row["mean_prob"] == pytest.approx(0.8)
    # The original image is twice as large: lengths double, areas quadruple.
    assert row["length_orig"] == pytest.approx(2 * row["length_px"], rel=1e-6)
    assert row["area_orig"] == pytest.approx(4 * row["area_px"])
    assert row["centroid_x_orig"] == pytest.approx(2 * row["centroid_x_px"] + 0.5)
    assert row["bbox_x1_orig"] == pytest.approx(2 * row["bbox_x1_px"])
    # The length segment has the measured length.
    dx = row["line_xb_px"] - row["line_xa_px"]
    dy = row["line_yb_px"] - row["line_ya_px"]
    assert math.hypot(dx, dy) == pytest.approx(row["length_px"])


def test_orientation_sign_and_empty_map():
    h, w = 60, 60
    down_right = ellipse(h, w, 30, 30, 20, 4, angle_deg=-45)
    labels = measure.instance_labels(np.where(down_right, 1.0, 0.0))
    (row,) = measure.measure_fish(labels, np.where(down_right, 1.0, 0.0))
    assert row["orientation_deg_px"] == pytest.approx(-45, abs=2.0)
    empty = np.zeros((10, 12))
    assert measure.instance_labels(empty).max() == 0
    assert measure.measure_fish(measure.instance_labels(empty), empty) == []


def test_min_area_drops_specks():
    prob = np.zeros((20, 20))
    prob[2:8, 2:8] = 1.0
    prob[15, 15] = 1.0
    assert measure.instance_labels(prob).max() == 2
    assert measure.instance_labels(prob, min_area=4).max() == 1


class ThresholdModel(nnx.Module):
    """Stand-in model: fish where the normalised red channel is positive (bright pixels)."""

    def __init__(self):
        self.scale = nnx.Param(jnp.asarray(5.0))

    def __call__(self, x, *, train=False, return_aux=False):
        fish = x[..., 0] * self.scale[...]
        logits = jnp.stack([-fish, fish], axis=-1)
        return (logits, {"cam": logits}) if return_aux else logits


def write_image(path, mask):
    img = np.where(mask[..., None], 230, 10).astype(np.uint8).repeat(3, -1)
    Image.fromarray(img).save(path)


@pytest.fixture()
def photo_dir(tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    h, w = 64, 96
    two = ellipse(h, w, 20, 25, 14, 5) | ellipse(h, w, 44, 70, 16, 5, angle_deg=20)
    write_image(d / "two_fish.jpg", two)
    odd = ellipse(37, 53, 18, 26, 12, 4)  # odd size
    write_image(d / "odd.png", odd)
    write_image(d / "empty.png", np.zeros((40, 40), bool))
    (d / "notes.txt").write_text("not an image")
    return d


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_predict_folder_counts_measures_and_writes_everything(photo_dir, tmp_path):
    out = tmp_path / "out"
    summary = predict.predict_folder(ThresholdModel(), photo_dir, out, short_side=32)
    assert summary["num_images"] == 3
    images = {r["image"]: r for r in read_csv(out / "images.csv")}
    assert set(images) == {"two_fish.jpg", "odd.png", "empty.png"}
    assert int(images["two_fish.jpg"]["fish_count"]) == 2
    assert int(images["odd.png"]["fish_count"]) == 1
    assert int(images["empty.png"]["fish_count"]) == 0
    # Model input: short side 32 -> 32x48, 32x45 (int(32*53/37)), 32x32.
    assert (images["two_fish.jpg"]["model_height"], images["two_fish.jpg"]["model_width"]) == (
        "32",
        "48",
    )
    assert images["odd.png"]["model_width"] == "45"
    fish = read_csv(out / "fish.csv")
    assert len(fish) == 3
    odd_row = next(r for r in fish if r["image"] == "odd.png")
    # Measured in the original 37x53 image: the ellipse is about 24 px long and 8 px wide.
    assert float(odd_row["length_orig"]) == pytest.approx(24, abs=3.5)
    assert float(odd_row["width_orig"]) == pytest.approx(8, abs=3.5)
    assert float(odd_row["length_px"]) < float(odd_row["length_orig"])
    for name, size in [("two_fish.png", (64, 96)), ("odd.png", (37, 53)), ("empty.png", (40, 40))]:
        inst = np.asarray(Image.open(out / "instances" / name))
        assert inst.shape == size
        assert (out / "overlays" / name).exists()
    inst = np.asarray(Image.open(out / "instances" / "two_fish.png"))
    assert set(np.unique(inst)) == {0, 1, 2}
    assert (out / "summary.json").exists()


def test_unreadable_image_is_a_clear_error_or_skipped(photo_dir, tmp_path):
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        predict.predict_folder(ThresholdModel(), photo_dir, tmp_path / "o1", short_side=None)
    summary = predict.predict_folder(
        ThresholdModel(), photo_dir, tmp_path / "o2", short_side=None, skip_unreadable=True
    )
    assert summary["num_images"] == 3
    assert len(summary["skipped"]) == 1 and "broken.jpg" in summary["skipped"][0]


def test_bad_folders_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder not found"):
        predict.list_images(tmp_path / "nope")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(ValueError, match="no image files"):
        predict.list_images(tmp_path / "empty_dir")
    with pytest.raises(app.UsageError, match="--checkpoint"):
        entry.parse_checkpoint("bestest")  # every entry point parses --checkpoint so
