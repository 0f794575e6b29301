"""Live mode of the Segment widget: the slice in view segmented as the user moves (real viewer)."""

from __future__ import annotations

import numpy as np

from napari_skipseg.inference.engine import predict, run
from napari_skipseg.model.store import load_model


def _full(model_home, name, stack, output="semantic"):
    return run(predict(load_model(str(model_home / "models" / name)), stack, output=output, device="cpu",
                       flips=False)).labels


def _shown(qtbot, w, n, timeout=30_000):
    qtbot.waitUntil(lambda: len(w.live.shown) >= n, timeout=timeout)
    return w.live.shown[n - 1]


def _choose_model(w, name):
    """Pick a model as a user does (it then stays when layers are added)."""
    index = w.model_combo.findText(name)
    w.model_combo.setCurrentIndex(index)
    w.model_combo.activated.emit(index)


def _live_layer(viewer):
    return next(layer for layer in viewer.layers if layer.name.endswith(" live"))


def test_live_mode_on_off_and_cache(widget, qtbot, model_home):
    viewer, w = widget
    stack = np.random.default_rng(5).random((12, 64, 64), dtype=np.float32)
    viewer.add_image(stack, name="stack")
    _choose_model(w, "tiny")
    w.output_combo.setCurrentText("semantic")
    w.output_combo.activated.emit(w.output_combo.currentIndex())  # the user's choice: it stays
    assert not w.live.check.isChecked()  # off by default
    viewer.dims.set_current_step(0, 3)
    assert not w.live.shown and len(viewer.layers) == 1
    full = _full(model_home, "tiny", stack)
    w.live.check.setChecked(True)
    point, _, how, _ = _shown(qtbot, w, 1)
    assert point == (3, 32, 32)[:1] + point[1:] and how == "computed"
    layer = _live_layer(viewer)
    assert layer.name == "stack [tiny] live" and layer.data.shape == stack.shape and not layer.editable
    np.testing.assert_array_equal(np.asarray(layer.data[3]), full[3])  # what a full run gives
    assert not np.asarray(layer.data[4]).any()  # nothing else computed
    assert "done in" in w.live.status.text() and "z=3" in w.live.status.text()
    # move: the new slice is segmented; moving back shows the cached one at once
    viewer.dims.set_current_step(0, 8)
    point, _, how, _ = _shown(qtbot, w, 2)
    assert point[0] == 8 and how == "computed"
    np.testing.assert_array_equal(np.asarray(layer.data[8]), full[8])
    qtbot.waitUntil(lambda: w.live.worker is None, timeout=30_000)  # its result comes before its end
    viewer.dims.set_current_step(0, 3)
    point, _, how, _ = _shown(qtbot, w, 3)
    assert point[0] == 3 and how == "cached" and "cached" in w.live.status.text()
    assert w.live.worker is None and len(w.live.cache) == 2
    # a quick scroll: only where it stops is segmented (the moves in between are superseded)
    for z in (4, 5, 6, 7):
        viewer.dims.set_current_step(0, z)
    point, _, how, _ = _shown(qtbot, w, 4)
    assert point[0] == 7 and how == "computed"
    qtbot.waitUntil(lambda: w.live.worker is None, timeout=30_000)
    assert sorted(i for i in w.live.cache.entries) == [3, 7, 8]
    np.testing.assert_array_equal(np.asarray(layer.data[7]), full[7])
    # off: the live layer goes, nothing is segmented any more
    w.live.check.setChecked(False)
    assert [x.name for x in viewer.layers] == ["stack"] and len(w.live.cache) == 0
    viewer.dims.set_current_step(0, 1)
    qtbot.wait(300)
    assert len(w.live.shown) == 4 and w.live.worker is None


def test_live_cache_is_emptied_when_the_model_or_an_option_changes(widget, qtbot, model_home):
    import torch
    from conftest import make_tiny_model

    from napari_skipseg.model.store import save_model

    other = make_tiny_model("tiny_b", seed=7)
    with torch.no_grad():  # a model that sees background everywhere: its slices differ from tiny's
        bias = [p for p in other.head.parameters() if p.ndim == 1][-1]
        bias[:] = torch.tensor([20.0, -20.0, -20.0])
    save_model(other, model_home / "models" / "tiny_b")
    viewer, w = widget
    w.refresh_models()
    stack = np.random.default_rng(6).random((6, 48, 48), dtype=np.float32)
    viewer.add_image(stack, name="stack")
    _choose_model(w, "tiny")
    w.output_combo.setCurrentText("semantic")
    w.output_combo.activated.emit(w.output_combo.currentIndex())  # the user's choice: it stays
    viewer.dims.set_current_step(0, 2)
    w.live.check.setChecked(True)
    _shown(qtbot, w, 1)
    viewer.dims.set_current_step(0, 4)
    _shown(qtbot, w, 2)
    assert len(w.live.cache) == 2
    key_a = w.live.cache.key
    _choose_model(w, "tiny_b")  # another model: slices 2 and 4 are stale
    point, _, how, _ = _shown(qtbot, w, 3)
    assert how == "computed" and point[0] == 4
    assert w.live.cache.key != key_a and list(w.live.cache.entries) == [4]
    layer = _live_layer(viewer)
    assert layer.name == "stack [tiny_b] live"
    full_b = _full(model_home, "tiny_b", stack)
    np.testing.assert_array_equal(np.asarray(layer.data[4]), full_b[4])
    assert not np.asarray(layer.data[2]).any()  # tiny's slice is no longer shown
    assert not np.array_equal(full_b[4], _full(model_home, "tiny", stack)[4])
    # an option (the diameter field, the tile size, ...) changes the key too
    w.tile_spin.setValue(32)
    point, _, how, _ = _shown(qtbot, w, 4)
    assert how == "computed" and len(w.live.cache) == 1
    w.live.check.setChecked(False)


def test_live_mode_with_a_3d_model_shows_the_block_in_view(widget, qtbot, model_home):
    viewer, w = widget
    volume = np.random.default_rng(8).random((10, 32, 32), dtype=np.float32)
    viewer.add_image(volume, name="vol")
    _choose_model(w, "tiny3d")
    w.output_combo.setCurrentText("semantic")
    w.output_combo.activated.emit(w.output_combo.currentIndex())
    viewer.dims.set_current_step(0, 6)
    w.live.check.setChecked(True)
    point, _, how, _ = _shown(qtbot, w, 1)
    assert point[0] == 6 and how == "computed"
    full = _full(model_home, "tiny3d", volume)
    layer = _live_layer(viewer)
    np.testing.assert_array_equal(np.asarray(layer.data), full)  # one block: the whole volume
    viewer.dims.set_current_step(0, 2)  # same block: cached
    point, _, how, _ = _shown(qtbot, w, 2)
    assert how == "cached"
    w.live.check.setChecked(False)


def test_live_mode_over_time_and_z(widget, qtbot, model_home):
    viewer, w = widget
    movie = np.random.default_rng(9).random((3, 4, 40, 40), dtype=np.float32)  # T, Z, Y, X
    viewer.add_image(movie, name="movie")
    w.axes_edit.setText("TZYX")
    w.axes_edit.editingFinished.emit()
    _choose_model(w, "tiny")
    w.output_combo.setCurrentText("semantic")
    w.output_combo.activated.emit(w.output_combo.currentIndex())
    viewer.dims.set_current_step(0, 2)
    viewer.dims.set_current_step(1, 1)
    w.live.check.setChecked(True)
    point, _, how, _ = _shown(qtbot, w, 1)
    assert point[:2] == (2, 1) and "t=2, z=1" in w.live.status.text()
    full = _full(model_home, "tiny", movie.reshape(12, 40, 40)).reshape(3, 4, 40, 40)
    layer = _live_layer(viewer)
    np.testing.assert_array_equal(np.asarray(layer.data[2, 1]), full[2, 1])
    assert not np.asarray(layer.data[1, 1]).any()
    w.live.check.setChecked(False)
