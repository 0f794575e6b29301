"""Dock widget "Fine-tune": train the active model on the labels the user corrected.

Pick the image and the corrected Labels layer, mark the corrected slices reviewed (key
``r`` or the button), start. Training runs in a worker (live loss / held-out score plot,
progress bar, Stop keeps the best so far); the result is saved as a new version with the
labels, made active only when it beats the starting model on held-out reviewed data.
"""

from __future__ import annotations

import threading
import time
import weakref

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._jobs import job

REVIEWED_KEY = "skipseg_reviewed"  # labels layer metadata: reviewed slice indices
MARK_KEY = "r"


@job
def _finetune_job(model_ref: str, data: list, options, device: str, stop_event):
    """Worker thread: save the labels into a new version folder first, then fine-tune and
    save the model there (the folder is only listed as a model once complete)."""
    from ..model.store import load_model, reserve_version
    from ..training.finetune import finetune, save_labels, save_version

    model = load_model(model_ref)
    folder = reserve_version(model.config.name)
    save_labels(folder, data)  # the corrections are safe before training starts
    result = yield from finetune(model, data, options, device=device, should_stop=stop_event.is_set)
    save_version(result, data, folder, activate=False)  # activated on the main thread
    return result


class LossPlot(QWidget):
    """Training loss (left axis) and held-out score (right axis) against the step."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.figure = Figure(figsize=(3.2, 2.2), facecolor="#262930", layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        layout.addWidget(self.canvas)
        self.ax = self.figure.add_subplot(111)
        self.ax2 = self.ax.twinx()
        self.loss: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.before: float | None = None
        self.draws = 0
        self._last = 0.0
        self.redraw(force=True)

    def clear(self) -> None:
        self.loss, self.val, self.before = [], [], None
        self.redraw(force=True)

    def add(self, info: dict) -> None:
        step = int(info.get("step", 0))
        if "loss" in info:
            self.loss.append((step, float(info["loss"])))
        if "val" in info and "score" in info["val"]:
            self.val.append((step, float(info["val"]["score"])))
        self.redraw(force="val" in info)

    def redraw(self, force: bool = False) -> None:
        now = time.perf_counter()
        if not force and now - self._last < 0.25:  # at most 4 redraws a second
            return
        self._last = now
        ax, ax2 = self.ax, self.ax2
        ax.clear()
        ax2.clear()
        for a in (ax, ax2):
            a.set_facecolor("#262930")
            for spine in a.spines.values():
                spine.set_color("#8a8f98")
            a.tick_params(colors="#d0d0d0", labelsize=7)
        ax.set_xlabel("step", fontsize=8, color="#d0d0d0")
        ax.set_ylabel("training loss", fontsize=8, color="#4fc3f7")
        ax2.set_ylabel("held-out score", fontsize=8, color="#ffb74d")
        ax2.yaxis.set_label_position("right")
        ax2.yaxis.tick_right()
        if self.loss:
            s, v = zip(*self.loss, strict=True)
            ax.plot(s, v, color="#4fc3f7", lw=1.2)
        if self.val:
            s, v = zip(*self.val, strict=True)
            ax2.plot(s, v, "o-", color="#ffb74d", lw=1.2, ms=3)
        if self.before is not None:
            ax2.axhline(self.before, color="#ffb74d", lw=0.8, ls="--")
            ax2.text(0.02, self.before, " starting model", color="#ffb74d", fontsize=7, va="bottom",
                     transform=ax2.get_yaxis_transform())
        ax2.set_ylim(0, 1.02)
        self.canvas.draw_idle()
        self.draws += 1


class FinetuneWidget(QWidget):
    """Fine-tune the active model on corrected labels from the open layers."""

    def __init__(self, napari_viewer, parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.seg_worker = None
        self.last_result = None
        self.last_thread = None
        self._stop = threading.Event()

        self.image_combo = QComboBox()
        self.labels_combo = QComboBox()
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("the model to start from (the active model, shared with Segment)")
        self.reviewed_label = QLabel("reviewed: none")
        self.mark_button = QPushButton("Mark slice reviewed (R)")
        self.mark_button.setToolTip("this slice's labels are corrected: train on it (label 0 = background); "
                                    "slices not marked are ignored")
        self.unmark_button = QPushButton("Unmark")
        self.steps_spin = QSpinBox()
        self.steps_spin.setRange(1, 100_000)
        self.steps_spin.setValue(300)
        self.time_spin = QSpinBox()
        self.time_spin.setRange(0, 24 * 3600)
        self.time_spin.setValue(180)
        self.time_spin.setSuffix(" s")
        self.time_spin.setSpecialValueText("no limit")
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(1e-5, 1e-1)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(1e-3)
        self.train_combo = QComboBox()
        self.train_combo.addItems(["decoder+last", "decoder", "all"])
        self.train_combo.setToolTip("decoder+last: the decoder and the two deepest encoder stages; "
                                    "decoder: encoder frozen; all: every weight")
        self.augment_check = QCheckBox("augment (flips, turns, intensity)")
        self.augment_check.setChecked(True)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])

        self.start_button = QPushButton("Fine-tune")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("end training now and keep the best model so far")
        self.stop_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("step %v / %m")
        self.plot = LossPlot(self)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        self.resegment_button = QPushButton("Re-segment with the new model")
        self.resegment_button.setEnabled(False)
        self.versions = QListWidget()
        self.versions.setMaximumHeight(120)
        self.activate_button = QPushButton("Make active")
        self.refresh_button = QPushButton("Refresh")

        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        form.addRow("image", self.image_combo)
        form.addRow("corrected labels", self.labels_combo)
        form.addRow("start from", self.model_combo)
        mark = QHBoxLayout()
        mark.addWidget(self.mark_button, 1)
        mark.addWidget(self.unmark_button)
        form.addRow("", mark)
        form.addRow("", self.reviewed_label)
        form.addRow("steps", self.steps_spin)
        form.addRow("time budget", self.time_spin)
        form.addRow("learning rate", self.lr_spin)
        form.addRow("train", self.train_combo)
        form.addRow("", self.augment_check)
        form.addRow("device", self.device_combo)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        vbuttons = QHBoxLayout()
        vbuttons.addWidget(self.activate_button)
        vbuttons.addWidget(self.refresh_button)
        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        layout.addWidget(self.plot)
        layout.addWidget(self.status)
        layout.addWidget(self.resegment_button)
        layout.addWidget(QLabel("versions (● active)"))
        layout.addWidget(self.versions)
        layout.addLayout(vbuttons)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)

        self.mark_button.clicked.connect(self.mark_reviewed)
        self.unmark_button.clicked.connect(self.unmark_reviewed)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.resegment_button.clicked.connect(self.resegment)
        self.activate_button.clicked.connect(self.make_active)
        self.refresh_button.clicked.connect(self.refresh_models)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.labels_combo.currentIndexChanged.connect(self._show_reviewed)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                   self.viewer.layers.events.reordered):
            ev.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self._show_reviewed)

        from ..model.store import on_active_changed

        on_active_changed(self._on_active_changed)
        self._bind_key()
        self._refresh_layers()
        self.refresh_models()

    # -- layers and reviewed slices ---------------------------------------------------------
    def _bind_key(self) -> None:
        ref = weakref.ref(self)

        def mark(viewer):
            widget = ref()
            if widget is not None:
                widget.mark_reviewed()

        mark.__doc__ = "Mark the current slice of the corrected labels reviewed (Fine-tune)"
        self.viewer.bind_key(MARK_KEY, mark, overwrite=True)

    def _layers(self, kind):
        return [layer for layer in self.viewer.layers if isinstance(layer, kind)]

    def _refresh_layers(self, event=None) -> None:
        from napari.layers import Image, Labels

        for combo, kind in ((self.image_combo, Image), (self.labels_combo, Labels)):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            names = [layer.name for layer in self._layers(kind)]
            combo.addItems(names)
            if current in names:
                combo.setCurrentText(current)
            combo.blockSignals(False)
        self._show_reviewed()
        self._update_buttons()

    def _labels_layer(self):
        name = self.labels_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _image_layer(self):
        name = self.image_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def _spatial_dims(self) -> int:
        from ..model.store import load_config

        try:
            return load_config(self._model_ref()).spatial_dims
        except Exception:  # noqa: BLE001 - no model yet: assume 2D
            return 2

    def current_slice(self) -> int:
        """Index along axis 0 of the labels layer at the viewer's current position (0 for a
        single 2D image)."""
        layer = self._labels_layer()
        if layer is None or layer.ndim < 3:
            return 0
        point = tuple(self.viewer.dims.point)[-layer.ndim:]
        z = int(np.round(layer.world_to_data(point)[0]))
        return int(np.clip(z, 0, layer.data.shape[0] - 1))

    def reviewed(self) -> list[int]:
        layer = self._labels_layer()
        if layer is None:
            return []
        return sorted({int(i) for i in layer.metadata.get(REVIEWED_KEY, [])})

    def mark_reviewed(self) -> None:
        """Mark the current slice (the whole image when 2D) of the labels layer reviewed."""
        layer = self._labels_layer()
        if layer is None:
            self.status.setText("choose the corrected Labels layer first")
            return
        marked = set(self.reviewed())
        marked.add(self.current_slice())
        layer.metadata[REVIEWED_KEY] = sorted(marked)  # metadata only: the labels stay untouched
        self._show_reviewed()
        self._update_buttons()

    def unmark_reviewed(self) -> None:
        layer = self._labels_layer()
        if layer is None:
            return
        layer.metadata[REVIEWED_KEY] = [i for i in self.reviewed() if i != self.current_slice()]
        self._show_reviewed()
        self._update_buttons()

    def _show_reviewed(self, event=None) -> None:
        layer = self._labels_layer()
        marked = self.reviewed()
        if layer is None:
            self.reviewed_label.setText("reviewed: no Labels layer")
            return
        if layer.ndim < 3:
            self.reviewed_label.setText("reviewed: the image" if marked else "reviewed: not yet (press R)")
            return
        here = self.current_slice()
        listing = ", ".join(map(str, marked[:12])) + (" ..." if len(marked) > 12 else "")
        self.reviewed_label.setText(
            f"reviewed: {len(marked)} of {layer.data.shape[0]} slices" + (f" ({listing})" if marked else "")
            + f"; this one {'yes' if here in marked else 'no'}"
        )
        self.reviewed_label.setToolTip("press R (or the button) on each slice whose labels you corrected; "
                                       "slices not marked are ignored in training")

    # -- models -----------------------------------------------------------------------------
    def refresh_models(self, event=None) -> None:
        from ..model.store import active_model, list_models, list_versions

        self._entries = {e.name: e for e in list_models()}
        active = active_model()
        if active not in self._entries and active is not None:
            from pathlib import Path

            from ..model.store import ModelEntry, load_config

            try:
                self._entries[active] = ModelEntry(Path(active).name, Path(active), "folder", load_config(active))
            except Exception:  # noqa: BLE001
                active = None
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        self.model_combo.addItems(list(self._entries))
        if active:
            self.model_combo.setCurrentText(active)
        self.model_combo.blockSignals(False)
        current = self.model_combo.currentText()
        self.versions.clear()
        if current:
            for entry in list_versions(self._entries[current].name) if current in self._entries else []:
                card = entry.config.card
                metrics = card.get("metrics", {})
                score = next((f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, (int, float))), "")
                tag = "" if entry.source == "bundled" else (" accepted" if card.get("accepted") else
                                                            " not better" if card.get("accepted") is False else "")
                dot = "● " if entry.name == current else "   "
                item = QListWidgetItem(f"{dot}{entry.name}  {score}{tag}")
                item.setData(Qt.ItemDataRole.UserRole, entry.name)
                item.setToolTip(f"{entry.path}\n{card.get('created', '')} from {card.get('parent', '-')}\n"
                                f"{card.get('guard', '')}")
                self.versions.addItem(item)
        self._update_buttons()

    def _model_ref(self) -> str:
        name = self.model_combo.currentText()
        entry = getattr(self, "_entries", {}).get(name)
        return str(entry.path) if entry is not None else name

    def _on_model_chosen(self, index: int) -> None:
        from ..model.store import set_active_model

        name = self.model_combo.itemText(index)
        if name:
            set_active_model(name, persist=False)
            self.refresh_models()

    def _on_active_changed(self, name: str) -> None:
        self.refresh_models()

    def make_active(self) -> None:
        """Make the version selected in the list the active model (one click)."""
        from ..model.store import set_active_model

        item = self.versions.currentItem()
        if item is None:
            self.status.setText("select a version in the list first")
            return
        name = item.data(Qt.ItemDataRole.UserRole)
        set_active_model(name)
        self.refresh_models()
        self.status.setText(f"{name} is the active model")

    def _update_buttons(self) -> None:
        busy = self.worker is not None
        ready = self._image_layer() is not None and self._labels_layer() is not None and bool(self.model_combo.count())
        self.start_button.setEnabled(ready and not busy)
        self.stop_button.setEnabled(busy)
        self.resegment_button.setEnabled(
            self.last_result is not None and self.last_result.path is not None
            and self._image_layer() is not None and self.seg_worker is None and not busy)

    # -- training ---------------------------------------------------------------------------
    def options(self):
        from ..training.finetune import FinetuneOptions

        return FinetuneOptions(
            steps=self.steps_spin.value(), time_budget=self.time_spin.value() or None,
            lr=self.lr_spin.value(), train=self.train_combo.currentText(), augment=self.augment_check.isChecked(),
            val_every=10,
        )

    def training_data(self) -> list:
        """The image and a copy of the corrected labels, as the core takes them (main thread)."""
        from ..training.finetune import Annotated

        image_layer, labels_layer = self._image_layer(), self._labels_layer()
        image = image_layer.data[0] if getattr(image_layer, "multiscale", False) else image_layer.data
        labels = labels_layer.data[0] if getattr(labels_layer, "multiscale", False) else labels_layer.data
        labels = np.array(labels, copy=True)  # the user's layer is never touched by the job
        reviewed = self.reviewed()
        return [Annotated(np.asarray(image), labels, reviewed if labels.ndim >= 3 or not reviewed else None,
                          name=labels_layer.name, rgb=bool(getattr(image_layer, "rgb", False)))]

    def start(self, options=None):
        """Start fine-tuning; returns the worker (or None when something is missing)."""
        from napari.qt.threading import create_worker
        from napari.utils.notifications import show_warning

        if self.worker is not None:
            return None
        if self._image_layer() is None or self._labels_layer() is None:
            show_warning("Fine-tune: choose an image and its corrected Labels layer")
            return None
        if not self.reviewed():
            self.status.setText("mark the corrected slices reviewed first (R): unreviewed slices are ignored")
            return None
        image_layer, labels_layer = self._image_layer(), self._labels_layer()
        shape = image_layer.data.shape[:-1] if getattr(image_layer, "rgb", False) else image_layer.data.shape
        if tuple(shape) != tuple(labels_layer.data.shape):
            self.status.setText(f"image {tuple(shape)} and labels {tuple(labels_layer.data.shape)} differ in shape")
            return None
        data = self.training_data()
        self._stop.clear()
        self.plot.clear()
        self.last_result = None
        self.worker = create_worker(
            _finetune_job, self._model_ref(), data, options or self.options(), self.device_combo.currentText(),
            self._stop, _start_thread=False, _ignore_errors=True,
        )
        self.worker.yielded.connect(self._on_progress)
        self.worker.returned.connect(self._on_result)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.progress.setRange(0, 0)
        self.status.setText(f"fine-tuning {self.model_combo.currentText()} on {len(self.reviewed())} reviewed "
                            f"slice(s) of {labels_layer.name} ...")
        self._update_buttons()
        self.worker.start()
        return self.worker

    def stop(self) -> None:
        """End training now; the best model so far is kept, tuned, compared and saved."""
        if self.worker is not None:
            self._stop.set()
            self.status.setText("stopping: keeping the best model so far ...")

    def _on_progress(self, event) -> None:
        info = event.info
        if info.get("phase") == "train":
            self.progress.setRange(0, max(event.total, 1))
            self.progress.setValue(min(event.done, max(event.total, 1)))
            self.plot.add(info)
        elif "before" in info:
            self.plot.before = info["before"]
        if info.get("phase") in ("prepare", "tune"):
            self.status.setText(event.message)

    def _on_result(self, result) -> None:
        from ..model.store import set_active_model

        self.last_result = result
        self.last_thread = threading.get_ident()
        if result.before:
            self.plot.before = result.before.get("score")
            self.plot.redraw(force=True)
        name = result.path.name if result.path is not None else "?"
        if result.accepted:
            set_active_model(name)
            text = f"saved {name} and made it active: {result.message}"
        else:
            text = f"saved {name} (with your labels) but kept {result.parent.split('/')[-1]} active: {result.message}"
        if result.stopped:
            text = "stopped; best model so far kept. " + text
        self.status.setText(text)
        self.refresh_models()

    def _on_error(self, err) -> None:
        from napari.utils.notifications import show_error

        message = " ".join(str(err).split("\n")) or type(err).__name__
        self.status.setText(f"failed: {message} (your labels are saved in the new version folder)")
        show_error(f"Fine-tune failed: {message}")

    def _on_finished(self) -> None:
        self.worker = None
        if self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        self._update_buttons()

    # -- re-segment -------------------------------------------------------------------------
    def resegment(self):
        """Segment the image again with the newly trained version, into a new layer."""
        from napari.qt.threading import create_worker

        from ..layers import source_from_layer
        from .segment_widget import _segment_job

        if self.last_result is None or self.last_result.path is None or self._image_layer() is None:
            return None
        cfg = self.last_result.model.config
        source = source_from_layer(self._image_layer())
        options = {"output": "instances" if cfg.output == "instances" else "semantic", "device": "auto"}
        self.seg_worker = create_worker(_segment_job, str(self.last_result.path), source, options,
                                        _start_thread=False, _ignore_errors=True)
        self.seg_worker.returned.connect(self._on_segmented)
        self.seg_worker.errored.connect(self._on_error)
        self.seg_worker.finished.connect(self._on_seg_finished)
        self.status.setText(f"segmenting {source.name} with {self.last_result.path.name} ...")
        self._update_buttons()
        self.seg_worker.start()
        return self.seg_worker

    def _on_segmented(self, value) -> None:
        from ..layers import result_layers

        result, source, _ = value
        for data, kwargs, kind in result_layers(result, source):
            if kind == "labels":
                getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        self.status.setText(f"re-segmented {source.name} with {result.model_name} in {result.seconds:.1f} s")

    def _on_seg_finished(self) -> None:
        self.seg_worker = None
        self._update_buttons()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self._stop.set()
        super().closeEvent(event)
