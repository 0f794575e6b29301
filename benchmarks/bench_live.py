"""Live mode: from stopping on a slice to its labels shown (goal: p95 <= 0.5 s, cached <= 100 ms).

A scripted user scrolls through a stack in the Segment widget's live mode at ``--rate``
slices per second, in stretches of ``--stretch`` slices, and stops after each stretch until
the slice stopped on is shown; then jumps back to each slice stopped on (now cached). For
every stop it records the time from the last move to the live layer showing that slice
(``LiveMode.shown``: the layer refreshed with it), and checks that every slice shown is what
a full run of the whole stack (the Segment button, same options) gives for it (instance
ids aside: :func:`~napari_skipseg.interactive.same_labels`). It
also reports the longest GUI-thread stall (a 5 ms QTimer) while scrolling. The first
request (loading the model, normalisation range, backend; an ONNX export if not cached) is
reported apart (``first_request_s``). Run under a display (or xvfb-run) on an idle machine:

    xvfb-run -a python benchmarks/bench_live.py [--model nuclei2d] [--slices 64] [--size 512]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei2d")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rate", type=float, default=5.0, help="slices per second while scrolling")
    parser.add_argument("--stretch", type=int, default=8, help="slices scrolled between stops")
    parser.add_argument("--flips", action="store_true", help="test-time flips (default: off)")
    parser.add_argument("--no-check", action="store_true", help="skip the full run the shown slices are checked against")
    args = parser.parse_args()

    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_skipseg._preload import wait
    from napari_skipseg._qt.segment_widget import SegmentWidget
    from napari_skipseg._sample_data import synthetic_nuclei

    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    image, _ = synthetic_nuclei((args.slices, args.size, args.size), radius=9.0, seed=5)
    viewer.add_image(image, name="stack")
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget)
    index = widget.model_combo.findText(args.model)
    widget.model_combo.setCurrentIndex(index)
    widget.model_combo.activated.emit(index)  # as a user picks it
    widget.output_combo.setCurrentText("instances")
    widget.flips_check.setChecked(args.flips)
    live = widget.live

    def pump(seconds: float) -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            app.processEvents()
            time.sleep(0.001)

    # the widget prepares the run once its settings rest (model, diameter, backend):
    # what a user gets who looks at it for a few seconds before switching live mode on
    while not wait(0) or widget.warmer.busy:
        pump(0.01)

    def wait_shown(z: int, since: float, timeout: float = 120.0) -> tuple[float, str]:
        end = time.perf_counter() + timeout
        while time.perf_counter() < end:
            app.processEvents()
            for point, t, how, _ms in live.shown:
                if point[0] == z and t >= since:
                    return t - since, how
            time.sleep(0.001)
        raise TimeoutError(f"slice {z} not shown within {timeout} s")

    # napari's own cost of a move, for scale: the image alone, and with a plain Labels layer
    # of the result's shape (what a cached slice cannot beat)
    floor = {"image": move_times(viewer, app, pump, args.slices)}
    plain = viewer.add_labels(np.zeros(image.shape, np.uint32), name="plain labels", opacity=0.5)
    floor["image_and_labels"] = move_times(viewer, app, pump, args.slices)
    viewer.layers.remove(plain)
    # where a stop's time goes: requests started (slice, when) and results (slice, when, compute s)
    starts: list[tuple[int, float]] = []
    results: list[tuple[int, float, float]] = []
    real_start, real_result = live._start, live._on_result

    def start(wanted):
        starts.append((int(wanted[1][0]), time.perf_counter()))
        return real_start(wanted)

    def on_result(result):
        if result is not None:
            results.append((int(result.point[0]), time.perf_counter(), result.seconds))
        return real_result(result)

    live._start, live._on_result = start, on_result
    viewer.dims.set_current_step(0, 0)
    t = time.perf_counter()
    live.check.setChecked(True)
    first, _ = wait_shown(0, t, timeout=300)
    ticks: list[float] = []
    timer = QTimer()
    timer.setInterval(5)
    timer.timeout.connect(lambda: ticks.append(time.perf_counter()))
    timer.start()
    pump(0.5)

    stops, computed, shown_slices = [], [], {0}
    z = 0
    step = 1.0 / args.rate
    while z < args.slices - 1:
        target = min(z + args.stretch, args.slices - 1)
        while z < target:  # scroll at the given rate
            z += 1
            t_move = time.perf_counter()
            viewer.dims.set_current_step(0, z)
            pump(max(0.0, step - (time.perf_counter() - t_move)))
        latency, how = wait_shown(z, t_move)
        stops.append(z)
        row = {"slice": z, "s": round(latency, 3), "how": how}
        started = [t for zz, t in starts if zz == z and t >= t_move]
        done = [(t, sec) for zz, t, sec in results if zz == z and t >= t_move]
        if started and done:  # wait before the request started; its work in the worker; the rest
            row.update(start_s=round(started[-1] - t_move, 3), worker_s=round(done[-1][1], 3),
                       handoff_s=round(done[-1][0] - started[-1] - done[-1][1], 3))
        computed.append(row)
        shown_slices.add(z)
        pump(0.3)
    requests = sum(1 for p in live.shown if p[2] == "computed")
    cached = []
    for z in stops:  # jump back to each slice stopped on, after a pause: a single move
        pump(0.6)
        t_move = time.perf_counter()
        viewer.dims.set_current_step(0, z)
        in_move = time.perf_counter() - t_move  # napari's slicing and the handlers of the move
        latency, how = wait_shown(z, t_move)
        cached.append({"slice": z, "s": round(latency, 3), "how": how, "move_s": round(in_move, 3)})
    timer.stop()
    gaps = np.diff(ticks) * 1000 if len(ticks) > 1 else np.zeros(1)

    check = None
    if not args.no_check:  # what the Segment button gives for the whole stack, same options
        from napari_skipseg.interactive import same_labels

        t = time.perf_counter()
        widget.run()
        while widget.worker is not None:
            app.processEvents()
            time.sleep(0.005)
        full = widget.last_result
        layer = live.layer
        bad = [z for z in sorted(shown_slices) if not same_labels(np.asarray(layer.data[z]), full.labels[z])]
        check = {"slices_checked": len(shown_slices), "differ": bad, "full_run_s": round(time.perf_counter() - t, 1),
                 "full_run_backend": full.info["backend"]}

    def stats(rows):
        values = np.array([r["s"] for r in rows])
        return {"n": len(values), "p50_s": round(float(np.percentile(values, 50)), 3),
                "p95_s": round(float(np.percentile(values, 95)), 3), "max_s": round(float(values.max()), 3)}

    result = {
        "model": args.model, "stack": [args.slices, args.size, args.size], "flips": args.flips,
        "rate_slices_per_s": args.rate, "stretch": args.stretch,
        "load_average": [round(v, 2) for v in os.getloadavg()], "cpus": os.cpu_count(),
        "first_request_s": round(first, 2),
        "stop_to_shown": stats(computed), "stop_to_shown_cached": stats(cached),
        "stops": computed, "revisits": cached,
        "computed_requests": requests, "slices_moved_through": int(stops[-1]) if stops else 0,
        "napari_move_floor_ms": floor,
        "max_gui_stall_ms": round(float(gaps.max()), 1),
        "p99_gui_stall_ms": round(float(np.percentile(gaps, 99)), 1),
        "equal_to_full_run": check,
        "status": live.status.text(),
    }
    print(json.dumps(result, indent=1))
    live.check.setChecked(False)
    viewer.close()


def move_times(viewer, app, pump, slices: int, n: int = 10) -> dict:
    """Time from a move of the Z slider until napari has sliced the layers for it (ms)."""
    times = []
    for k in range(n):
        pump(0.15)
        t = time.perf_counter()
        viewer.dims.set_current_step(0, (k * 3) % slices)
        times.append((time.perf_counter() - t) * 1000)
        app.processEvents()
    return {"p50": round(float(np.percentile(times, 50)), 1), "p95": round(float(np.percentile(times, 95)), 1)}


if __name__ == "__main__":
    main()
