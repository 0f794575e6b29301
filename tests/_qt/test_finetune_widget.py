"""The Fine-tune dock widget in a real napari viewer (under Xvfb)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_skipseg._qt.finetune_widget import MARK_KEY, REVIEWED_KEY, FinetuneWidget
from napari_skipseg._qt.segment_widget import SegmentWidget
from napari_skipseg.training.finetune import FinetuneOptions


def _stack(n=3, shape=(48, 48)):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(10, 2, (n, *shape)).astype(np.float32)
    labels = np.zeros((n, *shape), np.int32)
    for z in range(n):
        for i in range(1, 6):
            cy, cx = rng.integers(8, shape[0] - 8, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 25
            labels[z][disc & (labels[z] == 0)] = i
            image[z][disc] += 50
    return image, labels


@pytest.fixture
def setup(make_napari_viewer, model_home, qtbot):
    from napari_skipseg.model.store import set_active_model

    set_active_model("tiny", persist=False)
    viewer = make_napari_viewer()
    image, labels = _stack()
    viewer.add_image(image, name="img")
    layer = viewer.add_labels(labels.copy(), name="corrected")
    seg = SegmentWidget(viewer)
    ft = FinetuneWidget(viewer)
    qtbot.addWidget(seg)
    qtbot.addWidget(ft)
    ft.image_combo.setCurrentText("img")
    ft.labels_combo.setCurrentText("corrected")
    return viewer, seg, ft, layer, labels


def _opts(**kw):
    base = {"steps": 3, "val_every": 3, "patch": [32, 32], "batch_size": 2, "lr": 1e-3}
    base.update(kw)
    return FinetuneOptions(**base)


def _press_mark_key(viewer):
    from napari.utils.key_bindings import KeyBinding

    viewer.keymap[KeyBinding.from_str(MARK_KEY.upper())](viewer)


def test_mark_reviewed_by_key_and_button(setup):
    viewer, _, ft, layer, _ = setup
    assert ft.model_combo.currentText() == "tiny"
    assert "0 of 3" in ft.reviewed_label.text()
    viewer.dims.set_current_step(0, 1)
    _press_mark_key(viewer)
    assert ft.reviewed() == [1]
    viewer.dims.set_current_step(0, 2)
    ft.mark_button.click()
    assert ft.reviewed() == [1, 2] and layer.metadata[REVIEWED_KEY] == [1, 2]
    assert "2 of 3" in ft.reviewed_label.text()
    ft.unmark_button.click()
    assert ft.reviewed() == [1]


def test_start_needs_reviewed_slices(setup):
    _, _, ft, _, _ = setup
    assert ft.start(_opts()) is None
    assert "reviewed" in ft.status.text()


def test_finetune_plots_saves_lists_and_resegments(setup, qtbot):
    viewer, seg, ft, layer, labels = setup
    original = layer.data.tobytes()
    for z in (0, 1, 2):
        viewer.dims.set_current_step(0, z)
        ft.mark_reviewed()
    draws = ft.plot.draws
    worker = ft.start(_opts())
    assert worker is not None and not ft.start_button.isEnabled() and ft.stop_button.isEnabled()
    qtbot.waitUntil(lambda: ft.worker is None, timeout=60_000)
    result = ft.last_result
    assert result is not None, ft.status.text()
    assert ft.plot.loss and ft.plot.val and ft.plot.draws > draws
    assert result.path.name == "tiny-ft-1" and (result.path / "labels.npz").is_file()
    assert "saved tiny-ft-1" in ft.status.text()
    assert layer.data.tobytes() == original  # the user's labels are untouched, byte for byte
    versions = [ft.versions.item(i).data(256) for i in range(ft.versions.count())]
    assert versions == ["tiny", "tiny-ft-1"]
    # the Segment widget lists the new version (refresh, or the active-model notice)
    seg.refresh_button.click()
    assert "tiny-ft-1" in [seg.model_combo.itemText(i) for i in range(seg.model_combo.count())]
    # one click makes any version active, in both widgets
    ft.versions.setCurrentRow(1)
    ft.activate_button.click()
    from napari_skipseg.model.store import active_model

    assert active_model() == "tiny-ft-1"
    assert seg.model_combo.currentText() == "tiny-ft-1" and ft.model_combo.currentText() == "tiny-ft-1"
    ft.versions.setCurrentRow(0)
    ft.activate_button.click()
    assert active_model() == "tiny" and seg.model_combo.currentText() == "tiny"
    # re-segment with the new model into a new layer
    assert ft.resegment_button.isEnabled()
    n = len(viewer.layers)
    ft.resegment_button.click()
    qtbot.waitUntil(lambda: ft.seg_worker is None, timeout=60_000)
    assert len(viewer.layers) == n + 1
    new = viewer.layers[-1]
    assert new.name == "img [tiny-ft-1] instances" and new.data.shape == labels.shape
    assert layer.data.tobytes() == original


def test_stop_keeps_the_best_so_far(setup, qtbot):
    viewer, _, ft, layer, _ = setup
    original = layer.data.tobytes()
    ft.mark_reviewed()
    ft.start(_opts(steps=100_000, val_every=2))
    qtbot.waitUntil(lambda: len(ft.plot.val) >= 1, timeout=60_000)
    ft.stop_button.click()
    qtbot.waitUntil(lambda: ft.worker is None, timeout=60_000)
    result = ft.last_result
    assert result is not None and result.stopped and result.steps < 100_000
    assert "stopped" in ft.status.text() and result.path.is_dir()
    assert layer.data.tobytes() == original


def test_error_is_reported(setup, qtbot):
    viewer, _, ft, _, _ = setup
    viewer.add_labels(np.zeros((3, 48, 48), np.int32), name="empty")
    ft.labels_combo.setCurrentText("empty")
    ft.mark_reviewed()
    ft.start(_opts())
    qtbot.waitUntil(lambda: ft.worker is None, timeout=60_000)
    assert "failed" in ft.status.text() and ft.last_result is None
