"""The layer context menu's commands (npe2 ``menus``), run through napari's app model the way
a right click runs them, in a real viewer."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def app_and_viewer(make_napari_viewer, model_home):
    # napari's app model: get_app_model is documented as napari's public way to reach it (its
    # module path starts with an underscore); the test app napari's fixture makes is found only so
    from napari._app_model import get_app_model

    from napari_skipseg.model.store import set_active_model

    set_active_model("tiny", persist=False)
    viewer = make_napari_viewer()
    return get_app_model(), viewer


def _menu_ids(app, menu):
    return {item.command.id for item in app.menus.get_menu(menu) if hasattr(item, "command")}


def test_commands_are_in_the_layer_menus(app_and_viewer):
    app, _ = app_and_viewer
    assert {"napari-skipseg.segment_layer", "napari-skipseg.finetune_on_layer"} <= _menu_ids(app, "napari/layers/segment")
    assert "napari-skipseg.explore_layer" in _menu_ids(app, "napari/layers/visualize")


def test_segment_layer_segments_the_clicked_image(app_and_viewer, qtbot):
    app, viewer = app_and_viewer
    rng = np.random.default_rng(0)
    viewer.add_image(rng.normal(size=(64, 64)).astype(np.float32), name="other")
    clicked = viewer.add_image(rng.normal(size=(64, 64)).astype(np.float32), name="clicked")
    viewer.add_image(rng.normal(size=(64, 64)).astype(np.float32), name="last")
    viewer.layers.selection.active = clicked
    app.commands.execute_command("napari-skipseg.segment_layer").result()
    _, widget = viewer.window.add_plugin_dock_widget("napari-skipseg", "Segment")  # the one opened
    assert widget.layer_combo.currentText() == "clicked"
    qtbot.waitUntil(lambda: widget.worker is None and any(ly.name.startswith("clicked") and ly is not clicked
                                                            for ly in viewer.layers), timeout=60_000)


def test_finetune_and_explore_open_with_the_clicked_layer(app_and_viewer):
    app, viewer = app_and_viewer
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    viewer.add_image(np.zeros((32, 32), np.float32), name="img2")
    labels = viewer.add_labels(np.zeros((32, 32), np.int32), name="mine")
    viewer.add_labels(np.zeros((32, 32), np.int32), name="theirs")
    viewer.layers.selection.active = labels
    app.commands.execute_command("napari-skipseg.finetune_on_layer").result()
    _, ft = viewer.window.add_plugin_dock_widget("napari-skipseg", "Fine-tune")
    assert ft.labels_combo.currentText() == "mine"
    viewer.layers.selection.active = viewer.layers["img2"]
    app.commands.execute_command("napari-skipseg.explore_layer").result()
    _, skip = viewer.window.add_plugin_dock_widget("napari-skipseg", "Skip connections")
    assert skip.layer_combo.currentText() == "img2"
