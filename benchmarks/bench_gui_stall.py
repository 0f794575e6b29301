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
times napari adding an empty 64 x 64 Labels and Image layer in the same viewer, and an
empty Labels layer of the run's result shape (``napari_floor``; each split into napari's
``add_*`` call and the window's repaint that follows): a result layer cannot land faster
than that. Each of the worst stalls says how much of it the timed handlers took
(``handlers_ms``: the widget's and the progressive run's, napari's layer add included, as
it runs inside ``progressive._add_next``) and how much came after the last one
(``after_handlers_ms``: Qt's repaint of the window, layout), and the CPU time the GUI
thread used in it (``gui_cpu_ms``: close to ``ms`` when the GUI thread was busy all along,
less when it waited, for the GIL or for a CPU core). ``--profile``: cProfile of
the GUI thread over the run; the functions of the longest stall's handlers are printed to
stderr (napari_skipseg's own, then the 25 with the most cumulative time).

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
    parser.add_argument("--profile", action="store_true", help="cProfile the GUI thread during the run "
                        "(slower: the stalls grow); prints where the longest stall's handlers spent their time")
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
    tick_cpu: list[float] = []  # the GUI thread's CPU time at each tick

    def tick() -> None:
        ticks.append(time.perf_counter())
        tick_cpu.append(time.thread_time())

    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(tick)
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
    tick_cpu.clear()
    t_open = time.perf_counter()
    tick()
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
    tick_cpu.clear()
    marks: list[tuple[float, str]] = []
    spans: list[tuple[float, float]] = []  # (start, end) of each timed handler
    t0 = time.perf_counter()
    # time the widget's own main-thread handlers, to say which one a stall comes from
    def timed(func, name):
        def wrapper(*a, **k):
            t = time.perf_counter()
            out = func(*a, **k)
            end = time.perf_counter()
            marks.append((t, f"{name} {1000 * (end - t):.0f} ms"))
            spans.append((t, end))
            return out
        return wrapper

    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()

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
    if profiler is not None:
        profiler.disable()
    gaps = np.diff(ticks) * 1000
    end_gaps = [g for t, g in zip(ticks[1:], gaps, strict=True) if t >= t_returned[0] - 0.5] if t_returned else []
    worst = np.argsort(gaps)[::-1][:3]
    stalls = []
    for i in worst:  # what happened just before/after the longest stalls
        start, end = ticks[i], ticks[i + 1]
        near = [m for t, m in marks if start - 0.05 <= t <= end + 0.05]
        inside = [(a, b) for a, b in spans if start <= a and b <= end]
        stalls.append({"ms": round(float(gaps[i]), 1), "at_s": round(start - t0, 2), "events": near[:6],
                       "gui_cpu_ms": round(1000 * (tick_cpu[i + 1] - tick_cpu[i]), 1),
                       "handlers_ms": round(1000 * sum(b - a for a, b in inside), 1),
                       "after_handlers_ms": round(1000 * (end - max(b for _, b in inside)), 1) if inside else None})
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
        "napari_floor": napari_floor(viewer, app, result_shape=run.shape if run is not None else None),
    }
    print(json.dumps(result, indent=1))
    if profiler is not None:
        print_profile(profiler)
    viewer.close()


def napari_floor(viewer, app, repeat: int = 3, result_shape=None) -> dict:
    """What napari itself takes on the GUI thread to add an empty 64 x 64 Labels or Image
    layer (and draw it), in the same viewer: the least a new result layer can cost; with
    ``result_shape``, also an empty Labels layer of that shape (``labels_like_result``).
    Each: the total, napari's ``add_*`` call alone (``add``) and the repaint after it
    (``paint``), in ms (min and median)."""
    out = {}
    kinds = [("labels", (64, 64), np.uint32), ("image", (64, 64), np.float32)]
    if result_shape is not None:
        kinds.append(("labels", tuple(result_shape), np.uint32))
    for kind, shape, dtype in kinds:
        times = {"total": [], "add": [], "paint": []}
        for i in range(repeat):
            t = time.perf_counter()
            layer = getattr(viewer, f"add_{kind}")(np.zeros(shape, dtype), name=f"floor {kind} {i}")
            t_added = time.perf_counter()
            app.processEvents()
            end = time.perf_counter()
            for key, ms in (("total", end - t), ("add", t_added - t), ("paint", end - t_added)):
                times[key].append(1000 * ms)
            viewer.layers.remove(layer)
            app.processEvents()
        key = f"add_empty_{kind}_ms" if shape == (64, 64) else "labels_like_result_ms"
        out[key] = {"min": round(min(times["total"]), 1), "median": round(float(np.median(times["total"])), 1),
                    "add_median": round(float(np.median(times["add"])), 1),
                    "paint_median": round(float(np.median(times["paint"])), 1)}
        if shape != (64, 64):
            out[key]["shape"] = list(shape)
    return out


def print_profile(profiler) -> None:
    """The run's GUI-thread profile, to stderr: napari_skipseg's own functions, then the
    functions with the most cumulative time."""
    import io
    import pstats
    import sys

    text = io.StringIO()
    stats = pstats.Stats(profiler, stream=text).sort_stats("cumulative")
    stats.print_stats("napari_skipseg", 20)
    stats.print_stats(25)
    print(text.getvalue(), file=sys.stderr)


if __name__ == "__main__":
    main()
