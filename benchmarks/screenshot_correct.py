"""Screenshots of the Correct widget in use, and its GUI-thread time per action at 1024 x 1024.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/screenshot_correct.py [--theme dark|light]
        [--out docs/screenshots] [--image N] [--no-timing]

A nuclei2d validation image (real data, ``../shared/data/nuclei2d``; the N-th of the split,
sorted) is segmented with the bundled model (probabilities kept), put in a 1280 x 800 napari
window with the Correct widget, and corrected as a person would: the ground truth only picks
which merged object to split. Saved: ``correct_split_<theme>.png`` (a merged pair split with
two clicks), ``correct_box_<theme>.png`` (a box being dragged), ``correct_review_<theme>.png``
(uncertainty layer, next uncertain region, object table).

Timing: the same image's labels and probabilities tiled to 1024 x 1024; each tool run through
the widget (GUI thread: plan + ``data_setitem``), and the live threshold relabel (worker) and
its application to the layer (GUI thread). Goal: < 50 ms per GUI event.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import _gui
import numpy as np

from napari_skipseg._qt import camera_of

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def settle(app, n: int = 30) -> None:
    _gui.settle(n)


def load(index: int):
    from bench_annotate import DATA

    from napari_skipseg import segment
    from napari_skipseg.batch import open_source
    from napari_skipseg.io import read_image
    from napari_skipseg.model.store import resolve_model

    names = sorted(json.loads((resolve_model("nuclei2d") / "validation_split.json").read_text())["validation"])
    name = names[index]
    image, _, ca = open_source(DATA / "nuclei2d" / "images" / name, None)
    image = np.asarray(image)
    truth = np.asarray(read_image(DATA / "nuclei2d" / "masks" / name)[0])
    probs = np.asarray(segment(image, model="nuclei2d", output="probabilities", channel_axis=ca, device="cpu"))
    if ca is not None:
        image = np.moveaxis(image, ca, -1)
    return name, image, truth, probs


def merged_pair(truth, labels):
    """A predicted object holding most of two true objects, and their centres."""
    from bench_annotate import centre, overlaps

    ov, t_ids, p_ids, t_area, p_area = overlaps(truth, labels)
    best = None
    for j in range(1, len(p_ids)):
        inside = [i for i in range(1, len(t_ids)) if ov[i, j] >= 0.5 * t_area[i]]
        if len(inside) == 2 and (best is None or p_area[j] > best[2]):
            best = (j, inside, p_area[j])
    if best is None:
        return None
    j, (a, b), _ = best
    obj = labels == p_ids[j]
    return centre((truth == t_ids[a]) & obj), centre((truth == t_ids[b]) & obj)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--theme", default="dark")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    p.add_argument("--image", type=int, default=34)
    p.add_argument("--no-timing", dest="timing", action="store_false")
    args = p.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_skipseg import annotate as ann
    from napari_skipseg.model.store import load_config

    name, image, truth, probs = load(args.image)
    params = dict(load_config("nuclei2d").postprocess)
    labels = ann.relabel(probs, params)

    viewer = napari.Viewer(title="napari-skipseg")
    viewer.theme = args.theme
    viewer.window.resize(1280, 800)
    app = QApplication.instance()
    img = viewer.add_image(image, name="nuclei", rgb=image.ndim == 3)
    layer = viewer.add_labels(labels, name="nuclei [nuclei2d] instances", opacity=0.5,
                              metadata={"skipseg": {"source": img.name, "model": "nuclei2d"}})
    _, w = viewer.window.add_plugin_dock_widget("napari-skipseg", "Correct")
    w.set_probabilities(layer, probs, model="nuclei2d")
    settle(app)
    args.out.mkdir(parents=True, exist_ok=True)
    saved = []

    # 1. split a merged pair: two clicks
    pair = merged_pair(truth, layer.data)
    if pair is not None:
        a, b = pair
        camera_of(viewer).center = ((a[0] + b[0]) / 2, (a[1] + b[1]) / 2)
        camera_of(viewer).zoom = 6.0
        w.set_tool("split")
        w.click(a)
        w.click(b)
        viewer.add_points([a, b], name="clicks", size=3, face_color="yellow")
        viewer.layers.selection.active = layer
        settle(app)
        out = args.out / f"correct_split_{args.theme}.png"
        viewer.screenshot(str(out), canvas_only=False)
        saved.append((out, w.status.text()))
        viewer.layers.remove("clicks")

    # 2. a box being dragged
    h, wd = layer.data.shape
    y0, x0 = h // 3, wd // 3
    camera_of(viewer).center = (y0 + 40, x0 + 40)
    camera_of(viewer).zoom = 3.0
    w.set_tool("box")
    w.preview_box(layer, (y0, x0), (y0 + 80, x0 + 80))
    viewer.layers.selection.active = layer
    settle(app)
    out = args.out / f"correct_box_{args.theme}.png"
    viewer.screenshot(str(out), canvas_only=False)
    saved.append((out, "box prompt being dragged"))
    w.set_tool(None)

    # 3. review: uncertainty, next region, table
    w.show_uncertainty()
    camera_of(viewer).zoom = 1.5  # the whole 256 x 256 tile in the canvas
    w.next_uncertain()
    worker = w.refresh_table()
    while worker.is_running:
        settle(app, 1)
    settle(app)
    out = args.out / f"correct_review_{args.theme}.png"
    viewer.screenshot(str(out), canvas_only=False)
    saved.append((out, w.status.text()))
    for path, text in saved:
        print(path, "|", text)

    if args.timing:
        time_actions(viewer, w, app, probs, params)
    viewer.close()
    return 0


def time_actions(viewer, w, app, probs, params) -> None:
    """GUI-thread seconds of each action on 1024 x 1024 labels (tiled from the image)."""
    from napari_skipseg import annotate as ann
    from napari_skipseg._qt.correct_widget import CorrectWidget

    reps = [int(np.ceil(1024 / n)) for n in probs.shape[1:]]
    big = np.ascontiguousarray(np.tile(probs, (1, *reps))[:, :1024, :1024])
    labels = ann.relabel(big, params)
    layer = viewer.add_labels(labels, name="1024")
    w.set_probabilities(layer, big, model="nuclei2d")
    w.labels_combo.setCurrentText("1024")
    settle(app)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    obj = int(ids[np.argsort(counts)[len(counts) // 2]])  # a median-sized object
    where = np.argwhere(labels == obj)
    c = tuple(int(v) for v in where[len(where) // 2])
    times = {}

    def run(tool, *points):
        t, c = time.perf_counter(), time.thread_time()
        w.run_tool(tool, *points)
        times.setdefault(tool, []).append((time.perf_counter() - t, time.thread_time() - c))
        settle(app, 3)

    for _ in range(3):
        run("delete", c)
        run("add", c)
        new = int(layer.data[c])
        # a neighbour to merge with: the nearest other object
        others = np.argwhere((layer.data > 0) & (layer.data != new))
        near = tuple(int(v) for v in others[np.argmin(((others - np.array(c)) ** 2).sum(1))])
        run("merge", c, near)
        run("split", c, near)
        run("box", (c[0] - 100, c[1] - 100), (c[0] + 100, c[1] + 100))
    for name, action in (("uncertainty layer", w.show_uncertainty), ("next region", w.next_uncertain),
                         ("next region", w.next_uncertain), ("next region", w.next_uncertain),
                         ("table", w.refresh_table), ("table", w.refresh_table), ("table", w.refresh_table)):
        if w.sources[layer.unique_id].uncertainty is None:  # as a user would: computed after the probabilities came
            w.sources[layer.unique_id].uncertainty = ann.uncertainty(big)
        t, c = time.perf_counter(), time.thread_time()
        worker = action()
        times.setdefault(name, []).append((time.perf_counter() - t, time.thread_time() - c))
        if name == "table":  # the table is filled on the GUI thread when the worker returns
            while worker.is_running:
                settle(app, 1)
            settle(app, 3)
            table = CorrectWidget._measure(layer.data, None, w.sources[layer.unique_id])
            t, c = time.perf_counter(), time.thread_time()
            w.fill_table(table)
            times.setdefault("table fill", []).append((time.perf_counter() - t, time.thread_time() - c))
        settle(app, 3)
    print(f"  ({w.table.rowCount()} objects in the table)")
    t, c = time.perf_counter(), time.thread_time()
    relabelled = ann.relabel(big, {**params, "seed": 0.9})
    worker = (time.perf_counter() - t, time.thread_time() - c)
    t, c = time.perf_counter(), time.thread_time()
    w.apply_labels(layer, relabelled)
    apply = (time.perf_counter() - t, time.thread_time() - c)
    print("GUI-thread time per action at 1024 x 1024, ms wall / ms CPU of the thread (median of 3; "
          "the CPU figure is the steadier one on a shared machine):")
    for tool, ts in times.items():
        wall, cpu = np.median(np.array(ts), axis=0) * 1000
        print(f"  {tool:17s} {wall:6.1f} / {cpu:5.1f}")
    print(f"  thresholds: relabel {worker[0] * 1000:.0f} / {worker[1] * 1000:.0f} (worker thread), apply to the "
          f"layer {apply[0] * 1000:.1f} / {apply[1] * 1000:.1f} (GUI thread)")


if __name__ == "__main__":
    sys.exit(main())
