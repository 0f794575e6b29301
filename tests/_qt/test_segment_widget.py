"""The Segment dock widget in a real napari viewer (under Xvfb)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_skipseg._qt.segment_widget import SegmentWidget
from napari_skipseg._sample_data import synthetic_nuclei


@pytest.fixture
def widget(make_napari_viewer, model_home, qtbot):
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    return viewer, w


def _wait_done(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: w.worker is None, timeout=timeout)


def test_lists_layers_and_models(widget):
    viewer, w = widget
    assert w.layer_combo.count() == 0 and not w.run_button.isEnabled()
    viewer.add_image(np.zeros((32, 32)), name="a")
    viewer.add_labels(np.zeros((32, 32), int), name="not an image")
    assert [w.layer_combo.itemText(i) for i in range(w.layer_combo.count())] == ["a"]
    assert w.run_button.isEnabled()
    models = [w.model_combo.itemText(i) for i in range(w.model_combo.count())]
    assert "tiny" in models and "tiny3d" in models
    viewer.layers.remove("a")
    assert w.layer_combo.count() == 0


def test_segment_adds_layers_on_top_of_the_image(widget, qtbot):
    viewer, w = widget
    image, _ = synthetic_nuclei((96, 80), seed=3)
    viewer.add_image(image, name="cells", scale=(0.5, 0.25), translate=(10.0, -4.0))
    w.model_combo.setCurrentText("tiny")
    w.output_combo.setCurrentText("instances")
    worker = w.run()
    assert worker is not None
    _wait_done(qtbot, w)
    labels = viewer.layers["cells [tiny] instances"]
    assert labels.data.shape == image.shape
    np.testing.assert_allclose(labels.scale, (0.5, 0.25))
    np.testing.assert_allclose(labels.translate, (10.0, -4.0))
    assert labels.metadata["skipseg"]["source"] == "cells"
    prob = viewer.layers["cells [tiny] p(foreground)"]
    assert prob.data.shape == image.shape and prob.data.dtype == np.float32
    assert w.progress.value() == w.progress.maximum() > 0
    assert "cpu" in w.device_label.text()
    assert "done" in w.status.text()
    # the work ran in a worker thread, not on the main (GUI) thread
    assert w.last_thread is not None and w.last_thread != threading.main_thread().ident


def test_cancel_leaves_layers_unchanged(widget, qtbot):
    viewer, w = widget
    viewer.add_image(np.random.default_rng(0).random((40, 128, 128), dtype=np.float32), name="stack")
    w.model_combo.setCurrentText("tiny")
    w.tile_spin.setValue(32)
    events = []
    worker = w.run()
    worker.yielded.connect(lambda e: events.append(e) or (len(events) == 2 and w.cancel()))
    _wait_done(qtbot, w)
    assert [layer.name for layer in viewer.layers] == ["stack"]
    assert "cancelled" in w.status.text()
    assert events[-1].done < events[-1].total
    assert w.run_button.isEnabled()


def test_error_is_reported_and_viewer_keeps_working(widget, qtbot):
    viewer, w = widget
    viewer.add_image(np.zeros((48, 48), np.float32), name="flat")
    w.model_combo.setCurrentText("tiny3d")  # a 3D model cannot segment a 2D image
    w.output_combo.setCurrentText("semantic")
    w.run()
    _wait_done(qtbot, w)
    assert "failed" in w.status.text() and "3D" in w.status.text()
    assert [layer.name for layer in viewer.layers] == ["flat"]
    # and a valid job afterwards still runs
    w.model_combo.setCurrentText("tiny")
    w.run()
    _wait_done(qtbot, w)
    assert "flat [tiny] semantic" in viewer.layers


def test_rgb_and_stack_inputs(widget, qtbot):
    viewer, w = widget
    rgb = (np.random.default_rng(1).random((64, 72, 3)) * 255).astype(np.uint8)
    viewer.add_image(rgb, name="rgb", rgb=True)
    w.layer_combo.setCurrentText("rgb")
    w.model_combo.setCurrentText("tiny")
    w.run()
    _wait_done(qtbot, w)
    assert viewer.layers["rgb [tiny] instances"].data.shape == (64, 72)

    viewer.add_image(np.random.default_rng(2).random((3, 40, 40), dtype=np.float32), name="zyx", scale=(2, 1, 1))
    w.layer_combo.setCurrentText("zyx")
    w.run()
    _wait_done(qtbot, w)
    out = viewer.layers["zyx [tiny] instances"]
    assert out.data.shape == (3, 40, 40)
    np.testing.assert_allclose(out.scale, (2, 1, 1))


def test_docked_widget_screenshot_shows_labels(make_napari_viewer, model_home, qtbot):
    """Dock the widget in a shown viewer, segment, render: labels are drawn over the image."""
    viewer = make_napari_viewer(show=True)
    _, w = viewer.window.add_plugin_dock_widget("napari-skipseg", "Segment")
    image, _ = synthetic_nuclei((128, 128), seed=4)
    viewer.add_image(image, name="cells", colormap="gray")
    before = viewer.screenshot(canvas_only=True)
    w.model_combo.setCurrentText("tiny")
    w.output_combo.setCurrentText("semantic")
    w.run()
    _wait_done(qtbot, w)
    after = viewer.screenshot(canvas_only=True)
    assert before[..., :3].std() > 0  # the image is drawn
    # grey image: R == G == B everywhere; coloured labels on top break that
    assert np.abs(before[..., 0].astype(int) - before[..., 1]).max() < 3
    assert np.abs(after[..., 0].astype(int) - after[..., 1]).max() > 20
