"""Segment runs whose layers appear at once and fill up, slice by slice (real viewer)."""

from __future__ import annotations

import numpy as np

from napari_skipseg.inference.engine import predict, run
from napari_skipseg.interactive import same_labels
from napari_skipseg.model.store import load_model


def _wait_done(qtbot, w, timeout=60_000):
    qtbot.waitUntil(lambda: w.worker is None, timeout=timeout)


def _stack(n=10, size=64, seed=0):
    return np.random.default_rng(seed).random((n, size, size), dtype=np.float32)


def test_layers_come_first_and_fill_from_the_slice_in_view(widget, qtbot, model_home):
    viewer, w = widget
    stack = _stack()
    viewer.add_image(stack, name="stack")
    viewer.dims.set_current_step(0, 6)
    w.model_combo.setCurrentText("tiny")
    w.output_combo.setCurrentText("semantic")
    seen = []  # (layers in the viewer, regions) at each event with finished slices
    timeline = []

    def on_event(event):
        if event.info.get("regions"):
            labels = viewer.layers["stack [tiny] semantic"]
            seen.append(([layer.name for layer in viewer.layers], list(event.info["regions"]),
                         labels.data[6].copy()))

    viewer.layers.events.inserted.connect(lambda e: timeline.append(e.value.name))
    worker = w.run()
    worker.yielded.connect(on_event)
    worker.returned.connect(lambda _: timeline.append("returned"))
    _wait_done(qtbot, w)
    assert seen, "no slice was reported before the run ended"
    # the layers were made when the run started, not when it returned
    assert timeline.index("stack [tiny] semantic") < timeline.index("returned")
    names, regions, slice6 = seen[0]
    assert names == ["stack", "stack [tiny] p(foreground)", "stack [tiny] semantic"] or \
        names == ["stack", "stack [tiny] semantic"]  # the labels are there before the run ends
    assert regions[0][0] == 6  # the slice in view first
    order = [r[0] for _, rs, _ in seen for r in rs]
    assert order[:3] == [6, 5, 7] and sorted(order) == list(range(10))
    labels = viewer.layers["stack [tiny] semantic"]
    whole = run(predict(load_model(str(model_home / "models" / "tiny")), stack, output="semantic", device="cpu",
                        keep_probabilities=True, flips=False))
    np.testing.assert_array_equal(labels.data, whole.labels)  # filled in place, as a batch run makes it
    np.testing.assert_array_equal(slice6, whole.labels[6])
    np.testing.assert_allclose(viewer.layers["stack [tiny] p(foreground)"].data,
                               whole.probabilities[1] + whole.probabilities[2], atol=1e-6)
    assert "done" in w.status.text() and viewer.layers.selection.active is labels
    assert w.last_thread is not None


def test_instances_over_a_zyx_layer_with_axes_in_file_order(widget, qtbot, model_home):
    viewer, w = widget
    stack = _stack(5, 48, seed=2)
    zfirst = np.ascontiguousarray(np.moveaxis(stack, 0, 2))  # YXZ: the engine works on Z, Y, X
    viewer.add_image(zfirst, name="yxz", scale=(0.5, 0.5, 2.0), rgb=False)
    w.model_combo.setCurrentText("tiny")
    w.axes_edit.setText("YXZ")
    w.axes_edit.editingFinished.emit()
    w.run()
    _wait_done(qtbot, w)
    labels = viewer.layers["yxz [tiny] instances"]
    assert labels.data.shape == zfirst.shape
    np.testing.assert_allclose(labels.scale, (0.5, 0.5, 2.0))
    whole = run(predict(load_model(str(model_home / "models" / "tiny")), stack, output="instances", device="cpu"))
    for z in range(5):
        assert same_labels(labels.data[:, :, z], whole.labels[z])


def _slow_slices(request, seconds=0.1):
    """Each slice's labels take ``seconds`` longer (the real post-processing, then a pause),
    so that Cancel lands while the run is under way, whatever the machine's speed. Returns
    the patch (``undo()`` ends it; so does the test's end)."""
    import time

    import pytest

    import napari_skipseg.inference.engine as engine

    real = engine.semantic_labels

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return real(*args, **kwargs)

    patch = pytest.MonkeyPatch()
    patch.setattr(engine, "semantic_labels", slow)
    request.addfinalizer(patch.undo)
    return patch


def _cancel_after_two(w, worker, regions):
    def on_event(event):
        regions.extend(event.info.get("regions", []))
        if len(regions) >= 2 and not w._cancelled:
            w.cancel()
    worker.yielded.connect(on_event)


def test_cancel_in_the_middle_keeps_the_done_slices_marked_partial(widget, qtbot, model_home, request):
    viewer, w = widget
    slow = _slow_slices(request)
    stack = _stack(30, 96, seed=1)
    viewer.add_image(stack, name="stack")
    w.model_combo.setCurrentText("tiny")
    w.output_combo.setCurrentText("semantic")
    w.cancel_choice.set_keep(True)
    regions = []
    worker = w.run()
    _cancel_after_two(w, worker, regions)
    _wait_done(qtbot, w)
    labels = viewer.layers["stack [tiny] semantic (partial)"]
    part = labels.metadata["skipseg"]["partial"]
    assert 2 <= part["done"] < part["of"] == 30
    done = sorted({r[0] for r in part["regions"]})
    assert len(done) == part["done"]
    slow.undo()
    whole = run(predict(load_model(str(model_home / "models" / "tiny")), stack, output="semantic", device="cpu"))
    for z in range(30):
        if z in done:
            np.testing.assert_array_equal(labels.data[z], whole.labels[z])
        else:
            assert not labels.data[z].any()
    assert "kept" in w.status.text() and "partial" in w.status.text()
    assert "stack [tiny] p(foreground) (partial)" in viewer.layers
    assert w.run_button.isEnabled() and not w.cancel_button.isEnabled()


def test_cancel_in_the_middle_can_remove_the_results(widget, qtbot, request):
    viewer, w = widget
    _slow_slices(request)
    w.output_combo.setCurrentText("semantic")
    viewer.add_image(_stack(30, 96, seed=1), name="stack")
    w.model_combo.setCurrentText("tiny")
    assert not w.cancel_choice.keep  # the default: cancel changes nothing
    regions = []
    worker = w.run()
    _cancel_after_two(w, worker, regions)
    _wait_done(qtbot, w)
    assert [layer.name for layer in viewer.layers] == ["stack"]
    assert "cancelled" in w.status.text()
