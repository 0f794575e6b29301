"""Time per click of the correction tools on real 3D volumes (the work the Correct widget does
on napari's GUI thread for one click: the tool's plan plus writing its voxels).

    SKIPSEG_DATA=../shared/data PYTHONPATH=$PWD python benchmarks/bench_tools3d.py [--volumes 3]
        [--objects 8] [--json benchmarks/results/tools3d.json]

The nuclei3d validation embryo volumes (51 x ~125 x ~128 voxels, 1.75 x 0.8 x 0.8 um) are
segmented by the bundled nuclei3d model (probabilities kept); on each, for up to ``--objects``
objects: delete it, merge it with its nearest neighbour, split it at the two ends of its longest
extent, add it back where it was deleted (a missed object where the model saw it), add at a
background voxel (the model saw nothing: the image decides), and re-segment a box around it.
Each is timed as wall and CPU time of the calling thread (the CPU figure is the steadier one on
a shared machine). Goal: < 50 ms per GUI event.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SKIPSEG_DATA", ROOT.parent / "shared" / "data"))


def timed(times: dict, name: str, plan, labels: np.ndarray, *args, **options):
    """``plan(labels, *args, **options)`` (a tool's plan) and its edit applied to a copy of
    ``labels`` (the copy is not timed: the widget writes into the layer's own array); records
    the wall and thread CPU time."""
    t, c = time.perf_counter(), time.thread_time()
    edit = plan(labels, *args, **options)
    wall, cpu = time.perf_counter() - t, time.thread_time() - c
    target = labels.copy()
    t, c = time.perf_counter(), time.thread_time()
    edit.apply(target)
    times.setdefault(name, []).append((wall + time.perf_counter() - t, cpu + time.thread_time() - c))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--volumes", type=int, default=3)
    p.add_argument("--objects", type=int, default=8)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    from scipy import ndimage as ndi

    from napari_skipseg import annotate as ann
    from napari_skipseg import segment
    from napari_skipseg.batch import arrange_source
    from napari_skipseg.model.store import load_config, resolve_model

    folder = DATA / "nuclei3d_embryo"
    names = sorted(json.loads((resolve_model("nuclei3d") / "validation_split.json").read_text())["validation"])
    names = [n for n in names if (folder / "images" / n).exists()][: args.volumes]
    if not names:
        print(f"no nuclei3d validation volumes in {folder}/images (set SKIPSEG_DATA)", file=sys.stderr)
        return 2
    params = dict(load_config("nuclei3d").postprocess)
    times: dict = {}
    for name in names:
        a = arrange_source(folder / "images" / name, None)
        image, spacing = np.asarray(a.image), tuple(float(v) for v in a.spatial_spacing)
        probs = np.asarray(segment(image, model="nuclei3d", output="probabilities", device="cpu"), np.float32)
        labels = ann.relabel(probs, params).astype(np.int32)
        ids = np.unique(labels)[1:][: args.objects]
        boxes = ndi.find_objects(labels)
        centres = ndi.center_of_mass(labels > 0, labels, ids)
        all_ids = np.unique(labels)[1:]
        all_centres = np.array(ndi.center_of_mass(labels > 0, labels, all_ids))
        background = np.argwhere((labels == 0) & (ndi.distance_transform_edt(labels == 0, sampling=spacing) > 6))
        rng = np.random.default_rng(0)
        print(f"{name}: {labels.shape}, {len(all_ids)} objects, spacing {spacing}", flush=True)
        for k, c in zip(ids, centres, strict=True):
            obj = labels == k
            pts = np.argwhere(obj)
            centre = tuple(int(round(v)) for v in c)
            if labels[centre] != k:  # a concave object: its voxel nearest the centre
                centre = tuple(pts[np.argmin(((pts - c) ** 2).sum(1))])
            timed(times, "delete", ann.plan_delete, labels, centre)
            others = [i for i in range(len(all_ids)) if all_ids[i] != k]
            if others:
                j = others[int(np.argmin(((all_centres[others] - c) ** 2).sum(1)))]
                timed(times, "merge", ann.plan_merge, labels, centre, tuple(np.argwhere(labels == all_ids[j])[0]))
            axis = np.linalg.svd((pts - pts.mean(0)) * spacing, full_matrices=False)[2][0]
            d = ((pts - pts.mean(0)) * spacing) @ axis
            a_pt, b_pt = tuple(pts[np.argmin(d)]), tuple(pts[np.argmax(d)])
            if a_pt != b_pt:
                timed(times, "split", ann.plan_split, labels, probs, a_pt, b_pt, spacing=spacing)
            timed(times, "add (missed object)", ann.plan_add, np.where(obj, 0, labels), probs, centre, image=image,
                  params=params, spacing=spacing)
            bg = tuple(background[rng.integers(len(background))]) if len(background) else centre
            timed(times, "add (background)", ann.plan_add, labels, probs, bg, image=image, params=params, spacing=spacing)
            box = boxes[k - 1]
            lo = tuple(max(s.start - 4, 0) for s in box)
            hi = tuple(min(s.stop + 4, n) - 1 for s, n in zip(box, labels.shape, strict=True))
            timed(times, "box", ann.plan_box, labels, probs, lo, hi, params=params)
    summary = {}
    print("\nms per click (plan + writing its voxels), wall / CPU of the thread:")
    for tool, v in times.items():
        w, c = np.array(v).T * 1000
        summary[tool] = {"clicks": len(v), "wall_ms_median": float(np.median(w)), "wall_ms_max": float(w.max()),
                         "cpu_ms_median": float(np.median(c)), "cpu_ms_p95": float(np.percentile(c, 95)),
                         "cpu_ms_max": float(c.max())}
        print(f"  {tool:20s} {len(v):3d} clicks  median {np.median(w):5.1f} / {np.median(c):5.1f}   "
              f"max {w.max():5.1f} / {c.max():5.1f}   (CPU p95 {np.percentile(c, 95):5.1f})")
    load = os.getloadavg()[0]
    print(f"load {load:.1f}; goal < 50 ms per GUI event")
    if args.json:
        args.json.write_text(json.dumps({"volumes": names, "load": load, "tools": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
