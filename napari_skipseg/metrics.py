"""Segmentation metrics: instance F1 at an IoU threshold, matched IoU, Dice, pixel error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class InstanceScores:
    tp: int
    fp: int
    fn: int
    mean_matched_iou: float

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        denom = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denom if denom else 1.0

    def __add__(self, other: InstanceScores) -> InstanceScores:
        n1, n2 = self.tp, other.tp
        iou = (self.mean_matched_iou * n1 + other.mean_matched_iou * n2) / (n1 + n2) if n1 + n2 else 0.0
        return InstanceScores(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, iou)


def overlap_table(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixels shared by every true and every predicted id, background 0 included when present.

    Returns ``(table, true_ids, pred_ids)`` with ``table[i, j]`` the pixels where ``truth`` is
    ``true_ids[i]`` and ``pred`` is ``pred_ids[j]`` (its row and column sums: each id's size).
    """
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    t_ids, t_inv = np.unique(truth, return_inverse=True)
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    table = np.bincount(
        t_inv.ravel() * len(p_ids) + p_inv.ravel(), minlength=len(t_ids) * len(p_ids)
    ).reshape(len(t_ids), len(p_ids))
    return table, t_ids, p_ids


def iou_matrix(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """IoU between every true and every predicted object (background 0 excluded).

    Returns ``(iou, true_ids, pred_ids)`` with ``iou[i, j]`` for ``true_ids[i]``, ``pred_ids[j]``.
    """
    overlap, t_ids, p_ids = overlap_table(truth, pred)
    t_area = overlap.sum(axis=1, keepdims=True)
    p_area = overlap.sum(axis=0, keepdims=True)
    union = t_area + p_area - overlap
    iou = np.where(union > 0, overlap / np.maximum(union, 1), 0.0)
    t_keep, p_keep = t_ids != 0, p_ids != 0
    return iou[np.ix_(t_keep, p_keep)], t_ids[t_keep], p_ids[p_keep]


def match_instances(truth: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> InstanceScores:
    """One-to-one matching of objects; a pair matches when IoU > ``threshold``.

    For ``threshold >= 0.5`` each object can overlap at most one partner that much, so the
    matching is unique; below 0.5 the optimal assignment (Hungarian) is used.
    """
    iou, t_ids, p_ids = iou_matrix(truth, pred)
    if iou.size == 0:
        return InstanceScores(0, len(p_ids), len(t_ids), 0.0)
    if threshold >= 0.5:
        rows, cols = np.nonzero(iou > threshold)
    else:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(-iou)
        good = iou[rows, cols] > threshold
        rows, cols = rows[good], cols[good]
    tp = len(rows)
    mean_iou = float(iou[rows, cols].mean()) if tp else 0.0
    return InstanceScores(tp, len(p_ids) - tp, len(t_ids) - tp, mean_iou)


def dice_per_class(truth: np.ndarray, pred: np.ndarray, classes) -> dict[int, float]:
    """Dice of each class in ``classes`` (1.0 when a class is absent from both)."""
    out = {}
    for c in classes:
        t, p = truth == c, pred == c
        denom = t.sum() + p.sum()
        out[int(c)] = float(2 * np.logical_and(t, p).sum() / denom) if denom else 1.0
    return out


def pixel_error(truth: np.ndarray, pred: np.ndarray) -> float:
    """Fraction of pixels whose (binarised: foreground > 0) label differs."""
    return float(np.mean((truth > 0) != (pred > 0)))


#: The thresholds of the ISBI 2012 challenge's pixel error (0.0, 0.1, ..., 1.0).
ISBI_THRESHOLDS = tuple(i / 10 for i in range(11))


def threshold_counts(truth: np.ndarray, foreground: np.ndarray, thresholds=ISBI_THRESHOLDS) -> np.ndarray:
    """True positives, false positives and false negatives of the foreground (``truth > 0``)
    against ``foreground > t`` for each threshold ``t``: an ``(len(thresholds), 3)`` array.

    ``foreground`` is the predicted probability of the foreground (same shape as ``truth``).
    Counts of several images can be summed before :func:`max_f_pixel_error`.
    """
    truth, foreground = np.asarray(truth), np.asarray(foreground)
    if truth.shape != foreground.shape:
        raise ValueError(f"truth {truth.shape} and foreground {foreground.shape} differ in shape")
    t = truth > 0
    n_true = int(t.sum())
    out = np.zeros((len(thresholds), 3), np.int64)
    for i, th in enumerate(thresholds):
        p = foreground > th
        tp = int(np.logical_and(t, p).sum())
        out[i] = tp, int(p.sum()) - tp, n_true - tp
    return out


def max_f_pixel_error(counts: np.ndarray) -> float:
    """The ISBI 2012 challenge's "pixel error": 1 - the maximal F-score of the foreground over
    the thresholds of :func:`threshold_counts` (the organisers' Fiji code, ``PixelError``).

    It is not the fraction of misclassified pixels (:func:`pixel_error`): with few errors and the
    foreground a share ``f`` of the pixels it is about ``1 / (2 f)`` of that (em2d's validation
    slices, mostly cell interior: 0.0489 against 0.0755, ``skipseg evaluate``).
    """
    counts = np.asarray(counts, dtype=np.float64)
    tp, fp, fn = counts[:, 0], counts[:, 1], counts[:, 2]
    denom = 2 * tp + fp + fn
    f = np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 1.0)
    return float(1.0 - f.max())
