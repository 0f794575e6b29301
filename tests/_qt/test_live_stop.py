"""Live mode ends a request no longer in view at once (real ONNX Runtime session)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_skipseg._qt.live import DEBOUNCE_MS, FAST_DRAG_S, Stopper, debounce_ms


def test_the_wait_after_a_move_follows_the_slider():
    lo, hi = DEBOUNCE_MS
    assert debounce_ms(None) == 0  # a single step: at once
    assert debounce_ms(0.2) == 0  # moved slowly: at once (the next move stops it)
    assert debounce_ms(FAST_DRAG_S) == 0
    assert debounce_ms(0.01) == lo  # dragged fast: nothing starts before it rests
    assert debounce_ms(0.05) == 65  # 1.3 times the interval between moves
    assert debounce_ms(0.099) <= hi


def test_stopping_ends_the_network_call_of_an_onnx_runner(model_home):
    from napari_skipseg.inference import backends as bk
    from napari_skipseg.model.store import load_model

    if not bk.ort_available():
        pytest.skip("onnxruntime is not installed")
    model = load_model(str(model_home / "models" / "tiny"))
    runner = bk.OrtRunner(model)
    x = np.zeros((1, 1, 32, 32), np.float32)
    assert runner(x).shape[:2] == (1, model.config.num_classes)
    stopper = Stopper()
    stopper.attach(runner)
    stopper.stop()
    with pytest.raises(Exception, match="terminate"):
        runner(x)
    late = bk.OrtRunner(model)  # stopped before the engine handed its runner over
    stopped = Stopper()
    stopped.stop()
    stopped.attach(late)
    with pytest.raises(Exception, match="terminate"):
        late(x)
    flipped = bk.FlipRunner(bk.OrtRunner(model), 2)  # flips: the inner runner stops
    flipped.stop()
    with pytest.raises(Exception, match="terminate"):
        flipped(x)


def test_a_stopped_live_request_returns_nothing(model_home):
    """The job itself: stopped before its network ran, it returns None (nothing to show)."""
    from napari_skipseg._qt.live import live_job

    stopper = Stopper()
    stopper.stop()
    gen = live_job(("k",), "tiny", None, {}, _context(model_home), (0, 0, 0), stopper)
    with pytest.raises(StopIteration) as done:
        next(gen)
    assert done.value.value is None


def _context(model_home):
    """The LiveContext of a 2 x 32 x 32 stack (key ``("k",)``), built by the real code."""
    import napari.layers

    from napari_skipseg._qt.live import build_context
    from napari_skipseg.layers import source_from_layer

    layer = napari.layers.Image(np.random.default_rng(0).random((2, 32, 32), dtype=np.float32), name="s")
    source = source_from_layer(layer)
    return build_context(("k",), str(model_home / "models" / "tiny"), source,
                         {"axes": "ZYX", "output": "instances", "flips": False})
