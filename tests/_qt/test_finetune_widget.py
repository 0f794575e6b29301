"""The Fine-tune dock widget in a real napari viewer (under Xvfb)."""

from __future__ import annotations

import os
import re
import sys
import threading
import time

import numpy as np
import pytest

from napari_skipseg._qt.finetune_widget import MARK_KEY, REVIEWED_KEY, FinetuneWidget
from napari_skipseg._qt.segment_widget import SegmentWidget
from napari_skipseg.autosave import list_autosaves, load_autosave, load_newest, newest_autosave
from napari_skipseg.training.finetune import FinetuneOptions


def _stack(n=3, shape=(48, 48)):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(10, 2, (n, *shape)).astype(np.float32)
    labels = np.zeros((n, *shape), np.int32)
    for z in range(n):
        for i in range(1, 6):
            cy, cx = rng.integers(8, shape[0] - 8, 2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 25
            labels[z][disc & (labels[z] == 0)] = i
            image[z][disc] += 50
    return image, labels


@pytest.fixture
def setup(make_napari_viewer, model_home, qtbot):
    from napari_skipseg.model.store import set_active_model

    set_active_model("tiny", persist=False)
    viewer = make_napari_viewer()
    image, labels = _stack()
    viewer.add_image(image, name="img")
    layer = viewer.add_labels(labels.copy(), name="corrected")
    seg = SegmentWidget(viewer)
    ft = FinetuneWidget(viewer)
    qtbot.addWidget(seg)
    qtbot.addWidget(ft)
    ft.image_combo.setCurrentText("img")
    ft.labels_combo.setCurrentText("corrected")
    return viewer, seg, ft, layer, labels


def _opts(**kw):
    base = {"steps": 3, "val_every": 3, "patch": [32, 32], "batch_size": 2, "lr": 1e-3}
    base.update(kw)
    return FinetuneOptions(**base)


def _press_mark_key(viewer):
    from napari.utils.key_bindings import KeyBinding

    viewer.keymap[KeyBinding.from_str(MARK_KEY.upper())](viewer)


def test_mark_reviewed_by_key_and_button(setup):
    viewer, _, ft, layer, _ = setup
    assert ft.model_combo.currentText() == "tiny"
    assert "0 of 3" in ft.reviewed_label.text()
    viewer.dims.set_current_step(0, 1)
    _press_mark_key(viewer)
    assert ft.reviewed() == [1]
    viewer.dims.set_current_step(0, 2)
    ft.mark_button.click()
    assert ft.reviewed() == [1, 2] and layer.metadata[REVIEWED_KEY] == [1, 2]
    assert "2 of 3" in ft.reviewed_label.text()
    ft.unmark_button.click()
    assert ft.reviewed() == [1]


def test_start_needs_reviewed_slices(setup):
    _, _, ft, _, _ = setup
    assert ft.start(_opts()) is None
    assert "reviewed" in ft.status.text()


def test_finetune_plots_saves_lists_and_resegments(setup, qtbot):
    viewer, seg, ft, layer, labels = setup
    original = layer.data.tobytes()
    for z in (0, 1, 2):
        viewer.dims.set_current_step(0, z)
        ft.mark_reviewed()
    draws = ft.plot.draws
    # before any fine-tune the list cannot compare: it says so
    assert "not comparable" in ft.versions_label.text()
    assert not ft.plot_section.is_expanded()
    worker = ft.start(_opts())
    assert ft.plot_section.is_expanded()  # the curves unfold when training starts
    assert worker is not None and not ft.start_button.isEnabled() and ft.stop_button.isEnabled()
    qtbot.waitUntil(lambda: ft.worker is None, timeout=60_000)
    result = ft.last_result
    assert result is not None, ft.status.text()
    assert ft.plot.loss and ft.plot.val and ft.plot.draws > draws
    assert result.path.name == "tiny-ft-1" and (result.path / "labels.npz").is_file()
    assert "saved tiny-ft-1" in ft.status.text()
    assert layer.data.tobytes() == original  # the user's labels are untouched, byte for byte
    versions = [ft.versions.item(i).data(256) for i in range(ft.versions.count())]
    assert versions == ["tiny", "tiny-ft-1"]
    # every version scored on the same held-out data (one held-out slice), and the list says which
    compared = result.model.config.card["compared"]
    assert ft.versions_label.text() == f"held-out score of each on {compared['on']}"
    assert compared["on"] == "corrected: held out 1 of 3 reviewed slices: corrected[1]"
    texts = [ft.versions.item(i).text() for i in range(ft.versions.count())]
    for text, name in zip(texts, versions, strict=True):
        assert f"{name}  f1@0.5 {compared['scores'][name]['f1@0.5']:.3f}" in text
    assert compared["scores"]["tiny"]["f1@0.5"] == round(result.before["f1@0.5"], 4)
    # the gain is split into re-tuning the post-processing and training, in the status and the plot
    assert re.search(r"re-tuning the post-processing [+-]\d\.\d{3} \(starting weights: \d\.\d{3}\), "
                     r"training [+-]\d\.\d{3}", ft.status.text()), ft.status.text()
    assert ft.plot.retuned == result.retuned["score"]
    # the Segment widget lists the new version (refresh, or the active-model notice)
    seg.refresh_button.click()
    assert "tiny-ft-1" in [seg.model_combo.itemText(i) for i in range(seg.model_combo.count())]
    # one click makes any version active, in both widgets
    ft.versions.setCurrentRow(1)
    ft.activate_button.click()
    from napari_skipseg.model.store import active_model

    assert active_model() == "tiny-ft-1"
    assert seg.model_combo.currentText() == "tiny-ft-1" and ft.model_combo.currentText() == "tiny-ft-1"
    ft.versions.setCurrentRow(0)
    ft.activate_button.click()
    assert active_model() == "tiny" and seg.model_combo.currentText() == "tiny"
    # re-segment with the new model into a new layer
    assert ft.resegment_button.isEnabled()
    n = len(viewer.layers)
    ft.resegment_button.click()
    qtbot.waitUntil(lambda: ft.seg_worker is None, timeout=60_000)
    assert len(viewer.layers) == n + 1
    new = viewer.layers[-1]
    assert new.name == "img [tiny-ft-1] instances" and new.data.shape == labels.shape
    assert layer.data.tobytes() == original


def test_stop_keeps_the_best_so_far(setup, qtbot):
    viewer, _, ft, layer, _ = setup
    original = layer.data.tobytes()
    ft.mark_reviewed()
    ft.start(_opts(steps=100_000, val_every=2))
    qtbot.waitUntil(lambda: len(ft.plot.val) >= 1, timeout=60_000)
    ft.stop_button.click()
    qtbot.waitUntil(lambda: ft.worker is None, timeout=60_000)
    result = ft.last_result
    assert result is not None and result.stopped and result.steps < 100_000
    assert "stopped" in ft.status.text() and result.path.is_dir()
    assert layer.data.tobytes() == original


def test_error_is_reported(setup, qtbot):
    viewer, _, ft, _, _ = setup
    viewer.add_labels(np.zeros((3, 48, 48), np.int32), name="empty")
    ft.labels_combo.setCurrentText("empty")
    ft.mark_reviewed()
    ft.start(_opts())
    qtbot.waitUntil(lambda: ft.worker is None, timeout=60_000)
    assert "failed" in ft.status.text() and ft.last_result is None


# -- Cancel: at any moment, nothing changes ------------------------------------------------------


def _snapshot(viewer, ft, model_home):
    """What a cancelled job must leave exactly as it was."""
    from napari_skipseg.model.store import active_model, list_versions

    models = model_home / "models"
    active_file = model_home / "active.json"
    return {
        "store": sorted(os.listdir(models)),
        "store_files": sorted(str(p.relative_to(models)) for p in models.rglob("*")),
        "versions": [e.name for e in list_versions("tiny")],
        "listed": [ft.versions.item(i).text() for i in range(ft.versions.count())],
        "active": active_model(),
        "active_file": active_file.read_text() if active_file.exists() else None,
        "layers": [(id(layer), layer.name, id(layer.data)) for layer in viewer.layers],
    }


def _cancel_at(moment, ft, qtbot, monkeypatch):
    """Start a fine-tune and cancel it at ``moment``; return when the job has ended."""
    import napari_skipseg.training.finetune as finetune_mod
    import napari_skipseg.training.loop as loop_mod
    from napari_skipseg.model import store

    def cancel_in_job(func, when=lambda: True):
        """Wrap ``func`` so that the cancel comes (as the button sets it) while it runs."""

        def wrapper(*args, **kwargs):
            if when():
                ft._cancel.set()
            return func(*args, **kwargs)

        return wrapper

    saved = threading.Event()
    if moment == "validation":  # during the first held-out validation inside training
        def in_validate() -> bool:  # score() called by validate(), directly or via score_seeds()
            frame = sys._getframe(2)
            for _ in range(3):
                if frame is None:
                    return False
                if frame.f_code.co_name == "validate":
                    return True
                frame = frame.f_back
            return False

        monkeypatch.setattr(loop_mod, "score", cancel_in_job(loop_mod.score, when=in_validate))
    elif moment == "tuning":
        monkeypatch.setattr(loop_mod, "tune_postprocess", cancel_in_job(loop_mod.tune_postprocess))
    elif moment == "saving":  # as the new version is being written
        monkeypatch.setattr(store, "save_model", cancel_in_job(store.save_model))
    elif moment == "saved":  # the job has saved and returned; the widget has not seen it yet
        real = finetune_mod.save_version

        def save_version(*args, **kwargs):
            out = real(*args, **kwargs)
            saved.set()
            return out

        monkeypatch.setattr(finetune_mod, "save_version", save_version)
    long = moment in ("training", "start")
    worker = ft.start(_opts(steps=100_000 if long else 4, val_every=2))
    assert worker is not None and ft.cancel_button.isEnabled() and ft.stop_button.isEnabled()
    if moment == "start":
        ft.cancel_button.click()
    elif moment == "training":
        qtbot.waitUntil(lambda: len(ft.plot.loss) >= 3, timeout=60_000)
        ft.cancel_button.click()
    elif moment == "saved":
        assert saved.wait(60)  # no Qt events are handled meanwhile
        time.sleep(0.3)
        assert ft.cancel_button.isEnabled()
        ft.cancel_button.click()
    if ft._cancel.is_set():
        assert ft.status.text() == "cancelling ..."
        assert not ft.cancel_button.isEnabled() and not ft.stop_button.isEnabled()
    qtbot.waitUntil(lambda: ft.worker is None, timeout=60_000)
    assert ft._cancel.is_set(), f"the cancel hook did not fire: {ft.status.text()}"


@pytest.mark.parametrize("moment", ["start", "training", "validation", "tuning", "saving", "saved"])
def test_cancel_at_any_moment_changes_nothing(setup, qtbot, monkeypatch, model_home, moment):
    viewer, _, ft, layer, _ = setup
    for z in (0, 1, 2):
        viewer.dims.set_current_step(0, z)
        ft.mark_reviewed()
    image = viewer.layers["img"]
    labels_before, image_before = layer.data.copy(), image.data.copy()
    metadata_before = dict(layer.metadata)
    before = _snapshot(viewer, ft, model_home)
    assert before["versions"] == ["tiny"] and before["active"] == "tiny"

    _cancel_at(moment, ft, qtbot, monkeypatch)
    monkeypatch.undo()  # the hooks go; the store's home stays
    monkeypatch.setenv("SKIPSEG_HOME", str(model_home))

    assert ft.status.text() == "Cancelled: nothing changed"
    assert _snapshot(viewer, ft, model_home) == before
    assert viewer.layers["corrected"] is layer and viewer.layers["img"] is image
    assert np.array_equal(layer.data, labels_before) and layer.data.dtype == labels_before.dtype
    assert np.array_equal(image.data, image_before) and layer.metadata == metadata_before
    assert ft.last_result is None and not ft.resegment_button.isEnabled()
    assert ft.start_button.isEnabled() and not ft.stop_button.isEnabled() and not ft.cancel_button.isEnabled()
    assert ft.progress.value() <= 0 and not ft.plot.loss
    # the widget starts a new job afterwards; its version takes the first free number
    assert ft.start(_opts(steps=2, val_every=2)) is not None
    qtbot.waitUntil(lambda: ft.worker is None, timeout=60_000)
    assert ft.last_result is not None and ft.last_result.path.name == "tiny-ft-1", ft.status.text()
    assert "saved tiny-ft-1" in ft.status.text()
    assert np.array_equal(layer.data, labels_before) and viewer.layers["corrected"] is layer


def test_cancel_after_stop_still_changes_nothing(setup, qtbot, model_home):
    """Stop first (the job goes on to tune and save the best so far), then Cancel."""
    viewer, _, ft, layer, _ = setup
    ft.mark_reviewed()
    before = _snapshot(viewer, ft, model_home)
    labels_before = layer.data.copy()
    ft.start(_opts(steps=100_000, val_every=2))
    qtbot.waitUntil(lambda: len(ft.plot.loss) >= 2, timeout=60_000)
    ft.stop_button.click()
    assert ft.cancel_button.isEnabled()
    ft.cancel_button.click()
    qtbot.waitUntil(lambda: ft.worker is None, timeout=60_000)
    assert ft.status.text() == "Cancelled: nothing changed"
    assert _snapshot(viewer, ft, model_home) == before and np.array_equal(layer.data, labels_before)


# -- autosave of the corrected labels ------------------------------------------------------------


def _wait_autosave(ft, qtbot, count_before):
    qtbot.waitUntil(lambda: ft.autosave_worker is None and ft.last_autosave is not None
                    and len(list_autosaves("corrected")) > count_before, timeout=20_000)


def test_painting_autosaves_and_restore_adds_a_new_layer(setup, qtbot, model_home):
    viewer, _, ft, layer, labels = setup
    ft._autosave_timer.setInterval(50)
    assert ft._watched is layer and list_autosaves() == []
    layer.brush_size = 5
    layer.paint((1, 20, 20), 7)  # a brush stroke's worth of paint, as the GUI does it
    _wait_autosave(ft, qtbot, 0)
    assert re.fullmatch(r"autosaved \d\d:\d\d:\d\d", ft.autosave_label.text())
    entry = newest_autosave("corrected")
    assert entry.path.parent == model_home / "autosave" and entry == ft.last_autosave
    assert entry.source == "img" and entry.shape == layer.data.shape and entry.dtype == str(layer.data.dtype)
    assert entry.scale == tuple(layer.scale)
    saved, _ = load_autosave(entry)
    assert np.array_equal(saved, layer.data) and not np.array_equal(saved, labels)
    # an edit through the data API, then undo: each autosaved
    layer.data_setitem((np.array([2, 2]), np.array([3, 4]), np.array([3, 3])), 9)
    _wait_autosave(ft, qtbot, 1)
    assert np.array_equal(load_newest("corrected")[0], layer.data)
    painted = layer.data.copy()
    layer.undo()
    assert not np.array_equal(layer.data, painted)
    _wait_autosave(ft, qtbot, 2)
    assert np.array_equal(load_newest("corrected")[0], layer.data)
    # restore: a NEW layer with the newest autosave; the user's layer is not touched
    user_data = layer.data.copy()
    n = len(viewer.layers)
    restored = ft.restore_autosave()
    assert len(viewer.layers) == n + 1 and viewer.layers[-1] is restored and restored is not layer
    assert restored.name.startswith("corrected (autosave ") and restored.data is not layer.data
    assert np.array_equal(restored.data, layer.data) and np.array_equal(layer.data, user_data)
    assert viewer.layers["corrected"] is layer and ft.labels_combo.currentText() == "corrected"
    # the menu lists the autosaves, newest first, and restores the one chosen
    ft._fill_restore_menu()
    actions = ft.restore_menu.actions()
    assert len(actions) == 3 and all(a.text().startswith("corrected: ") for a in actions)
    actions[-1].trigger()  # the oldest: the first stroke
    assert len(viewer.layers) == n + 2 and np.array_equal(viewer.layers[-1].data, saved)
    assert np.array_equal(layer.data, user_data)


def test_autosave_follows_the_chosen_layer_and_flushes_on_close(setup, qtbot, model_home):
    viewer, _, ft, layer, _ = setup
    other = viewer.add_labels(np.zeros((3, 48, 48), np.int32), name="other")
    assert ft._watched is layer  # adding a layer does not change the choice
    layer.paint((0, 10, 10), 3)  # timer running (3 s); switching saves it at once
    ft.labels_combo.setCurrentText("other")
    assert ft._watched is other
    qtbot.waitUntil(lambda: ft.autosave_worker is None and len(list_autosaves("corrected")) == 1, timeout=20_000)
    assert np.array_equal(load_newest("corrected")[0], layer.data)
    layer.paint((0, 30, 30), 4)  # no longer watched: not autosaved
    qtbot.wait(100)
    assert not ft._autosave_timer.isActive()
    other.paint((2, 20, 20), 5)
    assert ft._autosave_timer.isActive()
    ft.close()  # closing saves what the timer had not saved yet, right away
    assert not ft._autosave_timer.isActive()
    qtbot.waitUntil(lambda: len(list_autosaves("other")) == 1, timeout=20_000)
    assert np.array_equal(load_newest("other")[0], other.data)
    assert len(list_autosaves("corrected")) == 1
    # nothing to restore for a layer without autosaves falls back to the newest of any layer
    ft2 = FinetuneWidget(viewer)
    qtbot.addWidget(ft2)
    viewer.add_labels(np.zeros((3, 48, 48), np.int32), name="fresh")
    ft2.labels_combo.setCurrentText("fresh")
    restored = ft2.restore_autosave()
    assert restored.name.startswith("other (autosave ") and np.array_equal(restored.data, other.data)


def test_start_from_follows_the_image_without_an_active_model(make_napari_viewer, model_home, qtbot):
    """No active model: 'start from' is the bundled default for the chosen image (3D nuclei
    for a volume, 2D nuclei for a plane), not the first model in the list, and no version is
    marked active. Once a model is active, it is the one shown."""
    from conftest import make_tiny_model

    from napari_skipseg.model.store import active_model, save_model, set_active_model

    save_model(make_tiny_model("nuclei3d", spatial_dims=3), model_home / "models" / "nuclei3d")
    assert active_model() is None
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((32, 32), np.float32), name="plane")
    viewer.add_image(np.zeros((8, 32, 32), np.float32), name="volume")
    ft = FinetuneWidget(viewer)
    qtbot.addWidget(ft)
    ft.image_combo.setCurrentText("plane")
    assert ft.model_combo.currentText() == "nuclei2d"
    ft.image_combo.setCurrentText("volume")
    assert ft.model_combo.currentText() == "nuclei3d"
    assert not any(ft.versions.item(i).text().startswith("●") for i in range(ft.versions.count()))
    set_active_model("tiny", persist=False)
    ft.image_combo.setCurrentText("plane")
    assert ft.model_combo.currentText() == "tiny"
    assert ft.versions.item(0).text().startswith("● tiny")


def test_new_classes_make_a_new_head_in_the_widget(setup, qtbot):
    """'new classes': the painted ids are classes (here 0 background, 1 and 2 two structures),
    the fine-tuned version predicts them as a semantic map; every weight trains at 3e-3.
    Instance ids painted by mistake (over 32) are refused with a message."""
    viewer, _, ft, layer, labels = setup
    classes = np.where(labels > 0, 1 + (labels % 2), 0).astype(np.int32)
    layer.data = classes
    for z in (0, 1, 2):
        viewer.dims.set_current_step(0, z)
        ft.mark_reviewed()
    ft.classes_check.setChecked(True)
    assert ft.train_combo.currentText() == "all" and ft.lr_spin.value() == pytest.approx(3e-3)
    opts = ft.options()
    assert opts.num_classes == 3 and opts.new_head and opts.train == "all"  # as many classes as tiny's
    ft.start(FinetuneOptions(**{**_opts().__dict__, "num_classes": opts.num_classes, "new_head": True,
                                "train": "all"}))
    qtbot.waitUntil(lambda: ft.worker is None, timeout=60_000)
    result = ft.last_result
    assert result is not None, ft.status.text()
    from napari_skipseg.model.store import load_model

    cfg = load_model(result.path).config
    assert cfg.num_classes == 3 and cfg.output == "semantic"
    assert layer.data.tobytes() == classes.tobytes()
    ft.resegment_button.click()
    qtbot.waitUntil(lambda: ft.seg_worker is None, timeout=60_000)
    assert viewer.layers[-1].name.endswith("semantic") and viewer.layers[-1].data.max() <= 2
    # unticking goes back to the defaults for the model's own classes
    ft.classes_check.setChecked(False)
    assert ft.train_combo.currentText() == "decoder+last" and ft.lr_spin.value() == pytest.approx(3e-4)
    ft.classes_check.setChecked(True)
    big = classes.copy()
    big[0, :3, :3] = 200
    layer.data = big
    assert ft.start() is None and "ids up to 200" in ft.status.text()


def test_fits_under_segment_on_a_1280_x_800_screen(make_napari_viewer, model_home, qtbot):
    """Docked under Segment in a 1280 x 800 main window: the window stays 800 px tall (both
    widgets scroll), Fine-tune gets a fair share of the height, and every control of it can
    be scrolled into view inside the window."""
    from qtpy.QtCore import QRect
    from qtpy.QtWidgets import QMainWindow

    viewer = make_napari_viewer(show=True)
    image, labels = _stack()
    viewer.add_image(image, name="img")
    viewer.add_labels(labels, name="corrected")
    viewer.window.add_plugin_dock_widget("napari-skipseg", "Segment")
    _, ft = viewer.window.add_plugin_dock_widget("napari-skipseg", "Fine-tune")
    main = ft.window()
    assert isinstance(main, QMainWindow)
    main.setGeometry(0, 0, 1280, 800)
    # once shown, Fine-tune takes a fair share of the height, not the crumbs Segment leaves
    qtbot.waitUntil(lambda: ft.isVisible() and ft.height() >= 250, timeout=5000)
    assert main.height() <= 800 and main.minimumSizeHint().height() <= 800
    assert ft.minimumSizeHint().height() < 200  # was 824 px before it scrolled
    # the training options are folded under a digest that follows them; the title unfolds them
    assert not ft.options_section.is_expanded() and not ft.steps_spin.isVisible()
    ft.steps_spin.setValue(120)
    assert ft.options_section.summary.text() == "120 steps, 180 s, decoder+last, lr 0.0003"
    assert ft.options_section.summary.isVisible()
    ft.options_section.header.click()
    assert ft.steps_spin.isVisible() and not ft.options_section.summary.isVisible()
    ft.options_section.header.click()
    window_rect = QRect(main.mapToGlobal(main.rect().topLeft()), main.size())
    for widget in (ft.image_combo, ft.labels_combo, ft.mark_button, ft.steps_spin, ft.device_combo,
                   ft.start_button, ft.cancel_button, ft.plot, ft.status, ft.resegment_button, ft.versions,
                   ft.activate_button, ft.refresh_button):
        ft.reveal(widget)
        qtbot.wait(20)
        top_left = widget.mapToGlobal(widget.rect().topLeft())
        bottom_right = widget.mapToGlobal(widget.rect().bottomRight())
        assert widget.isVisible() and not widget.visibleRegion().isEmpty(), widget
        assert window_rect.contains(top_left) and window_rect.contains(bottom_right), widget
    assert ft.options_section.is_expanded()  # revealing a folded control unfolds its section
    assert main.height() <= 800


def test_the_wheel_scrolls_the_panel_not_the_box_under_the_pointer(setup, qtbot):
    """In the scroll area the wheel over an unfocused combo box scrolls the panel; once the
    box has the focus (clicked), the wheel changes it as usual."""
    from qtpy.QtCore import QPoint, QPointF, Qt
    from qtpy.QtGui import QWheelEvent
    from qtpy.QtWidgets import QApplication

    viewer, seg, ft, layer, labels = setup
    ft.options_section.set_expanded(True)
    ft.resize(380, 200)
    ft.show()
    qtbot.waitUntil(ft.isVisible)
    ft.reveal(ft.train_combo)
    bar = ft.scroll.verticalScrollBar()
    assert bar.maximum() > 0

    def wheel(widget):
        centre = QPointF(widget.rect().center())
        event = QWheelEvent(centre, QPointF(widget.mapToGlobal(widget.rect().center())), QPoint(0, 0),
                            QPoint(0, -120), Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                            Qt.ScrollPhase.NoScrollPhase, False)
        QApplication.sendEvent(widget, event)

    before_text, before_pos = ft.train_combo.currentText(), bar.value()
    wheel(ft.train_combo)
    assert ft.train_combo.currentText() == before_text
    assert bar.value() > before_pos  # the panel scrolled down instead
    ft.activateWindow()
    qtbot.waitUntil(ft.isActiveWindow)
    ft.train_combo.setFocus(Qt.FocusReason.MouseFocusReason)
    qtbot.waitUntil(ft.train_combo.hasFocus)
    wheel(ft.train_combo)
    assert ft.train_combo.currentText() != before_text


def test_score_all_scores_every_version_on_the_chosen_labels(setup, qtbot):
    """A version fine-tuned elsewhere lists scores on its own held-out data; *Score all*
    scores every version on the chosen labels' held-out slice instead, and says so."""
    from napari_skipseg.inference.engine import run
    from napari_skipseg.model.store import list_versions
    from napari_skipseg.training.finetune import (
        Annotated,
        run_finetune,
        save_version,
        score_versions,
    )

    viewer, seg, ft, layer, labels = setup
    image, other = _stack(2, (48, 48))
    elsewhere = [Annotated(image, other, None, name="elsewhere")]
    save_version(run_finetune("tiny", elsewhere, _opts(), device="cpu"), elsewhere)
    ft.refresh_models()
    assert ft.versions_label.text().startswith("held-out score of each on elsewhere: ")
    for z in (0, 1, 2):
        viewer.dims.set_current_step(0, z)
        ft.mark_reviewed()
    worker = ft.score_all()
    assert worker is not None and not ft.score_button.isEnabled()
    qtbot.waitUntil(lambda: ft.score_worker is None, timeout=60_000)
    expected = run(score_versions([e.path for e in list_versions("tiny")], ft.training_data()))
    assert ft.versions_label.text() == f"held-out score of each on {expected['on']}"
    assert expected["on"] == "corrected: held out 1 of 3 reviewed slices: corrected[1]"
    texts = [ft.versions.item(i).text() for i in range(ft.versions.count())]
    for text, name in zip(texts, ["tiny", "tiny-ft-1"], strict=True):
        assert f"{name}  f1@0.5 {expected['scores'][name]['f1@0.5']:.3f}" in text
    assert "scored 2 version(s) on corrected" in ft.status.text() and ft.score_button.isEnabled()
