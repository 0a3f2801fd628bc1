"""The outline path end to end on the deepfish smoke preset: stage 1, pseudo masks of outlined
click instances, then A-LCFCN whose affinity branch learns from them (``alcfcn_outlines``)."""

import json
import math

import numpy as np

from alcfcn_jax.data import get_source
from alcfcn_jax.data import pseudo_masks as pm_data
from alcfcn_jax.train import mask_writer as pm_app
from alcfcn_jax.train import runner
from alcfcn_jax.train.config import resolve
from configs import deepfish, deepfish_pm
from tests.test_rounds import _short


def test_affinity_from_outlined_click_instances(tmp_path):
    w1 = tmp_path / "stage1"
    cfg1 = _short(deepfish.get_config("smoke"))
    cfg1.instances.pseudo_masks = "click_instances"
    cfg1.instances.outline = "grabcut"
    runner.run(cfg1, str(w1))
    manifest = pm_app.write_pseudo_masks(cfg1, w1)
    assert manifest["masks"]["pseudo_masks"] == "click_instances"
    masks = sorted((w1 / pm_data.PSEUDO_MASK_SUBDIR).rglob("*.png"))
    assert len(masks) == manifest["count"] > 0
    # Every click of a training image lies in its pseudo mask (one outlined instance per click).
    source = get_source(resolve(cfg1).data, "train")
    for i in range(len(source)):
        ex = source[i]
        mask = pm_data.read_mask(pm_data.mask_path(w1 / pm_data.PSEUDO_MASK_SUBDIR, ex["id"]))
        assert mask[np.asarray(ex["points"]) == 1].all()

    cfg2 = _short(deepfish.get_config("smoke"))
    cfg2.loss.affinity_weight = 1.0
    cfg2.loss.affinity_labels = "pseudo_masks"
    deepfish_pm.add_stage2_sections(cfg2, stage1_workdir=str(w1))
    w2 = tmp_path / "outlines"
    runner.run(cfg2, str(w2))
    rows = [json.loads(line) for line in open(w2 / "metrics.jsonl")]
    train = [r for r in rows if "loss_affinity" in r]
    # The term ran on every step (its value is tested in test_affinity_loss.py; on the smoke
    # data's uniform water all pairs are water pairs of identical features: 0).
    assert train and all(math.isfinite(r["loss_affinity"]) for r in train)
