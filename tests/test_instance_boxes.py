"""Instance boxes against true boxes (eval/instances.py) on hand-made boxes with a known AP."""

import math

import numpy as np
import pytest

from alcfcn_jax.eval import instances as inst


def _case():
    # Image A: two fish, one hit, one false alarm, the second fish hit at a lower score.
    a = (
        np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 0, 30, 10]], float),
        np.array([0.9, 0.8, 0.7]),
        np.array([[0, 0, 10, 10], [20, 0, 30, 10]], float),
    )
    # Image B: one fish cut into two instances: the higher-scored one (IoU 0.81) matches, the
    # other is a duplicate (false positive).
    b = (
        np.array([[0, 0, 10, 10], [1, 1, 10, 10]], float),
        np.array([0.6, 0.95]),
        np.array([[0, 0, 10, 10]], float),
    )
    return [a, b]


def test_known_ap_precision_recall_and_share():
    m = inst.box_detection_metrics(_case())
    # Ranked: .95 TP, .9 TP, .8 FP, .7 TP, .6 FP; 3 true boxes.
    # Envelope precision 1 up to recall 2/3, 0.75 up to 1: AP = 2/3 + 0.75 / 3.
    assert m["ap50"] == pytest.approx(2 / 3 + 0.75 / 3)
    assert m["instance_precision"] == pytest.approx(3 / 5)
    assert m["instance_recall"] == pytest.approx(1.0)
    assert m["true_positives"] == 3 and m["num_instances"] == 5 and m["num_true_boxes"] == 3
    # T1: 1 instance, T2: 1, T3: 2.
    assert m["one_instance_share"] == pytest.approx(2 / 3)
    assert m["boxes_with_2plus"] == pytest.approx(1 / 3)
    assert m["boxes_with_0"] == 0.0


def test_iou_below_half_is_a_false_positive():
    true = np.array([[0, 0, 10, 10]], float)
    shifted = np.array([[0, 0, 10, 20]], float)  # IoU 0.5 exactly: a match
    assert inst.match_image(shifted, [1.0], true).tolist() == [True]
    shifted = np.array([[0, 0, 10, 21]], float)  # IoU 10/21 < 0.5
    assert inst.match_image(shifted, [1.0], true).tolist() == [False]
    m = inst.box_detection_metrics([(shifted, [1.0], true)])
    assert m["ap50"] == 0.0 and m["instance_recall"] == 0.0


def test_perfect_and_empty():
    true = np.array([[0, 0, 4, 4], [5, 5, 9, 9]], float)
    m = inst.box_detection_metrics([(true, [0.2, 0.3], true)])
    assert m["ap50"] == pytest.approx(1.0) and m["one_instance_share"] == 1.0
    m = inst.box_detection_metrics([(np.zeros((0, 4)), np.zeros(0), true)])
    assert m["ap50"] == 0.0 and math.isnan(m["instance_precision"]) and m["boxes_with_0"] == 1.0
    m = inst.box_detection_metrics([(true, [0.5, 0.5], np.zeros((0, 4)))])
    assert math.isnan(m["ap50"]) and m["instance_precision"] == 0.0


def test_labels_to_boxes_and_means():
    labels = np.zeros((6, 8), np.int32)
    labels[1:3, 2:5] = 1
    labels[4, 7] = 2
    assert inst.labels_to_boxes(labels).tolist() == [[2, 1, 5, 3], [7, 4, 8, 5]]
    prob = np.where(labels == 1, 0.8, 0.6)
    np.testing.assert_allclose(inst.mean_per_instance(labels, prob), [0.8, 0.6])
