"""The Segment widget with hostile model files, cancels at every moment, failing jobs and odd
layers: the viewer keeps working, nothing changes unasked, nothing in a pickle runs."""

from __future__ import annotations

import numpy as np
import pytest
from hostile import evil_checkpoint

import napari_skipseg.inference.engine as engine
from napari_skipseg.model.store import WEIGHTS_FILE, save_model


@pytest.fixture
def errors(monkeypatch):
    """Error notifications shown (napari.utils.notifications.show_error calls)."""
    import napari.utils.notifications as notifications

    shown: list[str] = []
    monkeypatch.setattr(notifications, "show_error", lambda message: shown.append(str(message)))
    return shown


def _wait_done(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: w.worker is None, timeout=timeout)


def _models(w):
    return [w.model_combo.itemText(i) for i in range(w.model_combo.count())]


# --- model files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_widget_refuses_pickled_models(widget, qtbot, tmp_path, errors, monkeypatch, kind):
    viewer, w = widget
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker, kind)
    w.model_combo.setCurrentText("tiny")
    models = _models(w)
    # given as a path
    assert w.use_model_path(evil) is False
    assert "pickled checkpoints are not loaded" in w.status.text()
    assert errors and "pickled checkpoints are not loaded" in errors[-1]
    # selected in the file dialog, also without a telling suffix
    disguised = tmp_path / "weights"
    disguised.write_bytes(evil.read_bytes())
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getOpenFileName", staticmethod(lambda *a, **k: (str(disguised), "")))
    w.browse_button.click()
    assert "pickled checkpoints are not loaded" in errors[-1]
    assert _models(w) == models and w.model_combo.currentText() == "tiny"
    # a pickle posing as the weights of a model folder: the job fails cleanly when it loads
    folder = save_model(_tiny_model(), tmp_path / "posing")
    (folder / WEIGHTS_FILE).write_bytes(evil.read_bytes())
    assert w.use_model_path(folder) is True
    viewer.add_image(np.zeros((32, 32), np.float32), name="img")
    w.run()
    _wait_done(qtbot, w)
    assert "damaged or not a safetensors file" in errors[-1]
    assert [layer.name for layer in viewer.layers] == ["img"]
    assert not marker.exists()


def _tiny_model(name="tiny", seed=0):
    import torch

    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.unet import SkipUNet

    torch.manual_seed(seed)
    return SkipUNet(ModelConfig(name=name, base_channels=4, depth=2, tile=[64, 64])).eval()


def test_widget_uses_a_model_folder(widget, qtbot, tmp_path, monkeypatch):
    viewer, w = widget
    folder = save_model(_tiny_model("outside"), tmp_path / "outside")
    from qtpy.QtWidgets import QFileDialog

    monkeypatch.setattr(QFileDialog, "getOpenFileName",
                        staticmethod(lambda *a, **k: (str(folder / "config.json"), "")))
    w.browse_button.click()
    assert w.model_combo.currentText() == "outside"
    w.output_combo.setCurrentText("semantic")
    viewer.add_image(np.random.default_rng(0).random((40, 40)), name="img")
    w.run()
    _wait_done(qtbot, w)
    assert "img [outside] semantic" in viewer.layers
    w.refresh_models()
    assert "outside" in _models(w)  # kept across refreshes


# --- cancelling -----------------------------------------------------------------------------------------


def _snapshot(viewer, w):
    return {
        "layers": [(layer.name, id(layer), type(layer).__name__) for layer in viewer.layers],
        "data": [np.array(layer.data, copy=True) for layer in viewer.layers],
        "selected": {layer.name for layer in viewer.layers.selection},
        "active": getattr(viewer.layers.selection.active, "name", None),
        "model": w.model_combo.currentText(),
        "models": _models(w),
        "image": w.layer_combo.currentText(),
    }


def _same(a, b):
    assert a["layers"] == b["layers"]
    for x, y in zip(a["data"], b["data"], strict=True):
        np.testing.assert_array_equal(x, y)
    assert {k: v for k, v in a.items() if k not in ("data",)} == {k: v for k, v in b.items() if k not in ("data",)}


@pytest.mark.parametrize("when", ["at_once", "first_event", "second_event", "middle", "last_tile", "done_event"])
def test_cancel_at_any_moment_changes_nothing(widget, qtbot, when):
    viewer, w = widget
    rng = np.random.default_rng(1)
    viewer.add_labels(np.zeros((4, 48, 48), np.uint8), name="my labels")
    viewer.add_image(rng.random((4, 48, 48), dtype=np.float32), name="stack")
    viewer.layers.selection.active = viewer.layers["my labels"]
    w.layer_combo.setCurrentText("stack")
    w.model_combo.setCurrentText("tiny")
    w.output_combo.setCurrentText("semantic")
    w.tile_spin.setValue(32)  # 4 tiles a slice, 16 in all, 4 a batch: 6 progress events
    before = _snapshot(viewer, w)
    events = []

    def on_event(event):
        events.append(event)
        n, total = len(events), event.total
        hit = {
            "first_event": n == 1,
            "second_event": n == 2,
            "middle": event.done >= total // 2 and not any(e.done >= total // 2 for e in events[:-1]),
            "last_tile": 0 < total - event.done <= 4 and event.message != "done",
            "done_event": event.message == "done",
        }.get(when, False)
        if hit:
            w.cancel()

    worker = w.run()
    worker.yielded.connect(on_event)
    if when == "at_once":
        w.cancel()
    _wait_done(qtbot, w)
    qtbot.wait(50)  # nothing arrives late either
    _same(before, _snapshot(viewer, w))
    assert "cancelled; no layer was changed" in w.status.text()
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()
    if when == "middle":  # and the next job runs normally
        w.run()
        _wait_done(qtbot, w)
        assert "stack [tiny] semantic" in viewer.layers


def test_cancel_after_the_result_was_computed_drops_it(widget, qtbot, monkeypatch):
    """Cancel clicked while the finished result waits in the event queue: it is not added."""
    import threading
    import time

    import napari_skipseg._qt.segment_widget as sw

    viewer, w = widget
    viewer.add_image(np.random.default_rng(6).random((32, 32), dtype=np.float32), name="img")
    w.model_combo.setCurrentText("tiny")
    finished = threading.Event()
    real_job = sw.progressive_job  # the job for in-memory images (layers made as it starts)

    def job(*args, **kwargs):
        value = yield from real_job(*args, **kwargs)
        finished.set()
        return value

    monkeypatch.setattr(sw, "progressive_job", job)
    before = _snapshot(viewer, w)
    worker = w.run()
    returned = []
    worker.returned.connect(returned.append)
    assert finished.wait(60)  # the GUI thread has not processed a single event meanwhile
    time.sleep(0.5)  # the worker thread emits ``returned`` now
    w.cancel()
    _wait_done(qtbot, w)
    assert returned  # the result did arrive ...
    _same(before, _snapshot(viewer, w))  # ... and was dropped
    assert "cancelled; no layer was changed" in w.status.text()


# --- errors in jobs ----------------------------------------------------------------------------------


def test_viewer_keeps_working_after_a_crash_in_the_worker(widget, qtbot, errors, monkeypatch):
    """An unexpected exception half-way through a job (not a SegmentationError) is reported
    as a notification; no layer is added and the next job in the same widget works."""
    viewer, w = widget
    viewer.add_image(np.random.default_rng(2).random((4, 48, 48), dtype=np.float32), name="stack")
    w.model_combo.setCurrentText("tiny")
    calls = []
    real = engine.instance_labels

    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash in post-processing")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "instance_labels", crash)
    w.run()
    _wait_done(qtbot, w)
    assert "failed: simulated crash in post-processing" in w.status.text()
    assert errors == ["Segment failed: simulated crash in post-processing"]
    assert [layer.name for layer in viewer.layers] == ["stack"]
    monkeypatch.setattr(engine, "instance_labels", real)
    w.run()
    _wait_done(qtbot, w)
    assert "stack [tiny] instances" in viewer.layers
    assert "done" in w.status.text()


def test_failure_while_adding_layers_is_undone(widget, qtbot, errors, monkeypatch):
    viewer, w = widget
    viewer.add_image(np.random.default_rng(3).random((40, 40), dtype=np.float32), name="img")
    w.model_combo.setCurrentText("tiny")

    def broken_add_labels(self, *args, **kwargs):
        raise ValueError("simulated napari failure")

    monkeypatch.setattr(type(viewer), "add_labels", broken_add_labels)
    w.run()
    _wait_done(qtbot, w)
    assert [layer.name for layer in viewer.layers] == ["img"]  # the probability layer was taken back
    assert "simulated napari failure" in errors[-1]
    monkeypatch.undo()
    w.run()
    _wait_done(qtbot, w)
    assert "img [tiny] instances" in viewer.layers


@pytest.mark.parametrize(
    ("data", "ok", "match"),
    [
        (np.full((32, 32), np.nan, np.float32), True, ""),
        (np.where(np.eye(32) > 0, np.nan, 1.0).astype(np.float32), True, ""),
        (np.full((16, 24), 3.0), True, ""),
        (np.random.default_rng(4).random((1, 2000)), True, ""),
        (np.zeros((2, 1, 1, 1, 1, 8, 8), np.float32), False, "more than 5 axes"),
    ],
    ids=["all_nan", "some_nan", "constant", "strip", "7d"],
)
def test_odd_layers_segment_or_notify(widget, qtbot, errors, data, ok, match):
    viewer, w = widget
    viewer.add_image(data, name="odd")
    w.model_combo.setCurrentText("tiny")
    w.output_combo.setCurrentText("semantic")
    w.run()
    _wait_done(qtbot, w)
    if ok:
        assert viewer.layers["odd [tiny] semantic"].data.shape == data.shape
        assert not errors
    else:
        assert len(errors) == 1 and match in errors[0]
        assert [layer.name for layer in viewer.layers] == ["odd"]


@pytest.mark.parametrize("case", ["empty", "truncated", "text"])
def test_opening_a_bad_file_notifies(make_napari_viewer, tmp_path, errors, case):
    import tifffile

    viewer = make_napari_viewer()
    path = tmp_path / f"{case}.tif"
    if case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        tifffile.imwrite(path, np.random.default_rng(5).integers(0, 9, (64, 64)).astype(np.uint16))
        path.write_bytes(path.read_bytes()[:1000])
    else:
        path.write_text("not an image\n" * 10)
    assert viewer.open(path, plugin="napari-skipseg") == []
    assert len(viewer.layers) == 0
    assert len(errors) == 1 and errors[0].startswith(f"napari-skipseg cannot open {path}: ")
