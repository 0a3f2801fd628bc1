"""Instances from a model (apps/instances.py): predict with config.instances, the box evaluation."""

import csv

import jax.numpy as jnp
import numpy as np
import pytest

from alcfcn_jax.apps import instances, predict
from alcfcn_jax.eval.outlines import InstanceSettings
from tests.test_predict import ThresholdModel, ellipse, photo_dir  # noqa: F401

EMBEDDING = InstanceSettings(method="embedding")


class EmbeddingModel(ThresholdModel):
    """ThresholdModel plus a 2-d embedding: 0 on the left half of the image, 5 on the right."""

    embedding_dim = 2

    def __call__(self, x, *, train=False, return_aux=False):
        logits = super().__call__(x, train=train)
        if not return_aux:
            return logits
        b, h, w, _ = x.shape
        h8, w8 = -(-h // 8), -(-w // 8)
        right = (jnp.arange(w8) >= w8 // 2).astype(jnp.float32) * 5.0
        emb = jnp.broadcast_to(jnp.stack([right, 0 * right], -1), (b, h8, w8, 2))
        return logits, {"cam": logits, "embedding": emb}


def test_embedding_needs_the_branch(photo_dir, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="embedding head"):
        predict.predict_folder(
            ThresholdModel(), photo_dir, tmp_path / "o", short_side=32, instances=EMBEDDING
        )
    assert not (tmp_path / "o").exists()


def test_predict_with_embedding_instances(photo_dir, tmp_path):  # noqa: F811
    out = tmp_path / "out"
    summary = predict.predict_folder(
        EmbeddingModel(), photo_dir, out, short_side=32, instances=EMBEDDING
    )
    assert summary["settings"]["instances"]["method"] == "embedding"
    with open(out / "images.csv") as f:
        counts = {r["image"]: int(r["fish_count"]) for r in csv.DictReader(f)}
    assert counts == {"two_fish.jpg": 2, "odd.png": 1, "empty.png": 0}
    assert (out / "overlays" / "two_fish.png").exists()


def _example(masks, boxes, hw=(32, 48)):
    fish = np.zeros(hw, bool)
    for m in masks:
        fish |= m
    image = np.where(fish, 1.0, -1.0)[..., None].repeat(3, -1).astype(np.float32)
    return {"image": image, "boxes": np.asarray(boxes, np.float32), "id": "x"}


def test_evaluate_instances_on_boxes():
    h, w = 32, 48
    a = ellipse(h, w, 10, 12, 8, 3)  # one fish, its box below
    ys, xs = np.nonzero(a)
    box_a = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    # A second true box nothing was predicted in.
    source = [_example([a], [box_a, [30, 20, 40, 28]])]
    fn = instances.make_instance_fn(ThresholdModel())
    result, rows = instances.evaluate_instances(fn, source)
    assert result["instance_precision"] == 1.0 and result["instance_recall"] == 0.5
    assert result["ap50"] == pytest.approx(0.5) and result["one_instance_share"] == 0.5
    cover_a = a.sum() / ((box_a[2] - box_a[0]) * (box_a[3] - box_a[1]))
    assert rows == [
        {
            "id": "x",
            "num_boxes": 2,
            "num_instances": 1,
            "true_positives": 1,
            "best_iou_median": 0.5,  # 1 and 0
            "box_coverage_median": pytest.approx(cover_a / 2),  # the ellipse in its box, and 0
        }
    ]
    assert result["box_coverage_median"] == pytest.approx(cover_a / 2)
    assert result["pixel_precision"] == 1.0 and result["length_in_range"] == 1.0
    assert result["instance_count_mae"] == 1.0
    md = instances.render_markdown(
        {
            **result,
            "meta": dict(
                instances=InstanceSettings().to_dict(),
                split="val",
                checkpoint="best",
                step=1,
                workdir="w",
            ),
        }
    )
    assert "| ap50 | 0.500 |" in md
