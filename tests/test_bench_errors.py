"""benchmarks/bench_errors.py sorts each missed object under the right reason."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_errors import sort_errors  # noqa: E402

POST = {"seed": 0.9, "mask": 0.5, "min_seed_size": 1}


def _scene():
    truth = np.zeros((40, 80), np.uint16)
    labels = np.zeros_like(truth, dtype=np.uint32)
    probs = np.zeros((3, 40, 80), np.float32)
    probs[0] = 1.0
    # 1: found well
    truth[2:10, 2:10] = 1
    labels[2:10, 2:10] = 1
    # 2 and 3 touch (2 above 3) and come out as one object grown from one seed across both
    truth[12:18, 2:10] = 2
    truth[18:24, 2:10] = 3
    labels[12:24, 2:10] = 2
    # 4 and 5 touch; one object grown from 4's seed only
    truth[2:8, 20:28] = 4
    truth[2:8, 28:36] = 5
    labels[2:8, 20:36] = 3
    # 6: nothing predicted, no foreground
    truth[30:38, 2:10] = 6
    # 7: foreground, but no object (no seed)
    truth[30:38, 20:28] = 7
    # 8: cut in two
    truth[12:20, 40:48] = 8
    labels[12:20, 40:44] = 4
    labels[12:20, 44:48] = 5
    # a predicted object where nothing is
    labels[30:36, 60:66] = 6
    fg = labels > 0
    fg[30:38, 20:28] = True
    probs[1][fg] = 0.95
    probs[0][fg] = 0.0
    probs[1][2:8, 28:36] = 0.6  # 5: foreground, below the seed threshold
    probs[2][2:8, 28:36] = 0.4
    probs[1][30:38, 20:28] = 0.3  # 7: foreground without a seed
    probs[2][30:38, 20:28] = 0.7
    return truth, labels, probs


def test_every_reason_once():
    truth, labels, probs = _scene()
    found = sort_errors(truth, labels, probs, POST)
    missed = found["missed"]
    assert missed["merged: one seed over both"] == 2  # 2 and 3
    assert missed["merged: one had no seed"] == 2  # 4 (IoU 0.5 is no match) and 5
    assert missed["no foreground"] == 1
    assert missed["foreground, no object"] == 1
    assert missed["split"] == 1
    assert missed["outline"] == 0
    assert sum(missed.values()) == 7  # all but 1
    assert sorted(found["merge axes"]) == [0, 0, 1, 1]  # 2/3 apart along Y, 4/5 along X
    # unmatched predictions: the two merges, the two halves of 8, the one on background
    assert found["unmatched predictions"] == {"merged": 2, "piece": 2, "nothing there": 1}


def test_merge_axes_follow_the_spacing():
    truth = np.zeros((20, 20), np.uint16)
    truth[2:8, 2:8] = 1
    truth[5:11, 8:14] = 2  # centres 3 rows and 6 columns apart
    labels = (truth > 0).astype(np.uint32)
    probs = np.stack([1.0 - labels, labels * 1.0, 0 * labels]).astype(np.float32)
    assert sort_errors(truth, labels, probs, POST)["merge axes"] == [1, 1]  # along X in pixels
    assert sort_errors(truth, labels, probs, POST, spacing=(4, 1))["merge axes"] == [0, 0]  # Z-like rows
