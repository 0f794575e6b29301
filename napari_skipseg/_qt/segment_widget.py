"""Dock widget "Segment": pick an image layer and a model, run, watch progress, cancel."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..layers import is_lazy, reopen_committed, result_layers, result_stores, source_from_layer
from ._jobs import job
from ._labels import WrapLabel


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
    from ..inference.engine import predict
    from ..model.store import load_model

    model = load_model(model_name)
    options = dict(options)
    folder = options.pop("results_folder", None)
    if not is_lazy(source.data):
        result = yield from predict(model, source.data, channel_axis=source.channel_axis, **options)
        return result, source, threading.get_ident()
    # a dask/zarr (or very large) layer: stream the result into zarr stores on disk, shown lazily
    targets, outputs = result_stores(source, model.config, options, folder)
    try:
        result = yield from predict(model, source.data, channel_axis=source.channel_axis, **options, **outputs)
        arrays = reopen_committed(targets)
    except BaseException:  # error or cancel: leave nothing behind
        for t in targets:
            t.abort()
        raise
    result.labels = arrays.get("labels", None if result.labels is None else result.labels)
    result.probabilities = arrays.get("probabilities", result.probabilities)
    return result, source, threading.get_ident()


def layer_spatial_dims(layer) -> int:
    """2 or 3: the spatial axes of an image layer (from the reader's axes when known)."""
    axes = (layer.metadata.get("skipseg") or {}).get("axes")
    spatial = sum(a in "ZYX" for a in axes) if axes else layer.ndim - (1 if getattr(layer, "rgb", False) else 0)
    return min(max(spatial, 2), 3)


class SegmentWidget(QWidget):
    """Segment the chosen image layer with a UNet, off the main thread."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.last_result = None
        self.last_thread = None  # thread the last job ran in (never the GUI thread)
        self._cancelled = False  # cancel asked for the running job: its result is dropped
        self._job_done = True  # the worker has finished (its result layers may still be coming)
        self._adding = None  # result layers still to add, one per event-loop turn
        self._extra_models = {}  # name -> ModelEntry of model folders chosen with "…"
        self._models = {}  # name -> ModelEntry offered in the model list
        self._model_chosen = False  # the user picked a model here: no default by dimensionality
        self._output_forced = False  # output set to "semantic" only because a model had no instances
        # where results of lazy (dask/zarr) or very large layers are stored as zarr; None:
        # <user data dir>/results (layers.results_dir)
        self.results_folder = None

        self.layer_combo = QComboBox()
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
        self.model_info.setStyleSheet("color: #9aa0a6;")
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
        self.flips_check = QCheckBox("test-time flips")
        self.flips_check.setToolTip(
            "average the network over the image flipped along each axis: 4 passes in 2D, 8 in 3D "
            "(that many times slower). Follows the model's own setting when a model is chosen.")

        self.run_button = QPushButton("Segment")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setFormat("%v / %m tiles")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.device_label = QLabel("device: chosen when a job starts")
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
        form.addRow("device", self.device_combo)
        form.addRow("mode", self.mode_combo)
        form.addRow("output", self.output_combo)
        form.addRow("tile", self.tile_spin)
        form.addRow("overlap", self.overlap_spin)
        form.addRow("", self.flips_check)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.device_label)
        layout.addWidget(self.status)
        layout.addStretch(1)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)

        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.browse_button.clicked.connect(self._browse_model)
        self.card_button.clicked.connect(self.show_card)
        self.model_combo.currentIndexChanged.connect(self._show_model_info)
        # the active model is shared with the Fine-tune widget: choosing one here makes it
        # active (one click), and a version made active there is selected here
        self.refresh_button.clicked.connect(lambda: self.refresh_models())
        self.model_combo.activated.connect(self._on_model_chosen)
        self.layer_combo.currentTextChanged.connect(self._pick_default_model)
        self.output_combo.activated.connect(lambda _: setattr(self, "_output_forced", False))  # user's pick
        from ..model.store import on_active_changed

        on_active_changed(self._on_active_changed)
        self.viewer.layers.events.inserted.connect(self._refresh_layers)
        self.viewer.layers.events.removed.connect(self._refresh_layers)
        self.viewer.layers.events.reordered.connect(self._refresh_layers)
        self._refresh_layers()
        self.refresh_models()
        self._pick_default_model(self.layer_combo.currentText())
        from ._jobs import warm_up

        warm_up()  # torch loads off the GUI thread before the user starts a job

    # -- lists ----------------------------------------------------------------------------
    def _image_layers(self):
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_layers(self, event=None) -> None:
        current = self.layer_combo.currentText()
        self.layer_combo.clear()
        names = [layer.name for layer in self._image_layers()]
        self.layer_combo.addItems(names)
        if current in names:
            self.layer_combo.setCurrentText(current)
        self.run_button.setEnabled(bool(names) and self.worker is None)

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
        """Until a model is chosen (here, or made active by a fine-tune), use the bundled
        default for the image's dimensionality: 3D nuclei for a volume, 2D nuclei otherwise."""
        from .. import default_model_for
        from ..model.store import active_model

        if active_model() is not None or layer_name not in self.viewer.layers:
            return
        if self._model_chosen:
            return
        name = default_model_for(layer_spatial_dims(self.viewer.layers[layer_name]))
        if name in self._models and name != self.model_combo.currentText():
            self.model_combo.setCurrentText(name)

    def _on_model_chosen(self, index: int) -> None:
        from ..model.store import ModelLoadError, set_active_model

        entry = self._models.get(self.model_combo.itemText(index))
        self._model_chosen = True
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
        if metrics:
            text += f"; validation: {metrics}"
        self.model_info.setText(text)
        self.model_info.setToolTip(cfg.card.get("task", ""))
        self.flips_check.setChecked(bool(cfg.inference.get("flips", False)))
        passes = 2**cfg.spatial_dims
        self.flips_check.setText(f"test-time flips ({passes} passes, {passes}x slower)")
        if cfg.output != "instances" and self.output_combo.currentText() == "instances":
            self.output_combo.setCurrentText("semantic")  # a semantic model has no instances
            self._output_forced = True
        elif cfg.output == "instances" and self._output_forced:
            self.output_combo.setCurrentText("instances")  # back to what it was
            self._output_forced = False

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
        self.card_dialog.setWindowTitle(f"model card: {entry.name}")
        self.card_dialog.browser.setMarkdown(render_card(entry.config))
        self.card_dialog.show()
        self.card_dialog.raise_()

    # -- running ----------------------------------------------------------------------------
    def options(self) -> dict:
        return {
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
        self._cancelled = False
        self._job_done = False
        self.worker = create_worker(
            _segment_job, model_ref, source,
            {**self.options(), **({"results_folder": self.results_folder} if self.results_folder else {})},
            _start_thread=False, _ignore_errors=True,
        )
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
        self.progress.setTextVisible(True)
        self.progress.setRange(0, max(event.total, 1))
        self.progress.setValue(event.done)
        if "device" in event.info:
            self.device_label.setText(f"device: {event.info['device']}")

    def _on_result(self, value) -> None:
        if self._cancelled:  # finished before the cancel reached it: drop the result
            self._on_aborted()
            return
        result, source, self.last_thread = value
        self.last_result = result
        # napari takes a while to build each new layer (vispy visuals, layer controls): add
        # them one per event-loop turn, the labels first, so the viewer never freezes for
        # the sum of them. The job counts as running (``worker`` set) until all are added.
        self._adding = {"pending": list(result_layers(result, source)), "added": [], "result": result}
        self._add_next_layer()

    def _add_next_layer(self) -> None:
        from napari.utils.notifications import show_error
        from qtpy.QtCore import QTimer

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
        self.status.setText(f"done in {result.seconds:.1f} s{extra}")
        self._maybe_idle()

    def _on_error(self, err) -> None:
        from napari.utils.notifications import show_error

        message = " ".join(str(err).split("\n")) or type(err).__name__
        self.status.setText(f"failed: {message}")
        show_error(f"Segment failed: {message}")

    def _on_aborted(self) -> None:
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
