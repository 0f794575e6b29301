"""Does ``diameter="auto"`` keep a model's accuracy when objects are another size?

Each image of a model's validation split (or of a held-out folder) is resized by each zoom
(images: linear with anti-aliasing; masks: nearest), segmented at scale 1 ("plain") and with
the object diameter estimated (:func:`napari_skipseg.inference.size.estimate_diameter`)
("auto"), and scored like ``skipseg evaluate``: F1 at IoU 0.5 over all objects pooled
(:func:`napari_skipseg.evaluate.score_image`, :func:`napari_skipseg.evaluate.overall`).

    PYTHONPATH=$PWD python benchmarks/bench_scale.py [--model nuclei2d] [--data DIR]
        [--split validation|all] [--zooms 0.5 0.75 1 1.5 2] [--limit 20] [--flips] [--json OUT]
    PYTHONPATH=$PWD python benchmarks/bench_scale.py --model nuclei3d --data DIR
        --z-spacings 1.0 1.5 2.0 2.5 [--json OUT]

``--z-spacings`` (3D): instead of zooming every axis, only Z is resampled, from the voxel size
the files record (nuclei3d_embryo: 1.75 um) to each spacing given (1x, the files as they
are, is always the first row); besides "plain" and "auto" it scores "spacing" (the
image's true voxel size passed as ``spacing``, no diameter: the zoom to the model's training
voxel size) and "auto+spacing" (``diameter="auto"`` with the voxel size given, what the CLI
and the widget do by default for a file that records its voxel size).

With ``--zooms``, ``--methods`` (default: plain auto) may add "spacing" and "auto+spacing":
a zoomed volume is passed with its true voxel size (the file's divided by the zoom, exactly per
axis from the shapes), never the file's own.

The "auto" path is :func:`segment_auto`: ``predict(..., diameter="auto")``, the engine's own
estimate, per-block resampling and mapping back, as the CLI and the widget run it.
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


def zoom_pair(image: np.ndarray, mask: np.ndarray, zoom: float, channel_axis: int | None):
    """``image`` and ``mask`` resized by ``zoom`` on every spatial axis."""
    from skimage.transform import resize

    if zoom == 1:
        return image, mask
    spatial = mask.shape
    out = tuple(max(8, int(round(s * zoom))) for s in spatial)
    img = np.moveaxis(image, channel_axis, -1) if channel_axis is not None else image
    shape = out + ((img.shape[-1],) if channel_axis is not None else ())
    resized = resize(img.astype(np.float32), shape, order=1, preserve_range=True, anti_aliasing=zoom < 1)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        resized = np.clip(np.rint(resized), info.min, info.max)
    resized = resized.astype(image.dtype)
    if channel_axis is not None:
        resized = np.moveaxis(resized, -1, channel_axis)
    labels = resize(mask, out, order=0, preserve_range=True, anti_aliasing=False).astype(mask.dtype)
    return resized, labels


def zoom_z(image: np.ndarray, mask: np.ndarray, zoom: float):
    """``image`` (ZYX, no channels) and ``mask`` resized by ``zoom`` along Z only."""
    from skimage.transform import resize

    if zoom == 1:
        return image, mask
    out = (max(4, int(round(mask.shape[0] * zoom))), *mask.shape[1:])
    resized = resize(image.astype(np.float32), out, order=1, preserve_range=True, anti_aliasing=zoom < 1)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        resized = np.clip(np.rint(resized), info.min, info.max)
    labels = resize(mask, out, order=0, preserve_range=True, anti_aliasing=False).astype(mask.dtype)
    return resized.astype(image.dtype), labels


METHODS = ("plain", "auto", "spacing", "auto+spacing")


def segment_method(model, method: str, image, channel_axis, flips: bool, spacing=None,
                   unit: str = "um") -> tuple[np.ndarray, str]:
    """One of :data:`METHODS`: not resampled; ``diameter="auto"``; the voxel size only (the
    zoom to the model's training voxel size); both (what the CLI does for a file that records
    its voxel size)."""
    kwargs = {"diameter": "auto"} if method in ("auto", "auto+spacing") else {}
    if method in ("spacing", "auto+spacing"):
        kwargs.update(spacing=spacing, unit=unit)
    return segment_with(model, image, channel_axis, flips, **kwargs)


def segment_with(model, image, channel_axis, flips: bool, **kwargs) -> tuple[np.ndarray, str]:
    """Labels of ``predict(..., **kwargs)`` (``diameter``, ``spacing``, ``unit``) and its
    one-line scale message."""
    from napari_skipseg.inference.engine import predict, run

    result = run(predict(model, image, channel_axis=channel_axis, output="instances", device="cpu",
                         flips=flips, **kwargs))
    return np.asarray(result.labels), result.info.get("scale_message", "")


def z_spacing_rows(model, folder: Path, names: list[str], spacings: list[float], flips: bool,
                   only: list[str] | None = None, reference: bool = True) -> dict:
    """F1@0.5 per Z spacing (the files' own first, unless not ``reference``) for plain, auto,
    spacing, auto+spacing (or the methods in ``only``)."""
    from napari_skipseg.batch import open_source
    from napari_skipseg.evaluate import ImageScore, overall, score_image
    from napari_skipseg.io import read_image

    methods = [m for m in METHODS if not only or m in only]
    rows: dict = {}
    print(f"{'z um':>5} " + " ".join(f"{m:>13}" for m in methods) + f" {'objects':>8} {'seconds':>8}")
    first = None
    for target in ([None] if reference else []) + list(spacings):
        scores: dict = {m: [] for m in methods}
        msgs: dict = {m: [] for m in methods}
        t0 = time.perf_counter()
        for name in names:
            image, meta, ca = open_source(folder / "images" / name, None)
            if ca is not None or meta.spacing is None or len(meta.spacing) != 3:
                raise SystemExit(f"{name}: --z-spacings needs single-channel ZYX files that record their voxel size")
            own = tuple(float(v) for v in meta.spacing)
            first = first or own
            mask = np.asarray(read_image(folder / "masks" / name)[0])
            zoom = 1.0 if target is None else own[0] / target
            img, lab = zoom_z(np.asarray(image), mask, zoom)
            spacing = (own[0] * mask.shape[0] / lab.shape[0], own[1], own[2])  # the true voxel size after resizing
            for m in methods:
                pred, msg = segment_method(model, m, img, None, flips, spacing)
                metrics, counts = score_image(lab, pred, "instances", model.config.num_classes)
                scores[m].append(ImageScore(name, metrics, counts, 0.0))
                msgs[m].append(msg)
        f1 = {m: overall(v, "instances")["f1@0.5"] for m, v in scores.items()}
        ref = overall(next(iter(scores.values())), "instances")
        n_obj = ref["true_positives"] + ref["false_negatives"]
        key = f"{first[0]:g} (files)" if target is None else f"{target:g}"
        seconds = time.perf_counter() - t0
        print(f"{key:>5} " + " ".join(f"{f1[m]:13.4f}" for m in methods) + f" {n_obj:8d} {seconds:8.1f}", flush=True)
        rows[key] = {"z_spacing": first[0] if target is None else target, "f1": f1, "objects": n_obj,
                     "seconds": seconds, "messages": msgs,
                     "per_image": {m: {s.name: s.metrics["f1@0.5"] for s in v} for m, v in scores.items()}}
    return rows


def segment_plain(model, image, channel_axis, flips: bool) -> np.ndarray:
    """Labels without resampling."""
    return segment_with(model, image, channel_axis, flips)[0]


def segment_auto(model, image, channel_axis, flips: bool) -> tuple[np.ndarray, str]:
    """Labels with ``diameter="auto"`` (the engine estimates the size, resamples per block and
    maps the result back) and the one-line scale message."""
    return segment_with(model, image, channel_axis, flips, diameter="auto")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="nuclei2d")
    p.add_argument("--data", type=Path, default=None, help="folder with images/ and masks/ (default: shared data/<model>)")
    p.add_argument("--split", default="validation", choices=("validation", "all"))
    p.add_argument("--zooms", type=float, nargs="+", default=[0.5, 0.75, 1.0, 1.5, 2.0])
    p.add_argument("--limit", type=int, default=20, help="images to use (the first of the split, sorted)")
    p.add_argument("--flips", action="store_true", help="test-time flips (off by default: CPU time)")
    p.add_argument("--z-spacings", type=float, nargs="+", default=None,
                   help="3D: resample only Z to these voxel sizes (um) instead of --zooms")
    p.add_argument("--methods", nargs="+", default=None, choices=METHODS,
                   help="with --z-spacings: only these (default: all four); with --zooms: these "
                   "(default: plain auto; spacing and auto+spacing pass the zoomed file's true voxel "
                   "size, the file's / zoom)")
    p.add_argument("--spacing", type=float, nargs="+", default=None,
                   help="with --zooms: the voxel size (um) of files that record none (e.g. the plant crops of "
                   "nuclei3d: 0.28 0.127 0.127), for the spacing methods")
    p.add_argument("--no-reference", action="store_true", help="with --z-spacings: no row for the files as they are")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)

    from napari_skipseg.batch import open_source
    from napari_skipseg.evaluate import ImageScore, overall, score_image
    from napari_skipseg.inference.scale import unit_factor
    from napari_skipseg.io import read_image
    from napari_skipseg.model.store import load_model, resolve_model

    model = load_model(args.model)
    folder = args.data or Path(os.environ.get("SKIPSEG_DATA", ROOT.parent / "shared" / "data")) / args.model
    if args.split == "validation":
        names = sorted(json.loads((resolve_model(args.model) / "validation_split.json").read_text())["validation"])
    else:
        names = sorted(f.name for f in (folder / "images").iterdir())
    names = [n for n in names if (folder / "images" / n).exists()][: args.limit]
    results: dict = {"model": args.model, "data": str(folder), "images": names, "zooms": {}}
    print(f"{args.model}: {len(names)} images from {folder}, flips {'on' if args.flips else 'off'}")
    results["command"] = "python benchmarks/bench_scale.py " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.z_spacings:
        results["z_spacings"] = z_spacing_rows(model, folder, names, args.z_spacings, args.flips, args.methods,
                                               not args.no_reference)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        return 0
    methods = args.methods or ["plain", "auto"]
    print(f"{'zoom':>5} " + " ".join(f"{'F1 ' + m:>15}" for m in methods) + f" {'objects':>8} "
          + " ".join(f"{'s ' + m:>14}" for m in methods))
    for zoom in args.zooms:
        scores: dict = {m: [] for m in methods}
        msgs: dict = {m: [] for m in methods}
        seconds = dict.fromkeys(methods, 0.0)
        for name in names:
            image, meta, ca = open_source(folder / "images" / name, None)
            mask = np.asarray(read_image(folder / "masks" / name)[0])
            shape = mask.shape
            image, mask = zoom_pair(np.asarray(image), mask, zoom, ca)
            spacing, unit = meta.spacing, meta.unit or "um"
            if unit_factor(unit) is None:  # pixels: no voxel size recorded
                spacing, unit = args.spacing, "um"
            if spacing is not None and len(spacing) == mask.ndim:
                # the zoomed volume's true voxel size (the file's / zoom, exactly per axis)
                spacing = tuple(float(v) * a / b for v, a, b in zip(spacing, shape, mask.shape, strict=True))
            elif any(m in ("spacing", "auto+spacing") for m in methods):
                raise SystemExit(f"{name}: methods spacing and auto+spacing need files that record their voxel size, or --spacing")
            for m in methods:
                t0 = time.perf_counter()
                pred, msg = segment_method(model, m, image, ca, args.flips, spacing, unit)
                seconds[m] += time.perf_counter() - t0
                metrics, counts = score_image(mask, pred, "instances", model.config.num_classes)
                scores[m].append(ImageScore(name, metrics, counts, 0.0))
                msgs[m].append(msg)
        f1 = {m: overall(v, "instances")["f1@0.5"] for m, v in scores.items()}
        ref = overall(next(iter(scores.values())), "instances")
        n_obj = ref["true_positives"] + ref["false_negatives"]
        print(f"{zoom:5.2f} " + " ".join(f"{f1[m]:15.4f}" for m in methods) + f" {n_obj:8d} "
              + " ".join(f"{seconds[m]:14.1f}" for m in methods), flush=True)
        row: dict = {"objects": n_obj}
        for m in methods:
            row.update({f"f1_{m}": f1[m], f"seconds_{m}": seconds[m],
                        f"per_image_{m}": {s.name: s.metrics["f1@0.5"] for s in scores[m]}})
        row["messages"] = msgs  # per method
        results["zooms"][str(zoom)] = row
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
