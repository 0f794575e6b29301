"""How many clicks turn the model's output into correct masks? (number of clicks, NoC)

A scripted annotator starts from the model's instances on each image of a model's
validation split and corrects them with the tools of :mod:`napari_skipseg.annotate`, one
click per tool use, until the image reaches F1 at IoU 0.5 >= ``--target`` (0.95) or has used
``--budget`` (2) clicks per true object. The ground truth only decides where to click; the
tools see the labels, the cached probabilities and the image, as in the viewer.

Each step fixes the worst remaining error (the one that costs F1 the most):
  1. two true objects merged in one predicted object -> split at the two objects' centres;
  2. one true object in pieces -> merge the two largest pieces;
  3. a missed true object (less than half of it labelled) -> add at its centre; where a
     false object covers a quarter of it or more, that one is deleted first;
  4. a false object (no true object under half of it), or one so far off that it matches
     nothing -> delete (a missed object there is then added by a later click).
A "centre" is the pixel farthest from the edge of the true object (within the part a tool
may use), as a person clicks the middle of a nucleus. A click whose error is still there
afterwards is not repeated; a click that made F1 worse is undone (napari's undo, counted as
one more click).

    PYTHONPATH=$PWD python benchmarks/bench_annotate.py [--model nuclei2d] [--data DIR]
        [--split validation|all] [--limit N] [--no-flips] [--cache DIR] [--json OUT]
        [--no-spacing]

The tools get the image's own pixel size (``spacing=``, as the widget passes a layer's
scale; 1.75 x 0.8 x 0.8 um for nuclei3d_embryo); ``--no-spacing`` measures in voxels.

Prints per image: objects, F1 before/after, clicks; then clicks per true object over all
images (the goal: <= 0.10 on nuclei2d's validation split), the tools used, and the live
threshold timing (relabel from cached probabilities of a 1024 x 1024 image: the first image and the
most crowded one, tiled).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SKIPSEG_DATA") or next(
    (d for d in (ROOT.parent / "shared" / "data", Path("/work/shared/data")) if d.is_dir()), ROOT.parent / "shared" / "data"))


#: The issue's goals (clicks per true object).
GOALS = {"nuclei2d": "goal <= 0.10", "histology": "goal <= 0.30 after the fine-tune"}


def centre(mask: np.ndarray) -> tuple[int, ...]:
    """The pixel of ``mask`` farthest from its edge."""
    from scipy import ndimage as ndi

    idx = np.nonzero(mask)
    box = tuple(slice(max(0, int(i.min()) - 1), int(i.max()) + 2) for i in idx)
    d = ndi.distance_transform_edt(mask[box])
    local = np.unravel_index(int(np.argmax(d)), d.shape)
    return tuple(int(v + s.start) for v, s in zip(local, box, strict=True))


def overlaps(truth: np.ndarray, pred: np.ndarray):
    """``(overlap, t_ids, p_ids, t_area, p_area)``: pixel counts of every (true, predicted)
    pair, background included at index 0 of both."""
    t_ids, t_inv = np.unique(truth, return_inverse=True)
    p_ids, p_inv = np.unique(pred, return_inverse=True)
    if t_ids[0] != 0:
        t_ids, t_inv = np.concatenate([[0], t_ids]), t_inv + 1
    if p_ids[0] != 0:
        p_ids, p_inv = np.concatenate([[0], p_ids]), p_inv + 1
    ov = np.bincount(t_inv.ravel() * len(p_ids) + p_inv.ravel(),
                     minlength=len(t_ids) * len(p_ids)).reshape(len(t_ids), len(p_ids))
    return ov, t_ids, p_ids, ov.sum(axis=1), ov.sum(axis=0)


def f1(truth: np.ndarray, pred: np.ndarray) -> float:
    from napari_skipseg.metrics import match_instances

    return match_instances(truth, pred, 0.5).f1


def next_action(truth: np.ndarray, pred: np.ndarray, tried: set):
    """The worst remaining error and the click that fixes it: ``(tool, points, key)`` or None."""
    ov, t_ids, p_ids, t_area, p_area = overlaps(truth, pred)
    union = t_area[:, None] + p_area[None, :] - ov
    iou = np.where(union > 0, ov / np.maximum(union, 1), 0.0)
    iou[0, :] = iou[:, 0] = 0
    t_matched = (iou > 0.5).any(axis=1)
    p_matched = (iou > 0.5).any(axis=0)
    cands = []  # (rank, -area, tool, points, key)
    for i in range(1, len(t_ids)):
        if t_matched[i]:
            continue
        g = t_ids[i]
        # merged: a predicted object holding most of this object and most of another one
        for j in np.nonzero(ov[i, 1:] >= 0.5 * t_area[i])[0] + 1:
            others = [k for k in np.nonzero(ov[1:, j] >= 0.5 * t_area[1:])[0] + 1 if k != i]
            if others:
                k = max(others, key=lambda k: ov[k, j])
                inside = pred == p_ids[j]
                pa, pb = centre((truth == g) & inside), centre((truth == t_ids[k]) & inside)
                cands.append((0, -t_area[i], "split", (pa, pb), ("split", *sorted((int(g), int(t_ids[k]))))))
        # pieces: predicted objects lying mostly inside this one
        pieces = [j for j in np.nonzero(ov[i, 1:] >= 0.5 * p_area[1:])[0] + 1]
        if len(pieces) >= 2:
            a, b = sorted(pieces, key=lambda j: -ov[i, j])[:2]
            pa = centre((truth == g) & (pred == p_ids[a]))
            pb = centre((truth == g) & (pred == p_ids[b]))
            cands.append((1, -t_area[i], "merge", (pa, pb), ("merge", int(p_ids[a]), int(p_ids[b]))))
        # a wrong object over a quarter of it: delete that first (the add follows)
        wrong = [j for j in np.nonzero(ov[i, 1:] >= 0.25 * t_area[i])[0] + 1 if not p_matched[j]]
        if wrong and ov[i, 0] < 0.75 * t_area[i]:
            j = max(wrong, key=lambda j: ov[i, j])
            cands.append((2, -t_area[i], "delete", (centre(pred == p_ids[j]),), ("delete", int(p_ids[j]))))
        # missed: less than half of it labelled
        elif ov[i, 0] >= 0.5 * t_area[i]:
            free = (truth == g) & (pred == 0)
            cands.append((2, -t_area[i], "add", (centre(free),), ("add", int(g))))
    for j in range(1, len(p_ids)):
        if p_matched[j]:
            continue
        # false, or so far off that it matches nothing (and is no piece or merge handled above)
        inside = (pred == p_ids[j])
        cands.append((3, -p_area[j], "delete", (centre(inside),), ("delete", int(p_ids[j]))))
    cands.sort(key=lambda c: (c[0], c[1]))
    for c in cands:
        if c[4] not in tried:
            return c[2], c[3], c[4]
    return None


def annotate_image(truth, labels, probs, image, params, target: float, budget: int, spacing=None):
    """Correct ``labels`` (in place) until F1 >= ``target`` or ``budget`` clicks; returns
    ``(clicks, f1_after, tools used)``. ``spacing``: the image's pixel size per axis, given to
    the tools as the widget gives them the layer's scale."""
    from napari_skipseg import annotate as ann

    clicks, used, tried = 0, {}, set()
    score = f1(truth, labels)
    while score < target and clicks < budget:
        action = next_action(truth, labels, tried)
        if action is None:
            break
        tool, pts, key = action
        tried.add(key)
        before = labels.copy()
        try:
            if tool == "add":
                ann.add_object(labels, probs, pts[0], image=image, params=params, spacing=spacing)
            elif tool == "delete":
                ann.delete_object(labels, pts[0])
            elif tool == "merge":
                ann.merge_objects(labels, pts[0], pts[1])
            else:
                ann.split_object(labels, probs, pts[0], pts[1], spacing=spacing)
        except ann.AnnotateError:
            pass  # a wasted click still counts
        clicks += 1
        used[tool] = used.get(tool, 0) + 1
        new = f1(truth, labels)
        if new < score and clicks < budget:  # worse: the annotator presses undo (one more click)
            labels[...] = before
            clicks += 1
            used["undo"] = used.get("undo", 0) + 1
            used[f"undone {tool}"] = used.get(f"undone {tool}", 0) + 1  # not a click: which tool failed
        else:
            score = new
    return clicks, score, used


def model_output(model, image, channel_axis, flips: bool, cache: Path | None, name: str):
    """Cached probabilities of ``image`` (``(classes, *shape)`` float32)."""
    from napari_skipseg import segment

    key = None
    if cache is not None:
        tag = hashlib.sha1(f"{model.config.name}|{name}|{flips}|{image.shape}".encode()).hexdigest()[:16]
        key = cache / f"{tag}.npy"
        if key.exists():
            return np.load(key)
    probs = segment(image, model=model, output="probabilities", channel_axis=channel_axis, flips=flips,
                    device="cpu")
    probs = np.asarray(probs, dtype=np.float32)
    if key is not None:
        cache.mkdir(parents=True, exist_ok=True)
        np.save(key, probs)
    return probs


def time_relabel(probs: np.ndarray, params: dict, repeats: int = 7) -> tuple[float, float, str]:
    """Median wall and CPU seconds to relabel 1024 x 1024 probabilities (tiled from a 2D
    ``probs``; a 3D volume is timed as it is), and what was timed. On a shared machine the
    CPU time is the steadier figure."""
    from napari_skipseg.annotate import relabel

    if probs.ndim == 3:
        reps = [int(np.ceil(1024 / n)) for n in probs.shape[1:]]
        big = np.ascontiguousarray(np.tile(probs, (1, *reps))[:, :1024, :1024])
        what = "1024 x 1024"
    else:  # never tile a volume to 1024^3
        big, what = probs, " x ".join(str(n) for n in probs.shape[1:])
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        relabel(big, params)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return float(np.median(wall)), float(np.median(cpu)), what


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="nuclei2d")
    p.add_argument("--data", type=Path, default=None, help="folder with images/ and masks/ (default: shared data/<model>)")
    p.add_argument("--split", default="validation", choices=("validation", "all"))
    p.add_argument("--limit", type=int, default=None, help="first N images of the split (sorted)")
    p.add_argument("--flips", dest="flips", action="store_true", default=None,
                   help="test-time flips (default: the model's own setting)")
    p.add_argument("--no-flips", dest="flips", action="store_false")
    p.add_argument("--images", default="split", choices=("split", "histology"),
                   help="split: the model's --split of --data; histology: the H&E-like evaluation images of "
                        "bench_finetune.py's domain-shift benchmark (give --model the version it fine-tuned)")
    p.add_argument("--target", type=float, default=0.95)
    p.add_argument("--budget", type=float, default=2.0, help="clicks per true object at most")
    p.add_argument("--cache", type=Path, default=None, help="folder to keep probabilities in between runs")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--no-spacing", action="store_true",
                   help="give the tools no pixel size (voxels as cubes; default: the image's own spacing)")
    args = p.parse_args(argv)

    from skimage.measure import label as cc_label

    from napari_skipseg.annotate import relabel
    from napari_skipseg.batch import arrange_source
    from napari_skipseg.io import read_image
    from napari_skipseg.model.store import load_model, resolve_model, version_base

    model = load_model(args.model)
    cfg = model.config
    params = dict(cfg.postprocess)
    if args.flips is None:
        args.flips = bool(cfg.inference.get("flips", False))
    folder = args.data or DATA / version_base(cfg.name)
    if args.images == "histology":
        sys.path.insert(0, str(ROOT / "benchmarks"))
        os.environ.setdefault("SKIPSEG_DATA", str(DATA))  # where bench_finetune reads nuclei2d
        from bench_finetune import shift_sets

        items = [(name, img, -1, mask, None) for name, img, mask in shift_sets()[1]]
        source = "bench_finetune.py's domain-shift evaluation images (H&E-like)"
    else:
        if args.split == "validation":
            names = sorted(json.loads((resolve_model(version_base(cfg.name)) / "validation_split.json").read_text())
                           ["validation"])
        else:
            names = sorted(f.name for f in (folder / "images").iterdir())
        names = [n for n in names if (folder / "images" / n).exists()][: args.limit]
        if not names:
            print(f"no images of the {args.split} split in {folder}/images (set --data or SKIPSEG_DATA)",
                  file=sys.stderr)
            return 2

        def read(name):
            a = arrange_source(folder / "images" / name, None)
            spacing = None if args.no_spacing else tuple(float(v) for v in a.spatial_spacing)
            return name, np.asarray(a.image), a.channel_axis, np.asarray(read_image(folder / "masks" / name)[0]), spacing

        items = (read(n) for n in names)
        source = f"{len(names)} images ({args.split}) from {folder}"
    print(f"{cfg.name}: {source}, flips {'on' if args.flips else 'off'}, "
          f"target F1@0.5 >= {args.target}, at most {args.budget:g} clicks per object", flush=True)
    rows, tools = [], {}
    t0 = time.perf_counter()
    sample = crowded = None  # the first image, and the one with the most objects: relabel timed on both
    for name, image, ca, truth, spacing in items:
        if sample is None:
            sample = (name, image, ca)
        if truth.max() <= 1:
            truth = cc_label(truth > 0)
        probs = model_output(model, image, ca, args.flips, args.cache, name)
        labels = relabel(probs, params)
        before = f1(truth, labels)
        n = int(len(np.unique(truth)) - 1)
        img = image if ca is None else np.moveaxis(image, ca, -1)
        clicks, after, used = annotate_image(truth, labels, probs, img, params, args.target,
                                             int(np.floor(args.budget * n)), spacing)
        for k, v in used.items():  # "undone <tool>" entries count failures, not clicks
            tools[k] = tools.get(k, 0) + v
        if crowded is None or n > crowded[3]:
            crowded = (name, image, ca, n)
        rows.append({"name": name, "objects": n, "f1_before": before, "f1_after": after, "clicks": clicks,
                     "reached": after >= args.target, "tools": used})
        print(f"{name[:16]} {n:5d} objects  F1 {before:.3f} -> {after:.3f}  {clicks:3d} clicks "
              f"{json.dumps(used)}", flush=True)
    objects = sum(r["objects"] for r in rows)
    clicks = sum(r["clicks"] for r in rows)
    reached = sum(r["reached"] for r in rows)
    probs = model_output(model, sample[1], sample[2], args.flips, args.cache, sample[0])
    relabel_s, relabel_cpu, timed = time_relabel(probs, params)
    probs = model_output(model, crowded[1], crowded[2], args.flips, args.cache, crowded[0])
    crowded_s, crowded_cpu, _ = time_relabel(probs, params)
    summary = {"model": cfg.name, "images_from": source, "images": len(rows), "objects": objects, "clicks": clicks,
               "clicks_per_object": clicks / max(objects, 1), "images_reaching_target": reached,
               # with tools that never fail every tool use would fix its error at once (no undo):
               # these clicks would remain, and more in the images that do not reach the target
               "clicks_per_object_no_undo": (clicks - tools.get("undo", 0)) / max(objects, 1),
               "mean_f1_before": float(np.mean([r["f1_before"] for r in rows])),
               "mean_f1_after": float(np.mean([r["f1_after"] for r in rows])),
               "tools": tools, "relabel_seconds": relabel_s, "relabel_cpu_seconds": relabel_cpu, "relabel_of": timed,
               "relabel_crowded_seconds": crowded_s, "relabel_crowded_cpu_seconds": crowded_cpu,
               "relabel_crowded_of": f"{crowded[0]} ({crowded[3]} objects)", "flips": args.flips, "target": args.target,
               "budget_per_object": args.budget,
               "spacing": "none (voxels)" if args.no_spacing else "the image's own", "seconds": time.perf_counter() - t0}
    print(f"\n{clicks} clicks for {objects} objects: {summary['clicks_per_object']:.3f} clicks per object "
          f"({GOALS.get(args.images if args.images == 'histology' else cfg.name, 'no goal set')}); "
          f"{reached}/{len(rows)} images reach F1 >= "
          f"{args.target} ({sum(r['clicks'] for r in rows if r['reached']) / max(sum(r['objects'] for r in rows if r['reached']), 1):.3f} "
          f"clicks per object in those; {summary['clicks_per_object_no_undo']:.3f} without the undos: a floor "
          f"for tools that never fail); mean F1 "
          f"{summary['mean_f1_before']:.3f} -> {summary['mean_f1_after']:.3f}; tools {json.dumps(tools)}")
    print(f"live thresholds: relabel of {timed} cached probabilities {relabel_s * 1000:.0f} ms wall, "
          f"{relabel_cpu * 1000:.0f} ms CPU (median of 7; goal < 100 ms), first image; the most crowded "
          f"({crowded[0][:16]}, {crowded[3]} objects): {crowded_s * 1000:.0f} ms wall, {crowded_cpu * 1000:.0f} ms CPU")
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "images": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
