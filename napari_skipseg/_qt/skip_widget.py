"""Dock widget "Skip connections": what the UNet passes across every skip, over the image.

Thin shell over :mod:`napari_skipseg.features` (maths) and
:mod:`napari_skipseg.feature_layers` (layer placement): it reads the viewer state, runs
the core generators in napari workers (progress bar, cancel) and adds layers on the main
thread.
"""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import QRectF, Qt
from qtpy.QtGui import QColor, QPainter
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..feature_layers import (
    META_KEY,
    ablation_layers,
    feature_key,
    feature_layer,
    piece_request,
    region_from_layer,
)
from ..layers import source_from_layer
from ._jobs import job
from .study_link import StudyLabel
from .theme import DEFAULT, hint

KINDS = ("encoder", "decoder", "fused")
VIEW_CHOICES = [
    ("channels", "channels", "every channel, on a slider axis"),
    ("norm", "norm", "L2 norm over the channels at each pixel"),
    ("PCA → RGB", "pca", "first three principal components of the channels as red, green, blue"),
    ("top-k", "topk", "the k channels with the highest mean activation, on a slider axis"),
]
WHOLE = "whole slice / block"


# -- jobs (run in worker threads) ----------------------------------------------------------
def _get_taps(ref):
    from ..features.taps import as_taps

    return as_taps(ref)


@job
def _capture_job(model_ref, source, request: dict, device: str):
    from ..features.capture import capture_features

    taps = _get_taps(model_ref)
    capture = yield from capture_features(taps, source.data, channel_axis=source.channel_axis,
                                          device=device, **request)
    return "capture", (capture, taps, source)


@job
def _ablation_job(taps, prepared, ablate: dict, device: str, source):
    from ..features.capture import ablate_skips

    result = yield from ablate_skips(taps, prepared, ablate, device=device)
    return "ablation", (result, source)


@job
def _gradient_job(taps, prepared, region, class_index: int, device: str):
    from ..features.capture import gradient_flow

    result = yield from gradient_flow(taps, prepared, region=region, class_index=class_index, device=device)
    return "gradient", result


# -- plots ------------------------------------------------------------------------------------

class _QtBarPlot(QWidget):
    """Grouped bar plot on a log scale, drawn with QPainter (used without matplotlib)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.labels: list[str] = []
        self.series: list[tuple[str, list[float], str]] = []
        self.palette_ = DEFAULT  # napari's theme, once the widget follows a viewer
        self.setMinimumHeight(180)

    def plot(self, labels, series) -> None:
        self.labels, self.series = list(labels), list(series)
        self.update()

    def set_palette(self, palette) -> None:
        self.palette_ = palette
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        import math

        p = QPainter(self)
        pal = self.palette_
        p.fillRect(self.rect(), QColor(pal.background))
        if not self.series:
            p.end()
            return
        w, h = self.width(), self.height()
        left, right, top, bottom = 40, 8, 22, 28
        values = [v for _, vals, _ in self.series for v in vals if v > 0]
        lo = math.floor(math.log10(min(values))) if values else -1
        hi = math.ceil(math.log10(max(values))) if values else 1
        hi = max(hi, lo + 1)
        p.setPen(QColor(pal.text))
        for e in range(lo, hi + 1):
            y = top + (h - top - bottom) * (1 - (e - lo) / (hi - lo))
            p.drawText(2, int(y) + 4, f"1e{e}")
        n, m = len(self.labels), len(self.series)
        group = (w - left - right) / max(n, 1)
        bar = group * 0.8 / m
        for j, (name, vals, color) in enumerate(self.series):
            for i, v in enumerate(vals):
                frac = 0 if v <= 0 else (math.log10(v) - lo) / (hi - lo)
                bh = (h - top - bottom) * max(frac, 0)
                x = left + i * group + group * 0.1 + j * bar
                p.fillRect(QRectF(x, h - bottom - bh, bar - 1, bh), QColor(color))
            p.fillRect(QRectF(w - 90, 6 + 12 * j, 8, 8), QColor(color))
            p.drawText(w - 78, 14 + 12 * j, name)
        for i, lab in enumerate(self.labels):
            p.drawText(int(left + i * group + 2), h - 8, lab)
        p.end()


class GradientPlot(QWidget):
    """Gradient norm per encoder stage, skips on vs off: matplotlib when present, else a
    QPainter bar plot."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.values: dict[str, list[float]] = {}
        self.labels: list[str] = []
        self.updates = 0
        self.palette_ = DEFAULT  # napari's theme, once the widget follows a viewer
        self.title = QLabel("press “Gradient flow”: how much gradient reaches each encoder stage, "
                            "with the skips on and with every skip zeroed")
        self.title.setWordWrap(True)
        hint(self.title)
        layout.addWidget(self.title)
        try:
            from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
            from matplotlib.figure import Figure
        except ImportError:
            self.figure = None
            self.canvas = _QtBarPlot(self)
        else:
            self.figure = Figure(figsize=(3.0, 2.2), facecolor=self.palette_.background, layout="constrained")
            self.canvas = FigureCanvasQTAgg(self.figure)
            self.ax = self.figure.add_subplot(111)
            self._style()
            self.ax.set_xticks([])
            self.ax.set_yticks([])
        self.canvas.setMinimumHeight(210)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        layout.addWidget(self.canvas)

    def _colors(self) -> tuple[str, str]:
        return self.palette_.series[0], self.palette_.series[2]

    def set_palette(self, palette) -> None:
        """Colours from napari's theme (see :mod:`.theme`); the plot is drawn again."""
        if palette == self.palette_:
            return
        self.palette_ = palette
        if self.figure is None:
            self.canvas.set_palette(palette)
        else:
            self.figure.set_facecolor(palette.background)
        if self.values:  # drawn again in the new colours (not a new plot: ``updates`` stays)
            updates = self.updates
            self.plot(self.labels, self.values["skips on"], self.values["skips off"], self.title.text())
            self.updates = updates
        elif self.figure is not None:
            self._style()
            self.canvas.draw_idle()

    def _style(self) -> None:
        pal, ax = self.palette_, self.ax
        ax.set_facecolor(pal.background)
        for spine in ax.spines.values():
            spine.set_color(pal.axis)
        ax.tick_params(colors=pal.text, labelsize=8)
        ax.yaxis.label.set_color(pal.text)
        ax.xaxis.label.set_color(pal.text)

    def plot(self, labels: list[str], on: list[float], off: list[float], title: str = "") -> None:
        self.labels = list(labels)
        self.values = {"skips on": list(on), "skips off": list(off)}
        self.updates += 1
        self.title.setText(title)
        if self.figure is None:
            self.canvas.plot(labels, [("skips on", on, self._colors()[0]), ("skips off", off, self._colors()[1])])
            return
        import numpy as np

        ax = self.ax
        ax.clear()
        self._style()
        x = np.arange(len(labels))
        floor = 1e-12
        ax.bar(x - 0.2, np.maximum(on, floor), 0.4, label="skips on", color=self._colors()[0])
        ax.bar(x + 0.2, np.maximum(off, floor), 0.4, label="all skips zeroed", color=self._colors()[1])
        ax.set_yscale("log")
        ax.set_xticks(x, labels)
        ax.set_xlabel("encoder stage (0 = full resolution)", fontsize=8)
        ax.set_ylabel("gradient norm", fontsize=8)
        leg = ax.legend(fontsize=7, frameon=False, ncols=2, loc="lower center", bbox_to_anchor=(0.5, 1.0))
        for text in leg.get_texts():
            text.set_color(self.palette_.text)
        self.canvas.draw_idle()


# -- the widget ---------------------------------------------------------------------------------
class SkipWidget(QWidget):
    """Explore the skip connections of a UNet on the current slice or block."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.capture = None  # last FeatureCapture
        self.source = None  # LayerSource it was computed from
        self.taps = None  # the model's taps used for it
        self.last_ablation = None
        self.last_gradient = None
        self._custom_models: dict[str, object] = {}
        self._taps_cache: dict[str, object] = {}
        self._checks: dict[tuple[int, str], QCheckBox] = {}
        self._level_checks: dict[int, QCheckBox] = {}
        self._shown: set[tuple[int, str]] = {(0, "encoder")}
        self._syncing = False

        # input
        from napari.layers import Image

        from .forms import LayerPicker, remember
        from .theme import follow_theme

        # follows renames, adds, removes and moves by itself; our feature layers are not offered
        self.image_picker = LayerPicker(self.viewer, Image, accept=lambda ly: META_KEY not in ly.metadata)
        self.layer_combo = self.image_picker.native
        self.model_combo = QComboBox()
        self.model_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.browse_button = QPushButton("…")
        self.browse_button.setToolTip("use a model folder (config.json + model.safetensors)")
        self.browse_button.setFixedWidth(28)
        self.model_info = QLabel()
        self.model_info.setWordWrap(True)
        hint(self.model_info)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.run_button = QPushButton("Capture features")
        self.run_button.setToolTip("run the model once on the current slice (2D) or the block around the cursor (3D)")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.status = QLabel("")
        self.status.setWordWrap(True)

        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.browse_button)
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("image", self.layer_combo)
        form.addRow("model", model_row)
        form.addRow("", self.model_info)
        form.addRow("device", self.device_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button, 2)
        buttons.addWidget(self.cancel_button, 1)
        input_box = QVBoxLayout()
        input_box.addLayout(form)
        input_box.addLayout(buttons)
        input_box.addWidget(self.progress)
        input_box.addWidget(self.status)

        # show
        self.view_combo = QComboBox()
        for label, key, tip in VIEW_CHOICES:
            self.view_combo.addItem(label, key)
            self.view_combo.setItemData(self.view_combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        self.k_spin = QSpinBox()
        self.k_spin.setRange(1, 64)
        self.k_spin.setValue(4)
        self.k_spin.setPrefix("k = ")
        self.k_spin.setEnabled(False)
        view_row = QHBoxLayout()
        view_row.addWidget(QLabel("view"))
        view_row.addWidget(self.view_combo, 1)
        view_row.addWidget(self.k_spin)
        self.grid = QGridLayout()
        self.grid.setHorizontalSpacing(10)
        self.grid_hint = QLabel("capture features to list the levels")
        hint(self.grid_hint)
        self.grid.addWidget(self.grid_hint, 0, 0, 1, 4)
        self.hide_all_button = QPushButton("Hide all")
        self.remove_button = QPushButton("Remove layers")
        self.remove_button.setToolTip("remove every feature layer of this widget")
        show_buttons = QHBoxLayout()
        show_buttons.addWidget(self.hide_all_button)
        show_buttons.addWidget(self.remove_button)
        show_box = QVBoxLayout()
        show_box.addLayout(view_row)
        show_box.addLayout(self.grid)
        show_box.addLayout(show_buttons)

        # ablation
        self.ablate_level = QComboBox()
        self.ablate_how = QComboBox()
        self.ablate_how.addItems(["zero", "mean"])
        self.side_by_side = QCheckBox("side by side")
        self.side_by_side.setChecked(True)
        self.side_by_side.setToolTip("draw the ablated output and the change map to the right of the image")
        self.ablate_button = QPushButton("Switch skip off")
        self.ablation_label = QLabel("")
        self.ablation_label.setWordWrap(True)
        self.ablate_how.setToolTip("zero: replace the skip by zeros; mean: by its per-channel mean")
        ablate_row = QHBoxLayout()
        ablate_row.addWidget(QLabel("level"))
        ablate_row.addWidget(self.ablate_level, 1)
        ablate_row.addWidget(self.ablate_how, 1)
        ablate_run = QHBoxLayout()
        ablate_run.addWidget(self.side_by_side)
        ablate_run.addWidget(self.ablate_button, 1)
        ablate_box = QVBoxLayout()
        ablate_box.addLayout(ablate_row)
        ablate_box.addLayout(ablate_run)
        ablate_box.addWidget(self.ablation_label)

        # gradient flow
        self.class_combo = QComboBox()
        from napari.layers import Labels, Shapes

        from .forms import LayerPicker

        # Shapes/Labels that mark a region (not our own feature layers); follows renames
        self.region_picker = LayerPicker(napari_viewer, (Shapes, Labels), none_label=WHOLE,
                                         accept=lambda ly: META_KEY not in ly.metadata)
        self.region_combo = self.region_picker.native
        self.gradient_button = QPushButton("Gradient flow")
        self.gradient_plot = GradientPlot()
        grad_form = QFormLayout()
        grad_form.addRow("class", self.class_combo)
        grad_form.addRow("region", self.region_combo)
        grad_box = QVBoxLayout()
        grad_box.addLayout(grad_form)
        grad_box.addWidget(self.gradient_button)
        grad_box.addWidget(self.gradient_plot)
        grad_box.addWidget(StudyLabel())  # link to the skip study (docs/skip_connections.md)

        content = QWidget()
        outer = QVBoxLayout(content)
        group = QGroupBox("Input")
        group.setLayout(input_box)
        outer.addWidget(group)
        # one page at a time below the input, so each (the gradient plot included) fits a
        # 1280 x 800 screen without scrolling
        self.pages = QTabWidget()
        for title, box in (("Show", show_box), ("Skip ablation", ablate_box), ("Gradient flow", grad_box)):
            page = QWidget()
            box.setContentsMargins(6, 6, 6, 6)
            page.setLayout(box)
            box.addStretch(1)
            self.pages.addTab(page, title)
        outer.addWidget(self.pages, 1)
        self.scroll = scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setFrameShape(QScrollArea.Shape.NoFrame)
        scroll.setWidget(content)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(scroll)
        self.setMinimumWidth(340)
        for combo in (self.layer_combo, self.model_combo, self.view_combo, self.ablate_level, self.ablate_how,
                      self.class_combo, self.region_combo):
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(6)

        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.browse_button.clicked.connect(self._browse_model)
        self.model_combo.currentIndexChanged.connect(self._show_model_info)
        self._model_chosen = False  # the user picked a model here: defaults no longer move it
        self.model_combo.activated.connect(self._model_picked)
        self.layer_combo.currentIndexChanged.connect(lambda *_: self._pick_default_model())
        from ..model.store import on_active_changed

        on_active_changed(self._active_changed)
        self.view_combo.currentIndexChanged.connect(self._view_changed)
        self.k_spin.valueChanged.connect(self._view_changed)
        self.hide_all_button.clicked.connect(self.hide_all)
        self.remove_button.clicked.connect(self.remove_feature_layers)
        self.ablate_button.clicked.connect(self.run_ablation)
        self.gradient_button.clicked.connect(self.run_gradient)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                   self.viewer.layers.events.reordered):
            ev.connect(self._refresh_layers)
        follow_theme(self.viewer, self)  # hint labels and the gradient plot from napari's theme
        remember("skip", {"device": self.device_combo, "view": self.view_combo, "k": self.k_spin})
        self._refresh_layers()
        self.refresh_models()
        self._pick_default_model()
        from ._jobs import warm_up

        warm_up()  # torch loads off the GUI thread before the user starts a job
        self._update_buttons()

    # -- lists ----------------------------------------------------------------------------------
    def _image_layers(self):
        from napari.layers import Image

        return [ly for ly in self.viewer.layers if isinstance(ly, Image) and META_KEY not in ly.metadata]

    def _refresh_layers(self, event=None) -> None:
        self.image_picker.refresh()  # (it follows the viewer itself; up to date first here)
        self.region_picker.refresh()
        if event is not None and getattr(event, "type", "") == "inserted":
            layer = event.value
            if META_KEY in getattr(layer, "metadata", {}) and feature_key(layer):
                layer.events.visible.connect(self._layer_visibility_changed)
        self._update_buttons()

    def refresh_models(self, select: str | None = None) -> None:
        from ..model.store import list_models

        self._models = {e.name: e for e in list_models()}
        # stored models are read again on the next capture (they may have been retrained)
        self._taps_cache = {k: v for k, v in self._taps_cache.items() if k in self._custom_models}
        current = select or self.model_combo.currentText()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for name, entry in self._models.items():
            self.model_combo.addItem(name)
            self.model_combo.setItemData(self.model_combo.count() - 1, str(entry.path), Qt.ItemDataRole.ToolTipRole)
        for name in self._custom_models:
            self.model_combo.addItem(name)
        if current and self.model_combo.findText(current) >= 0:
            self.model_combo.setCurrentText(current)
        self.model_combo.blockSignals(False)
        self._show_model_info()

    def _model_picked(self, *args) -> None:
        self._model_chosen = True

    def _active_changed(self, name: str) -> None:
        self._model_chosen = False
        self.refresh_models()
        self._pick_default_model()

    def _pick_default_model(self) -> None:
        """Until the user picks one here, use Segment's active model, else the model that
        suits the chosen image (:func:`.skip_view.default_model`)."""
        from .skip_view import default_model

        if self._model_chosen:
            return
        name, why = default_model(self.viewer, self.layer_combo.currentText(), self._models)
        if name and self.model_combo.findText(name) >= 0:
            self.model_combo.setCurrentText(name)
            self.model_combo.setToolTip(f"{name}: {why}")

    def add_model(self, name: str, model) -> None:
        """Offer ``model`` (a SkipUNet, a HookedFeatures, or a model folder) by ``name``."""
        self._custom_models[name] = model
        self._taps_cache.pop(name, None)
        self.refresh_models(select=name)

    def _browse_model(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (config.json + model.safetensors)")
        if folder:
            self.add_model(Path(folder).name, folder)

    def _show_model_info(self) -> None:
        name = self.model_combo.currentText()
        entry = self._models.get(name)
        custom = self._custom_models.get(name)
        cfg = getattr(custom, "config", None) if name in self._custom_models else getattr(entry, "config", None)
        if isinstance(custom, (str, Path)):
            from ..model.store import ModelLoadError, load_config

            try:
                cfg = load_config(custom)
            except ModelLoadError as err:
                self.model_info.setText(str(err))
                return
        if cfg is not None:
            where = entry.source if entry is not None and name not in self._custom_models else "added"
            self.model_info.setText(f"{cfg.spatial_dims}D UNet, {cfg.depth} skips, {cfg.output} ({where})")
        elif custom is not None:
            self.model_info.setText(f"{getattr(custom, 'spatial_dims', '?')}D, "
                                    f"{getattr(custom, 'depth', '?')} skips via hooks ({type(custom).__name__})")
        else:
            self.model_info.setText("no model found")

    def _model_ref(self, name: str):
        if name in self._taps_cache:
            return self._taps_cache[name]
        if name in self._custom_models:
            return self._custom_models[name]
        return str(self._models[name].path) if name in self._models else name

    def _update_buttons(self) -> None:
        idle = self.worker is None
        self.run_button.setEnabled(idle and bool(self._image_layers()) and self.model_combo.count() > 0)
        have = self.capture is not None
        self.ablate_button.setEnabled(idle and have)
        self.gradient_button.setEnabled(idle and have)
        self.cancel_button.setEnabled(not idle)

    # -- jobs -------------------------------------------------------------------------------------
    def _start(self, func, *args, message: str):
        from napari.qt.threading import create_worker

        self.worker = create_worker(func, *args, _start_thread=False, _ignore_errors=True)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_error)
        self.worker.aborted.connect(self._on_aborted)
        self.worker.finished.connect(self._on_finished)
        self.progress.setRange(0, 0)
        self.status.setText(message)
        self._update_buttons()
        self.worker.start()
        return self.worker

    def run(self):
        """Capture features for the current slice/block of the chosen image; returns the worker."""
        from napari.utils.notifications import show_warning

        if self.worker is not None:
            return None
        name = self.layer_combo.currentText()
        if not name or name not in self.viewer.layers:
            show_warning("Skip connections: open an image first")
            return None
        model_name = self.model_combo.currentText()
        if not model_name:
            show_warning("Skip connections: no model available")
            return None
        layer = self.viewer.layers[name]
        source = source_from_layer(layer)
        dims = self._spatial_dims(model_name)
        request = piece_request(layer, self.viewer.dims.point, self.viewer.cursor.position, dims) if dims else {}
        self._model_name = model_name
        return self._start(_capture_job, self._model_ref(model_name), source, request,
                           self.device_combo.currentText(),
                           message=f"capturing features of {name} with {model_name} ...")

    def _spatial_dims(self, model_name: str) -> int | None:
        if model_name in self._models:
            return self._models[model_name].config.spatial_dims
        model = self._custom_models.get(model_name)
        if isinstance(model, (str, Path)):  # a model folder
            from ..model.store import ModelLoadError, load_config

            try:
                return load_config(model).spatial_dims
            except ModelLoadError:
                return None  # the job reports why it does not load
        return getattr(model, "spatial_dims", None) or getattr(getattr(model, "config", None), "spatial_dims", None)

    def run_ablation(self):
        """Switch off the chosen skip on the captured piece; returns the worker."""
        if self.capture is None or self.worker is not None:
            return None
        level = self.ablate_level.currentData()
        how = self.ablate_how.currentText()
        return self._start(_ablation_job, self.taps, self.capture.input, {int(level): how},
                           self.device_combo.currentText(), self.source,
                           message=f"output without the level {level} skip ({how}) ...")

    def run_gradient(self):
        """Gradient norm per encoder stage, skips on and off; returns the worker."""
        from napari.utils.notifications import show_warning

        if self.capture is None or self.worker is not None:
            return None
        region = None
        layer = self.region_picker.value
        if layer is not None and layer in self.viewer.layers:
            try:
                region = region_from_layer(layer, self.viewer.layers[self.source.name]
                                           if self.source.name in self.viewer.layers else None,
                                           self.capture.input)
            except ValueError as err:
                show_warning(f"Gradient flow: {err}")
                return None
        cls = max(self.class_combo.currentIndex(), 0)
        return self._start(_gradient_job, self.taps, self.capture.input, region, cls,
                           self.device_combo.currentText(), message="gradient flow, skips on and off ...")

    def cancel(self) -> None:
        if self.worker is not None:
            self.status.setText("cancelling ...")
            self.worker.quit()

    def _on_progress(self, event) -> None:
        self.progress.setTextVisible(True)
        self.progress.setRange(0, max(event.total, 1))
        self.progress.setValue(event.done)
        if event.message:
            self.progress.setFormat(f"%v / %m  {event.message}"[:80])

    def _on_returned(self, value) -> None:
        kind, payload = value
        if kind == "capture":
            self._on_capture(*payload)
        elif kind == "ablation":
            self._on_ablation(*payload)
        elif kind == "gradient":
            self._on_gradient(payload)

    def _on_error(self, err) -> None:
        from napari.utils.notifications import show_error

        self.status.setText(f"failed: {err}")
        show_error(f"Skip connections failed: {err}")

    def _on_aborted(self) -> None:
        self.status.setText("cancelled; no layer was changed")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)

    def _on_finished(self) -> None:
        self.worker = None
        self._update_buttons()

    # -- results ----------------------------------------------------------------------------------
    def _on_capture(self, capture, taps, source) -> None:
        self.capture, self.taps, self.source = capture, taps, source
        self._taps_cache[self._model_name] = taps
        levels = [r.level for r in capture.records]
        self._build_grid(levels)
        self.pages.setCurrentIndex(0)  # the level grid of what was just captured
        self.ablate_level.clear()
        for lv in levels:
            self.ablate_level.addItem(f"L{lv} ({'×'.join(map(str, capture.records[lv].scale))})", lv)
        current_cls = self.class_combo.currentIndex()
        self.class_combo.clear()
        self.class_combo.addItems(capture.class_names or [f"class {i}" for i in range(capture.probabilities.shape[0])])
        self.class_combo.setCurrentIndex(current_cls if current_cls > 0 else min(1, self.class_combo.count() - 1))
        self._rebuild_layers()
        where = f"slice {capture.input.index}, " if capture.input.index else ""
        piece = "×".join(map(str, capture.input.shape))
        origin = f" at {tuple(capture.input.origin)}" if any(capture.input.origin) else ""
        self.status.setText(
            f"{len(levels)} levels of {source.name} ({where}{piece} px{origin}) "
            f"in {capture.seconds:.2f} s on {capture.device}"
        )

    def _build_grid(self, levels: list[int]) -> None:
        while self.grid.count():
            item = self.grid.takeAt(0)
            if item.widget() is not None:
                item.widget().deleteLater()
        self._checks.clear()
        self._level_checks.clear()
        self.grid.addWidget(QLabel("level"), 0, 0)
        for j, kind in enumerate(KINDS, start=1):
            head = QLabel(kind)
            head.setToolTip({"encoder": "what the encoder hands across the skip",
                             "decoder": "the upsampled deeper map it is concatenated with",
                             "fused": "output of the decoder stage after fusing the two"}[kind])
            self.grid.addWidget(head, 0, j)
        for i, lv in enumerate(levels, start=1):
            scale = "×".join(map(str, self.capture.records[i - 1].scale))
            lc = QCheckBox(f"L{lv} · 1/{scale.split('×')[-1]}")
            lc.setToolTip(f"level {lv}: one feature pixel covers {scale} image pixels; toggles the whole level")
            lc.clicked.connect(lambda checked, lv=lv: self.set_level_visible(lv, checked))
            self._level_checks[lv] = lc
            self.grid.addWidget(lc, i, 0)
            for j, kind in enumerate(KINDS, start=1):
                cb = QCheckBox()
                cb.setChecked((lv, kind) in self._shown)
                cb.toggled.connect(lambda checked, lv=lv, kind=kind: self.set_visible(lv, kind, checked))
                self._checks[(lv, kind)] = cb
                self.grid.addWidget(cb, i, j, alignment=Qt.AlignmentFlag.AlignHCenter)
            self._sync_level_check(lv)

    def _sync_level_check(self, level: int) -> None:
        lc = self._level_checks.get(level)
        if lc is not None:
            lc.setChecked(any((level, k) in self._shown for k in KINDS))

    def view(self) -> str:
        return self.view_combo.currentData()

    def _view_changed(self, *args) -> None:
        self.k_spin.setEnabled(self.view() == "topk")
        if self.capture is not None:
            self._rebuild_layers()

    def feature_layers(self) -> list:
        """This widget's feature layers now in the viewer."""
        return [ly for ly in self.viewer.layers if feature_key(ly) is not None]

    def _rebuild_layers(self) -> None:
        """Drop the old feature layers and add the ones that are switched on (only what is
        shown is computed at full size)."""
        self._syncing = True
        try:
            for ly in self.feature_layers():
                self.viewer.layers.remove(ly)
        finally:
            self._syncing = False
        for lv, kind in sorted(self._shown):
            if any(r.level == lv for r in self.capture.records):
                self._add_feature_layer(lv, kind)
        self._label_channel_axis()

    def _find_layer(self, level: int, kind: str):
        key = (level, kind, self.view())
        return next((ly for ly in self.feature_layers() if feature_key(ly) == key), None)

    def _add_feature_layer(self, level: int, kind: str):
        data, kwargs, _ = feature_layer(self.capture, self.source, level, kind, self.view(), self.k_spin.value())
        return self.viewer.add_image(data, **kwargs)

    def set_visible(self, level: int, kind: str, visible: bool) -> None:
        """Show or hide one level/kind (adds its layer on first show)."""
        if visible:
            self._shown.add((level, kind))
        else:
            self._shown.discard((level, kind))
        cb = self._checks.get((level, kind))
        if cb is not None and cb.isChecked() != visible:
            cb.blockSignals(True)
            cb.setChecked(visible)
            cb.blockSignals(False)
        self._sync_level_check(level)
        if self.capture is None or self._syncing:
            return
        layer = self._find_layer(level, kind)
        if layer is None and visible:
            self._add_feature_layer(level, kind)
            self._label_channel_axis()
        elif layer is not None and layer.visible != visible:
            self._syncing = True
            try:
                layer.visible = visible
            finally:
                self._syncing = False

    def set_level_visible(self, level: int, visible: bool) -> None:
        for kind in KINDS:
            self.set_visible(level, kind, visible)

    def hide_all(self) -> None:
        """Turn every feature layer off (one click)."""
        for lv, kind in list(self._shown):
            self.set_visible(lv, kind, False)
        for ly in self.feature_layers():
            ly.visible = False

    def remove_feature_layers(self) -> None:
        self._syncing = True
        try:
            for ly in self.feature_layers():
                self.viewer.layers.remove(ly)
        finally:
            self._syncing = False

    def _layer_visibility_changed(self, event) -> None:
        """Keep the check boxes in step with the eye icons in the layer list."""
        if self._syncing:
            return
        layer = event.source
        key = feature_key(layer)
        if key is None or key[2] != self.view():
            return
        level, kind, _ = key
        if (level, kind) in self._checks:
            self._syncing = True
            try:
                self.set_visible(level, kind, bool(layer.visible))
            finally:
                self._syncing = False

    def _label_channel_axis(self) -> None:
        """Name the slider that feature stacks add in front of the image axes."""
        dims = self.viewer.dims
        img = self.viewer.layers[self.source.name] if self.source.name in self.viewer.layers else None
        if img is None or dims.ndim <= img.ndim:
            return
        labels = list(dims.axis_labels)
        if labels[0] in ("0", "-1", str(-dims.ndim)) or labels[0].lstrip("-").isdigit():
            labels[0] = "feature channel"
            dims.axis_labels = labels

    def _on_ablation(self, result, source) -> None:
        self.last_ablation = result
        names = self.capture.class_names if self.capture else []
        for old in [ly for ly in self.viewer.layers if ly.name.startswith("ablation: ")]:
            self.viewer.layers.remove(old)
        style = {}
        if source.name in self.viewer.layers:
            img = self.viewer.layers[source.name]
            style = {"contrast_limits": tuple(img.contrast_limits), "gamma": img.gamma}
            if not getattr(img, "rgb", False):
                style["colormap"] = img.colormap.name
        side = self.side_by_side.isChecked()
        for data, kwargs, kind in ablation_layers(result, source, names, side, style):
            getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        what = ", ".join(f"L{k} {how}" for k, how in sorted(result.ablate.items()))
        from .skip_view import fit_panels, show_panel_titles

        show_panel_titles(self.viewer, result, source, what, side, {"source": source.name, "ablation": what})
        fit_panels(self.viewer, side)
        self.ablation_label.setText(
            f"without {what}: {100 * result.changed_fraction:.2f} % of pixels changed class "
            f"(mean probability shift {result.difference.mean():.3f})"
        )
        self.status.setText(f"ablation done in {result.seconds:.2f} s")

    def _on_gradient(self, result) -> None:
        self.last_gradient = result
        labels = [str(i) for i in range(len(result.stages))]
        if self.taps is not None and len(labels) > self.taps.depth:
            labels[-1] += " (bottom)"
        title = (f"‖∂(sum of '{result.class_name}' logits over {result.region_pixels} px) / ∂(stage output)‖"
                 " per encoder stage")
        self.gradient_plot.plot(labels, list(result.norms_on), list(result.norms_off), title)
        self.pages.setCurrentIndex(2)
        self.status.setText(f"gradient flow done in {result.seconds:.2f} s")
