"""Longest main-thread stall while the Segment widget segments a stack (goal: <= 150 ms).

A QTimer ticks every 5 ms on the GUI thread; the longest gap between ticks while the job
runs is how long the viewer was frozen. Opening the widget starts loading torch in a
background thread (napari_skipseg._preload); the stalls while that runs are reported
separately (``preload_*``). ``end_max_stall_ms``: the longest stall from half a second
before the job returned to the end; ``first_slice_shown_s``: from pressing Segment to the
slice in view drawn with its labels (in-memory images fill their layers as they go; with
test-time flips a first look without them comes first), ``first_full_quality_shown_s``: the
same at full quality. Opening the widget also prepares the run once the settings rest
(model, diameter estimate, backend: ``warm_steps``); the benchmark waits for that, as a user
who looks at the widget for a few seconds would (``--cold``: it does not). Run under a display (or xvfb-run), on an otherwise idle machine
(on a loaded one the OS deschedules the GUI thread and every gap grows). For scale it also
times napari adding an empty 64 x 64 Labels and Image layer in the same viewer
(``napari_floor``): a result layer cannot land faster than that.

    xvfb-run -a python benchmarks/bench_gui_stall.py [--model nuclei2d] [--slices 8]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei2d")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--output", default="instances", choices=["instances", "semantic", "probabilities"])
    parser.add_argument("--diameter", default="", help="the diameter field (default empty: the model's default, "
                        "for nuclei2d 'auto', estimated before the first slice)")
    parser.add_argument("--cold", action="store_true", help="press Segment as soon as torch is loaded, before "
                        "the widget has prepared the run (model, diameter estimate, backend)")
    args = parser.parse_args()

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_skipseg._qt.segment_widget import SegmentWidget
    from napari_skipseg._sample_data import synthetic_nuclei

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    for _ in range(10):
        app.processEvents()
    # opening the widget starts loading torch in a background thread: measure that too
    from napari_skipseg._preload import wait

    image, _ = synthetic_nuclei((args.slices, args.size, args.size), radius=9.0, seed=5)
    viewer.add_image(image, name="stack")
    for _ in range(10):
        app.processEvents()
    ticks.clear()
    t_open = time.perf_counter()
    ticks.append(t_open)
    widget = SegmentWidget(viewer)  # the constructor itself runs on the GUI thread: counted
    viewer.window.add_dock_widget(widget)
    widget.model_combo.setCurrentText(args.model)
    widget.output_combo.setCurrentText(args.output)
    widget.diameter_edit.setText(args.diameter)
    # ... and, once the settings rest, prepares the run (model, diameter "auto", backend):
    # what a user gets who looks at the widget for a few seconds before pressing Segment
    while not wait(0) or (widget.warmer.busy and not args.cold):
        app.processEvents()
        time.sleep(0.001)
    if args.cold:
        widget.warmer.stop()
    open_gaps = np.diff(ticks) * 1000 if len(ticks) > 1 else np.zeros(1)
    open_seconds = time.perf_counter() - t_open
    for _ in range(10):
        app.processEvents()
    ticks.clear()
    marks: list[tuple[float, str]] = []
    t0 = time.perf_counter()
    # time the widget's own main-thread handlers, to say which one a stall comes from
    def timed(func, name):
        def wrapper(*a, **k):
            t = time.perf_counter()
            out = func(*a, **k)
            marks.append((t, f"{name} {1000 * (time.perf_counter() - t):.0f} ms"))
            return out
        return wrapper

    for name in ("_on_progress", "_on_result", "_add_next_layer", "_on_finished"):
        setattr(widget, name, timed(getattr(widget, name), name))
    t_press = time.perf_counter()
    worker = widget.run()
    run = widget._progressive  # the progressive run (in-memory images): when the slice in view was drawn
    if run is not None:
        for name in ("on_event", "_add_next", "_redraw"):
            setattr(run, name, timed(getattr(run, name), f"progressive.{name}"))
    firsts: dict[str, float] = {}

    def on_yielded(e):
        now = time.perf_counter()
        marks.append((now, f"progress {e.done}/{e.total}"))
        for key in ("layers", "regions"):
            if key in e.info:
                firsts.setdefault(key, now - t_press)

    worker.yielded.connect(on_yielded)
    t_returned: list[float] = []
    worker.returned.connect(lambda v: marks.append((time.perf_counter(), "returned")) or t_returned.append(
        time.perf_counter()))
    while widget.worker is not None:
        app.processEvents()
        time.sleep(0.001)
    for _ in range(5):
        app.processEvents()
    seconds = time.perf_counter() - t0
    timer.stop()
    gaps = np.diff(ticks) * 1000
    end_gaps = [g for t, g in zip(ticks[1:], gaps, strict=True) if t >= t_returned[0] - 0.5] if t_returned else []
    worst = np.argsort(gaps)[::-1][:3]
    stalls = []
    for i in worst:  # what happened just before/after the longest stalls
        start, end = ticks[i], ticks[i + 1]
        near = [m for t, m in marks if start - 0.05 <= t <= end + 0.05]
        stalls.append({"ms": round(float(gaps[i]), 1), "at_s": round(start - t0, 2), "events": near[:6]})
    result = {
        "model": args.model, "stack": [args.slices, args.size, args.size], "diameter": args.diameter or "default",
        "seconds": round(seconds, 2),
        "ticks": len(ticks), "max_stall_ms": round(float(gaps.max()), 1),
        "end_max_stall_ms": round(float(max(end_gaps)), 1) if end_gaps else None,
        "first_slice_shown_s": (round(run.first_shown - t_press, 2) if run is not None and run.first_shown
                                else None),
        "first_full_quality_shown_s": (round(run.first_full - t_press, 2) if run is not None and run.first_full
                                       else None),
        "warm_steps": widget.warmer.steps, "cold": args.cold,
        "layers_event_s": round(firsts["layers"], 2) if "layers" in firsts else None,
        "first_unit_done_s": round(firsts["regions"], 2) if "regions" in firsts else None,
        "load_average": [round(v, 2) for v in __import__("os").getloadavg()],
        "p99_stall_ms": round(float(np.percentile(gaps, 99)), 1), "status": widget.status.text(),
        "preload_seconds": round(open_seconds, 2), "preload_max_stall_ms": round(float(open_gaps.max()), 1),
        "worst": stalls,
        "napari_floor": napari_floor(viewer, app),
    }
    print(json.dumps(result, indent=1))
    viewer.close()


def napari_floor(viewer, app, repeat: int = 3) -> dict:
    """What napari itself takes on the GUI thread to add an empty 64 x 64 Labels or Image
    layer (and draw it), in the same viewer: the least a new result layer can cost."""
    out = {}
    for kind, dtype in (("labels", np.uint32), ("image", np.float32)):
        times = []
        for i in range(repeat):
            t = time.perf_counter()
            layer = getattr(viewer, f"add_{kind}")(np.zeros((64, 64), dtype), name=f"floor {kind} {i}")
            app.processEvents()
            times.append((time.perf_counter() - t) * 1000)
            viewer.layers.remove(layer)
            app.processEvents()
        out[f"add_empty_{kind}_ms"] = {"min": round(min(times), 1), "median": round(float(np.median(times)), 1)}
    return out


if __name__ == "__main__":
    main()
