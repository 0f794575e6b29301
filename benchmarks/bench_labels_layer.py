"""GUI-thread time to add a Labels layer to a real viewer, with and without memoising vispy's
GLSL signature parser (the process-wide patch ``_qt/_vispy_cache`` made before 0.2).

    xvfb-run -a python benchmarks/bench_labels_layer.py [--patch]

Run it twice (once with ``--patch``): each run is a fresh process, so the parser's cache
starts empty, as in a user's session.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import numpy as np


def patch_vispy() -> None:
    """What ``_qt/_vispy_cache.install`` did (for the comparison only)."""
    from vispy.visuals.shaders import parsing

    cached = functools.lru_cache(maxsize=4096)(parsing.parse_function_signature)

    def parse_function_signature(code):
        name, args, rtype = cached(code)
        return name, list(args), rtype

    parsing.parse_function_signature = parse_function_signature


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patch", action="store_true")
    ap.add_argument("--n", type=int, default=12)
    ap.add_argument("--profile", action="store_true", help="time spent in vispy's parser instead")
    args = ap.parse_args()
    import napari
    from qtpy.QtWidgets import QApplication

    if args.patch:
        patch_vispy()
    viewer = napari.Viewer(show=True)
    viewer.add_image(np.random.default_rng(0).normal(size=(512, 512)).astype(np.float32))
    app = QApplication.instance()
    for _ in range(5):
        app.processEvents()
    times = []
    if args.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.enable()
    for i in range(args.n):
        labels = np.zeros((512, 512), np.int32)
        labels[100 + i: 200 + i, 100:200] = 1
        t0 = time.perf_counter()
        viewer.add_labels(labels, name=f"l{i}")
        app.processEvents()
        times.append(time.perf_counter() - t0)
    if args.profile:
        prof.disable()
        stats = pstats.Stats(prof)
        total = sum(v[3] for k, v in stats.stats.items() if k[2] == "add_labels")
        parse = sum(v[3] for k, v in stats.stats.items() if k[2] == "parse_function_signature")
        print(f"profile: add_labels {total:.2f} s cumulative, parse_function_signature {parse:.3f} s "
              f"({100 * parse / total:.1f} %)")
    print(f"patch={args.patch} first {times[0] * 1e3:.0f} ms, then median {statistics.median(times[1:]) * 1e3:.0f} ms "
          f"(min {min(times[1:]) * 1e3:.0f}, max {max(times[1:]) * 1e3:.0f}) over {args.n - 1} layers")
    viewer.close()


if __name__ == "__main__":
    main()
