"""A Segment run's first look at the slice in view, the run prepared ahead, and result
layers that wait for the end of the run when hidden (real viewer, real model)."""

from __future__ import annotations

import numpy as np
from test_progressive import _slow_slices

from napari_skipseg.inference.engine import Progress, predict, run
from napari_skipseg.model.store import load_model


def _stack(n=6, size=64, seed=3):
    return np.random.default_rng(seed).random((n, size, size), dtype=np.float32)


def _slow_labels(request, seconds=0.5):
    """Each slice's labels take ``seconds`` longer, so that what a first look wrote can be
    read before the run writes over it."""
    return _slow_slices(request, seconds)


def test_with_flips_a_first_look_without_them_comes_first_then_the_full_result(widget, qtbot, model_home,
                                                                               request):
    viewer, w = widget
    slow = _slow_labels(request)
    stack = _stack()
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 3)
    w.model_combo.setCurrentText("tiny")
    w.output_combo.setCurrentText("semantic")
    w.flips_check.setChecked(True)
    seen = []  # (kind, regions, slice 3 then, layer names then)

    def on_event(event):
        for kind in ("preview", "regions"):
            if event.info.get(kind):
                labels = viewer.layers["stack [tiny] semantic"].data
                seen.append((kind, list(event.info[kind]), np.array(labels[3]),
                             [layer.name for layer in viewer.layers]))

    worker = w.run()
    worker.yielded.connect(on_event)
    progressive = w._progressive
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    slow.undo()
    kinds = [k for k, *_ in seen]
    assert kinds[0] == "preview" and kinds.count("preview") == 1 and "regions" in kinds
    _, where, first_look, names = seen[0]
    assert [r[0] for r in where] == [3]  # the slice in view
    model = load_model(str(model_home / "models" / "tiny"))
    plain = run(predict(model, stack, output="semantic", device="cpu", flips=False))
    full = run(predict(model, stack, output="semantic", device="cpu", flips=True))
    np.testing.assert_array_equal(first_look, plain.labels[3])  # the first look: no flips
    labels = viewer.layers["stack [tiny] semantic"]
    np.testing.assert_array_equal(labels.data, full.labels)  # then the full run over it
    assert progressive.first_shown is not None and progressive.first_full is not None
    assert progressive.first_full >= progressive.first_shown
    # the hidden probabilities were added after the run, under the labels, which stay selected
    first_regions = next(n for k, _, _, n in seen if k == "regions")
    assert "stack [tiny] p(foreground)" not in first_regions
    assert [layer.name for layer in viewer.layers] == ["stack", "stack [tiny] p(foreground)",
                                                       "stack [tiny] semantic"]
    assert viewer.layers.selection.active is labels and "done" in w.status.text()


def test_without_flips_there_is_no_first_look(widget, qtbot, model_home):
    viewer, w = widget
    viewer.add_image(_stack(3, 48), name="stack")
    w.model_combo.setCurrentText("tiny")
    w.flips_check.setChecked(False)
    kinds = []
    worker = w.run()
    worker.yielded.connect(lambda e: kinds.extend(k for k in ("preview", "regions") if e.info.get(k)))
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert "preview" not in kinds and "regions" in kinds


def test_cancel_keeps_no_first_look_the_run_did_not_replace(make_napari_viewer, qtbot):
    from napari_skipseg._qt.progressive import ProgressiveRun

    viewer = make_napari_viewer()
    image = viewer.add_image(_stack(4, 16), name="stack")
    progressive = ProgressiveRun(viewer, image, "ZYX")
    labels = np.zeros((4, 16, 16), np.uint32)
    full = (slice(0, 16), slice(0, 16))
    progressive.on_event(Progress(0, 1, "result layers", {"layers": [(labels, {"name": "result"}, "labels")],
                                                         "shape": labels.shape}))
    qtbot.waitUntil(progressive.ready.is_set)  # the layer is in the viewer: the worker may go on
    assert "result" in viewer.layers
    labels[1], labels[2] = 4, 5  # first looks at slices 1 and 2
    progressive.on_event(Progress(0, 1, "first look", {"preview": [(1, *full), (2, *full)]}))
    labels[1] = 7  # the run's own result for slice 1
    progressive.on_event(Progress(1, 4, "", {"units": 4, "units_done": [(1, *full)], "regions": [(1, *full)]}))
    text = progressive.cancel(keep=True)
    assert "kept 1 of 4" in text
    assert (labels[1] == 7).all()  # done by the run: kept
    assert not labels[2].any()  # only a first look: undone
    assert viewer.layers["result (partial)"].metadata["skipseg"]["partial"]["done"] == 1


def test_the_next_run_is_prepared_while_the_user_chooses(widget, qtbot, model_home):
    from napari_skipseg._preload import loaded_model

    viewer, w = widget
    viewer.add_image(_stack(3, 48), name="stack")
    w.model_combo.setCurrentText("tiny")
    qtbot.waitUntil(lambda: not w.warmer.busy and w.warmer.steps == ["model", "scale", "backend"], timeout=60_000)
    path = str(w._models["tiny"].path)
    assert loaded_model(path) is loaded_model(path)  # loaded once, shared with the run
    warmed = w.warmer.warmed
    w.warmer.start()  # nothing changed: nothing to do
    assert w.warmer.worker is None and w.warmer.warmed == warmed
    w.overlap_spin.setValue(0.25)  # another option: prepared again
    qtbot.waitUntil(lambda: not w.warmer.busy and w.warmer.warmed != warmed, timeout=60_000)
    w.run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert "done" in w.status.text()


def test_closing_the_widget_or_quitting_stops_a_pending_warm_up(widget, qtbot, model_home):
    from qtpy.QtWidgets import QApplication

    viewer, w = widget
    viewer.add_image(_stack(), name="stack")
    w.model_combo.setCurrentText("tiny")
    assert w.warmer.timer.isActive()  # settings changed: a warm-up is waiting for them to rest
    w.close()
    assert not w.warmer.timer.isActive() and not w.warmer.pending
    w.warmer.schedule()
    QApplication.instance().aboutToQuit.emit()  # napari quitting closes no dock widget
    assert not w.warmer.timer.isActive()
