"""Result layers of semantic models: class 0 is drawn unless it is the background, and the
class names are the layer's features."""

from __future__ import annotations

import numpy as np
import pytest

from napari_skipseg.layers import semantic_display


def test_no_names_no_change():
    assert semantic_display(None) == {} and semantic_display([]) == {}


def test_background_class_stays_napari_default():
    out = semantic_display(["background", "anterior", "posterior"])
    assert "colormap" not in out
    assert out["features"] == {"index": [0, 1, 2], "class": ["background", "anterior", "posterior"]}


def test_structure_class_zero_has_a_colour():
    cmap = semantic_display(["membrane", "cell interior"])["colormap"]
    colors = cmap.map(np.array([0, 1]))
    assert colors[0][3] == 1.0 and colors[1][3] == 1.0 and not np.allclose(colors[0], colors[1])


@pytest.mark.parametrize("names, zero_drawn", [(["membrane", "cell interior"], True), (["background", "object"], False)])
def test_class_zero_in_a_real_viewer(make_napari_viewer, names, zero_drawn):
    viewer = make_napari_viewer(show=True)  # a hidden canvas draws nothing
    labels = np.zeros((64, 64), np.uint8)
    labels[:, 32:] = 1  # left half class 0, right half class 1
    layer = viewer.add_labels(labels, opacity=1.0, **semantic_display(names))
    shot = viewer.screenshot(canvas_only=True, flash=False)
    h, w = shot.shape[:2]
    left, right = shot[h // 2, w // 2 - 40, :3], shot[h // 2, w // 2 + 40, :3]
    assert right.max() > 0  # class 1 always drawn
    assert (left.max() > 0) == zero_drawn
    assert layer.features["class"].tolist() == names
