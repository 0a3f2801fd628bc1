"""Optimal-transport outlines (eval/transport.py) and point blots (eval/point_blots.py) on drawn
scenes: both grow from a seed inside the fish, stop at its colour edge and keep fish apart."""

import numpy as np
import pytest
from test_outlines import _ellipse, _iou, _scene

from alcfcn_jax.eval import outlines
from alcfcn_jax.eval.point_blots import point_blots
from alcfcn_jax.eval.transport import sinkhorn_assign, transport_outlines


def _one_fish():
    """A 48x72 scene holding one fish (an ellipse 15 x 33 pixels)."""
    shape = (48, 72)
    fish = _ellipse(shape, 24, 36, 7, 16)
    return shape, fish, _scene(shape, [fish])


def _two_fish():
    """A 40x80 scene holding a small fish (left) and a larger one (right)."""
    shape = (40, 80)
    a = _ellipse(shape, 20, 20, 4, 6)
    b = _ellipse(shape, 20, 58, 6, 12)
    return shape, a, b, _scene(shape, [a, b])


def test_sinkhorn_respects_the_budgets():
    # Three columns, two rows: row 1 may take one column only; the cheapest for it is column 0.
    cost = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    assert sinkhorn_assign(cost, np.array([2.0, 1.0]), eps=0.05, iters=50).tolist() == [1, 0, 0]
    # With a budget of two the row takes its second-cheapest column too.
    cost = np.array([[1.0, 0.5, 0.0], [0.0, 0.2, 1.0]])
    assert sinkhorn_assign(cost, np.array([1.0, 2.0]), eps=0.05, iters=200).tolist() == [1, 1, 0]
    # Forbidden pairs (inf) are never used.
    cost = np.array([[0.0, np.inf], [np.inf, 0.0]])
    assert sinkhorn_assign(cost, np.array([1.0, 1.0]), eps=0.05, iters=10).tolist() == [0, 1]


def test_transport_grows_within_the_fish_by_its_budget():
    shape, fish, image = _one_fish()
    core = _ellipse(shape, 24, 36, 3, 5).astype(np.int32)
    prob = np.where(fish, 0.6, 0.05)
    prob[core > 0] = 0.9
    out = transport_outlines(image, core, prob)
    grown = out == 1
    assert out.max() == 1
    assert (grown & fish).sum() / grown.sum() > 0.98  # stops at the fish's edge
    assert grown.sum() > 3 * (core > 0).sum()  # grew well beyond the seed
    # The budget is 0.7 x the probability mass nearest the instance: a bigger budget, more fish.
    more = transport_outlines(image, core, prob, budget=1.0) == 1
    assert more.sum() > grown.sum() and _iou(more, fish) > _iou(grown, fish)


def test_transport_keeps_two_fish_apart():
    shape, a, b, image = _two_fish()
    labels = np.zeros(shape, np.int32)
    labels[_ellipse(shape, 20, 20, 2, 3)] = 1
    labels[_ellipse(shape, 20, 58, 2, 4)] = 2
    out = transport_outlines(image, labels, np.where(a | b, 0.6, 0.05))
    assert out.max() == 2
    assert ((out == out[20, 20]) & ~a).sum() == 0 and ((out == out[20, 58]) & ~b).sum() == 0
    assert _iou(out == out[20, 20], a) > 0.5 and _iou(out == out[20, 58], b) > 0.4


def test_transport_edge_cases_and_switch():
    image = np.zeros((8, 8, 3), np.uint8)
    empty = np.zeros((8, 8), np.int32)
    assert transport_outlines(image, empty, np.zeros((8, 8))).max() == 0
    with pytest.raises(ValueError, match="share"):
        transport_outlines(image, empty, np.zeros((8, 9)))
    settings = outlines.InstanceSettings(outline="transport")
    with pytest.raises(ValueError, match="probability"):
        outlines.outline(empty, image, settings)
    # The switch: instance_fn passes the probability on.
    shape, fish, scene = _one_fish()
    prob = np.where(fish, 0.6, 0.05)
    prob[_ellipse(shape, 24, 36, 3, 5)] = 0.9
    labels = outlines.instance_fn(settings)(prob, scene)
    assert labels.max() == 1 and ((labels > 0) & ~fish).sum() == 0


def test_point_blots_grow_from_a_click_inside_the_fish():
    shape, fish, image = _one_fish()
    points = np.zeros(shape, np.int32)
    points[24, 36] = 1
    prob = np.where(_ellipse(shape, 24, 36, 3, 5), 0.9, 0.1)
    still = point_blots(image, prob, points, jitter=())
    moved = point_blots(image, prob, points)
    for lab in (still, moved):
        assert lab.max() == 1 and ((lab > 0) & ~fish).sum() == 0
    # The jittered walks that agree in colour join: the blot grows over more of the fish.
    assert (moved > 0).sum() > (still > 0).sum() > 20


def test_point_blots_one_instance_per_click():
    shape, a, b, image = _two_fish()
    points = np.zeros(shape, np.int32)
    points[20, 20] = points[20, 58] = 1
    lab = point_blots(image, np.full(shape, 0.1), points)
    assert lab.max() == 2
    assert _iou(lab == lab[20, 20], a) > 0.8 and _iou(lab == lab[20, 58], b) > 0.6
    # A confident blob far from every click is not an instance; no click, no instance.
    prob = np.full(shape, 0.1)
    prob[2:6, 74:78] = 0.95
    assert point_blots(image, prob, points)[2:6, 74:78].max() == 0
    assert point_blots(image, prob, np.zeros(shape, np.int32)).max() == 0


def test_point_blots_pseudo_mask_switch():
    shape = (40, 80)
    a = _ellipse(shape, 20, 20, 4, 6)
    image = _scene(shape, [a])
    points = np.zeros(shape, np.int32)
    points[20, 20] = 1
    settings = outlines.InstanceSettings(pseudo_masks="point_blots")
    mask = outlines.pseudo_mask(np.full(shape, 0.1), image, points, settings)
    assert mask.dtype == np.uint8 and mask[20, 20] == 1 and (mask.astype(bool) & ~a).sum() == 0
