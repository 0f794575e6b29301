"""The Segment widget honours a layer's axes (T is never Z), asks for a channel instead of
averaging channels, picks the model that suits the image and says why, and shows the
object diameter on the canvas. Real napari viewer, real files, tiny real models."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_skipseg import segment
from napari_skipseg._qt import camera_of
from napari_skipseg.io import ImageMeta, write_image


def _wait_done(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: w.worker is None, timeout=timeout)


def _choose(w, name):
    index = w.model_combo.findText(name)
    assert index >= 0, name
    w.model_combo.setCurrentIndex(index)
    w.model_combo.activated.emit(index)  # what a user's click sends


def test_cyx_layer_asks_for_a_channel(widget, qtbot):
    viewer, w = widget
    cyx = np.random.default_rng(0).random((3, 32, 32), dtype=np.float32)
    viewer.add_image(cyx, name="cyx", axis_labels=("c", "y", "x"), scale=(1, 0.5, 0.5))
    w.layer_combo.setCurrentText("cyx")
    assert w.axes_edit.text() == "CYX"
    assert w.channel_row.isVisibleTo(w)
    assert [w.channel_combo.itemText(i) for i in range(w.channel_combo.count())] == [
        "choose a channel", "channel 0", "channel 1", "channel 2"]
    assert w.model_combo.currentText() != "tiny3d"  # two spatial axes: never a 3D model
    _choose(w, "tiny")
    assert w.run() is None  # the picker is required: channels are never averaged
    assert "choose a channel" in w.status.text() and "never averaged" in w.status.text()
    assert [layer.name for layer in viewer.layers] == ["cyx"]
    w.channel_combo.setCurrentText("channel 1")
    w.run()
    _wait_done(qtbot, w)
    labels = viewer.layers["cyx [tiny] instances"]
    assert labels.data.shape == (32, 32)
    np.testing.assert_allclose(labels.scale, (0.5, 0.5))
    expected = segment(cyx[1], "tiny", output="probabilities", flips=False)
    np.testing.assert_allclose(viewer.layers["cyx [tiny] p(foreground)"].data, expected[1] + expected[2], atol=1e-3)


def test_tyx_file_is_segmented_frame_by_frame(widget, qtbot, tmp_path):
    viewer, w = widget
    frame = np.random.default_rng(1).random((32, 32), dtype=np.float32)
    path = tmp_path / "tyx.tif"
    tifffile.imwrite(path, np.stack([frame] * 3), imagej=True, metadata={"axes": "TYX"})
    viewer.open(path, plugin="napari-skipseg")
    assert w.axes_edit.text() == "TYX"
    assert w.model_combo.currentText() == "nuclei2d"  # not the 3D model: T is not depth
    assert w.choice_label.text().startswith("model nuclei2d: 2D time-lapse")
    assert w.link_check.isVisibleTo(w) and not w.channel_row.isVisibleTo(w)
    _choose(w, "tiny3d")
    assert w.run() is None
    assert "T is time, not depth" in w.status.text()
    _choose(w, "tiny")
    w.output_combo.setCurrentText("semantic")
    w.link_check.setChecked(True)
    w.run()
    _wait_done(qtbot, w)
    out = viewer.layers["tyx [tiny] semantic"].data
    assert out.shape == (3, 32, 32)
    np.testing.assert_array_equal(out[0], out[2])  # the same frame gives the same result


def test_guessed_axes_can_be_corrected(widget):
    viewer, w = widget
    viewer.add_image(np.zeros((3, 32, 32), np.float32), name="stack")
    assert w.axes_edit.text() == "ZYX" and "guessed" in w.status.text()
    assert w.model_combo.currentText() == "nuclei3d"
    w.axes_edit.setText("t y x")
    w.axes_edit.editingFinished.emit()
    assert w.axes_edit.text() == "TYX" and w.current_axes() == "TYX"
    assert w.model_combo.currentText() == "nuclei2d" and w.link_check.isVisibleTo(w)
    w.axes_edit.setText("ZZX")
    w.axes_edit.editingFinished.emit()
    assert "repeated axis letters" in w.status.text() and w.axes_edit.text() == "TYX"


def test_nifti_volume_gets_the_mri_model_and_says_why(widget, tmp_path):
    viewer, w = widget
    path = tmp_path / "brain.nii.gz"
    write_image(path, np.zeros((12, 16, 12), np.float32), ImageMeta("ZYX", (1.0, 1.0, 1.0), "millimeter"))
    viewer.open(path, plugin="napari-skipseg")
    assert w.model_combo.currentText() == "hippocampus3d"
    assert w.choice_label.text() == "model hippocampus3d: NIfTI volume with 1 mm voxels, like its training data"
    assert w.output_combo.currentText() == "semantic"  # what the model predicts


def test_output_follows_the_model_until_the_user_picks_one(widget):
    viewer, w = widget
    viewer.add_image(np.zeros((32, 32), np.float32), name="plane")
    w.model_combo.setCurrentText("em2d")
    assert w.output_combo.currentText() == "semantic"
    w.model_combo.setCurrentText("tiny")
    assert w.output_combo.currentText() == "instances"
    w.output_combo.setCurrentText("probabilities")
    w.output_combo.activated.emit(w.output_combo.currentIndex())
    w.model_combo.setCurrentText("em2d")
    assert w.output_combo.currentText() == "probabilities"


def test_bad_diameter_is_refused_before_the_job(widget):
    viewer, w = widget
    viewer.add_image(np.zeros((32, 32), np.float32), name="plane")
    _choose(w, "tiny")
    for text, words in (("0", "positive"), ("nan", "positive"), ("99", "larger than the image"),
                        ("big", "'auto' or a number")):
        w.diameter_edit.setText(text)
        assert w.run() is None
        assert "not started" in w.status.text() and words in w.status.text()


def test_diameter_circle_is_drawn_at_the_view_centre(widget, qtbot):
    viewer, w = widget
    viewer.add_image(np.random.default_rng(2).random((64, 64), dtype=np.float32), name="cells",
                     scale=(0.5, 0.5), translate=(3.0, 1.0))
    assert w.show_diameter() is None and "no object diameter known" in w.status.text()
    _choose(w, "tiny")
    w.run()
    _wait_done(qtbot, w)
    shapes = w.show_diameter((10.0, 10.0))
    assert shapes.shape_type == ["ellipse"]
    np.testing.assert_allclose(shapes.scale, (0.5, 0.5))
    np.testing.assert_allclose(shapes.translate, (3.0, 1.0))
    box = shapes.data[0]
    np.testing.assert_allclose(box.max(axis=0) - box.min(axis=0), (10.0, 10.0))
    centre_world = box.mean(axis=0) * 0.5 + (3.0, 1.0)
    np.testing.assert_allclose(centre_world, camera_of(viewer).center[-2:], atol=1e-6)
    assert shapes.name == "diameter ~10 px"


def test_the_run_shows_the_diameter_it_used(widget, qtbot, model_home):
    from conftest import make_tiny_model

    from napari_skipseg.model.store import save_model

    viewer, w = widget
    model = make_tiny_model("sized")
    model.config.training_scale = {"object_diameter": [8.0, 8.0]}
    save_model(model, model_home / "models" / "sized")
    w.refresh_models()
    viewer.add_image(np.random.default_rng(3).random((64, 64), dtype=np.float32), name="cells")
    _choose(w, "sized")
    # nothing typed: the model's default, as on the command line (estimated for instance models)
    assert w.diameter_edit.placeholderText() == "auto (estimated)"
    w.run()
    _wait_done(qtbot, w)
    assert "(estimated)" in w.diameter_label.text() or "no objects found" in w.diameter_label.text()
    w.diameter_edit.setText("16")
    w.run()
    _wait_done(qtbot, w)
    assert "diameter 16 px (given)" in w.diameter_label.text()
    assert w.diameter_button.isEnabled()
    w.diameter_button.click()
    assert any(layer.name.startswith("diameter") for layer in viewer.layers)
