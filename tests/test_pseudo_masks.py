"""Tests of pseudo-mask generation: files, manifest, quality, interruption and resumption."""

import hashlib
import json
import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from alcfcn_jax import sharding as shd
from alcfcn_jax.data import pseudo_masks as pm_data
from alcfcn_jax.data.pipeline import eval_batches
from alcfcn_jax.train import mask_writer as pm


class ThresholdModel(nnx.Module):
    """Stand-in model: fish wherever the image's first channel is positive."""

    def __init__(self):
        self.scale = nnx.Param(jnp.asarray(3.0))

    def __call__(self, x, *, train=False, return_aux=False):
        fish = x[..., 0] * self.scale[...]
        logits = jnp.stack([-fish, fish], axis=-1)
        return (logits, {"cam": logits}) if return_aux else logits


def make_source(n=6, with_masks=True, seed=0):
    """Examples of two sizes whose 'prediction' (image > 0) is known, ids with subfolders."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = (12, 20) if i % 2 == 0 else (16, 16)
        pred = (rng.random((h, w)) > 0.7).astype(np.int32)
        image = np.where(pred[..., None] == 1, 1.0, -1.0).astype(np.float32).repeat(3, -1)
        mask = pred.copy() if with_masks else np.full((h, w), 255, np.int32)
        if with_masks:
            mask[0, :4] = 1 - mask[0, :4]  # 4 deliberate errors per image
        out.append(
            {
                "image": image,
                "points": np.full((h, w), 255, np.int32),
                "mask": mask,
                "count": 0,
                "habitat": "h",
                "id": f"{'valid' if i % 3 else 'empty'}/img_{i}",
                "_pred": pred,
            }
        )
    return out


class Interrupting:
    """A source that raises after ``fail_at`` reads (an interrupted run)."""

    def __init__(self, source, fail_at):
        self.source, self.fail_at, self.reads = source, fail_at, 0

    def __len__(self):
        return len(self.source)

    def __getitem__(self, i):
        self.reads += 1
        if self.reads > self.fail_at:
            raise KeyboardInterrupt("simulated interruption")
        return self.source[i]


def run(source, out_dir, step, mesh=None, batch_size=2):
    batches = eval_batches(source, batch_size=batch_size, worker_threads=0, prefetch=0)
    return pm.generate(
        ThresholdModel(),
        batches,
        out_dir,
        step=step,
        expected_count=len(source),
        summary={"model": {"name": "threshold"}},
        mesh=mesh,
    )


def digests(out_dir):
    """{mask path: sha256 of its bytes} (content, not timestamps: mtimes can tie)."""
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out_dir.rglob("*.png"))}


@pytest.fixture
def mask_writes(monkeypatch):
    """Every mask path the writer saves, in order (wraps ``pseudo_masks.save_png_atomic``)."""
    written = []
    original = pm.save_png_atomic

    def recording(image, path, *args, **kwargs):
        written.append(pathlib.Path(path))
        return original(image, path, *args, **kwargs)

    monkeypatch.setattr(pm, "save_png_atomic", recording)
    return written


def test_masks_manifest_and_quality(tmp_path):
    src = make_source()
    out = tmp_path / "pseudo_masks"
    manifest = run(src, out, step=7)
    for ex in src:
        path = out / (ex["id"] + ".png")
        arr = np.asarray(Image.open(path))
        assert arr.dtype == np.uint8 and set(np.unique(arr)) <= {0, 255}
        np.testing.assert_array_equal(arr, ex["_pred"] * 255)
    assert (out / "valid" / "img_1.png").exists() and (out / "empty" / "img_0.png").exists()
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["checkpoint_step"] == 7 and on_disk["count"] == len(src)
    assert sorted(on_disk["ids"]) == sorted(e["id"] for e in src)
    # Quality against the true masks, computed by hand.
    cf = np.zeros((2, 2), np.int64)
    for ex in src:
        np.add.at(cf, (ex["_pred"].ravel(), ex["mask"].ravel()), 1)
    inter = np.diag(cf)
    union = cf.sum(0) + cf.sum(1) - inter
    assert manifest["quality"]["iou_fish"] == pytest.approx(inter[1] / union[1])
    assert manifest["quality"]["miou"] == pytest.approx(np.mean(inter / union))
    assert manifest["quality"]["num_images_with_masks"] == len(src)
    assert not (out / pm_data.PROGRESS).exists()
    assert pm_data.load_manifest(out, expected_step=7)["count"] == len(src)


def test_no_quality_without_true_masks(tmp_path):
    manifest = run(make_source(4, with_masks=False), tmp_path / "pm", step=1)
    assert manifest["quality"] is None


def test_interrupted_run_resumes_and_rerun_rewrites_nothing(tmp_path, mask_writes):
    src = make_source(8)
    out = tmp_path / "pm"
    with pytest.raises(KeyboardInterrupt):
        run(Interrupting(src, fail_at=5), out, step=3, batch_size=2)
    partial = digests(out)
    assert 0 < len(partial) < len(src)
    assert not (out / "manifest.json").exists()
    with pytest.raises(pm_data.PseudoMaskError, match="unfinished"):
        pm_data.load_manifest(out)
    mask_writes.clear()
    manifest = run(src, out, step=3)
    assert manifest["written_this_run"] == len(src) - len(partial) == len(mask_writes)
    assert not set(mask_writes) & set(partial), "a mask of the interrupted run was rewritten"
    after = digests(out)
    assert len(after) == len(src)
    assert {p: after[p] for p in partial} == partial
    # A rerun with the same checkpoint writes no mask.
    mask_writes.clear()
    again = run(src, out, step=3)
    assert again["written_this_run"] == 0 and mask_writes == []
    assert digests(out) == after
    assert again["quality"] == manifest["quality"]  # read back from the PNGs: same numbers


def test_new_checkpoint_replaces_stale_masks(tmp_path):
    src = make_source(4)
    out = tmp_path / "pm"
    run(src, out, step=3)
    with pytest.raises(pm_data.PseudoMaskError, match="stale"):
        pm_data.load_manifest(out, expected_step=9)
    # An interrupted run from another step removes the old manifest and masks first.
    with pytest.raises(KeyboardInterrupt):
        run(Interrupting(src, fail_at=2), out, step=9)
    assert not (out / "manifest.json").exists()
    n_new = len(digests(out))
    assert n_new < len(src)  # the step-3 masks are gone, only step-9 ones remain
    manifest = run(src, out, step=9)
    assert manifest["checkpoint_step"] == 9
    assert manifest["written_this_run"] == len(src) - n_new
    assert pm_data.load_manifest(out, expected_step=9)["count"] == len(src)


def test_sharded_generation_matches(tmp_path):
    src = make_source(5)
    a = run(src, tmp_path / "a", step=1, batch_size=3)
    b = run(src, tmp_path / "b", step=1, mesh=shd.make_mesh(), batch_size=3)
    assert a["ids"] == b["ids"]
    for ex in src:
        name = ex["id"] + ".png"
        np.testing.assert_array_equal(
            np.asarray(Image.open(tmp_path / "a" / name)),
            np.asarray(Image.open(tmp_path / "b" / name)),
        )


def test_manifest_errors_are_clear(tmp_path):
    with pytest.raises(pm_data.PseudoMaskError, match="not found"):
        pm_data.load_manifest(tmp_path / "missing")
    (tmp_path / "pm").mkdir()
    with pytest.raises(pm_data.PseudoMaskError, match="no manifest"):
        pm_data.load_manifest(tmp_path / "pm")
    (tmp_path / "pm" / "manifest.json").write_text("{not json")
    with pytest.raises(pm_data.PseudoMaskError, match="unreadable"):
        pm_data.load_manifest(tmp_path / "pm")
    src = make_source(2)
    run(src, tmp_path / "pm2", step=1)
    (tmp_path / "pm2" / (src[0]["id"] + ".png")).unlink()
    with pytest.raises(pm_data.PseudoMaskError, match="missing"):
        pm_data.load_manifest(tmp_path / "pm2")
    with pytest.raises(pm_data.PseudoMaskError, match="file name"):
        pm_data.mask_path(tmp_path, "../escape")


def test_click_instance_masks_keep_clicked_blobs_and_regenerate_on_new_settings(tmp_path):
    from alcfcn_jax.eval.outlines import InstanceSettings

    # One image, two predicted blobs; only the left one holds a click, and a second click lies
    # where nothing was predicted.
    h, w = 16, 24
    pred = np.zeros((h, w), np.int32)
    pred[3:7, 2:7] = 1
    pred[9:13, 15:20] = 1
    points = np.full((h, w), 255, np.int32)
    points[5, 4] = 1
    points[12, 4] = 1
    image = np.where(pred[..., None] == 1, 1.0, -1.0).astype(np.float32).repeat(3, -1)
    unknown = np.full((h, w), 255, np.int32)
    source = [
        {"image": image, "points": points, "mask": unknown, "count": 2, "habitat": "h", "id": "a"}
    ]
    batches = eval_batches(source, batch_size=1, worker_threads=0, prefetch=0)
    clicks = InstanceSettings(pseudo_masks="click_instances")
    manifest = pm.generate(
        ThresholdModel(), batches, tmp_path, step=1, expected_count=1, summary={}, settings=clicks
    )
    assert manifest["masks"]["pseudo_masks"] == "click_instances"
    mask = pm_data.read_mask(tmp_path / "a.png")
    expected = np.zeros((h, w), np.int64)
    expected[3:7, 2:7] = 1  # the clicked blob
    expected[10:15, 2:7] = 1  # a 5x5 seed around the missed click; the clickless blob is gone
    np.testing.assert_array_equal(mask, expected)
    # The same step with argmax settings rewrites the masks (the manifest says how they were made).
    batches = eval_batches(source, batch_size=1, worker_threads=0, prefetch=0)
    manifest = pm.generate(
        ThresholdModel(), batches, tmp_path, step=1, expected_count=1, summary={}
    )
    assert manifest["masks"] == {"pseudo_masks": "argmax"} and manifest["written_this_run"] == 1
    np.testing.assert_array_equal(pm_data.read_mask(tmp_path / "a.png"), pred)
