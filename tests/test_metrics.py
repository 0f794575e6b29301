"""Segmentation metrics on hand-made cases with known answers."""

import numpy as np
import pytest

from napari_skipseg.metrics import (
    InstanceScores,
    dice_per_class,
    iou_matrix,
    match_instances,
    max_f_pixel_error,
    pixel_error,
    threshold_counts,
)


def strip(*runs, width=20):
    """A 1 x width label image from (label, start, stop) runs."""
    out = np.zeros((1, width), np.int32)
    for label, start, stop in runs:
        out[0, start:stop] = label
    return out


def test_perfect_match():
    truth = strip((1, 0, 5), (2, 8, 12), (3, 15, 20))
    pred = strip((7, 0, 5), (3, 8, 12), (9, 15, 20))  # ids need not agree
    s = match_instances(truth, pred)
    assert (s.tp, s.fp, s.fn) == (3, 0, 0)
    assert s.f1 == 1.0 and s.precision == 1.0 and s.recall == 1.0
    assert s.mean_matched_iou == 1.0


def test_one_object_split_in_two():
    truth = strip((1, 0, 10))
    pred = strip((1, 0, 6), (2, 6, 10))  # IoU 0.6 and 0.4
    s = match_instances(truth, pred)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert s.f1 == pytest.approx(2 / 3)
    assert s.precision == 0.5 and s.recall == 1.0
    assert s.mean_matched_iou == pytest.approx(0.6)


def test_one_object_missing():
    truth = strip((1, 0, 5), (2, 10, 15))
    pred = strip((1, 0, 5))
    s = match_instances(truth, pred)
    assert (s.tp, s.fp, s.fn) == (1, 0, 1)
    assert s.f1 == pytest.approx(2 / 3)
    assert s.recall == 0.5 and s.precision == 1.0


def test_one_false_positive():
    truth = strip((1, 0, 5))
    pred = strip((1, 0, 5), (2, 10, 15))
    s = match_instances(truth, pred)
    assert (s.tp, s.fp, s.fn) == (1, 1, 0)
    assert s.precision == 0.5 and s.recall == 1.0


def test_iou_exactly_at_threshold_is_not_a_match():
    truth = strip((1, 0, 10))
    pred = strip((1, 0, 5))  # IoU exactly 0.5
    iou, _, _ = iou_matrix(truth, pred)
    assert iou[0, 0] == 0.5
    s = match_instances(truth, pred, threshold=0.5)
    assert (s.tp, s.fp, s.fn) == (0, 1, 1)
    assert s.f1 == 0.0
    assert match_instances(truth, pred, threshold=0.49).tp == 1


def test_below_half_uses_optimal_one_to_one_assignment():
    # truth A = [0, 10), B = [10, 14); prediction Q = [0, 3), P = [3, 13)
    # IoU(A, P) = 7/13 = 0.54, IoU(A, Q) = 0.3, IoU(B, P) = 3/11 = 0.27, IoU(B, Q) = 0
    truth = strip((1, 0, 10), (2, 10, 14))
    pred = strip((5, 0, 3), (6, 3, 13))
    iou, t_ids, p_ids = iou_matrix(truth, pred)
    assert list(t_ids) == [1, 2] and list(p_ids) == [5, 6]
    np.testing.assert_allclose(iou, [[0.3, 7 / 13], [0.0, 3 / 11]])
    assert (iou > 0.25).sum() == 3  # three candidate pairs, but only two can be kept
    s = match_instances(truth, pred, threshold=0.25)
    # greedy (best pair first: A-P) would keep one pair; the optimum keeps A-Q and B-P
    assert (s.tp, s.fp, s.fn) == (2, 0, 0)
    assert s.mean_matched_iou == pytest.approx((0.3 + 3 / 11) / 2)
    # at 0.5 only A-P is good enough
    s = match_instances(truth, pred, threshold=0.5)
    assert (s.tp, s.fp, s.fn) == (1, 1, 1)


def test_empty_images():
    empty = np.zeros((4, 4), int)
    some = np.zeros((4, 4), int)
    some[:2, :2] = 1
    assert match_instances(empty, empty).f1 == 1.0
    s = match_instances(some, empty)
    assert (s.tp, s.fp, s.fn) == (0, 0, 1) and s.f1 == 0.0
    s = match_instances(empty, some)
    assert (s.tp, s.fp, s.fn) == (0, 1, 0)


def test_shape_mismatch():
    with pytest.raises(ValueError, match="differ in shape"):
        match_instances(np.zeros((2, 2), int), np.zeros((2, 3), int))


def test_scores_add_up():
    a = InstanceScores(2, 1, 0, 0.8)
    b = InstanceScores(1, 0, 2, 0.5)
    c = a + b
    assert (c.tp, c.fp, c.fn) == (3, 1, 2)
    assert c.mean_matched_iou == pytest.approx((2 * 0.8 + 0.5) / 3)
    assert (InstanceScores(0, 0, 0, 0.0) + InstanceScores(0, 1, 0, 0.0)).mean_matched_iou == 0.0


def test_dice_per_class():
    truth = np.array([[0, 1, 1, 2], [0, 0, 2, 2]])
    pred = np.array([[0, 1, 0, 2], [0, 1, 2, 0]])
    d = dice_per_class(truth, pred, [0, 1, 2, 3])
    assert d[0] == pytest.approx(2 * 2 / (3 + 4))
    assert d[1] == pytest.approx(2 * 1 / (2 + 2))
    assert d[2] == pytest.approx(2 * 2 / (3 + 2))
    assert d[3] == 1.0  # absent from both


def test_pixel_error():
    truth = np.array([[0, 1, 2, 2]])
    pred = np.array([[0, 2, 0, 3]])  # only foreground vs background counts
    assert pixel_error(truth, pred) == 0.25
    assert pixel_error(truth, truth) == 0.0


def test_threshold_counts_and_isbi_pixel_error_by_hand():
    truth = np.array([[0, 1, 1, 0]])
    foreground = np.array([[0.05, 0.35, 0.65, 0.95]])
    counts = threshold_counts(truth, foreground)
    assert counts.shape == (11, 3)
    # (tp, fp, fn) above 0, 0.3, 0.5 and 1.0
    assert counts[0].tolist() == [2, 2, 0]
    assert counts[3].tolist() == [2, 1, 0]
    assert counts[5].tolist() == [1, 1, 1]
    assert counts[10].tolist() == [0, 0, 2]
    # best F-score 0.8 (thresholds 0.1-0.3), although half the pixels are wrong at 0.5
    assert max_f_pixel_error(counts) == pytest.approx(0.2)
    assert pixel_error(truth, foreground > 0.5) == 0.5


def test_isbi_pixel_error_pools_counts_and_handles_empty_images():
    perfect = threshold_counts(np.array([[1, 1, 0, 0]]), np.array([[0.9, 0.8, 0.2, 0.0]]))
    assert max_f_pixel_error(perfect) == 0.0
    wrong = threshold_counts(np.array([[1, 0]]), np.array([[0.0, 1.0]]))  # nothing right anywhere
    assert max_f_pixel_error(wrong) == 1.0
    # pooled: best at 0.2-0.7, tp 2, fp 1, fn 1 -> F = 4 / 6; not the mean of the two errors (0.5)
    assert max_f_pixel_error(perfect + wrong) == pytest.approx(1 / 3)
    empty = threshold_counts(np.zeros((2, 2)), np.zeros((2, 2)))
    assert max_f_pixel_error(empty) == 0.0  # no foreground in truth or prediction
    with pytest.raises(ValueError, match="differ in shape"):
        threshold_counts(np.zeros((2, 2)), np.zeros((2, 3)))
