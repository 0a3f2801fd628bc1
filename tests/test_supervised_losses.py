"""Supervised and point-level losses against torch: torch's values committed once
(tests/fixtures/torch_free/losses.npz) in every environment, and live torch where installed."""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import torch_joint_loss

from alcfcn_jax.losses.point import point_level_loss
from alcfcn_jax.losses.supervised import cross_entropy, joint_loss

LOSSES = pathlib.Path(__file__).parent / "fixtures" / "torch_free" / "losses.npz"


def test_losses_match_committed_torch_values():
    with np.load(LOSSES) as f:
        ce = cross_entropy(jnp.asarray(f["ce_logits"]), jnp.asarray(f["ce_labels"]))
        np.testing.assert_allclose(np.asarray(ce), f["ce_per_image"], rtol=1e-6)
        for channels in (1, 2):
            got = joint_loss(
                jnp.asarray(f[f"joint{channels}_logits"]), jnp.asarray(f["joint_mask"])
            )
            np.testing.assert_allclose(np.asarray(got), f[f"joint{channels}_per_image"], rtol=1e-5)
        pl = point_level_loss(jnp.asarray(f["point_logits"]), jnp.asarray(f["point_points"]))
        np.testing.assert_allclose(np.asarray(pl), f["point_per_image"], rtol=1e-6)


def rand(shape, seed, scale=3.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def labels_with_ignore(shape, n_classes, seed, ignore_frac=0.3):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, n_classes, shape)
    lab[rng.random(shape) < ignore_frac] = 255
    return lab


def test_cross_entropy_matches_torch_per_image():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    logits = rand((3, 9, 11, 2), 0)
    labels = labels_with_ignore((3, 9, 11), 2, 1)
    got = np.asarray(cross_entropy(jnp.asarray(logits), jnp.asarray(labels)))
    for b in range(3):
        lt = torch.from_numpy(logits[b : b + 1]).permute(0, 3, 1, 2)
        want = F.nll_loss(
            F.log_softmax(lt, 1), torch.from_numpy(labels[b : b + 1]), ignore_index=255
        )
        assert got[b] == pytest.approx(float(want), rel=1e-6)


def test_cross_entropy_all_ignored_is_zero_and_shapes_checked():
    logits = jnp.zeros((1, 2, 2, 2))
    assert float(cross_entropy(logits, jnp.full((1, 2, 2), 255))[0]) == 0.0
    with pytest.raises(ValueError, match="expected logits"):
        cross_entropy(logits, jnp.zeros((1, 2, 3), jnp.int32))


@pytest.mark.parametrize("channels", [1, 2])
def test_joint_loss_matches_torch_formula(channels):
    torch = pytest.importorskip("torch")
    logits = rand((2, 40, 37, channels), 3)
    mask = np.zeros((2, 40, 37), np.float32)
    mask[0, 5:20, 8:30] = 1
    mask[1, 30:, :10] = 1
    got = np.asarray(joint_loss(jnp.asarray(logits), jnp.asarray(mask)))
    fish = logits[..., 0] if channels == 1 else logits[..., 1] - logits[..., 0]
    want = torch_joint_loss(torch, torch.from_numpy(fish)[:, None], torch.from_numpy(mask)[:, None])
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-5)


def test_joint_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="\\(B,H,W,1\\)"):
        joint_loss(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="mask shape"):
        joint_loss(jnp.zeros((1, 4, 4, 1)), jnp.zeros((1, 4, 5)))


def test_point_level_loss_matches_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    logits = rand((3, 10, 12, 2), 5)
    points = np.full((3, 10, 12), 255)
    points[0, 2, 3] = 1
    points[0, 7, 7] = 0
    points[1, 4, 4] = 0  # background point only: fish class absent
    points[2, 1, 1] = points[2, 9, 11] = 1
    got = np.asarray(point_level_loss(jnp.asarray(logits), jnp.asarray(points)))
    for b in range(3):
        lt = torch.from_numpy(logits[b : b + 1]).permute(0, 3, 1, 2)
        labels = torch.zeros(1, 2)
        labels[0, np.unique(points[b][points[b] != 255])] = 1
        want = F.multilabel_soft_margin_loss(lt.reshape(1, 2, -1).max(2)[0], labels)
        want = want + F.nll_loss(
            F.log_softmax(lt, 1), torch.from_numpy(points[b : b + 1]), ignore_index=255
        )
        assert got[b] == pytest.approx(float(want), rel=1e-6)


def test_point_level_loss_without_points():
    logits = jnp.asarray(rand((1, 4, 4, 2), 9))
    got = float(point_level_loss(logits, jnp.full((1, 4, 4), 255))[0])
    x = np.asarray(logits).reshape(-1, 2).max(0)
    want = np.mean(np.log1p(np.exp(x)))  # every class absent: -log sigmoid(-x)
    assert got == pytest.approx(want, rel=1e-6)


def test_joint_loss_ignores_unknown_pixels():
    logits = jnp.asarray(rand((1, 12, 12, 1), 8))
    mask = np.zeros((1, 12, 12), np.int32)
    mask[0, 3:7, 3:7] = 1
    base = float(joint_loss(logits, jnp.asarray(mask))[0])
    unknown = mask.copy()
    unknown[0, 0, :] = 255
    got = float(joint_loss(logits, jnp.asarray(unknown))[0])
    assert np.isfinite(got) and got != base
    # Changing the logits of ignored pixels does not change the loss.
    moved = np.asarray(logits).copy()
    moved[0, 0, :, 0] += 5.0
    assert float(joint_loss(jnp.asarray(moved), jnp.asarray(unknown))[0]) == pytest.approx(got)
