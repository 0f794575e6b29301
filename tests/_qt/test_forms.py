"""The shared form parts: the layer picker follows the viewer (renames too), and fields
remember their values between sessions."""

from __future__ import annotations

import json

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import QCheckBox, QComboBox, QDoubleSpinBox, QSpinBox

from napari_skipseg import settings
from napari_skipseg._qt.forms import LayerPicker, remember


def _items(combo):
    return [combo.itemText(i) for i in range(combo.count())]


def test_picker_follows_adds_removes_moves_and_renames(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    picker = LayerPicker(viewer, Image, accept=lambda ly: "hidden" not in ly.metadata)
    qtbot.addWidget(picker.native)
    texts = []
    picker.native.currentTextChanged.connect(texts.append)
    assert picker.value is None and _items(picker.native) == []
    a = viewer.add_image(np.zeros((8, 8)), name="a")
    viewer.add_labels(np.zeros((8, 8), int), name="labels")  # not an image: not offered
    viewer.add_image(np.zeros((8, 8)), name="features", metadata={"hidden": 1})  # refused by accept
    b = viewer.add_image(np.zeros((8, 8)), name="b")
    assert _items(picker.native) == ["a", "b"] and picker.value is a and texts == ["a"]
    picker.value = b
    a.name = "renamed"  # the other layer: the choice stays b
    assert _items(picker.native) == ["renamed", "b"] and picker.value is b
    b.name = "b2"  # the chosen layer: still chosen, under its new name, and the widget is told
    assert picker.value is b and picker.native.currentText() == "b2" and texts[-1] == "b2"
    viewer.layers.move(viewer.layers.index(b), 0)
    assert _items(picker.native) == ["b2", "renamed"] and picker.value is b
    n = len(texts)
    viewer.add_image(np.zeros((8, 8)), name="c")  # the choice does not change: no signal
    assert picker.value is b and len(texts) == n
    viewer.layers.remove(b)  # the chosen layer goes: the first one left is chosen
    assert picker.value is a and texts[-1] == "renamed"
    viewer.layers.clear()
    assert picker.value is None and _items(picker.native) == []


def test_picker_with_a_no_layer_choice(make_napari_viewer, qtbot):
    """The Skip widget's region picker: "whole" (None) first, then layers; a renamed region
    layer stays chosen."""
    viewer = make_napari_viewer()
    picker = LayerPicker(viewer, Labels, none_label="whole slice")
    qtbot.addWidget(picker.native)
    assert _items(picker.native) == ["whole slice"] and picker.value is None
    roi = viewer.add_labels(np.zeros((8, 8), int), name="roi")
    assert _items(picker.native) == ["whole slice", "roi"] and picker.value is None
    picker.value = roi
    roi.name = "cells"
    assert _items(picker.native) == ["whole slice", "cells"] and picker.value is roi
    viewer.layers.remove(roi)
    assert picker.value is None and _items(picker.native) == ["whole slice"]


def test_picker_detaches_when_its_widget_is_deleted(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    picker = LayerPicker(viewer, Labels)
    picker.native.deleteLater()
    qtbot.waitUntil(lambda: not picker._alive)
    layer = viewer.add_labels(np.zeros((4, 4), int), name="x")  # no error from a deleted combo box
    layer.name = "y"


def test_remember_restores_and_stores(tmp_path, qtbot):
    def fields():
        combo = QComboBox()
        combo.addItems(["auto", "cpu", "cuda"])
        spin, dspin, check = QSpinBox(), QDoubleSpinBox(), QCheckBox()
        spin.setRange(0, 1000)
        for w in (combo, spin, dspin, check):
            qtbot.addWidget(w)
        return {"device": combo, "steps": spin, "lr": dspin, "augment": check}

    first = fields()
    assert remember("w", first) == {}
    first["device"].setCurrentText("cuda")  # set by the program, not picked: not stored
    assert settings.section("w") == {}
    first["device"].setCurrentIndex(1)
    first["device"].activated.emit(1)  # what Qt sends when the user picks an item
    first["steps"].setValue(250)
    first["lr"].setValue(0.5)
    first["augment"].setChecked(True)
    assert settings.section("w") == {"device": "cpu", "steps": 250, "lr": 0.5, "augment": True}
    second = fields()  # the next session
    assert remember("w", second) == {"device": "cpu", "steps": 250, "lr": 0.5, "augment": True}
    assert second["device"].currentText() == "cpu" and second["steps"].value() == 250
    assert second["lr"].value() == 0.5 and second["augment"].isChecked()
    # a value the field cannot take is ignored; other sections are kept
    settings.update("w", {"device": "tpu", "steps": "many"})
    settings.update("other", {"x": 1})
    third = fields()
    remember("w", third)
    assert third["device"].currentText() == "auto" and third["steps"].value() == 0
    assert json.loads(settings.settings_path().read_text())["other"] == {"x": 1}


def test_segment_widget_keeps_a_renamed_layer_and_remembers_its_fields(widget, qtbot):
    from napari_skipseg._qt.segment_widget import SegmentWidget

    viewer, w = widget
    viewer.add_image(np.zeros((32, 32), np.float32), name="a")
    b = viewer.add_image(np.zeros((32, 32), np.float32), name="b")
    w.layer_combo.setCurrentText("b")
    b.name = "b renamed"
    assert w.layer_combo.currentText() == "b renamed" and w._current_layer() is b
    assert w.run_button.isEnabled()
    w.device_combo.setCurrentIndex(w.device_combo.findText("cpu"))
    w.device_combo.activated.emit(w.device_combo.currentIndex())
    w.tile_spin.setValue(128)
    again = SegmentWidget(viewer)  # the next session
    qtbot.addWidget(again)
    assert again.device_combo.currentText() == "cpu" and again.tile_spin.value() == 128
