"""Commands of the layer list's context menu (right click on a layer), declared in napari.yaml
under ``menus`` (``napari/layers/segment`` and ``napari/layers/visualize``).

napari calls them with the viewer and the active layer (injected by their type annotations,
so no ``from __future__ import annotations`` here). Each opens its dock widget (or brings the
open one forward) with the clicked layer chosen; :func:`segment_layer` also starts the run,
which shows its progress in the widget and can be cancelled there.
"""

import napari
import napari.layers

PLUGIN = "napari-skipseg"


def _dock(viewer: napari.Viewer, name: str):
    dock, widget = viewer.window.add_plugin_dock_widget(PLUGIN, name)
    dock.show()
    dock.raise_()
    return widget


def segment_layer(viewer: napari.Viewer, layer: napari.layers.Layer) -> None:
    """Segment this image with the chosen model (the Segment widget's settings)."""
    widget = _dock(viewer, "Segment")
    widget.image_picker.value = layer
    widget.run()


def finetune_on_layer(viewer: napari.Viewer, layer: napari.layers.Layer) -> None:
    """Open Fine-tune with these labels as the corrected labels."""
    widget = _dock(viewer, "Fine-tune")
    widget.labels_picker.value = layer


def explore_layer(viewer: napari.Viewer, layer: napari.layers.Layer) -> None:
    """Open Skip connections with this image chosen."""
    widget = _dock(viewer, "Skip connections")
    widget.image_picker.value = layer
