"""A scripted painting session in a real viewer with the Fine-tune widget watching the layer:
200 label edits print no warnings, re-slicing is not an edit, undo is, and the autosave holds
the last state."""

from __future__ import annotations

import warnings

import numpy as np

from napari_skipseg._qt.finetune_widget import FinetuneWidget
from napari_skipseg.autosave import load_newest


def test_200_label_edits_print_no_warnings(make_napari_viewer, model_home, qtbot):
    viewer = make_napari_viewer()
    rng = np.random.default_rng(0)
    viewer.add_image(rng.normal(size=(4, 64, 64)).astype(np.float32), name="img")
    layer = viewer.add_labels(np.zeros((4, 64, 64), np.int32), name="corrected")
    ft = FinetuneWidget(viewer)
    qtbot.addWidget(ft)
    viewer.window.add_dock_widget(ft)
    ft.image_combo.setCurrentText("img")
    ft.labels_combo.setCurrentText("corrected")
    assert ft._watched is layer
    ft._autosave_timer.setInterval(10_000)  # saved once, at the end
    layer.brush_size = 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i in range(200):
            z = i % 4
            viewer.dims.set_current_step(0, z)
            kind = i % 5
            if kind in (0, 1):  # a brush dab, as a stroke ends
                layer.paint((z, int(rng.integers(5, 59)), int(rng.integers(5, 59))), 1 + i % 7)
            elif kind == 2:  # an edit through the data API
                y, x = (int(v) for v in rng.integers(0, 62, 2))
                layer.data_setitem((np.array([z, z]), np.array([y, y + 1]), np.array([x, x])), 9)
            elif kind == 3:
                layer.undo()
            else:
                layer.redo()
            if i % 20 == 0:
                qtbot.wait(1)  # let Qt draw now and then
        qtbot.wait(10)
        # a re-slice is not an edit: the timer, stopped here, does not start again
        ft._autosave_timer.stop()
        viewer.dims.set_current_step(0, 1)
        qtbot.wait(10)
        assert not ft._autosave_timer.isActive()
        # an undo (napari says only set_data) is an edit
        layer.undo()
        assert ft._autosave_timer.isActive()
        ft.autosave_now(wait=True)
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []
    assert np.array_equal(load_newest("corrected")[0], layer.data)
