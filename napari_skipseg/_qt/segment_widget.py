"""Dock widget "Segment": pick an image layer and a model, run, watch progress, cancel."""

from __future__ import annotations

from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..layers import (
    arrange_source,
    is_lazy,
    layer_axes,
    reopen_committed,
    restore_result,
    result_layers,
    result_stores,
    source_from_layer,
)
from . import camera_of
from ._jobs import job
from ._labels import WrapLabel
from ._sections import vertical_scroll
from .live import LiveMode
from .progressive import CancelChoice, ProgressiveRun, RunWarmer, progressive_job


@job
def _segment_job(model_name: str, source, options: dict):
    """Runs in the worker thread: load the model, then drive the engine generator.

    ``model_name`` is a stored model's name or a model folder; a pickled file is refused
    by the loader (nothing in it is executed)."""
    import threading

    from .._preload import ensure_loaded

    # torch and what napari needs for a Labels layer (pandas), loaded without freezing the
    # GUI: started when the widget opened; this waits for it if it is still running
    ensure_loaded()
    from ..inference.axes import link_frames, size_options
    from ..inference.engine import predict
    from ..model.store import load_model

    model = load_model(model_name)
    options = dict(options)
    folder = options.pop("results_folder", None)
    axes, channel = options.pop("axes", None), options.pop("channel", None)
    link, diameter = options.pop("link", False), options.pop("diameter", None)
    explicit = diameter not in (None, "auto")
    if diameter is None:  # the model's default, as on the command line
        from ..inference.scale import default_diameter

        diameter = default_diameter(model.config)
    # T before Z, the chosen channel taken out: the order the engine takes (and back after)
    engine_source, arranged = arrange_source(source, model.config, axes=axes, channel=channel,
                                             mode=options.get("mode", "auto"))
    if arranged is not None:
        options.update(size_options(predict, diameter=diameter, spacing=arranged.spatial_spacing,
                                    unit=arranged.meta.unit, explicit=explicit))
    data, channel_axis = engine_source.data, engine_source.channel_axis
    if not is_lazy(data):
        result = yield from predict(model, data, channel_axis=channel_axis, **options)
    else:
        # a dask/zarr (or very large) layer: stream the result into zarr stores on disk, shown lazily
        targets, outputs = result_stores(engine_source, model.config, options, folder)
        try:
            result = yield from predict(model, data, channel_axis=channel_axis, **options, **outputs)
            arrays = reopen_committed(targets)
        except BaseException:  # error or cancel: leave nothing behind
            for t in targets:
                t.abort()
            raise
        result.labels = arrays.get("labels", None if result.labels is None else result.labels)
        result.probabilities = arrays.get("probabilities", result.probabilities)
    if link and result.labels is not None and arranged is not None and "T" in arranged.lead_axes:
        result.info["objects"] = link_frames(result.labels, arranged.axes.index("T"))
        result.info["linked"] = True
    result, placed = restore_result(result, arranged, source)
    return result, placed, threading.get_ident()


def layer_spatial_dims(layer) -> int:
    """2 or 3: the spatial axes of an image layer (T and C are not spatial; see
    :func:`napari_skipseg.layers.layer_axes`)."""
    axes, _ = layer_axes(layer)
    return min(max(sum(a in "ZYX" for a in axes), 2), 3)


def layer_facts(layer, axes: str | None = None):
    """What :func:`napari_skipseg.model.choose.choose_model` needs to know of an image layer."""
    from ..model.choose import facts_from_meta

    axes = axes or layer_axes(layer)[0]
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    stored = dict((layer.metadata or {}).get("skipseg") or {})
    plain = axes.replace("S", "")
    scale = dict(zip(plain, (float(v) for v in layer.scale), strict=False))
    stored.update(axes=axes, spacing=tuple(scale.get(a, 1.0) if a in "ZYX" else 1.0 for a in axes))
    stored.setdefault("unit", "pixel")
    return facts_from_meta(stored, tuple(data.shape))


class SegmentWidget(QWidget):
    """Segment the chosen image layer with a UNet, off the main thread."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.last_result = None
        self.last_thread = None  # thread the last job ran in (never the GUI thread)
        self._result_layer = None  # the labels of the last run (the diameter circle is drawn over it)
        self._cancelled = False  # cancel asked for the running job: its result is dropped
        self._job_done = True  # the worker has finished (its result layers may still be coming)
        self._adding = None  # result layers still to add, one per event-loop turn
        self._progressive = None  # ProgressiveRun of the running job (in-memory images)
        self._extra_models = {}  # name -> ModelEntry of model folders chosen with "…"
        self._models = {}  # name -> ModelEntry offered in the model list
        self._model_chosen = False  # the user picked a model here: no default by dimensionality
        self._output_forced = False  # output set to "semantic" only because a model had no instances
        # where results of lazy (dask/zarr) or very large layers are stored as zarr; None:
        # <user data dir>/results (layers.results_dir)
        self.results_folder = None

        from napari.layers import Image

        from .forms import LayerPicker, remember
        from .theme import follow_theme, hint

        self.image_picker = LayerPicker(self.viewer, Image)  # follows renames, adds, removes, moves
        self.layer_combo = self.image_picker.native
        self.model_combo = QComboBox()
        self.browse_button = QPushButton("…")
        self.browse_button.setToolTip("use a model folder (config.json + model.safetensors)")
        self.browse_button.setFixedWidth(28)
        self.refresh_button = QPushButton("⟳")
        self.refresh_button.setToolTip("refresh the list of models (new fine-tuned versions)")
        self.refresh_button.setFixedWidth(28)
        self.card_button = QPushButton("card")  # text: symbol glyphs are missing from some fonts
        self.card_button.setToolTip("the model's card: task, data, training, validation metrics, licence")
        self.card_button.setFixedWidth(44)
        self.card_dialog = None
        self.model_info = WrapLabel()
        hint(self.model_info)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])
        self.mode_combo = QComboBox()
        self.mode_combo.addItems(["auto", "2d", "3d"])
        self.output_combo = QComboBox()
        self.output_combo.addItems(["instances", "semantic", "probabilities"])
        self.tile_spin = QSpinBox()
        self.tile_spin.setRange(0, 4096)
        self.tile_spin.setSpecialValueText("model default")
        self.tile_spin.setSingleStep(32)
        self.overlap_spin = QDoubleSpinBox()
        self.overlap_spin.setRange(0.0, 0.5)
        self.overlap_spin.setSingleStep(0.05)
        self.overlap_spin.setDecimals(3)
        self.overlap_spin.setValue(0.125)
        self.axes_edit = QLineEdit()
        self.axes_edit.setToolTip("what each axis of the image is (T time, C channel, Z, Y, X; S: RGB): "
                                  "T is segmented frame by frame, never as depth")
        self.channel_combo = QComboBox()
        self.channel_combo.setToolTip("the channel to segment: a one-channel model never averages channels")
        self.channel_row = QWidget()
        row = QHBoxLayout(self.channel_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("channel"))
        row.addWidget(self.channel_combo, 1)
        self.channel_row.setVisible(False)
        self.link_check = QCheckBox("link objects between frames")
        self.link_check.setToolTip("time-lapses: an object keeps its id from one frame to the next "
                                   "(overlap matching)")
        self.link_check.setVisible(False)
        self.diameter_edit = QLineEdit()
        self.diameter_edit.setPlaceholderText("model default")
        self.diameter_edit.setToolTip("object diameter in pixels ('auto': estimated; 3D: one per axis, "
                                      "'4,23,23'); the image is resampled to the model's scale")
        self.choice_label = WrapLabel("")
        hint(self.choice_label)
        self.diameter_label = WrapLabel("")  # the scale message can be long (pixel sizes, why)
        self.diameter_button = QPushButton("show diameter")
        self.diameter_button.setToolTip("draw a circle of the object diameter at the centre of the view")
        self.diameter_button.setEnabled(False)
        self.flips_check = QCheckBox("test-time flips")
        self.flips_check.setToolTip(
            "average the network over the image flipped along each axis: 4 passes in 2D, 8 in 3D "
            "(that many times slower). Follows the model's own setting when a model is chosen.")

        self.run_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.cancel_choice = CancelChoice()
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m tiles")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.device_label = WrapLabel("device: chosen when a job starts")
        self.status = WrapLabel("")

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("image", self.layer_combo)
        model_row = QHBoxLayout()
        model_row.addWidget(self.model_combo, 1)
        model_row.addWidget(self.browse_button)
        model_row.addWidget(self.refresh_button)
        model_row.addWidget(self.card_button)
        form.addRow("model", model_row)
        form.addRow("", self.model_info)
        form.addRow("", self.choice_label)
        form.addRow("axes", self.axes_edit)
        form.addRow(self.channel_row)
        form.addRow("", self.link_check)
        form.addRow("diameter", self.diameter_edit)
        form.addRow("device", self.device_combo)
        form.addRow("mode", self.mode_combo)
        form.addRow("output", self.output_combo)
        form.addRow("tile", self.tile_spin)
        form.addRow("overlap", self.overlap_spin)
        form.addRow("", self.flips_check)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.cancel_choice)
        self.live = LiveMode(self)  # off by default; segments the slice in view as the user moves
        form.addRow("", self.live)
        content = QWidget()  # scrolls: docked with Fine-tune, both fit a 1280 x 800 screen
        layout = QVBoxLayout(content)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.device_label)
        size_row = QHBoxLayout()
        size_row.addWidget(self.diameter_label, 1)
        size_row.addWidget(self.diameter_button)
        layout.addLayout(size_row)
        layout.addWidget(self.status)
        layout.addStretch(1)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(vertical_scroll(content))

        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.browse_button.clicked.connect(self._browse_model)
        self.card_button.clicked.connect(self.show_card)
        self.model_combo.currentIndexChanged.connect(self._show_model_info)
        # the active model is shared with the Fine-tune widget: choosing one here makes it
        # active (one click), and a version made active there is selected here
        self.refresh_button.clicked.connect(lambda: self.refresh_models())
        self.model_combo.activated.connect(self._on_model_chosen)
        self.layer_combo.currentTextChanged.connect(self._on_layer_changed)
        self.axes_edit.editingFinished.connect(self._on_axes_edited)
        self.diameter_button.clicked.connect(lambda: self.show_diameter())
        self.output_combo.activated.connect(self._on_output_chosen)  # the user's pick
        from ..model.store import on_active_changed

        on_active_changed(self._on_active_changed)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.events.reordered.connect(self._refresh_layers)
        self._output_user = False  # the user picked the output here: it stays
        self._layer_axes = {}  # layer name -> axes set by the user in the axes field
        follow_theme(self.viewer, self)  # hint labels coloured from napari's theme, and on changes
        remember("segment", {"device": self.device_combo, "mode": self.mode_combo, "tile": self.tile_spin,
                             "overlap": self.overlap_spin})
        self._refresh_layers()
        self.refresh_models()
        self._on_layer_changed(self.layer_combo.currentText())
        from ._jobs import warm_up

        warm_up()  # torch loads off the GUI thread before the user starts a job
        self.warmer = RunWarmer(self)  # the next run prepared while the user chooses (progressive.py)
        app = QApplication.instance()
        if app is not None:  # napari quitting closes no dock widget: no warm-up left running then
            app.aboutToQuit.connect(self._stop_warmer)

    def _stop_warmer(self) -> None:
        try:
            self.warmer.stop()
        except RuntimeError:  # the Qt side is already gone
            pass

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self._stop_warmer()
        super().closeEvent(event)

    # -- lists ----------------------------------------------------------------------------
    def _image_layers(self):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, event=None) -> None:
        self.image_picker.refresh()  # (it follows the viewer itself; here it is up to date first)
        self.run_button.setEnabled(self.layer_combo.count() > 0 and self.worker is None)

    def refresh_models(self, select: str | None = None) -> None:
        from ..model.store import list_models

        self._models = {e.name: e for e in list_models()}
        self._models.update(self._extra_models)
        self.model_combo.clear()
        for name, entry in self._models.items():
            self.model_combo.addItem(name)
            self.model_combo.setItemData(self.model_combo.count() - 1, str(entry.path), Qt.ItemDataRole.ToolTipRole)
        if select is None:
            from ..model.store import active_model

            select = active_model()
            if select and select not in self._models:
                select = next((n for n, e in self._models.items() if str(e.path) == select), None)
        if select and select in self._models:
            self.model_combo.setCurrentText(select)
        self._show_model_info()

    def _pick_default_model(self, layer_name: str = "") -> None:
        """Until a model is chosen (here, or made active by a fine-tune), use the model that
        suits the image (:func:`~napari_skipseg.model.choose.choose_model`: axes, voxel size
        and unit, file kind), and say why in one line."""
        from ..model.store import active_model

        if active_model() is not None or layer_name not in self.viewer.layers:
            return
        if self._model_chosen or not self._models:
            return
        from ..model.choose import choose_model

        layer = self.viewer.layers[layer_name]
        name, why = choose_model(layer_facts(layer, self.current_axes()), list(self._models.values()))
        if name != self.model_combo.currentText():
            self.model_combo.setCurrentText(name)
        self.choice_label.setText(why)

    # -- axes, channel, output ---------------------------------------------------------------
    def _current_layer(self):
        return self.image_picker.value

    def current_axes(self) -> str:
        """The axes of the selected layer: as set in the axes field, else as the layer says
        (reader metadata, axis labels) or guessed."""
        layer = self._current_layer()
        if layer is None:
            return ""
        return self._layer_axes.get(layer.name) or layer_axes(layer)[0]

    def _on_layer_changed(self, layer_name: str = "") -> None:
        layer = self._current_layer()
        if layer is None:
            self.axes_edit.setText("")
            self._show_channels()
            return
        axes, where = layer_axes(layer)
        if layer.name in self._layer_axes:
            axes, where = self._layer_axes[layer.name], "set here"
        self.axes_edit.setText(axes)
        self.axes_edit.setToolTip(f"axes {axes} ({where}): T time, C channel, Z, Y, X, S RGB; "
                                  "T is segmented frame by frame, never as depth")
        if where == "guessed":
            self.status.setText(f"axes {axes} guessed from the shape {tuple(layer.data.shape)}; "
                                "correct them in 'axes' if they are wrong")
        self._show_channels()
        self._pick_default_model(layer_name)

    def _on_axes_edited(self) -> None:
        from ..inference.axes import AxesError, parse_axes

        layer = self._current_layer()
        if layer is None:
            return
        text = self.axes_edit.text()
        if text == self.current_axes():
            return
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        try:
            axes = parse_axes(text, data.shape, bool(getattr(layer, "rgb", False)))
        except AxesError as err:
            self.status.setText(str(err))
            self.axes_edit.setText(self.current_axes())
            return
        self._layer_axes[layer.name] = axes
        self.axes_edit.setText(axes)
        self.status.setText(f"axes of {layer.name}: {axes}")
        self._show_channels()
        self._pick_default_model(layer.name)

    def _show_channels(self) -> None:
        """The channel picker, shown when the layer has a C axis (RGB samples are not
        channels), with "choose a channel" first when the model takes one channel."""
        layer = self._current_layer()
        axes = self.current_axes()
        n = int(layer.data.shape[axes.index("C")]) if layer is not None and "C" in axes else 0
        entry = self._models.get(self.model_combo.currentText())
        one = entry is None or entry.config.in_channels == 1
        wanted = ([] if not one else ["choose a channel"]) + [f"channel {i}" for i in range(n)]
        if n > 1 and not one and entry is not None and entry.config.in_channels == n:
            wanted = ["all channels (the model takes them all)"] + wanted
        current = [self.channel_combo.itemText(i) for i in range(self.channel_combo.count())]
        if n > 1 and wanted != current:
            self.channel_combo.clear()
            self.channel_combo.addItems(wanted)
        self.channel_row.setVisible(n > 1)
        self.link_check.setVisible("T" in axes)

    def selected_channel(self) -> int | None:
        """The channel picked in the channel list (None: none picked, or all)."""
        text = self.channel_combo.currentText()
        return int(text.split()[-1]) if text.startswith("channel ") else None

    def _on_output_chosen(self, _index: int) -> None:
        self._output_forced = False
        self._output_user = True

    def _on_model_chosen(self, index: int) -> None:
        from ..model.store import ModelLoadError, set_active_model

        entry = self._models.get(self.model_combo.itemText(index))
        self._model_chosen = True
        self.choice_label.setText("")
        if entry is not None:
            try:
                set_active_model(entry.name if entry.source != "folder" else str(entry.path), persist=False)
            except ModelLoadError:
                pass

    def _on_active_changed(self, name: str) -> None:
        self.refresh_models()  # lists new versions and selects the active one

    def use_model_path(self, path) -> bool:
        """Offer the model at ``path`` (a model folder, or a file inside one) and select it.

        Anything else, a pickled ``.pt``/``.pth`` checkpoint in particular, is refused with
        a notification saying why (the file is not executed); returns whether it was taken.
        """
        from pathlib import Path

        from napari.utils.notifications import show_error

        from ..model.config import ModelConfigError
        from ..model.store import ModelEntry, ModelLoadError, load_config, resolve_model

        try:
            folder = resolve_model(Path(path))
            cfg = load_config(folder)
        except (ModelLoadError, ModelConfigError, OSError) as err:
            self.status.setText(f"model refused: {err}")
            show_error(f"Segment: {err}")
            return False
        name = folder.name
        if name in self._models and self._models[name].path != folder:
            name = str(folder)
        self._extra_models[name] = ModelEntry(name, folder, "folder", cfg)
        self._model_chosen = True
        self.refresh_models(select=name)
        self.status.setText(f"model {name} from {folder}")
        return True

    def _browse_model(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Model: config.json or model.safetensors in a model folder", "",
            "Model files (config.json *.safetensors *.pt *.pth *.ckpt);;All files (*)",
        )
        if path:
            self.use_model_path(path)

    def _show_model_info(self) -> None:
        entry = self._models.get(self.model_combo.currentText())
        if entry is None:
            self.model_info.setText("no model found")
            return
        cfg = entry.config
        metrics = ", ".join(f"{k} {v}" for k, v in list(cfg.card.get("metrics", {}).items())[:2])
        text = f"{cfg.spatial_dims}D, {cfg.output} ({entry.source})"
        if metrics:  # a fine-tuned version's metrics are on its held-out corrected labels
            text += f"; {'held-out' if cfg.card.get('metrics_on') else 'validation'}: {metrics}"
        self.model_info.setText(text)
        self.model_info.setToolTip(cfg.card.get("task", ""))
        self.flips_check.setChecked(bool(cfg.inference.get("flips", False)))
        from ..inference.scale import default_diameter

        self.diameter_edit.setPlaceholderText("auto (estimated)" if default_diameter(cfg) == "auto"
                                              else "none (pixel size only)")
        passes = 2**cfg.spatial_dims
        self.flips_check.setText(f"test-time flips ({passes} passes, {passes}x slower)")
        current = self.output_combo.currentText()
        if cfg.output != "instances" and current == "instances":
            self.output_combo.setCurrentText("semantic")  # a semantic model has no instances
            self._output_forced = self._output_user
        elif cfg.output == "instances" and current == "semantic" and (self._output_forced or not self._output_user):
            self.output_combo.setCurrentText("instances")  # what the model predicts
            self._output_forced = False
        self._show_channels()

    def show_card(self) -> None:
        """Show the selected model's card (rendered markdown) in a window."""
        from qtpy.QtWidgets import QDialog, QTextBrowser

        from ..model.store import render_card

        entry = self._models.get(self.model_combo.currentText())
        if entry is None:
            return
        if self.card_dialog is None:
            self.card_dialog = QDialog(self)
            self.card_dialog.resize(640, 480)
            browser = QTextBrowser(self.card_dialog)
            browser.setOpenExternalLinks(True)
            QVBoxLayout(self.card_dialog).addWidget(browser)
            self.card_dialog.browser = browser
            from .export_button import ExportPackageButton

            self.card_dialog.export_button = ExportPackageButton(self.card_dialog)
            self.card_dialog.layout().addWidget(self.card_dialog.export_button)
        self.card_dialog.export_button.model = str(entry.path)
        self.card_dialog.setWindowTitle(f"model card: {entry.name}")
        self.card_dialog.browser.setMarkdown(render_card(entry.config))
        self.card_dialog.show()
        self.card_dialog.raise_()

    # -- running ----------------------------------------------------------------------------
    def options(self) -> dict:
        layer = self._current_layer()
        n_channels = 0
        axes = self.current_axes()
        if layer is not None and "C" in axes:
            n_channels = int(layer.data.shape[axes.index("C")])
        return {
            "axes": axes or None,
            "channel": self.selected_channel() if n_channels > 1 else None,
            "link": self.link_check.isVisibleTo(self) and self.link_check.isChecked(),
            "diameter": self.diameter_edit.text().strip() or None,
            "device": self.device_combo.currentText(),
            "mode": self.mode_combo.currentText(),
            "output": self.output_combo.currentText(),
            "tile": self.tile_spin.value() or None,
            "overlap": self.overlap_spin.value(),
            "flips": self.flips_check.isChecked(),
            "keep_probabilities": True,
        }

    def run(self):
        """Start segmenting the selected layer; returns the worker (or None)."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_error, show_warning

        if self.worker is not None:
            return None
        name = self.layer_combo.currentText()
        if not name or name not in self.viewer.layers:
            show_warning("Segment: open an image first")
            return None
        model_name = self.model_combo.currentText()
        if not model_name:
            show_warning("Segment: no model available")
            return None
        entry = self._models.get(model_name)
        model_ref = str(entry.path) if entry is not None else model_name
        try:
            source = source_from_layer(self.viewer.layers[name])
        except Exception as err:  # noqa: BLE001 - an odd layer must not take the viewer down
            self.status.setText(f"failed: {err}")
            show_error(f"Segment failed: {err}")
            return None
        options = self.options()
        problem = self._check(source, entry, options)
        if problem:
            self.status.setText(f"not started: {problem}")
            show_warning(f"Segment: {problem}")
            return None
        self._cancelled = False
        self._job_done = False
        # in-memory images: result layers made at once and filled as slices finish (progressive.py)
        self._progressive = None if is_lazy(source.data) else ProgressiveRun(
            self.viewer, self.viewer.layers[name], options["axes"] or "", self.status)
        self.worker = create_worker(
            _segment_job if self._progressive is None else progressive_job, model_ref, source,
            {**options, **({"results_folder": self.results_folder} if self.results_folder else {})},
            *(() if self._progressive is None else (self._progressive.near, self._progressive.ready)),
            _start_thread=False, _ignore_errors=True,
        )
        if self._progressive is not None:
            self._progressive.attach(self.worker)
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_result)
        self.worker.errored.connect(self._on_error)
        self.worker.aborted.connect(self._on_aborted)
        self.worker.finished.connect(self._on_finished)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress.setRange(0, 0)  # busy until the first event
        self.status.setText(f"segmenting {name} with {model_name} ...")
        self.worker.start()
        return self.worker

    def _check(self, source, entry, options: dict) -> str:
        """What stops this job before it starts, in one line ("" when nothing): a 3D model
        without a Z axis, several channels and no channel chosen, a diameter that is no
        size. Reads no pixels."""
        from ..inference.axes import AxesError, ChannelChoiceNeeded
        from ..inference.scale import ScaleError, parse_diameter

        if entry is None:
            return ""
        cfg = entry.config
        try:
            _, arranged = arrange_source(source, cfg, axes=options["axes"], channel=options["channel"],
                                         mode=options["mode"])
        except ChannelChoiceNeeded as err:
            return (f"choose a channel: the image has {err.n_channels} channels and model {cfg.name} takes "
                    "one (they are never averaged)")
        except AxesError as err:
            return str(err)
        if options["diameter"] is not None and arranged is not None:
            try:
                parse_diameter(options["diameter"], arranged.spatial_dims, arranged.spatial_shape)
            except ScaleError as err:
                return str(err)
        return ""

    def show_diameter(self, diameter=None):
        """Draw a circle (ellipse with the pixel aspect) of the object diameter at the centre
        of the view, over the last result's layer, as a Shapes layer; returns it.

        ``diameter``: pixels per spatial axis (or one number); default: the last run's
        (``Segmentation.info["diameter"]``)."""
        import numpy as np

        if diameter is None:
            diameter = (self.last_result.info.get("diameter") if self.last_result is not None else None)
        if diameter is None:
            self.status.setText("no object diameter known yet: run with a diameter or 'auto'")
            return None
        layer = self._result_layer or self._current_layer()
        if layer is None:
            return None
        d = np.atleast_1d(np.asarray(diameter, dtype=float))
        ry, rx = (d[-2:] if d.size >= 2 else np.repeat(d, 2)) / 2.0
        scale, translate = np.asarray(layer.scale, float), np.asarray(layer.translate, float)
        point = np.asarray(layer.world_to_data(self.viewer.dims.point), float)
        centre = np.asarray(camera_of(self.viewer).center, float)[-2:]
        point[-2:] = (centre - translate[-2:]) / scale[-2:]
        cy, cx = point[-2:]
        corners = np.array([[cy - ry, cx - rx], [cy - ry, cx + rx], [cy + ry, cx + rx], [cy + ry, cx - rx]])
        lead = np.repeat(np.round(point[None, :-2]), 4, axis=0)
        size = f"{d[-1]:.0f}" if np.allclose(d, d[-1]) else " x ".join(f"{v:.0f}" for v in d)
        return self.viewer.add_shapes(
            [np.concatenate([lead, corners], axis=1)], shape_type="ellipse", name=f"diameter ~{size} px",
            scale=tuple(scale), translate=tuple(translate), edge_color="yellow", face_color="transparent",
            edge_width=max(float(min(ry, rx)) / 10, 0.5),
        )

    def cancel(self) -> None:
        """Stop the running job. Its result, even one already computed, is never added."""
        if self.worker is None:
            return
        self._cancelled = True
        if self._adding is not None:  # the job is done, its layers are being added: undo
            for layer in self._adding["added"]:
                if layer in self.viewer.layers:
                    self.viewer.layers.remove(layer)
            self._adding = None
            self._on_aborted()
            self._maybe_idle()
            return
        self.status.setText("cancelling ...")
        self.worker.quit()

    def _on_progress(self, event) -> None:
        # QProgressBar.setValue repaints at once, and with it the window's canvas; with
        # updates off it only asks for a paint on a later event-loop turn
        self.progress.setUpdatesEnabled(False)
        self.progress.setTextVisible(True)
        self.progress.setRange(0, max(event.total, 1))
        self.progress.setValue(event.done)
        self.progress.setUpdatesEnabled(True)
        if "device" in event.info:
            self.device_label.setText(f"device: {event.info['device']}")

    def _on_result(self, value) -> None:
        if self._cancelled:  # finished before the cancel reached it: drop the result
            self._on_aborted()
            return
        result, source, self.last_thread = value
        self.last_result = result
        if self._progressive is not None:  # its layers are in the viewer, filled: finish up
            added, pending = self._progressive.finish(result)  # the hidden ones: one per turn, after this one
            self._adding = {"pending": pending, "added": added, "result": result}
            QTimer.singleShot(0, self._add_next_layer)
            return
        # napari takes a while to build each new layer (vispy visuals, layer controls): add
        # them one per event-loop turn, the labels first, so the viewer never freezes for
        # the sum of them. The job counts as running (``worker`` set) until all are added.
        self._adding = {"pending": list(result_layers(result, source)), "added": [], "result": result}
        self._add_next_layer()

    def _add_next_layer(self) -> None:
        from napari.utils.notifications import show_error

        state = self._adding
        if state is None:
            return
        if state["pending"]:
            data, kwargs, kind = state["pending"].pop()  # result_layers lists the labels last
            try:
                layer = getattr(self.viewer, f"add_{kind}")(data, **kwargs)
                state["added"].append(layer)
                if len(state["added"]) > 1:  # keep the labels, added first, on top
                    layers = self.viewer.layers
                    layers.move(layers.index(layer), layers.index(state["added"][0]))
            except Exception as err:  # noqa: BLE001 - undo, report, keep the viewer working
                for layer in state["added"]:
                    if layer in self.viewer.layers:
                        self.viewer.layers.remove(layer)
                self._adding = None
                self.status.setText(f"failed to add the result: {err}")
                show_error(f"Segment failed to add the result: {err}")
                self._maybe_idle()
                return
            if state["pending"]:
                QTimer.singleShot(0, self._add_next_layer)
                return
        result = state["result"]
        self._adding = None
        extra = ""
        if result.output == "instances":
            n = result.info.get("objects")
            extra = f", {int(result.labels.max()) if n is None else n} objects"
        if "linked" in result.info:
            extra += " (linked between frames)"
        self.status.setText(f"done in {result.seconds:.1f} s{extra}")
        labels = [layer for layer in state["added"] if layer.__class__.__name__ == "Labels"]
        self._result_layer = labels[0] if labels else (state["added"][0] if state["added"] else None)
        if self._result_layer is not None:  # the labels to correct, not the hidden probabilities
            self.viewer.layers.selection.active = self._result_layer
        message = result.info.get("scale_message") or ""
        diameter = result.info.get("diameter")
        if not message and diameter is not None:
            message = f"diameter ~{' x '.join(f'{v:.0f}' for v in sorted(set(diameter)))} px"
        self.diameter_label.setText(message)
        self.diameter_button.setEnabled(diameter is not None)
        self._maybe_idle()

    def _on_error(self, err) -> None:
        from napari.utils.notifications import show_error

        message = " ".join(str(err).split("\n")) or type(err).__name__
        if self._progressive is not None:  # layers made at the start: kept partial or removed
            self._progressive.cancel(self.cancel_choice.keep)
        self.status.setText(f"failed: {message}")
        show_error(f"Segment failed: {message}")

    def _on_aborted(self) -> None:
        if self._progressive is not None:
            text = self._progressive.cancel(self.cancel_choice.keep)
            if text:
                self.status.setText(text)
        else:
            self.status.setText("cancelled; no layer was changed")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)

    def _on_finished(self) -> None:
        if self._cancelled:  # also when the job ended as the cancel came: no aborted/returned
            self._on_aborted()
        self._job_done = True
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        """Back to idle once the job has finished and all its layers are in the viewer."""
        if not self._job_done or self._adding is not None:
            return
        self.worker = None
        self.cancel_button.setEnabled(False)
        self.run_button.setEnabled(bool(self._image_layers()))
