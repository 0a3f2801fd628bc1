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


def _extent_case():
    """Two images whose figures are worked out by hand below."""
    # Image 1 (20x30): true boxes A (10x5) and B (8x4). Instance 1 covers rows 3-5, columns 4-9
    # of A (18 pixels, box (4,3,10,6): IoU 18/50 = 0.36, centred on A's centre); instance 2 is a
    # 2x2 false alarm outside both boxes. B has nothing.
    lab1 = np.zeros((20, 30), np.int32)
    lab1[3:6, 4:10] = 1
    lab1[10:12, 20:22] = 2
    prob1 = np.where(lab1 == 1, 0.9, np.where(lab1 == 2, 0.6, 0.1))
    true1 = np.array([[2, 2, 12, 7], [20, 14, 28, 18]], float)
    # Image 2 (5x12): true box C (10x3) predicted exactly (IoU 1, length 10 = its long side).
    lab2 = np.zeros((5, 12), np.int32)
    lab2[0:3, 0:10] = 1
    prob2 = np.where(lab2 == 1, 0.8, 0.0)
    true2 = np.array([[0, 0, 10, 3]], float)
    return [inst.image_record(lab1, prob1, true1), inst.image_record(lab2, prob2, true2)]


def test_extent_figures_worked_by_hand():
    recs = _extent_case()
    assert recs[0]["pred_boxes"] == [[4, 3, 10, 6], [20, 10, 22, 12]]
    assert recs[0]["coverage"] == [pytest.approx(0.36), 0.0]
    assert (recs[0]["fish_pixels"], recs[0]["fish_in_boxes"]) == (22, 18)
    m = inst.extent_metrics(recs)
    # Ranked: 0.9 (IoU 0.36), 0.8 (IoU 1), 0.6 (IoU 0); three true boxes.
    assert m["ap50"] == pytest.approx(1 / 6)  # FP, TP at precision 1/2, FP
    assert m["ap30"] == pytest.approx(2 / 3)  # TP, TP, FP
    assert m["ap70"] == pytest.approx(1 / 6)
    assert m["ap50_95"] == pytest.approx(1 / 6)  # only C matches, at every threshold
    assert m["instance_precision"] == pytest.approx(1 / 3)
    assert m["best_iou_median"] == pytest.approx(0.36)  # A 0.36, B 0, C 1
    assert m["best_iou_share50"] == pytest.approx(1 / 3)
    assert m["box_coverage_median"] == pytest.approx(0.36)
    assert m["pixel_precision"] == pytest.approx(48 / 52)
    assert m["length_matched"] == 1 and m["length_in_range"] == 1.0
    assert m["length_error_median"] == pytest.approx(0.0)
    # True sizes on the predicted centres: instance 1 becomes A itself, instance 2 takes B's size
    # and misses it, C stays: TP, TP, FP.
    assert m["ap50_true_size"] == pytest.approx(2 / 3)


def test_length_against_the_true_box():
    # A 20x4 box; the instance covers 14 of its 20 columns: IoU 0.7 (matched), length 14 is
    # below 0.9 x 20 (out of range), relative error 6 / 20.
    lab = np.zeros((6, 24), np.int32)
    lab[0:4, 0:14] = 1
    m = inst.extent_metrics([inst.image_record(lab, lab * 1.0, np.array([[0, 0, 20, 4.0]]))])
    assert m["length_matched"] == 1 and m["length_in_range"] == 0.0
    assert m["length_error_median"] == pytest.approx(0.3)
    # A diagonal bar is longer than the box's long side but within 1.1 x its diagonal.
    lab = np.zeros((12, 12), np.int32)
    for k in range(10):
        lab[k, k] = lab[k, k + 1] = 1
    m = inst.extent_metrics([inst.image_record(lab, lab * 1.0, np.array([[0, 0, 11, 10.0]]))])
    assert m["length_matched"] == 1 and m["length_in_range"] == 1.0


def test_box_pixels_take_pixel_centres():
    assert inst.box_pixels((0.4, 0.6, 2.6, 2.4), (5, 5)) == (slice(1, 2), slice(0, 3))
    assert inst.box_pixels((3.6, 0, 3.9, 5), (5, 5)) == (slice(0, 5), slice(4, 4))  # no centre
    assert inst.box_pixels((-5, -5, 50, 50), (4, 6)) == (slice(0, 4), slice(0, 6))


def test_extent_figures_of_nothing():
    lab = np.zeros((8, 8), np.int32)
    m = inst.extent_metrics([inst.image_record(lab, lab * 0.0, np.array([[0, 0, 4, 4.0]]))])
    assert m["ap50"] == 0.0 and m["box_coverage_median"] == 0.0 and m["best_iou_median"] == 0.0
    assert math.isnan(m["pixel_precision"]) and math.isnan(m["length_in_range"])
    m = inst.extent_metrics([inst.image_record(lab, lab * 0.0, np.zeros((0, 4)))])
    assert math.isnan(m["ap50"]) and math.isnan(m["box_coverage_median"])


def test_instance_confidence_is_the_mean_of_its_confident_pixels():
    lab = np.zeros((6, 12), np.int32)
    lab[0:4, 0:4] = 1  # an outline: a 2x2 core at 0.9 in a ring of water at 0.1
    lab[0:2, 6:8] = 2  # a blob at 0.7 everywhere
    lab[4:6, 8:12] = 3  # nothing above 0.5: the mean of all its pixels
    prob = np.zeros(lab.shape)
    prob[lab == 1] = 0.1
    prob[1:3, 1:3] = 0.9
    prob[lab == 2] = 0.7
    prob[4:6, 8:12] = [[0.2, 0.4, 0.2, 0.4]] * 2
    np.testing.assert_allclose(inst.instance_confidence(lab, prob), [0.9, 0.7, 0.3])
    # The mean over all pixels would rank the outlined fish (0.3) below the blob and lose AP:
    # with instance 1 on the only true box, it is the first in the ranking.
    rec = inst.image_record(lab, prob, np.array([[0, 0, 4, 4.0]]))
    assert rec["scores"] == pytest.approx([0.9, 0.7, 0.3])
    assert inst.extent_metrics([rec])["ap50"] == pytest.approx(1.0)


def test_figures_by_fish_size_worked_by_hand():
    # Three true boxes in one 320x400 map (classes at 1/16 and 1/4 of the short side: 20 and 80
    # pixels): a small fish (10 px long), a medium one (40 px) and a large one (80 px). The small
    # fish gets an instance twice its size (IoU 0.25: found, not at 0.5), the medium one an
    # instance of half its length (IoU 0.5), the large one none.
    lab = np.zeros((320, 400), np.int32)
    lab[0:10, 0:20] = 1  # holds the small box (0,0)-(10,5)
    lab[50:60, 40:60] = 2  # medium box x 40-80, y 50-60: instance 20x10 in 40x10: IoU 0.5
    true = np.array([[0, 0, 10, 5.0], [40, 50, 80, 60], [100, 0, 180, 40]])
    m = inst.extent_metrics([inst.image_record(lab, lab > 0, true)])
    # small: its box 10x5 inside the 20x10 instance: IoU 50 / 200 = 0.25, long sides 20 / 10.
    assert m["small_boxes"] == 1 and m["small_best_iou_share50"] == 0.0
    assert m["small_missed"] == 0.0 and m["small_size_ratio_median"] == pytest.approx(2.0)
    # medium: IoU 200 / 400 = 0.5 (counted), long sides 20 / 40.
    assert m["medium_boxes"] == 1 and m["medium_best_iou_share50"] == 1.0
    assert m["medium_size_ratio_median"] == pytest.approx(0.5)
    # large: no instance overlaps it: missed, no size ratio.
    assert m["large_boxes"] == 1 and m["large_missed"] == 1.0 and m["large_best_iou_share50"] == 0
    assert math.isnan(m["large_size_ratio_median"])
    # AP50 is bounded by the share of boxes with a best IoU >= 0.5.
    assert m["ap50"] <= m["best_iou_share50"] == pytest.approx(1 / 3)
    table = inst.size_table(m)
    assert "| small (< 1/16) | 1 | 0.000 | 0.000 | 2.00 |" in table
    assert "| large (>= 1/4) | 1 | 0.000 | 1.000 | - |" in table
    # The classes follow the map's resolution: the same scene at twice the size, same figures.
    big = np.kron(lab, np.ones((2, 2), np.int32))
    m2 = inst.extent_metrics([inst.image_record(big, big > 0, true * 2)])
    for name in ("small", "medium", "large"):
        assert m2[f"{name}_boxes"] == 1
        assert m2[f"{name}_best_iou_share50"] == m[f"{name}_best_iou_share50"]


def test_figures_by_fish_size_without_boxes_of_a_class():
    lab = np.zeros((80, 80), np.int32)
    m = inst.extent_metrics([inst.image_record(lab, lab * 0.0, np.array([[0, 0, 4, 4.0]]))])
    assert m["small_boxes"] == 1 and m["small_missed"] == 1.0
    assert m["medium_boxes"] == 0 and math.isnan(m["medium_best_iou_share50"])
    assert "| medium (1/16 - 1/4) | 0 | - | - | - |" in inst.size_table(m)
