"""Dock widget "Fine-tune": train the active model on the labels the user corrected.

Pick the image and the corrected Labels layer, mark the corrected slices reviewed (key
``r`` or the button), start. Training runs in a worker (live loss / held-out score plot,
progress bar, Stop keeps the best so far, Cancel drops the job and changes nothing); the
result is saved as a new version with the labels, made active only when it beats the
starting model on held-out reviewed data.

While the user corrects the chosen Labels layer, its data is autosaved a few seconds after
each change (:mod:`napari_skipseg.autosave`, written in a worker thread); "Restore autosave"
adds a saved copy as a new Labels layer, never over the user's layer.
"""

from __future__ import annotations

import threading
import time
import weakref

import numpy as np
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QApplication,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QProgressBar,
    QPushButton,
    QSizePolicy,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ._jobs import CANCELLED, Cancelled, cancellable, job
from ._labels import WrapLabel
from ._sections import Section, share_dock_height, vertical_scroll

REVIEWED_KEY = "skipseg_reviewed"  # labels layer metadata: reviewed slice indices
MARK_KEY = "r"
MAX_NEW_CLASSES = 32  # "new classes": more ids than this are instance ids painted by mistake
AUTOSAVE_DELAY_MS = 3000  # autosave this long after the last change to the labels
CANCELLED_TEXT = "Cancelled: nothing changed"


@job
def _finetune_job(model_ref: str, data: list, options, device: str, stop_event, cancel_event=None):
    """Worker thread: save the labels into a new version folder first, then fine-tune and
    save the model there (the folder is only listed as a model once complete).

    When ``cancel_event`` is set (checked between all steps, and after saving) the job
    removes the folder it made, whatever it holds, and returns :data:`CANCELLED`. It never
    changes the active model: the widget does that on the main thread.
    """
    from .._preload import ensure_loaded

    ensure_loaded()  # torch, loaded without holding the GIL for long (started with the widget)
    from ..model.store import discard_model, load_model, reserve_version
    from ..training.finetune import finetune, save_labels, save_version

    cancel_event = cancel_event or threading.Event()

    def check() -> None:
        if cancel_event.is_set():
            raise Cancelled

    folder = None
    try:
        model = load_model(model_ref)
        check()
        folder = reserve_version(model.config.name)
        save_labels(folder, data)  # the corrections are safe before training starts
        check()
        result = yield from cancellable(
            finetune(model, data, options, device=device, should_stop=stop_event.is_set), cancel_event)
        check()
        save_version(result, data, folder, activate=False)  # activated on the main thread
        check()  # cancelled while saving: the new version goes again
    except BaseException:
        if cancel_event.is_set():  # cancelled (or failed as the cancel came): leave nothing behind
            if folder is not None:
                discard_model(folder)
            return CANCELLED
        raise  # a failure: the folder keeps the labels (the status says so)
    return result


@job
def _score_job(models: list, data: list, like_ref: str, device: str):
    """Worker thread: score each model on the held-out part of ``data`` (the split a fine-tune
    would use); models that predict other classes than ``like_ref`` are left out."""
    from .._preload import ensure_loaded

    ensure_loaded()
    from ..inference.device import release, select_device
    from ..model.store import load_config
    from ..training.finetune import FinetuneOptions, score_versions

    dev = select_device(device)
    try:
        return (yield from score_versions(models, data, FinetuneOptions().val_fraction, dev,
                                          like=load_config(like_ref)))
    finally:
        release(dev)


def _autosave_job(labels, name: str, kwargs: dict):
    """Worker thread: write one autosave (compressing a large array takes a while)."""
    from ..autosave import save_autosave

    return name, save_autosave(labels, name, **kwargs)


class LossPlot(QWidget):
    """Training loss (left axis) and held-out score (right axis) against the step, with the
    starting model's held-out score and (after the job) that of the starting weights with
    re-tuned post-processing as dashed and dotted lines. Colours follow napari's theme."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        from .theme import DEFAULT

        self.palette_ = DEFAULT  # napari's theme, once the widget follows a viewer (set_palette)
        self.figure = Figure(figsize=(3.2, 2.2), facecolor=self.palette_.background, layout="constrained")
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.canvas.setMinimumHeight(200)
        self.canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        layout.addWidget(self.canvas)
        self.ax = self.figure.add_subplot(111)
        self.ax2 = self.ax.twinx()
        self.loss: list[tuple[int, float]] = []
        self.val: list[tuple[int, float]] = []
        self.before: float | None = None
        self.retuned: float | None = None
        self.draws = 0
        self._last = 0.0
        self.redraw(force=True)

    def clear(self) -> None:
        self.loss, self.val, self.before, self.retuned = [], [], None, None
        self.redraw(force=True)

    def set_palette(self, palette) -> None:
        """Colours from napari's theme (see :mod:`.theme`); the plot is drawn again."""
        if palette != self.palette_:
            self.palette_ = palette
            self.figure.set_facecolor(palette.background)
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
        pal = self.palette_
        loss_color, score_color = pal.series[0], pal.series[1]
        ax.clear()
        ax2.clear()
        for a in (ax, ax2):
            a.set_facecolor(pal.background)
            for spine in a.spines.values():
                spine.set_color(pal.axis)
            a.tick_params(colors=pal.text, labelsize=7)
        ax.set_xlabel("step", fontsize=8, color=pal.text)
        ax.set_ylabel("training loss", fontsize=8, color=loss_color)
        ax2.set_ylabel("held-out score", fontsize=8, color=score_color)
        ax2.yaxis.set_label_position("right")
        ax2.yaxis.tick_right()
        if self.loss:
            s, v = zip(*self.loss, strict=True)
            ax.plot(s, v, color=loss_color, lw=1.2)
        if self.val:
            s, v = zip(*self.val, strict=True)
            ax2.plot(s, v, "o-", color=score_color, lw=1.2, ms=3)
        if self.before is not None:
            ax2.axhline(self.before, color=score_color, lw=0.8, ls="--")
            ax2.text(0.02, self.before, " starting model", color=score_color, fontsize=7, va="bottom",
                     transform=ax2.get_yaxis_transform())
        if self.retuned is not None:
            ax2.axhline(self.retuned, color=score_color, lw=0.8, ls=":")
            ax2.text(0.98, self.retuned, "starting weights, re-tuned ", color=score_color, fontsize=7, va="bottom",
                     ha="right", transform=ax2.get_yaxis_transform())
        ax2.set_ylim(0, 1.02)
        if self.canvas.isVisible():
            self.canvas.draw_idle()
        else:  # drawn when shown: no idle draw is left pending for a canvas Qt may delete unseen
            self._stale = True
        self.draws += 1

    def showEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().showEvent(event)
        if getattr(self, "_stale", False):
            self._stale = False
            self.canvas.draw_idle()


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
        self._cancel = threading.Event()
        self._watched = None  # the Labels layer being autosaved
        self._edit_stamp = None
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave_timer.timeout.connect(self.autosave_now)
        self.autosave_worker = None
        self._autosave_again = False  # the labels changed while a write was running
        self.last_autosave = None
        self._height_shared = False

        from napari.layers import Image, Labels

        from .forms import LayerPicker, remember

        # pickers that follow the viewer (renames, adds, removes, moves) by themselves
        self.image_picker = LayerPicker(self.viewer, Image)
        self.labels_picker = LayerPicker(self.viewer, Labels)
        self.image_combo = self.image_picker.native
        self.labels_combo = self.labels_picker.native
        self.model_combo = QComboBox()
        self.model_combo.setToolTip("the model to start from (the active model, shared with Segment)")
        self.reviewed_label = WrapLabel("reviewed: none")
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
        self.lr_spin.setValue(3e-4)  # training.finetune.AUTO_TRAIN: own classes
        self.train_combo = QComboBox()
        self.train_combo.addItems(["decoder+last", "decoder", "all"])
        self.train_combo.setToolTip("decoder+last: the decoder and the two deepest encoder stages; "
                                    "decoder: encoder frozen; all: every weight")
        self.augment_check = QCheckBox("augment (flips, turns, intensity)")
        self.augment_check.setChecked(True)
        self.classes_check = QCheckBox("new classes (labels are class ids)")
        self.classes_check.setToolTip(
            "for a structure the model was not trained for: paint class 1, 2, ... (0 = background) on "
            "the reviewed slices; the model gets a new output layer for these classes, predicts them "
            "as a semantic map, and every weight trains (learning rate 0.003)")
        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cpu", "cuda", "mps"])

        self.start_button = QPushButton("Fine-tune")
        self.stop_button = QPushButton("Stop")
        self.stop_button.setToolTip("end training now and keep the best model so far")
        self.stop_button.setEnabled(False)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("abort the job: no new version, the active model and the layers stay as they were")
        self.cancel_button.setEnabled(False)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setFormat("step %v / %m")
        self.plot = LossPlot(self)
        self.status = WrapLabel("")
        self.resegment_button = QPushButton("Re-segment with the new model")
        self.resegment_button.setEnabled(False)
        self.versions = QListWidget()
        self.versions.setMaximumHeight(120)
        self.activate_button = QPushButton("Make active")
        self.refresh_button = QPushButton("Refresh")
        self.score_button = QPushButton("Score all")
        self.score_button.setToolTip("score every version on the held-out part of the reviewed slices of the "
                                     "chosen labels (the part a fine-tune would hold out), without training")
        self.score_worker = None
        self._scored = None  # {"on", "scores"} from "Score all", until the next fine-tune
        self.autosave_label = WrapLabel("")
        self.autosave_label.setToolTip("the corrected labels are saved a few seconds after each change "
                                       "(kept after napari closes or crashes)")
        self.restore_button = QPushButton("Restore autosave…")
        self.restore_button.setToolTip("add an autosaved copy of the labels as a new Labels layer")
        self.restore_menu = QMenu(self.restore_button)
        self.restore_button.setMenu(self.restore_menu)

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
        autosave_row = QHBoxLayout()
        autosave_row.addWidget(self.autosave_label, 1)
        autosave_row.addWidget(self.restore_button)
        form.addRow("", autosave_row)
        options_form = QFormLayout()  # folded by default (a digest shows in its title row)
        options_form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        options_form.addRow("steps", self.steps_spin)
        options_form.addRow("time budget", self.time_spin)
        options_form.addRow("learning rate", self.lr_spin)
        options_form.addRow("train", self.train_combo)
        options_form.addRow("", self.augment_check)
        options_form.addRow("", self.classes_check)
        options_form.addRow("device", self.device_combo)
        self.options_section = Section("training options", options_form, expanded=False)
        buttons = QHBoxLayout()
        buttons.addWidget(self.start_button)
        buttons.addWidget(self.stop_button)
        buttons.addWidget(self.cancel_button)
        vbuttons = QHBoxLayout()
        vbuttons.addWidget(self.activate_button)
        vbuttons.addWidget(self.refresh_button)
        vbuttons.addWidget(self.score_button)
        # in a scroll area, with foldable sections: fits under Segment on a 1280 x 800 screen
        content = QWidget()
        layout = QVBoxLayout(content)
        layout.addLayout(form)
        layout.addWidget(self.options_section)
        layout.addLayout(buttons)
        layout.addWidget(self.progress)
        self.plot_section = Section("loss and held-out score", self.plot, expanded=False)  # unfolds on start
        layout.addWidget(self.plot_section)
        layout.addWidget(self.status)
        layout.addWidget(self.resegment_button)
        self.versions_label = WrapLabel("")
        versions = QVBoxLayout()
        versions.setContentsMargins(0, 0, 0, 0)
        versions.addWidget(self.versions_label)
        versions.addWidget(self.versions)
        versions.addLayout(vbuttons)
        self.versions_section = Section("versions (● active)", versions)
        layout.addWidget(self.versions_section)
        layout.setAlignment(Qt.AlignmentFlag.AlignTop)
        self.scroll = vertical_scroll(content)
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.addWidget(self.scroll)

        self.mark_button.clicked.connect(self.mark_reviewed)
        self.unmark_button.clicked.connect(self.unmark_reviewed)
        self.start_button.clicked.connect(self.start)
        self.stop_button.clicked.connect(self.stop)
        self.cancel_button.clicked.connect(self.cancel)
        self.restore_menu.aboutToShow.connect(self._fill_restore_menu)
        self.resegment_button.clicked.connect(self.resegment)
        self.activate_button.clicked.connect(self.make_active)
        self.refresh_button.clicked.connect(self.refresh_models)
        self.score_button.clicked.connect(self.score_all)
        self.model_combo.activated.connect(self._on_model_chosen)
        self.labels_combo.currentIndexChanged.connect(self._show_reviewed)
        self.image_combo.currentTextChanged.connect(self._on_image_chosen)
        self.classes_check.toggled.connect(self._on_classes_toggled)
        self.labels_combo.currentIndexChanged.connect(self._watch_labels)
        for signal in (self.steps_spin.valueChanged, self.time_spin.valueChanged, self.lr_spin.valueChanged,
                       self.train_combo.currentTextChanged, self.augment_check.toggled,
                       self.classes_check.toggled, self.device_combo.currentTextChanged):
            signal.connect(self._summarise_options)
        self._summarise_options()
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed,
                   self.viewer.layers.events.reordered):
            ev.connect(self._refresh_layers)
        self.viewer.dims.events.current_step.connect(self._show_reviewed)

        from ..model.store import on_active_changed

        on_active_changed(self._on_active_changed)
        app = QApplication.instance()
        if app is not None:  # napari quitting closes no dock widget: save pending changes then
            app.aboutToQuit.connect(self.flush_autosave)
        self._bind_key()
        from .theme import follow_theme

        follow_theme(self.viewer, self)  # the loss plot's colours from napari's theme, and on changes
        remember("finetune", {"steps": self.steps_spin, "time": self.time_spin, "augment": self.augment_check,
                              "device": self.device_combo})
        self._refresh_layers()
        self.refresh_models()
        from ._jobs import warm_up

        warm_up()  # torch loads off the GUI thread before the user starts a job

    # -- layout -------------------------------------------------------------------------------
    def _summarise_options(self, *args) -> None:
        """The folded options' digest, e.g. '300 steps, 180 s, decoder+last, lr 0.0003'."""
        budget = f"{self.time_spin.value()} s" if self.time_spin.value() else "no time limit"
        parts = [f"{self.steps_spin.value()} steps", budget, self.train_combo.currentText(),
                 f"lr {self.lr_spin.value():g}"]
        if self.classes_check.isChecked():
            parts.append("new classes")
        if self.device_combo.currentText() != "auto":
            parts.append(self.device_combo.currentText())
        self.options_section.set_summary(", ".join(parts))

    def showEvent(self, event) -> None:  # noqa: N802 - Qt API
        super().showEvent(event)
        if not self._height_shared:  # once docked: a fair share of the height, not what is left
            self._height_shared = True
            QTimer.singleShot(0, self._share_height)

    def _share_height(self) -> None:
        try:
            share_dock_height(self)
        except RuntimeError:  # closed meanwhile
            pass

    def reveal(self, widget) -> None:
        """Unfold the section that holds ``widget`` and scroll it into view."""
        for section in (self.options_section, self.plot_section, self.versions_section):
            if section.isAncestorOf(widget):
                section.set_expanded(True)
        self.scroll.widget().adjustSize()
        self.scroll.ensureWidgetVisible(widget, 0, 8)

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
        self.image_picker.refresh()  # (they follow the viewer themselves; up to date first here)
        self.labels_picker.refresh()
        self._show_reviewed()
        self._watch_labels()
        self._update_buttons()

    def _labels_layer(self):
        return self.labels_picker.value

    def _image_layer(self):
        return self.image_picker.value

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
        elif self._image_layer() is not None:
            # no active model yet: the bundled default for the image, as the Segment widget does
            from .. import default_model_for
            from .segment_widget import layer_spatial_dims

            default = default_model_for(layer_spatial_dims(self._image_layer()))
            if default in self._entries:
                self.model_combo.setCurrentText(default)
        self.model_combo.blockSignals(False)
        current = self.model_combo.currentText()
        self.versions.clear()
        entries = []
        if current in self._entries:
            try:
                entries = list_versions(self._entries[current].name)
            except OSError:
                entries = []
        from ..training.finetune import version_scores

        on, scores = version_scores(entries)
        if self._scored is not None:  # "Score all" on the chosen labels, newer than any card
            on, scores = version_scores(entries, self._scored)
        if on:
            self.versions_label.setText(f"held-out score of each on {on}")
            self.versions_label.setToolTip("every version scored on the same held-out data: that of the newest "
                                           "fine-tune (each with its own post-processing)")
        elif entries:
            self.versions_label.setText("each model's score from its card, on its own data: not comparable "
                                        "until a fine-tune scores them all on your held-out data")
            self.versions_label.setToolTip("")
        else:
            self.versions_label.setText("")
        for entry in entries:
            card = entry.config.card
            score = scores.get(entry.name)
            if score is not None:
                text = f"{score[0]} {score[1]:.3f}"
            else:  # made later, other classes, or no metrics
                text = "not scored on these data" if on else ""
            tag = "" if entry.source == "bundled" else (" accepted" if card.get("accepted") else
                                                        " not better" if card.get("accepted") is False else "")
            dot = "● " if active is not None and entry.name == current else "   "
            item = QListWidgetItem(f"{dot}{entry.name}  {text}{tag}")
            item.setData(Qt.ItemDataRole.UserRole, entry.name)
            gain = card.get("gain") or {}
            gain_text = ", ".join(f"{k} {v:+.3f}" for k, v in gain.items() if isinstance(v, (int, float)))
            item.setToolTip(f"{entry.path}\n{card.get('created', '')} from {card.get('parent', '-')}\n"
                            f"{card.get('guard', '')}" + (f"\ngain: {gain_text}" if gain_text else ""))
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

    def _on_image_chosen(self, name: str) -> None:
        from ..model.store import active_model

        if active_model() is None and self.worker is None:
            self.refresh_models()  # the default model follows the image's dimensionality

    def _on_classes_toggled(self, on: bool) -> None:
        """New classes train every weight at a higher rate (training.finetune.AUTO_TRAIN)."""
        from ..training.finetune import AUTO_TRAIN

        train, lr, _ = AUTO_TRAIN[bool(on)]
        self.train_combo.setCurrentText(train)
        self.lr_spin.setValue(lr)

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
        self.stop_button.setEnabled(busy and not self._cancel.is_set())
        self.cancel_button.setEnabled(busy and not self._cancel.is_set())
        self.score_button.setEnabled(ready and not busy and getattr(self, "score_worker", None) is None)
        self.resegment_button.setEnabled(
            self.last_result is not None and self.last_result.path is not None
            and self._image_layer() is not None and self.seg_worker is None and not busy)

    # -- training ---------------------------------------------------------------------------
    def options(self):
        from ..training.finetune import FinetuneOptions

        return FinetuneOptions(
            steps=self.steps_spin.value(), time_budget=self.time_spin.value() or None,
            lr=self.lr_spin.value(), train=self.train_combo.currentText(), augment=self.augment_check.isChecked(),
            val_every=10, num_classes=self._new_class_count(), new_head=self.classes_check.isChecked(),
        )

    def _new_class_count(self) -> int | None:
        """With "new classes": 1 + the largest class id painted on the reviewed slices (at least 2)."""
        if not self.classes_check.isChecked() or self._labels_layer() is None:
            return None
        data = self._labels_layer().data
        data = data[0] if getattr(self._labels_layer(), "multiscale", False) else data
        marked = self.reviewed()
        if np.asarray(data).ndim >= 3 and marked:
            top = max(int(np.max(np.asarray(data[i]))) for i in marked if 0 <= i < data.shape[0])
        else:
            top = int(np.max(np.asarray(data)))
        return max(top + 1, 2)

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
        options = options or self.options()
        classes = options.num_classes if options.new_head else None
        if classes is not None and classes > MAX_NEW_CLASSES + 1:
            self.status.setText(f"new classes: the reviewed labels hold ids up to {classes - 1}; paint class ids "
                                f"1 to at most {MAX_NEW_CLASSES} (0 = background), or untick 'new classes'")
            return None
        data = self.training_data()
        self._stop = threading.Event()  # new events per job: a late cancel cannot reach the next one
        self._cancel = threading.Event()
        self.plot.clear()
        self.plot_section.set_expanded(True)
        self.last_result = None
        self.worker = create_worker(
            _finetune_job, self._model_ref(), data, options, self.device_combo.currentText(),
            self._stop, self._cancel, _start_thread=False, _ignore_errors=True,
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

    def cancel(self) -> None:
        """Abort the job at once: no new version is kept, the active model and the layers stay
        as they were. The job stops at its next step (and removes what it wrote)."""
        if self.worker is None or self._cancel.is_set():
            return
        self._cancel.set()
        self.status.setText("cancelling ...")
        self._update_buttons()

    def _on_progress(self, event) -> None:
        if self._cancel.is_set():
            return
        info = event.info
        if info.get("phase") == "train":
            self.progress.setRange(0, max(event.total, 1))
            self.progress.setValue(min(event.done, max(event.total, 1)))
            self.plot.add(info)
        elif "before" in info:
            self.plot.before = info["before"]
        if info.get("phase") in ("prepare", "tune", "compare"):
            self.status.setText(event.message)

    def _on_result(self, result) -> None:
        from ..model.store import discard_model, set_active_model

        if result is CANCELLED:
            return
        if self._cancel.is_set():  # the job had finished as the cancel came: undo its save
            if result.path is not None:
                discard_model(result.path)
            return
        self.last_result = result
        self.last_thread = threading.get_ident()
        self._scored = None  # the new version's card holds the newest comparison
        if result.before:
            self.plot.before = result.before.get("score")
            self.plot.retuned = result.retuned.get("score") if result.retuned else None
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
        if self._cancel.is_set():
            self.last_result = None
            self.plot.clear()
            self.progress.setRange(0, 1)
            self.progress.setValue(0)
            self.status.setText(CANCELLED_TEXT)
            self.refresh_models()
        elif self.progress.maximum() == 0:
            self.progress.setRange(0, 1)
        self._update_buttons()

    # -- every version on the same held-out data --------------------------------------------
    def score_all(self):
        """Score every version of the chosen model on the held-out part of the reviewed slices
        of the chosen labels, in a worker; the versions list then shows these scores."""
        from napari.qt.threading import create_worker

        from ..model.store import list_versions

        if self.worker is not None or self.score_worker is not None:
            return None
        if self._image_layer() is None or self._labels_layer() is None or not self.reviewed():
            self.status.setText("to score the versions: choose the image and labels, and mark reviewed slices (R)")
            return None
        name = self.model_combo.currentText()
        entries = list_versions(self._entries[name].name) if name in getattr(self, "_entries", {}) else []
        if not entries:
            return None
        self.score_worker = create_worker(_score_job, [str(e.path) for e in entries], self.training_data(),
                                          self._model_ref(), self.device_combo.currentText(),
                                          _start_thread=False, _ignore_errors=True)
        self.score_worker.yielded.connect(lambda event: self.status.setText(event.message))
        self.score_worker.returned.connect(self._on_scored)
        self.score_worker.errored.connect(self._on_error)
        self.score_worker.finished.connect(self._on_score_finished)
        self._update_buttons()
        self.score_worker.start()
        return self.score_worker

    def _on_scored(self, compared: dict) -> None:
        self._scored = compared
        self.refresh_models()
        self.status.setText(f"scored {len(compared.get('scores', {}))} version(s) on {compared.get('on', '')}")

    def _on_score_finished(self) -> None:
        self.score_worker = None
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

    # -- autosave of the corrected labels -------------------------------------------------------
    def _watch_labels(self, *args) -> None:
        """Follow the chosen Labels layer: each change to it (re)starts the autosave timer."""
        layer = self._labels_layer()
        if layer is self._watched:
            return
        old = self._watched
        if old is not None:
            for name in ("paint", "data", "labels_update", "set_data"):
                getattr(old.events, name).disconnect(self._labels_changed)
            if self._autosave_timer.isActive():  # unsaved changes: save them now
                self._autosave_timer.stop()
                self.autosave_now(old)
        self._watched = layer
        self._edit_stamp = self._stamp()
        if layer is not None:
            # paint: a stroke, fill or data_setitem ends; labels_update: while painting;
            # data: the array is replaced; set_data: undo/redo (and re-slicing; an unchanged
            # array is not written again)
            for name in ("paint", "data", "labels_update", "set_data"):
                getattr(layer.events, name).connect(self._labels_changed)
            entry = self._newest_autosave(layer.name, self._image_source_id())
            self.autosave_label.setText(f"last autosave {entry.clock}" if entry is not None else "")

    def _stamp(self):
        """What the viewer shows: its dims position, the number of dimensions displayed and
        their order. napari re-slices a layer (``set_data``) when these change, and announces
        an undo or redo only as a ``set_data`` too: a ``set_data`` under the same stamp is an
        edit (an unchanged array is not written again)."""
        dims = self.viewer.dims
        return (tuple(dims.current_step), dims.ndisplay, tuple(dims.order))

    def _labels_changed(self, event=None) -> None:
        stamp = self._stamp()
        if getattr(event, "type", None) == "set_data" and stamp != self._edit_stamp:
            self._edit_stamp = stamp  # a re-slice: the viewer moved, the labels did not change
            return
        self._edit_stamp = stamp
        self._autosave_timer.start()  # restarts: saved once the user pauses

    @staticmethod
    def _newest_autosave(name: str, source_id: str | None):
        from ..autosave import newest_autosave

        try:
            return newest_autosave(name, source_id=source_id)
        except OSError:
            return None

    def _image_source_id(self) -> str | None:
        """The stable id of the chosen image (its file, sample or data): autosaves are kept
        per image and Labels layer, so two images' layers of one name never replace each
        other's autosaves."""
        from ..autosave import source_id_of

        name = self.image_combo.currentText()
        if not name or name not in self.viewer.layers:
            return None
        layer = self.viewer.layers[name]
        source = getattr(layer, "source", None)
        path = getattr(source, "path", None) or ((layer.metadata or {}).get("skipseg") or {}).get("path")
        data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
        return source_id_of(path, sample=getattr(source, "sample", None), data=data, name=name)

    def autosave_now(self, layer=None, wait: bool = False):
        """Autosave the labels layer now (a copy taken here, written in a worker thread, or
        here when ``wait``). Returns the worker (None when written here or nothing to do)."""
        from napari.qt.threading import create_worker

        layer = layer if layer is not None else self._watched
        if layer is None:
            return None
        if not isinstance(layer.data, np.ndarray) or getattr(layer, "multiscale", False):
            self.autosave_label.setText("not autosaved: the labels are not an in-memory array")
            return None
        if self.autosave_worker is not None and not wait:  # one write at a time: again after it
            self._autosave_again = True
            return None
        labels = np.array(layer.data, copy=True)  # a snapshot: painting may go on meanwhile
        kwargs = {
            "source": self.image_combo.currentText() or None,
            "source_id": self._image_source_id(),
            "scale": [float(v) for v in layer.scale],
            "translate": [float(v) for v in layer.translate],
            "metadata": {REVIEWED_KEY: [int(i) for i in layer.metadata.get(REVIEWED_KEY, [])]},
        }
        if wait:
            try:
                self._on_autosaved(_autosave_job(labels, layer.name, kwargs))
            except (OSError, ValueError) as err:
                self._on_autosave_error(err)
            return None
        self.autosave_worker = create_worker(_autosave_job, labels, layer.name, kwargs,
                                             _start_thread=False, _ignore_errors=True)
        self.autosave_worker.returned.connect(self._on_autosaved)
        self.autosave_worker.errored.connect(self._on_autosave_error)
        self.autosave_worker.finished.connect(self._on_autosave_finished)
        self.autosave_worker.start()
        return self.autosave_worker

    def _on_autosaved(self, value) -> None:
        name, entry = value
        self.last_autosave = entry
        self.autosave_label.setText(f"autosaved {entry.clock}")
        self.autosave_label.setToolTip(f"{name}: {entry.path}")

    def _on_autosave_error(self, err) -> None:
        self.autosave_label.setText(f"autosave failed: {' '.join(str(err).split())}")

    def _on_autosave_finished(self) -> None:
        self.autosave_worker = None
        if self._autosave_again:
            self._autosave_again = False
            self._autosave_timer.start()

    def _fill_restore_menu(self) -> None:
        from ..autosave import list_autosaves

        self.restore_menu.clear()
        current = self.labels_combo.currentText()
        try:
            entries = list_autosaves()
        except OSError:
            entries = []
        # the chosen layer's autosaves first, then the others; newest first
        entries.sort(key=lambda e: (e.layer == current, e.time_ns), reverse=True)
        for entry in entries[:20]:
            shape = "×".join(map(str, entry.shape))
            action = self.restore_menu.addAction(f"{entry.layer}: {entry.time.replace('T', ' ')[:19]} ({shape})")
            action.triggered.connect(lambda checked=False, e=entry: self.restore_autosave(e))
        if not entries:
            self.restore_menu.addAction("no autosaves yet").setEnabled(False)

    def restore_autosave(self, entry=None):
        """Add an autosave (default: the newest of the chosen Labels layer, else the newest of
        any) as a NEW Labels layer; returns the layer (None when there is none)."""
        from ..autosave import AutosaveError, load_autosave, load_newest

        try:
            if entry is not None:
                loaded = load_autosave(entry)
            else:
                current = self.labels_combo.currentText()
                loaded = ((load_newest(current, source_id=self._image_source_id()) or load_newest(current))
                          if current else None) or load_newest()
        except (AutosaveError, OSError) as err:
            self.status.setText(f"cannot restore: {err}")
            return None
        if loaded is None:
            self.status.setText("no autosave to restore")
            return None
        labels, entry = loaded
        kwargs = {"name": f"{entry.layer} (autosave {entry.clock})",
                  "metadata": {REVIEWED_KEY: list(entry.metadata.get(REVIEWED_KEY, []))}}
        if entry.scale is not None and len(entry.scale) == labels.ndim:
            kwargs["scale"] = entry.scale
        if entry.translate is not None and len(entry.translate) == labels.ndim:
            kwargs["translate"] = entry.translate
        layer = self.viewer.add_labels(labels, **kwargs)
        self.status.setText(f"restored the autosave of {entry.layer} from {entry.time.replace('T', ' ')[:19]} "
                            f"as a new layer {layer.name!r}")
        return layer

    def flush_autosave(self) -> None:
        """Write changes the timer has not saved yet, now (napari closing or quitting)."""
        try:
            if self._autosave_timer.isActive():
                self._autosave_timer.stop()
                self.autosave_now(wait=True)
        except RuntimeError:  # the Qt side is already gone
            pass

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt API
        self._stop.set()
        self.flush_autosave()
        super().closeEvent(event)
