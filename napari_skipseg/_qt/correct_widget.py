"""Dock widget "Correct": fix a segmentation with clicks, live thresholds, review by uncertainty.

Tools act on the chosen Labels layer (keys on that layer, or the buttons):
**A** add an object at a click, **D** delete the clicked object, **G** merge (click two
objects), **S** split (click twice inside one object), **W** re-segment inside a box (drag
it). Each change goes through ``Labels.data_setitem`` inside ``block_history``, so napari's
undo (Ctrl+Z) takes it back in one step. The maths lives in :mod:`napari_skipseg.annotate`.

The model's probabilities come from the last *Segment* run on that layer (the Segment
widget keeps them), or from :meth:`CorrectWidget.set_probabilities`. Without them, *add*
grows from the image and *split* from the shape; the box, the thresholds and the
uncertainty need them.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QAbstractItemView,
    QButtonGroup,
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from .. import annotate as ann
from . import camera_of
from ._labels import WrapLabel

#: tool -> (key on the Labels layer, button text, clicks it needs, what the status says)
TOOLS = {
    "add": ("a", "Add (A)", 1, "click where an object is missing"),
    "delete": ("d", "Delete (D)", 1, "click an object to delete it"),
    "merge": ("g", "Merge (G)", 2, "click two objects to merge them"),
    "split": ("s", "Split (S)", 2, "click twice inside one object, once in each part"),
    "box": ("w", "Box (W)", 2, "drag a box: it is re-segmented from the probabilities"),
}
NEXT_KEY = "n"
REVIEWED_KEY = "skipseg_reviewed"  # as the Fine-tune widget marks reviewed slices
TILE = 256


@dataclass
class Source:
    """What the tools know of a Labels layer besides its pixels."""

    probs: object = None  # (classes, *labels.shape) or None
    params: dict = field(default_factory=dict)  # the instance thresholds in use
    model: str = ""
    spatial_dims: int = 2
    image: object = None  # the image, channels last, or None
    uncertainty: np.ndarray | None = None
    where: str = ""  # how the probabilities were found


def find_segment_result(viewer, layer):
    """The Segment widget's last result that made ``layer`` (its probabilities kept), or None."""
    try:
        docked = list(viewer.window.dock_widgets.values())
    except Exception:  # noqa: BLE001 - a viewer without a window
        return None
    from .segment_widget import SegmentWidget

    meta = (layer.metadata or {}).get("skipseg") or {}
    for widget in docked:
        result = getattr(widget, "last_result", None) if isinstance(widget, SegmentWidget) else None
        if result is None or result.probabilities is None:
            continue
        same = result.labels is layer.data or (
            meta.get("model") == result.model_name
            and tuple(result.probabilities.shape[1:]) == tuple(layer.data.shape))
        if same:
            return result
    return None


def apply_edit(layer, edit: ann.Edit) -> None:
    """Write ``edit`` into a Labels layer as one undoable step (public napari API)."""
    if edit.empty:
        return
    with layer.block_history():
        layer.data_setitem(edit.indices, edit.values)


def _hint(label: QLabel) -> None:
    """A hint: the theme's text colour (no fixed colour: the light theme stays readable), italic."""
    font = label.font()
    font.setItalic(True)
    label.setFont(font)


class NumberItem(QTableWidgetItem):
    """A table cell that sorts by its number (``UserRole``; empty cells last), shown as text."""

    def __lt__(self, other) -> bool:
        a, b = self.data(Qt.ItemDataRole.UserRole), other.data(Qt.ItemDataRole.UserRole)
        try:
            a, b = float(a), float(b)
        except (TypeError, ValueError):
            return super().__lt__(other)
        if np.isnan(a) or np.isnan(b):
            return not np.isnan(a) and np.isnan(b)
        return a < b


class CorrectWidget(QWidget):
    """Correct the labels of a Labels layer with clicks; thresholds; review by uncertainty."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.tool: str | None = None
        self.clicks: list[tuple[int, ...]] = []
        self.sources: dict = {}  # layer.unique_id -> Source
        self.visited: dict = {}  # layer.unique_id -> keys of the regions reviewed
        self.relabel_worker = None
        self._relabel_again = False
        self._bound = None  # unique_id of the layer our keys and mouse callback sit on
        self.timings: dict[str, float] = {}  # last GUI-thread seconds per action (benchmarks read it)
        self._table_ids: list[int] = []
        self._box_preview = None

        self.labels_combo = QComboBox()
        self.source_label = WrapLabel("")
        _hint(self.source_label)
        self.buttons = QButtonGroup(self)
        self.buttons.setExclusive(False)
        tool_row = QHBoxLayout()
        self.tool_buttons = {}
        for name, (_, text, _, tip) in TOOLS.items():
            b = QPushButton(text)
            b.setCheckable(True)
            b.setToolTip(tip)
            self.tool_buttons[name] = b
            tool_row.addWidget(b)
            b.clicked.connect(lambda checked, n=name: self.set_tool(n if checked else None))

        def slider(lo: int, hi: int, tip: str) -> QSlider:
            s = QSlider(Qt.Orientation.Horizontal)
            s.setRange(lo, hi)
            s.setToolTip(tip)
            return s

        self.seed_slider = slider(1, 100, "seed threshold: where the interior probability is above it, an object starts")
        self.mask_slider = slider(1, 100, "foreground threshold: objects grow where interior + boundary is above it")
        self.size_spin = QSpinBox()
        self.size_spin.setRange(1, 100000)
        self.size_spin.setToolTip("objects with fewer pixels are dropped")
        self.seed_value, self.mask_value = QLabel(""), QLabel("")
        self.save_button = QPushButton("Save to model")
        self.save_button.setToolTip("a new version of the model with these thresholds (weights unchanged)")

        self.uncertainty_button = QPushButton("Show uncertainty")
        self.uncertainty_button.setToolTip("entropy of the model's class probabilities (0 sure, 1 undecided)")
        self.next_button = QPushButton("Next uncertain region (N)")
        self.next_button.setToolTip(f"moves the view to the least certain {TILE} x {TILE} tile not seen yet "
                                    "(slices marked reviewed in Fine-tune are skipped)")
        self.table = QTableWidget(0, 4)
        self.table.setHorizontalHeaderLabels(["id", "area", "intensity", "certainty"])
        self.table.setSortingEnabled(True)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setVisible(False)
        self.table.setMinimumHeight(160)
        self.table_button = QPushButton("Refresh table")
        self.table_label = QLabel("")
        _hint(self.table_label)
        self.status = WrapLabel("")

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("labels", self.labels_combo)
        form.addRow("", self.source_label)
        tools = QGroupBox("Tools (each undone by Ctrl+Z)")
        tl = QVBoxLayout(tools)
        tl.addLayout(tool_row)
        thresholds = QGroupBox("Thresholds (relabel the layer at once)")
        th = QFormLayout(thresholds)
        for label, s, v in (("seed", self.seed_slider, self.seed_value), ("foreground", self.mask_slider, self.mask_value)):
            row = QHBoxLayout()
            row.addWidget(s, 1)
            v.setMinimumWidth(34)
            row.addWidget(v)
            th.addRow(label, row)
        size_row = QHBoxLayout()
        size_row.addWidget(self.size_spin, 1)
        size_row.addWidget(self.save_button)
        th.addRow("min size", size_row)
        review = QGroupBox("Review")
        rv = QVBoxLayout(review)
        row = QHBoxLayout()
        row.addWidget(self.uncertainty_button)
        row.addWidget(self.next_button)
        rv.addLayout(row)
        rv.addWidget(self.table, 1)
        row = QHBoxLayout()
        row.addWidget(self.table_label, 1)
        row.addWidget(self.table_button)
        rv.addLayout(row)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(tools)
        layout.addWidget(thresholds)
        layout.addWidget(review, 1)
        layout.addWidget(self.status)

        self.seed_slider.valueChanged.connect(self._on_threshold)
        self.mask_slider.valueChanged.connect(self._on_threshold)
        self.size_spin.valueChanged.connect(self._on_threshold)
        self.save_button.clicked.connect(self.save_thresholds)
        self.uncertainty_button.clicked.connect(self.show_uncertainty)
        self.next_button.clicked.connect(self.next_uncertain)
        self.table_button.clicked.connect(self.refresh_table)
        self.table.cellClicked.connect(self._on_row_clicked)
        self.labels_combo.currentTextChanged.connect(self._on_labels_chosen)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.selection.events.active.connect(self._follow_selection)
        self._relabel_timer = QTimer(self)
        self._relabel_timer.setSingleShot(True)
        self._relabel_timer.setInterval(30)
        self._relabel_timer.timeout.connect(self._start_relabel)
        self._refresh_layers()

    # -- layers ----------------------------------------------------------------------------------
    def _labels_layers(self):
        from napari.layers import Labels

        return [layer for layer in self.viewer.layers if isinstance(layer, Labels)]

    def _refresh_layers(self, event=None) -> None:
        current = self.labels_combo.currentText()
        names = [layer.name for layer in self._labels_layers()]
        self.labels_combo.blockSignals(True)
        self.labels_combo.clear()
        self.labels_combo.addItems(names)
        active = self.viewer.layers.selection.active
        if active is not None and active.name in names:
            self.labels_combo.setCurrentText(active.name)
        elif current in names:
            self.labels_combo.setCurrentText(current)
        self.labels_combo.blockSignals(False)
        self._on_labels_chosen(self.labels_combo.currentText())

    def _follow_selection(self, event=None) -> None:
        active = self.viewer.layers.selection.active
        names = [layer.name for layer in self._labels_layers()]
        if active is not None and active.name in names and active.name != self.labels_combo.currentText():
            self.labels_combo.setCurrentText(active.name)

    def labels_layer(self):
        name = self.labels_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _on_labels_chosen(self, name: str = "") -> None:
        layer = self.labels_layer()
        self._bind(layer)
        self.clicks = []
        src = self.source(layer) if layer is not None else None
        if src is not None:
            self._prepare(src)
        self._show_source(src)
        self._set_sliders(src)
        self.table.setRowCount(0)

    def source(self, layer) -> Source:
        """What is known about ``layer``: the probabilities of the Segment run that made it
        (looked up each time until found), thresholds, the image it came from."""
        src = self.sources.get(layer.unique_id)
        if src is None or src.probs is None:
            src = self._source_from_segment(layer) or src or self._plain_source(layer)
            self.sources[layer.unique_id] = src
        return src

    def _plain_source(self, layer) -> Source:
        return Source(spatial_dims=2 if layer.ndim == 2 else 3, image=self._image_for(layer), where="none")

    def _source_from_segment(self, layer) -> Source | None:
        result = find_segment_result(self.viewer, layer)
        if result is None:
            return None
        return self._make_source(layer, result.probabilities, result.model_name, where="Segment")

    def _make_source(self, layer, probs, model: str, params: dict | None = None, where: str = "") -> Source:
        from ..inference.postprocess import DEFAULT_INSTANCE_PARAMS

        spatial_dims = 2 if layer.ndim == 2 else 3
        base = {}
        try:
            from ..model.store import load_config

            cfg = load_config(model)
            spatial_dims = min(cfg.spatial_dims, layer.ndim)
            base = dict(cfg.postprocess)
        except Exception:  # noqa: BLE001 - a model no longer in the store: defaults
            pass
        params = {**DEFAULT_INSTANCE_PARAMS, **base, **(params or {})}
        return Source(probs, params, model, spatial_dims, self._image_for(layer), where=where)

    def set_probabilities(self, layer, probs, model: str = "", params: dict | None = None) -> None:
        """Use ``probs`` (``(classes, *layer.data.shape)``) for ``layer`` (e.g. from a script
        or a saved ``segment(..., output="probabilities")``)."""
        if tuple(probs.shape[1:]) != tuple(layer.data.shape):
            raise ValueError(f"probabilities {tuple(probs.shape)} do not fit {layer.name!r} {tuple(layer.data.shape)}")
        self.sources[layer.unique_id] = self._make_source(layer, probs, model, params, where="given")
        current = self.labels_layer()
        if current is not None and current.unique_id == layer.unique_id:
            self._on_labels_chosen(layer.name)

    def _image_for(self, layer):
        """The image the labels were made from (metadata ``source``), channels last, when it
        has the labels' shape."""
        name = ((layer.metadata or {}).get("skipseg") or {}).get("source")
        if not name or name not in self.viewer.layers:
            return None
        image = self.viewer.layers[name]
        data = image.data[0] if getattr(image, "multiscale", False) else image.data
        spatial = tuple(data.shape[:-1]) if getattr(image, "rgb", False) else tuple(data.shape)
        return data if spatial == tuple(layer.data.shape) else None

    def _show_source(self, src: Source | None) -> None:
        has = src is not None and src.probs is not None
        if src is None:
            text = "choose a Labels layer"
        elif has:
            text = (f"probabilities of {src.model or 'the model'} ({src.where}); thresholds relabel at once")
        else:
            text = ("no probabilities for this layer (run Segment on its image): add grows from the image, "
                    "split follows the shape; box, thresholds and uncertainty are off")
        self.source_label.setText(text)
        instance = has and np.shape(src.probs)[0] == 3
        for w in (self.seed_slider, self.mask_slider, self.size_spin, self.save_button):
            w.setEnabled(instance)
        self.tool_buttons["box"].setEnabled(has)
        self.uncertainty_button.setEnabled(has)
        self.next_button.setEnabled(has)

    def _set_sliders(self, src: Source | None) -> None:
        p = src.params if src is not None and src.params else {"seed": 0.5, "mask": 0.5, "min_size": 8}
        for w in (self.seed_slider, self.mask_slider, self.size_spin):
            w.blockSignals(True)
        self.seed_slider.setValue(int(round(float(p.get("seed", 0.5)) * 100)))
        self.mask_slider.setValue(int(round(float(p.get("mask", 0.5)) * 100)))
        self.size_spin.setValue(int(p.get("min_size", 8)))
        for w in (self.seed_slider, self.mask_slider, self.size_spin):
            w.blockSignals(False)
        self._show_values()

    def _show_values(self) -> None:
        self.seed_value.setText(f"{self.seed_slider.value() / 100:.2f}")
        self.mask_value.setText(f"{self.mask_slider.value() / 100:.2f}")

    # -- keys and mouse ------------------------------------------------------------------------
    def _layer(self, uid):
        """The layer with this ``unique_id`` in the viewer, or None. (Layers reach a plugin
        through napari's proxies, a new one per access: identity never holds, the id does.)"""
        for layer in self.viewer.layers:
            if layer.unique_id == uid:
                return layer
        return None

    def _bind(self, layer) -> None:
        uid = None if layer is None else layer.unique_id
        if uid == self._bound:
            return
        old = self._layer(self._bound) if self._bound is not None else None
        if old is not None:
            if self.on_mouse in old.mouse_drag_callbacks:
                old.mouse_drag_callbacks.remove(self.on_mouse)
            old.mouse_pan = True
        self._bound = None
        if layer is None:
            return
        ref = weakref.ref(self)

        def binder(tool):
            def press(_layer):
                widget = ref()
                if widget is not None:
                    widget.set_tool(None if widget.tool == tool else tool)
            press.__doc__ = f"Correct: {TOOLS[tool][3]}"
            return press

        for tool, (key, *_rest) in TOOLS.items():
            layer.bind_key(key, binder(tool), overwrite=True)

        def next_region(_layer):
            widget = ref()
            if widget is not None:
                widget.next_uncertain()
        next_region.__doc__ = "Correct: next uncertain region"
        layer.bind_key(NEXT_KEY, next_region, overwrite=True)
        layer.mouse_drag_callbacks.append(self.on_mouse)
        self._bound = uid
        if self.tool is not None:
            self._arm(layer)

    def _arm(self, layer) -> None:
        layer.mode = "pan_zoom"  # the click is ours, not the brush's
        layer.mouse_pan = self.tool is None

    def set_tool(self, tool: str | None) -> None:
        """Choose the active tool (None: none; clicks pan and zoom again)."""
        self.tool = tool
        self.clicks = []
        for name, b in self.tool_buttons.items():
            b.blockSignals(True)
            b.setChecked(name == tool)
            b.blockSignals(False)
        layer = self.labels_layer()
        if layer is not None:
            self._arm(layer)
            if tool is not None:
                self.viewer.layers.selection.active = layer
        self._clear_preview()
        self.status.setText(TOOLS[tool][3] if tool else "")

    def _data_point(self, layer, position) -> tuple[int, ...]:
        p = np.asarray(layer.world_to_data(position), float)
        return tuple(int(v) for v in np.round(p))

    def on_mouse(self, layer, event):
        """Mouse callback on the Labels layer: a click (or, for the box, a drag) of the tool."""
        if self.tool is None or event.button != 1:
            return
        if self.viewer.dims.ndisplay != 2:
            self.status.setText("the tools work in the 2D view")
            return
        start = self._data_point(layer, event.position)
        end = start
        yield
        while event.type == "mouse_move":
            end = self._data_point(layer, event.position)
            if self.tool == "box":
                self.preview_box(layer, start, end)
            yield
        if self.tool == "box":
            self.click(start, end)
        else:
            self.click(start)

    def click(self, point, point_b=None) -> ann.Edit | None:
        """A click of the active tool at ``point`` (data coordinates of the labels); for the
        box, ``point`` and ``point_b`` are its corners. Two-click tools act on the second."""
        layer = self.labels_layer()
        if layer is None or self.tool is None:
            return None
        if point_b is not None:
            self._clear_preview()
            self.clicks = [tuple(point), tuple(point_b)]
        else:
            self.clicks.append(tuple(point))
        need = TOOLS[self.tool][2]
        if len(self.clicks) < need:
            self.status.setText(f"{self.tool}: first point at {tuple(point)[-2:]}; {TOOLS[self.tool][3]}")
            return None
        points, self.clicks = self.clicks[:need], []
        return self.run_tool(self.tool, *points)

    def run_tool(self, tool: str, *points) -> ann.Edit | None:
        """Apply ``tool`` at ``points`` to the chosen layer (one undoable step); returns the edit."""
        layer = self.labels_layer()
        if layer is None:
            return None
        if not isinstance(layer.data, np.ndarray):
            self.status.setText("the tools need labels in memory (this layer is read from disk)")
            return None
        t0 = time.perf_counter()
        src = self.source(layer)
        labels = layer.data
        # the layer's scale is its pixel size: the tools measure distances and sizes with it
        spacing = tuple(abs(float(v)) for v in layer.scale[layer.ndim - min(src.spatial_dims, layer.ndim):])
        try:
            if tool == "add":
                edit = ann.plan_add(labels, src.probs, points[0], image=src.image, params=self._params(src),
                                    spatial_dims=src.spatial_dims, spacing=spacing)
            elif tool == "delete":
                edit = ann.plan_delete(labels, points[0])
            elif tool == "merge":
                edit = ann.plan_merge(labels, points[0], points[1])
            elif tool == "split":
                edit = ann.plan_split(labels, src.probs, points[0], points[1], spatial_dims=src.spatial_dims,
                                      spacing=spacing)
            elif tool == "box":
                edit = ann.plan_box(labels, src.probs, points[0], points[1], params=self._params(src),
                                    spatial_dims=src.spatial_dims)
            else:
                raise ValueError(f"unknown tool {tool!r}")
        except ann.AnnotateError as err:
            self.status.setText(str(err))
            return None
        t1 = time.perf_counter()
        apply_edit(layer, edit)
        if edit.label and tool in ("add", "split"):
            layer.selected_label = edit.label
        self.timings[tool] = time.perf_counter() - t0
        self.timings[f"{tool} (apply)"] = time.perf_counter() - t1
        self.status.setText(edit.message or tool)
        return edit

    # -- box preview ----------------------------------------------------------------------------
    def preview_box(self, layer, a, b) -> None:
        """Show the box being dragged from ``a`` to ``b`` (data coordinates) as a rectangle."""
        ya, xa = a[-2:]
        yb, xb = b[-2:]
        lead = list(a[:-2])
        rect = np.array([[*lead, ya, xa], [*lead, ya, xb], [*lead, yb, xb], [*lead, yb, xa]], float)
        preview = self._layer(self._box_preview) if self._box_preview is not None else None
        if preview is None:
            preview = self.viewer.add_shapes(
                [rect], shape_type="rectangle", name="box prompt", edge_color="yellow", face_color="transparent",
                edge_width=2, scale=layer.scale, translate=layer.translate)
            self._box_preview = preview.unique_id
            self.viewer.layers.selection.active = layer  # keep the clicks on the labels
        else:
            preview.data = [rect]

    def _clear_preview(self) -> None:
        preview = self._layer(self._box_preview) if self._box_preview is not None else None
        if preview is not None:
            self.viewer.layers.remove(preview.name)
        self._box_preview = None

    # -- thresholds ---------------------------------------------------------------------------------
    def _params(self, src: Source) -> dict:
        return {**src.params, "seed": self.seed_slider.value() / 100, "mask": self.mask_slider.value() / 100,
                "min_size": int(self.size_spin.value())}

    def _on_threshold(self, _value=None) -> None:
        self._show_values()
        self._relabel_timer.start()  # a burst of slider moves makes one relabel

    def _start_relabel(self) -> None:
        layer = self.labels_layer()
        if layer is None:
            return
        src = self.source(layer)
        if src.probs is None or np.shape(src.probs)[0] != 3:
            return
        if self.relabel_worker is not None:
            self._relabel_again = True
            return
        from napari.qt.threading import create_worker

        params = self._params(src)
        self.relabel_worker = create_worker(ann.relabel, src.probs, params, src.spatial_dims, _start_thread=False)
        self.relabel_worker.returned.connect(lambda labels, ly=layer, p=params: self._relabelled(ly, labels, p))
        self.relabel_worker.errored.connect(lambda err: self.status.setText(f"relabel failed: {err}"))
        self.relabel_worker.finished.connect(self._relabel_done)
        self.status.setText("relabelling ...")
        self.relabel_worker.start()

    def _relabelled(self, layer, labels: np.ndarray, params: dict) -> None:
        if self._relabel_again or self._layer(layer.unique_id) is None:
            return  # a newer setting is coming
        t0 = time.perf_counter()
        self.apply_labels(layer, labels)
        self.sources[layer.unique_id].params = params
        self.timings["thresholds"] = time.perf_counter() - t0
        self.status.setText(f"relabelled: {int(labels.max())} objects (seed {params['seed']:.2f}, foreground "
                            f"{params['mask']:.2f}, min size {params['min_size']}); Ctrl+Z undoes")

    def _relabel_done(self) -> None:
        self.relabel_worker = None
        if self._relabel_again:
            self._relabel_again = False
            self._start_relabel()

    def apply_labels(self, layer, labels: np.ndarray) -> None:
        """Replace the layer's labels by ``labels`` as one undoable step (changed pixels only)."""
        data = layer.data
        changed = np.nonzero(data != labels.astype(data.dtype, copy=False))
        apply_edit(layer, ann.Edit(changed, labels[changed].astype(data.dtype)))

    def relabel_now(self) -> None:
        """Relabel with the sliders' thresholds on this thread (scripts, tests)."""
        layer = self.labels_layer()
        src = self.source(layer)
        params = self._params(src)
        self._relabelled(layer, ann.relabel(src.probs, params, src.spatial_dims), params)

    def save_thresholds(self):
        """Save the thresholds as a new version of the model (in a worker); returns it."""
        from napari.qt.threading import create_worker

        layer = self.labels_layer()
        src = self.source(layer) if layer is not None else None
        if src is None or not src.model:
            self.status.setText("no model known for this layer: run Segment first")
            return None
        worker = create_worker(ann.save_thresholds, src.model, self._params(src), _start_thread=False)
        worker.returned.connect(lambda path: self.status.setText(
            f"saved as model {path.name} (now the active model; weights unchanged)"))
        worker.errored.connect(lambda err: self.status.setText(f"not saved: {err}"))
        self.status.setText("saving ...")
        worker.start()
        self._save_worker = worker
        return worker

    # -- review ------------------------------------------------------------------------------------------
    def _prepare(self, src: Source) -> None:
        """Compute the uncertainty map off the GUI thread as soon as probabilities are known."""
        from napari.qt.threading import create_worker

        if src.probs is None or src.uncertainty is not None:
            return

        def done(unc, src=src):
            if src.uncertainty is None:
                src.uncertainty = unc

        worker = create_worker(ann.uncertainty, src.probs, _start_thread=False)
        worker.returned.connect(done)
        self._prepare_worker = worker
        worker.start()

    def uncertainty(self, layer=None) -> np.ndarray | None:
        layer = layer or self.labels_layer()
        src = self.source(layer) if layer is not None else None
        if src is None or src.probs is None:
            return None
        if src.uncertainty is None:
            src.uncertainty = ann.uncertainty(src.probs)
        return src.uncertainty

    def show_uncertainty(self):
        """Add (or show again) the uncertainty layer over the labels; returns it."""
        layer = self.labels_layer()
        unc = self.uncertainty(layer)
        if unc is None:
            self.status.setText("no probabilities for this layer: run Segment first")
            return None
        name = f"{layer.name} uncertainty"
        if name in self.viewer.layers:
            out = self.viewer.layers[name]
            out.visible = True
        else:
            # shown as 0..255 (a quarter of the float texture: the layer appears faster)
            shown = np.round(unc * 255).astype(np.uint8)
            out = self.viewer.add_image(shown, name=name, colormap="inferno", contrast_limits=(0, 255),
                                        blending="additive", opacity=0.6, scale=layer.scale,
                                        translate=layer.translate)
        self.viewer.layers.selection.active = layer
        return out

    def next_uncertain(self):
        """Move the view to the least certain region not seen yet; returns it (or None)."""
        layer = self.labels_layer()
        unc = self.uncertainty(layer)
        if unc is None:
            self.status.setText("no probabilities for this layer: run Segment first")
            return None
        seen = self.visited.setdefault(layer.unique_id, set())
        reviewed = (layer.metadata or {}).get(REVIEWED_KEY, []) if layer.ndim > 2 else []
        regions = ann.uncertain_regions(unc, TILE, skip=seen, skip_lead=reviewed)
        if not regions:
            self.status.setText("every region has been shown; start again by choosing the layer anew")
            self.visited[layer.unique_id] = set()
            return None
        region = regions[0]
        seen.add(region.key)
        self.go_to(layer, region.centre)
        self._outline(layer, region)
        lead = f"slice {region.lead}, " if region.lead else ""
        self.status.setText(f"{lead}tile y {region.window[0].start}-{region.window[0].stop - 1}, x "
                            f"{region.window[1].start}-{region.window[1].stop - 1}: uncertainty "
                            f"{region.score:.3f} ({len(regions) - 1} regions left)")
        return region

    def _outline(self, layer, region) -> None:
        """Draw the region under review as a rectangle (one Shapes layer, moved each time)."""
        (y0, y1), (x0, x1) = ((w.start - 0.5, w.stop - 0.5) for w in region.window)
        lead = [float(v) for v in region.lead]
        rect = np.array([[*lead, y0, x0], [*lead, y0, x1], [*lead, y1, x1], [*lead, y1, x0]])
        name = f"{layer.name} review region"
        if name in self.viewer.layers:
            self.viewer.layers[name].data = [rect]
        else:
            self.viewer.add_shapes([rect], shape_type="rectangle", name=name, edge_color="cyan",
                                   face_color="transparent", edge_width=3, scale=layer.scale,
                                   translate=layer.translate)
        self.viewer.layers.selection.active = layer

    def go_to(self, layer, point) -> None:
        """Centre the view on ``point`` (data coordinates of ``layer``), on its slice."""
        world = np.asarray(layer.data_to_world(np.asarray(point, float)), float)
        n = len(world)
        step = list(self.viewer.dims.point)
        step[-n:] = list(world)
        for axis in range(len(step) - n, len(step) - 2):
            self.viewer.dims.set_point(axis, step[axis])
        centre = list(camera_of(self.viewer).center)
        centre[-2:] = list(world[-2:])
        camera_of(self.viewer).center = tuple(centre)

    def refresh_table(self):
        """Fill the object table (id, area, mean intensity, certainty) of the chosen layer;
        the measuring runs in a worker (returned), the table is filled when it is done."""
        from napari.qt.threading import create_worker

        layer = self.labels_layer()
        if layer is None or not isinstance(layer.data, np.ndarray):
            self.table.setRowCount(0)
            return None
        src = self.source(layer)
        image = None if src.image is None else np.asarray(src.image)
        labels = layer.data.copy()  # the user may edit while it is measured
        self.table_label.setText("measuring ...")
        worker = create_worker(self._measure, labels, image, src, _start_thread=False)
        worker.returned.connect(self.fill_table)
        worker.errored.connect(lambda err: self.table_label.setText(f"table failed: {err}"))
        self._table_worker = worker
        worker.start()
        return worker

    @staticmethod
    def _measure(labels, image, src: Source) -> dict:
        if src.probs is not None and src.uncertainty is None:
            src.uncertainty = ann.uncertainty(src.probs)
        return ann.object_table(labels, image, src.uncertainty)

    def fill_table(self, table: dict) -> None:
        """Show ``table`` (from :func:`napari_skipseg.annotate.object_table`), least certain first."""
        self._centroids = dict(zip(table["label"].tolist(), table["centroid"], strict=True))
        self.table.setSortingEnabled(False)
        self.table.setRowCount(len(table["label"]))
        for r, (i, a, m, c) in enumerate(zip(table["label"], table["area"], table["mean_intensity"],
                                              table["certainty"], strict=True)):
            for col, value, text in ((0, int(i), str(int(i))), (1, int(a), str(int(a))),
                                     (2, float(m), "" if np.isnan(m) else f"{m:.1f}"),
                                     (3, float(c), "" if np.isnan(c) else f"{c:.3f}")):
                item = NumberItem(text)
                item.setData(Qt.ItemDataRole.UserRole, value if text else float("nan"))
                self.table.setItem(r, col, item)
        self.table.setSortingEnabled(True)
        self.table.sortItems(3, Qt.SortOrder.AscendingOrder)  # least certain first
        self.table_label.setText(f"{len(table['label'])} objects, least certain first; click a row to go there")

    def _on_row_clicked(self, row: int, _col: int = 0) -> None:
        item = self.table.item(row, 0)
        layer = self.labels_layer()
        if item is None or layer is None:
            return
        label = int(item.data(Qt.ItemDataRole.UserRole))
        centre = getattr(self, "_centroids", {}).get(label)
        if centre is None:
            return
        self.go_to(layer, centre)
        layer.selected_label = label
        self.status.setText(f"object {label}")
