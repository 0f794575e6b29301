"""The Segment dock widget in a real napari viewer (under Xvfb)."""

from __future__ import annotations

import threading

import numpy as np

from napari_skipseg._qt.segment_widget import SegmentWidget
from napari_skipseg._sample_data import synthetic_nuclei


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
    # one layer per event-loop turn, labels first, yet the labels end on top
    assert [layer.name for layer in viewer.layers] == [
        "cells", "cells [tiny] p(foreground)", "cells [tiny] instances"]
    assert viewer.layers.selection.active is labels  # the layer to correct, not the hidden one


def test_cancel_while_the_result_layers_are_added_takes_them_back(widget, qtbot):
    viewer, w = widget
    viewer.add_image(synthetic_nuclei((64, 64), seed=1)[0], name="cells")
    w.model_combo.setCurrentText("tiny")
    worker = w.run()
    seen = []
    # runs right after the widget's own handler has finished the run (its layers were made
    # when it started and filled as it went), before the job counts as done
    worker.returned.connect(lambda _: seen.append(len(viewer.layers)) or w.cancel())
    _wait_done(qtbot, w)
    # the labels were in the viewer when Cancel came (the hidden probabilities are added
    # after the run, one event-loop turn later, and Cancel takes back both)
    assert seen == [2]
    assert [layer.name for layer in viewer.layers] == ["cells"]
    assert "cancelled" in w.status.text() and w.run_button.isEnabled()
    assert not w.cancel_button.isEnabled()
    w.run()  # and the widget works again
    _wait_done(qtbot, w)
    assert len(viewer.layers) == 3


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
    w.output_combo.activated.emit(w.output_combo.currentIndex())  # the user's choice: it stays
    assert w.run() is None  # refused before it starts: the image has no Z axis
    assert "not started" in w.status.text() and "3D" in w.status.text() and "Z axis" in w.status.text()
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
    w.model_combo.activated.emit(w.model_combo.currentIndex())  # chosen as a user does
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


def test_default_model_follows_the_image_dimensionality(widget, model_home):
    """With no model chosen yet, a volume gets the 3D nuclei model and a plane the 2D one;
    once the user picks a model, it stays."""
    from conftest import make_tiny_model

    from napari_skipseg.model.store import save_model

    viewer, w = widget
    save_model(make_tiny_model("nuclei3d", spatial_dims=3), model_home / "models" / "nuclei3d")
    w.refresh_models()
    viewer.add_image(np.zeros((8, 32, 32), np.float32), name="volume")
    assert w.model_combo.currentText() == "nuclei3d"
    viewer.add_image(np.zeros((32, 32), np.float32), name="plane")
    w.layer_combo.setCurrentText("plane")
    assert w.model_combo.currentText() == "nuclei2d"
    w.layer_combo.setCurrentText("volume")
    assert w.model_combo.currentText() == "nuclei3d"
    # a widget opened on a viewer that already shows a volume
    w2 = SegmentWidget(viewer)
    assert w2.layer_combo.currentText() == "volume" and w2.model_combo.currentText() == "nuclei3d"
    index = w.model_combo.findText("tiny")
    w.model_combo.setCurrentIndex(index)
    w.model_combo.activated.emit(index)  # what a user's click sends
    w.layer_combo.setCurrentText("plane")
    assert w.model_combo.currentText() == "tiny"


def test_model_card_window(widget):
    _, w = widget
    w.model_combo.setCurrentText("nuclei2d")
    w.card_button.click()
    assert w.card_dialog.isVisible() and "nuclei2d" in w.card_dialog.windowTitle()
    text = w.card_dialog.browser.toPlainText()
    assert "Validation metrics" in text and "f1@0.5" in text and "licence" in text
    w.card_dialog.close()


def test_test_time_flips_follow_the_model_and_reach_the_engine(make_napari_viewer, model_home, qtbot):
    from napari_skipseg.model.config import ModelConfig

    path = model_home / "models" / "tiny" / "config.json"
    cfg = ModelConfig.from_json(path)
    cfg.inference = {"flips": True}
    cfg.to_json(path)
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    viewer.add_image(synthetic_nuclei((64, 64), seed=1)[0], name="cells")
    w.model_combo.setCurrentText("tiny3d")
    assert not w.flips_check.isChecked() and "8 passes" in w.flips_check.text()
    w.model_combo.setCurrentText("tiny")
    assert w.flips_check.isChecked() and "4 passes" in w.flips_check.text()
    assert w.options()["flips"] is True
    w.run()
    _wait_done(qtbot, w)
    assert viewer.layers["cells [tiny] instances"].data.max() >= 0
    assert "4 flips" in w.last_result.info["backend"]
    w.flips_check.setChecked(False)
    assert w.options()["flips"] is False


def test_long_messages_wrap_instead_of_widening_the_dock(widget, qtbot):
    """The scale message names pixel sizes and why (``diameter ~18 x 22 x 20 px (estimated;
    pixel size 1.75 x 0.8 x 0.8 um implies ...``): it wraps, so the widget does not grow wider
    than the dock and push its buttons and labels off the window's edge."""
    _, w = widget
    narrow = w.minimumSizeHint().width()
    message = ("diameter ~18 x 22 x 20 px (estimated; pixel size 1.75 x 0.8 x 0.8 um implies ~13 x 17 x 15 px: "
               "sized by the estimate); image resampled x0.75 x 0.78 x 0.78")
    for label in (w.diameter_label, w.status, w.choice_label):
        label.setText(message)
    qtbot.wait(50)
    assert w.minimumSizeHint().width() <= narrow
    assert w.diameter_label.wordWrap() and w.status.wordWrap()
