"""The "Skip connections" dock widget in a real napari viewer (under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest
from skip_toys import hooked_toy

from napari_skipseg._qt.skip_widget import SkipWidget
from napari_skipseg._sample_data import synthetic_nuclei
from napari_skipseg.feature_layers import feature_key


@pytest.fixture
def widget(make_napari_viewer, model_home, qtbot):
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    viewer = make_napari_viewer()
    w = SkipWidget(viewer)
    qtbot.addWidget(w)
    w.device_combo.setCurrentText("cpu")
    yield viewer, w
    torch.set_num_threads(before)


def _wait(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: w.worker is None, timeout=timeout)


def _capture(qtbot, w, model="tiny"):
    w.model_combo.setCurrentText(model)
    assert w.run() is not None
    _wait(qtbot, w)
    assert w.capture is not None, w.status.text()


def test_capture_adds_layers_placed_over_the_image(widget, qtbot):
    viewer, w = widget
    image, _ = synthetic_nuclei((96, 80), seed=3)
    viewer.add_image(image, name="cells", scale=(0.5, 0.25), translate=(10.0, -4.0))
    _capture(qtbot, w)
    assert "2 levels" in w.status.text() and "cpu" in w.status.text()
    # by default the level-0 skip is shown, channels on a slider axis
    (layer,) = w.feature_layers()
    assert feature_key(layer) == (0, "encoder", "channels")
    assert layer.data.shape == (4, 96, 80) and layer.data.dtype == np.float32
    np.testing.assert_allclose(layer.scale, (1.0, 0.5, 0.25))
    np.testing.assert_allclose(layer.translate, (0.0, 10.0, -4.0))
    assert viewer.dims.axis_labels[0] == "feature channel"
    # level 1: each feature pixel covers 2x2 image pixels, centred on them
    w._checks[(1, "fused")].setChecked(True)
    fused = next(ly for ly in w.feature_layers() if feature_key(ly) == (1, "fused", "channels"))
    assert fused.data.shape == (8, 48, 40)
    np.testing.assert_allclose(fused.scale, (1.0, 1.0, 0.5))
    np.testing.assert_allclose(fused.translate, (0.0, 10.25, -3.875))
    assert fused.metadata["skipseg_features"]["source"] == "cells"
    # summary views replace the layers: norm (float32), PCA (RGB uint8), top-k (k channels)
    w.view_combo.setCurrentIndex(w.view_combo.findData("norm"))
    norm = {feature_key(ly): ly for ly in w.feature_layers()}
    assert set(norm) == {(0, "encoder", "norm"), (1, "fused", "norm")}
    assert norm[(1, "fused", "norm")].data.shape == (48, 40)
    np.testing.assert_allclose(norm[(1, "fused", "norm")].translate, (10.25, -3.875))
    w.view_combo.setCurrentIndex(w.view_combo.findData("pca"))
    pca = {feature_key(ly): ly for ly in w.feature_layers()}
    assert pca[(1, "fused", "pca")].rgb and pca[(1, "fused", "pca")].data.dtype == np.uint8
    np.testing.assert_allclose(pca[(1, "fused", "pca")].scale, (1.0, 0.5))
    w.view_combo.setCurrentIndex(w.view_combo.findData("topk"))
    w.k_spin.setValue(3)
    top = {feature_key(ly): ly for ly in w.feature_layers()}
    assert top[(1, "fused", "topk")].data.shape == (3, 48, 40)
    assert len(top[(1, "fused", "topk")].metadata["skipseg_features"]["channels"]) == 3
    assert len(w.feature_layers()) == 2  # only what is switched on was computed


def test_single_bright_pixel_lights_up_over_it_in_napari(widget, qtbot):
    """Through napari's own transforms: the brightest feature pixel of every level and
    kind covers the one bright image pixel."""
    viewer, w = widget
    pixel = (37, 21)
    image = np.zeros((64, 48), np.float32)
    image[pixel] = 1000.0
    img = viewer.add_image(image, name="dot", scale=(0.5, 0.25), translate=(10.0, -4.0))
    w.add_model("toy", hooked_toy(identity=True))
    w.view_combo.setCurrentIndex(w.view_combo.findData("norm"))
    _capture(qtbot, w, "toy")
    for lv in (0, 1):
        w.set_level_visible(lv, True)
    layers = w.feature_layers()
    assert len(layers) == 6
    world_pixel = np.asarray(img.data_to_world(pixel))
    for layer in layers:
        lit = np.argwhere(layer.data >= layer.data.max() * 0.999)
        assert 1 <= len(lit) <= 4, layer.name
        half = np.asarray(layer.scale) / 2
        hits = [np.all(np.abs(np.asarray(layer.data_to_world(p)) - world_pixel) <= half + 1e-9) for p in lit]
        assert any(hits), f"{layer.name}: lit at {lit.tolist()}, image pixel at {world_pixel}"


def test_hide_all_and_level_toggles(widget, qtbot):
    viewer, w = widget
    viewer.add_image(np.random.default_rng(0).random((48, 48), dtype=np.float32), name="a")
    _capture(qtbot, w)
    w._level_checks[1].click()  # the whole level on
    assert {feature_key(ly)[:2] for ly in w.feature_layers() if ly.visible} == {
        (0, "encoder"), (1, "encoder"), (1, "decoder"), (1, "fused")}
    # the eye icon in the layer list and the check boxes agree
    layer = next(ly for ly in w.feature_layers() if feature_key(ly)[:2] == (1, "decoder"))
    layer.visible = False
    assert not w._checks[(1, "decoder")].isChecked()
    w.hide_all_button.click()
    assert w.feature_layers() and not any(ly.visible for ly in w.feature_layers())
    assert not any(cb.isChecked() for cb in w._checks.values())
    assert not any(cb.isChecked() for cb in w._level_checks.values())
    assert viewer.layers["a"].visible
    w._checks[(0, "fused")].setChecked(True)
    assert [feature_key(ly)[:2] for ly in w.feature_layers() if ly.visible] == [(0, "fused")]
    w.remove_button.click()
    assert w.feature_layers() == [] and [ly.name for ly in viewer.layers] == ["a"]


def test_ablation_adds_output_and_difference_with_changed_fraction(widget, qtbot):
    viewer, w = widget
    image, _ = synthetic_nuclei((64, 64), seed=2, radius=7.0)
    viewer.add_image(image, name="cells", scale=(2.0, 2.0))
    _capture(qtbot, w)
    w.ablate_level.setCurrentIndex(0)
    w.ablate_how.setCurrentText("zero")
    w.side_by_side.setChecked(True)
    assert w.run_ablation() is not None
    _wait(qtbot, w)
    res = w.last_ablation
    assert res is not None and res.ablate == {0: "zero"}
    orig = viewer.layers["ablation: output (original)"]
    abl = viewer.layers["ablation: output (L0 zero off)"]
    diff = viewer.layers["ablation: change (L0 zero off)"]
    np.testing.assert_array_equal(abl.data, res.ablated)
    assert diff.data.dtype == np.float32 and diff.data.shape == (64, 64)
    np.testing.assert_allclose(orig.translate, (0.0, 0.0))
    np.testing.assert_allclose(abl.translate, (0.0, 64 * 2.0 * 1.05))  # next to the original
    np.testing.assert_allclose(diff.translate, (0.0, 2 * 64 * 2.0 * 1.05))
    assert f"{100 * res.changed_fraction:.2f} %" in w.ablation_label.text()
    copy = viewer.layers["ablation: image (copy)"]  # the image again under the shifted output, not copied
    assert copy.data is viewer.layers["cells"].data
    np.testing.assert_allclose(copy.translate, abl.translate)
    assert "ablation: image (copy)" not in [w.layer_combo.itemText(i) for i in range(w.layer_combo.count())]
    titles = viewer.layers["ablation: titles"]  # each panel titled on the canvas, at its top-left corner
    assert list(titles.features["title"]) == ["original", "without L0 zero", "change"]
    np.testing.assert_allclose(titles.data[:, -1], [0.0, abl.translate[-1], diff.translate[-1]])
    assert not any(ly.visible for ly in w.feature_layers())  # no feature overlay tints the panels
    # again, overlaid this time: the old ablation layers are replaced
    w.side_by_side.setChecked(False)
    w.ablate_how.setCurrentText("mean")
    w.run_ablation()
    _wait(qtbot, w)
    names = [ly.name for ly in viewer.layers if ly.name.startswith("ablation: ")]
    assert names == ["ablation: output (original)", "ablation: output (L0 mean off)",
                     "ablation: change (L0 mean off)", "ablation: titles"]
    np.testing.assert_allclose(viewer.layers["ablation: output (L0 mean off)"].translate, (0.0, 0.0))


def test_gradient_plot_updates(widget, qtbot):
    viewer, w = widget
    image, _ = synthetic_nuclei((64, 64), seed=2, radius=7.0)
    viewer.add_image(image, name="cells")
    _capture(qtbot, w)
    assert w.class_combo.currentText() == "interior"
    w.run_gradient()
    _wait(qtbot, w)
    plot = w.gradient_plot
    assert plot.updates == 1 and len(plot.values["skips on"]) == 3
    assert w.last_gradient.region_pixels == 64 * 64
    if plot.figure is not None:  # matplotlib: 2 bars per stage drawn
        assert len(plot.ax.patches) == 6
    # a region drawn as a rectangle in a Shapes layer
    viewer.add_shapes([[[10, 20], [10, 29], [19, 29], [19, 20]]], shape_type="rectangle", name="roi")
    w.region_combo.setCurrentText("roi")
    w.run_gradient()
    _wait(qtbot, w)
    assert plot.updates == 2 and w.last_gradient.region_pixels == 10 * 10


def test_3d_model_uses_the_block_around_the_cursor(widget, qtbot):
    viewer, w = widget
    viewer.add_image(np.random.default_rng(1).random((24, 64, 64), dtype=np.float32), name="vol",
                     scale=(2.0, 1.0, 1.0))
    viewer.cursor.position = (40.0, 60.0, 10.0)  # world: z = 20 px
    _capture(qtbot, w, "tiny3d")
    prep = w.capture.input
    assert prep.shape == (16, 32, 32) and prep.origin == (8, 32, 0)
    layer = w.feature_layers()[0]
    np.testing.assert_allclose(layer.scale, (1.0, 2.0, 1.0, 1.0))
    np.testing.assert_allclose(layer.translate, (0.0, 16.0, 32.0, 0.0))


def test_2d_model_on_a_stack_uses_the_current_slice(widget, qtbot):
    viewer, w = widget
    viewer.add_image(np.random.default_rng(2).random((3, 32, 32), dtype=np.float32), name="zyx", scale=(2, 1, 1))
    viewer.dims.set_point(0, 4.0)  # world z = 4: slice 2
    _capture(qtbot, w)
    assert w.capture.input.index == (2,)
    layer = w.feature_layers()[0]
    assert layer.data.shape == (4, 1, 32, 32)
    np.testing.assert_allclose(layer.translate, (0.0, 4.0, 0.0, 0.0))


def test_errors_are_shown_and_the_widget_recovers(widget, qtbot):
    viewer, w = widget
    viewer.add_image(np.zeros((32, 32), np.float32), name="flat")
    w.model_combo.setCurrentText("tiny3d")  # a 3D model on a 2D image
    w.run()
    _wait(qtbot, w)
    assert "failed" in w.status.text() and "3D" in w.status.text()
    assert w.capture is None and not w.ablate_button.isEnabled()
    _capture(qtbot, w, "tiny")
    assert w.ablate_button.isEnabled() and w.gradient_button.isEnabled()


def test_bar_plot_without_matplotlib(qtbot):
    from napari_skipseg._qt.skip_widget import _QtBarPlot

    plot = _QtBarPlot()
    qtbot.addWidget(plot)
    plot.resize(320, 200)
    plot.plot(["0", "1", "2 (bottom)"], [("skips on", [5.0, 2.0, 0.5], "#4fc3f7"),
                                        ("skips off", [0.1, 0.0, 0.4], "#ff8a65")])
    image = plot.grab().toImage()
    assert not image.isNull() and image.width() == 320


def test_widget_docks_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-skipseg", "Skip connections")
    assert type(widget).__name__ == "SkipWidget"


def test_a_model_folder_can_be_added(widget, qtbot, model_home):
    viewer, w = widget
    viewer.add_image(np.random.default_rng(3).random((40, 40), dtype=np.float32), name="a")
    w.add_model("my checkpoint", str(model_home / "models" / "tiny"))
    assert w.model_combo.currentText() == "my checkpoint" and "2D UNet, 2 skips" in w.model_info.text()
    _capture(qtbot, w, "my checkpoint")
    assert w.capture.model_name == "tiny" and len(w.capture.records) == 2


def test_explorer_starts_with_segments_model_and_shows_the_gradient_plot(make_napari_viewer, model_home, qtbot):
    """The explorer uses Segment's active model (not the first name), follows it when it
    changes, and stops following once the user picks one here; at 1280 x 800 the gradient
    page shows its plot without scrolling."""
    from napari_skipseg.model.store import _active, set_active_model

    _active.clear()
    set_active_model("tiny3d", persist=False)
    viewer = make_napari_viewer()
    w = SkipWidget(viewer)
    qtbot.addWidget(w)
    assert w.model_combo.currentText() == "tiny3d"
    set_active_model("tiny", persist=False)
    assert w.model_combo.currentText() == "tiny"
    w.model_combo.setCurrentText("tiny3d")
    w._model_picked()
    viewer.add_image(np.zeros((32, 32), np.float32), name="other")
    assert w.model_combo.currentText() == "tiny3d"
    _active.clear()

    w.resize(330, 733)  # the dock's size in a 1280 x 800 napari window
    w.show()
    w.pages.setCurrentIndex(2)
    qtbot.wait(50)
    plot = w.gradient_plot
    bottom = plot.mapTo(w.scroll.viewport(), plot.rect().bottomLeft()).y()
    assert plot.isVisible() and bottom <= w.scroll.viewport().height()


def test_gradient_plot_follows_the_theme(widget):
    viewer, w = widget
    viewer.theme = "light"
    from napari_skipseg._qt.theme import palette_for

    assert w.gradient_plot.palette_ == palette_for("light")
    viewer.theme = "dark"
    assert w.gradient_plot.palette_ == palette_for("dark")
