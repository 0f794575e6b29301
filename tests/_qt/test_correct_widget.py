"""The Correct dock widget in a real napari viewer (under Xvfb): each tool changes the labels
as the headless tool does and napari's undo takes it back; thresholds, uncertainty, table."""

from __future__ import annotations

import numpy as np
import pytest

from napari_skipseg import annotate as ann
from napari_skipseg._qt import camera_of
from napari_skipseg._qt.correct_widget import CorrectWidget

PARAMS = {"seed": 0.5, "mask": 0.5, "min_size": 1, "min_seed_size": 1}


def scene(ndim: int):
    """Labels with a missed object, a false one, a merged pair and a split one, and the
    probabilities that describe the truth."""
    shape = (24, 24) if ndim == 2 else (6, 24, 24)
    lead = () if ndim == 2 else (slice(1, 5),)
    fg = np.zeros(shape, bool)
    interior = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.uint32)

    def put(y0, y1, x0, x1, value=None, core=True):
        region = (*lead, slice(y0, y1), slice(x0, x1))
        fg[region] = True
        if core:
            interior[(*lead, slice(y0 + 1, y1 - 1), slice(x0 + 1, x1 - 1))] = 1.0
        if value is not None:
            labels[region] = value

    put(2, 8, 2, 8)  # missed
    put(2, 8, 12, 17, 1)  # two touching objects merged as 1
    put(2, 8, 17, 22, 1)
    put(12, 18, 2, 8, 2)  # one object in two pieces 2 and 3
    labels[(*lead, slice(12, 18), slice(5, 8))] = 3
    labels[(*lead, slice(20, 23), slice(20, 23))] = 4  # false
    fg_f = fg.astype(np.float32)
    probs = np.stack([1 - fg_f, interior, fg_f - interior]).astype(np.float32)
    return labels, probs


def pt(ndim, y, x):
    return (y, x) if ndim == 2 else (3, y, x)


@pytest.fixture
def correct(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    w = CorrectWidget(viewer)
    qtbot.addWidget(w)
    return viewer, w


@pytest.mark.parametrize("ndim", [2, 3])
def test_each_tool_matches_the_headless_tool_and_undoes(correct, ndim):
    viewer, w = correct
    labels, probs = scene(ndim)
    layer = viewer.add_labels(labels.copy(), name="cells")
    w.set_probabilities(layer, probs, params=PARAMS)
    assert w.labels_layer() is layer and w.tool_buttons["box"].isEnabled()
    w.seed_slider.setValue(50)
    w.mask_slider.setValue(50)
    w.size_spin.setValue(1)
    w._relabel_timer.stop()  # no live relabel in this test: the tools only
    expected = labels.copy()
    steps = [
        ("add", [pt(ndim, 5, 5)], lambda a: ann.add_object(a, probs, pt(ndim, 5, 5), params=PARAMS,
                                                           spatial_dims=ndim)),
        ("delete", [pt(ndim, 21, 21)], lambda a: ann.delete_object(a, pt(ndim, 21, 21))),
        ("merge", [pt(ndim, 14, 3), pt(ndim, 14, 6)], lambda a: ann.merge_objects(a, pt(ndim, 14, 3),
                                                                                   pt(ndim, 14, 6))),
        ("split", [pt(ndim, 5, 14), pt(ndim, 5, 19)], lambda a: ann.split_object(a, probs, pt(ndim, 5, 14),
                                                                                  pt(ndim, 5, 19))),
        ("box", [pt(ndim, 0, 0), pt(ndim, 10, 10)], lambda a: ann.box_segment(a, probs, pt(ndim, 0, 0),
                                                                               pt(ndim, 10, 10), params=PARAMS)),
    ]
    history = [layer.data.copy()]
    for tool, points, headless in steps:
        w.set_tool(tool)
        assert layer.mode == "pan_zoom" and not layer.mouse_pan  # clicks are the tool's
        for p in points:
            w.click(p)
        headless(expected)
        np.testing.assert_array_equal(layer.data, expected, err_msg=tool)
        history.append(layer.data.copy())
    # the missed object is there, the false one gone, the pieces one, the merged two apart
    assert layer.data[pt(ndim, 5, 5)] and not layer.data[pt(ndim, 21, 21)]
    assert layer.data[pt(ndim, 14, 3)] == layer.data[pt(ndim, 14, 6)]
    assert layer.data[pt(ndim, 5, 14)] != layer.data[pt(ndim, 5, 19)]
    for before in reversed(history[:-1]):  # napari's undo, one step per tool use
        layer.undo()
        np.testing.assert_array_equal(layer.data, before)
    np.testing.assert_array_equal(layer.data, labels)
    layer.redo()
    np.testing.assert_array_equal(layer.data, history[1])
    w.set_tool(None)
    assert layer.mouse_pan


def test_split_refused_across_objects_says_why(correct):
    viewer, w = correct
    labels, probs = scene(2)
    layer = viewer.add_labels(labels.copy(), name="cells")
    w.set_probabilities(layer, probs, params=PARAMS)
    w.set_tool("split")
    w.click((5, 14))
    assert w.click((21, 21)) is None
    assert "same object" in w.status.text()
    np.testing.assert_array_equal(layer.data, labels)


def test_without_probabilities_add_grows_from_the_image(correct):
    viewer, w = correct
    image = np.full((32, 32), 10, np.uint8)
    image[10:16, 10:16] = 200
    viewer.add_image(image, name="img")
    layer = viewer.add_labels(np.zeros((32, 32), np.uint32), name="lab", metadata={"skipseg": {"source": "img"}})
    w.labels_combo.setCurrentText("lab")
    assert not w.tool_buttons["box"].isEnabled() and not w.seed_slider.isEnabled()
    assert "no probabilities" in w.source_label.text()
    w.set_tool("add")
    edit = w.run_tool("add", (12, 12))
    assert edit.label == 1
    expected = np.zeros((32, 32), np.uint32)
    expected[10:16, 10:16] = 1
    np.testing.assert_array_equal(layer.data, expected)


def test_live_thresholds_relabel_and_undo(correct, qtbot):
    viewer, w = correct
    interior = np.zeros((10, 20), np.float32)
    interior[3:7, 2:8] = 0.9
    interior[3:7, 12:18] = 0.9
    interior[4:6, 8:12] = 0.7
    fg = (interior > 0).astype(np.float32)
    probs = np.stack([1 - fg, interior, fg - interior])
    start = ann.relabel(probs, {**PARAMS, "seed": 0.8})
    layer = viewer.add_labels(start.copy(), name="cells")
    w.set_probabilities(layer, probs, params={**PARAMS, "seed": 0.8})
    assert w.seed_slider.value() == 80
    w.seed_slider.setValue(60)  # the bridge becomes seed: one object
    qtbot.waitUntil(lambda: int(layer.data.max()) == 1, timeout=10_000)
    qtbot.waitUntil(lambda: w.relabel_worker is None, timeout=10_000)
    np.testing.assert_array_equal(layer.data, ann.relabel(probs, {**PARAMS, "seed": 0.6}))
    layer.undo()
    np.testing.assert_array_equal(layer.data, start)


def test_uncertainty_next_region_and_table(correct, qtbot):
    viewer, w = correct
    probs = np.zeros((3, 2, 300, 300), np.float32)
    probs[0] = 1.0
    probs[:, 1, 256:, 0:256] = 1 / 3  # slice 1, bottom-left tile: undecided
    labels = np.zeros((2, 300, 300), np.uint32)
    labels[1, 260:270, 10:30] = 7
    labels[0, 5:9, 5:9] = 3
    image = np.zeros((2, 300, 300), np.float32)
    image[1, 260:270, 10:30] = 50.0
    viewer.add_image(image, name="img")
    layer = viewer.add_labels(labels, name="lab", metadata={"skipseg": {"source": "img"}})
    w.set_probabilities(layer, probs, params=PARAMS)
    unc = w.show_uncertainty()
    assert unc.name == "lab uncertainty" and unc.data.shape == labels.shape
    region = w.next_uncertain()
    assert region.lead == (1,) and region.window[0].start == 256 and region.window[1].start == 0
    assert viewer.dims.current_step[0] == 1
    np.testing.assert_allclose(camera_of(viewer).center[-2:], (277.5, 127.5))
    second = w.next_uncertain()
    assert second.key != region.key  # a region is shown once
    with qtbot.waitSignal(w.refresh_table().finished, timeout=10_000):
        pass
    assert w.table.rowCount() == 2
    rows = {int(w.table.item(r, 0).text()): r for r in range(2)}
    assert w.table.item(rows[7], 1).text() == "200" and w.table.item(rows[7], 2).text() == "50.0"
    assert float(w.table.item(rows[7], 3).text()) < float(w.table.item(rows[3], 3).text())
    assert "lab review region" in viewer.layers
    assert rows[7] == 0  # least certain first
    from qtpy.QtCore import Qt

    w.table.sortItems(1, Qt.SortOrder.AscendingOrder)  # by area, as numbers: 16 before 200
    assert [w.table.item(r, 0).text() for r in range(2)] == ["3", "7"]
    rows = {int(w.table.item(r, 0).text()): r for r in range(2)}
    w._on_row_clicked(rows[3])
    assert layer.selected_label == 3 and viewer.dims.current_step[0] == 0
    np.testing.assert_allclose(camera_of(viewer).center[-2:], (6.5, 6.5))


def test_probabilities_come_from_the_segment_run(make_napari_viewer, model_home, qtbot):
    from napari_skipseg._qt.segment_widget import SegmentWidget
    from napari_skipseg._sample_data import synthetic_nuclei

    viewer = make_napari_viewer()
    seg = SegmentWidget(viewer)
    viewer.window.add_dock_widget(seg, name="Segment")
    w = CorrectWidget(viewer)
    qtbot.addWidget(w)
    image, _ = synthetic_nuclei((64, 64), seed=1)
    viewer.add_image(image, name="cells")
    seg.model_combo.setCurrentText("tiny")
    seg.output_combo.setCurrentText("instances")
    seg.run()
    qtbot.waitUntil(lambda: seg.worker is None, timeout=60_000)
    layer = viewer.layers["cells [tiny] instances"]
    w.labels_combo.setCurrentText(layer.name)
    src = w.source(layer)
    assert src.where == "Segment" and src.model == "tiny" and src.probs.shape == (3, 64, 64)
    assert src.image is not None and w.tool_buttons["box"].isEnabled()


def test_save_thresholds_makes_a_version(correct, model_home, qtbot):
    from napari_skipseg.model.store import load_config

    viewer, w = correct
    labels, probs = scene(2)
    layer = viewer.add_labels(labels, name="cells")
    w.set_probabilities(layer, probs, model="tiny")
    w.seed_slider.setValue(73)
    w.mask_slider.setValue(41)
    w.size_spin.setValue(12)
    # the sliders' relabel (after a 30 ms pause) ends first, or its status line would follow the save's
    qtbot.waitUntil(lambda: not w._relabel_timer.isActive() and w.relabel_worker is None, timeout=30_000)
    worker = w.save_thresholds()
    with qtbot.waitSignal(worker.finished, timeout=30_000):
        pass
    cfg = load_config("tiny-ft-1")
    assert cfg.postprocess["seed"] == 0.73 and cfg.postprocess["mask"] == 0.41 and cfg.postprocess["min_size"] == 12
    assert "Correct widget" in cfg.card["postprocess_tuning"] and cfg.card["parent"] == "tiny"
    assert "tiny-ft-1" in w.status.text()


def test_mouse_click_and_drag_on_the_layer(correct):
    """The tools through the layer's mouse callbacks (napari's public interaction functions,
    with a plain event record as napari's own tests use)."""
    from dataclasses import dataclass, field

    from napari.utils.interactions import (
        mouse_move_callbacks,
        mouse_press_callbacks,
        mouse_release_callbacks,
    )

    @dataclass
    class Event:
        type: str
        position: tuple
        button: int = 1
        is_dragging: bool = False
        modifiers: list = field(default_factory=list)
        handled: bool = False
        dims_displayed: tuple = (0, 1)
        view_direction: object = None
        delta: tuple = (0, 0)
        dims_point: tuple = (0, 0)

    class Wrapped:  # napari hands drag callbacks an event whose __wrapped__ it swaps on each move
        def __init__(self, event):
            self.__wrapped__ = event

        def __getattr__(self, name):
            return getattr(self.__wrapped__, name)

    viewer, w = correct
    labels, probs = scene(2)
    layer = viewer.add_labels(labels.copy(), name="cells", scale=(2.0, 2.0))  # world = 2 x data
    w.set_probabilities(layer, probs, params=PARAMS)

    def click(y, x, drag_to=None):
        mouse_press_callbacks(layer, Wrapped(Event("mouse_press", (2.0 * y, 2.0 * x))))
        if drag_to is not None:
            mouse_move_callbacks(layer, Event("mouse_move", (2.0 * drag_to[0], 2.0 * drag_to[1]), is_dragging=True))
        end = drag_to or (y, x)
        mouse_release_callbacks(layer, Event("mouse_release", (2.0 * end[0], 2.0 * end[1])))

    w.set_tool("delete")
    click(21, 21)
    assert not layer.data[21, 21]
    w.set_tool("box")
    click(0, 0, drag_to=(10, 10))
    assert layer.data[5, 5], w.status.text()
    assert "box prompt" not in viewer.layers  # the preview goes with the release
    w.set_tool(None)
    before = layer.data.copy()
    click(14, 14)  # no tool: the click changes nothing
    np.testing.assert_array_equal(layer.data, before)


def test_docked_through_the_plugin_manifest(make_napari_viewer, qtbot):
    """As napari docks it (the viewer and its layers reach the widget through proxies)."""
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-skipseg", "Correct")
    labels, probs = scene(2)
    layer = viewer.add_labels(labels.copy(), name="cells")
    w.set_probabilities(layer, probs, params=PARAMS)
    assert "probabilities of" in w.source_label.text() and w.tool_buttons["box"].isEnabled()
    w.set_tool("box")
    w.preview_box(layer, (0, 0), (5, 5))
    w.preview_box(layer, (0, 0), (9, 9))
    assert [ly.name for ly in viewer.layers].count("box prompt") == 1
    w.click((0, 0), (10, 10))
    assert "box prompt" not in viewer.layers and layer.data[5, 5]
    layer.undo()
    np.testing.assert_array_equal(layer.data, labels)


def test_keys_on_the_labels_layer_choose_the_tools(correct):
    from napari.utils.key_bindings import coerce_keybinding

    viewer, w = correct
    labels, probs = scene(2)
    layer = viewer.add_labels(labels.copy(), name="cells")
    w.set_probabilities(layer, probs, params=PARAMS)
    for key, tool in (("a", "add"), ("d", "delete"), ("g", "merge"), ("s", "split"), ("w", "box")):
        layer.keymap[coerce_keybinding(key)](layer)
        assert w.tool == tool and w.tool_buttons[tool].isChecked()
    layer.keymap[coerce_keybinding("w")](layer)  # the same key again: no tool
    assert w.tool is None and not layer.mode == "paint"
    layer.keymap[coerce_keybinding("n")](layer)
    assert "uncertainty" in w.status.text()


def test_split_and_add_measure_with_the_layers_scale(correct):
    """A 3D layer with voxels 3 x 1 x 1 (its scale): the widget's split and add are the
    headless tools' with that spacing, not with cubic voxels."""
    viewer, w = correct
    labels = np.ones((7, 12, 12), np.uint32)
    labels[:, :, 11] = 0
    layer = viewer.add_labels(labels.copy(), name="cells", scale=(3.0, 1.0, 1.0))
    a, b = (1, 2, 2), (4, 9, 7)
    expected = labels.copy()
    ann.split_object(expected, None, a, b, spacing=(3.0, 1.0, 1.0))
    assert (expected != _split_voxels(labels, a, b)).any()  # the scale matters here
    w.set_tool("split")
    w.click(a)
    w.click(b)
    np.testing.assert_array_equal(layer.data, expected)
    w.set_tool("delete")
    w.click(a)
    w.set_tool("add")
    w.click((3, 3, 3))
    ann.delete_object(expected, a)
    ann.add_object(expected, None, (3, 3, 3), spacing=(3.0, 1.0, 1.0))
    np.testing.assert_array_equal(layer.data, expected)


def _split_voxels(labels, a, b):
    out = labels.copy()
    ann.split_object(out, None, a, b)
    return out
