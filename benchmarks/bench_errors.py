"""What an instance model gets wrong: every missed object sorted by the reason.

Each image of a model's split is segmented as ``skipseg evaluate`` does it (the engine, the
card's thresholds and test-time flips), objects are matched at IoU 0.5, and each true object
left without a match is put under one reason, looked at in that order:

- ``no foreground``: under 30 % of it is foreground (interior + boundary > the mask threshold);
- ``foreground, no object``: foreground, but no predicted object holds 30 % of it (its region
  had no seed, or came out under the size floor);
- ``merged: one seed over both``: the predicted object holding most of it holds most of
  another true object too, and one seed (connected interior above the seed threshold) lies in
  both;
- ``merged: one had no seed``: the same, but no seed lies in both: one of the two had none,
  and the other's flooded it (both objects of the pair are counted so);
- ``split``: two or more predicted objects hold 20 % of it each;
- ``outline``: one object covers it, but not well enough for IoU 0.5.

For merged pairs it reports along which axis their centres lie apart (physical units with
``--spacing``): nuclei stacked in Z are the usual 3D merge. The unmatched predicted objects
(false positives) are sorted as ``nothing there`` (under 30 % on true objects), ``merged``
(it holds at least half of two or more true objects) and ``piece`` (the rest: part of a true
object, or one outlined too poorly to match).

    PYTHONPATH=$PWD python benchmarks/bench_errors.py --model nuclei3d \\
        --data ../shared/data/nuclei3d_embryo --split validation --spacing 1.75 0.8 0.8 [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REASONS = ("no foreground", "foreground, no object", "merged: one seed over both", "merged: one had no seed",
           "split", "outline")


def sort_errors(truth: np.ndarray, labels: np.ndarray, probabilities: np.ndarray, post: dict,
                spacing=None) -> dict:
    """Reasons for each missed true object and each unmatched predicted one in one image (see
    the module's docstring), plus the separations of merged pairs."""
    from scipy import ndimage as ndi

    from napari_skipseg.metrics import overlap_table

    table, ti, pi = overlap_table(truth, labels)
    t_size, p_size = table.sum(1), table.sum(0)
    iou = table / np.maximum(t_size[:, None] + p_size[None, :] - table, 1)
    match = (iou > 0.5) & (ti != 0)[:, None] & (pi != 0)[None, :]  # as match_instances pairs them
    matched_t, matched_p = set(ti[match.any(1)].tolist()), set(pi[match.any(0)].tolist())
    t_ids, p_ids = ti[ti != 0], pi[pi != 0]
    row = {int(t): k for k, t in enumerate(ti)}
    col = {int(p): k for k, p in enumerate(pi)}
    foreground = probabilities[1] + probabilities[2] > post["mask"]
    seeds, _ = ndi.label(probabilities[1] > post["seed"])
    seed_size = np.bincount(seeds.ravel())
    spacing = np.ones(truth.ndim) if spacing is None else np.asarray(spacing, float)
    centres = dict(zip(ti[1:].tolist(), ndi.center_of_mass(np.ones_like(truth), truth, ti[1:]), strict=True))

    def holds_most(p: int) -> list[int]:
        """True objects that predicted object ``p`` holds at least half of."""
        c = col[p]
        return [int(t) for k, t in enumerate(ti) if t and table[k, c] >= 0.5 * t_size[k]]

    missed, wrong, merges = Counter(), Counter(), []
    for t in t_ids.tolist():
        if t in matched_t:
            continue
        k = row[t]
        where = truth == t
        if foreground[where].mean() < 0.3:
            missed["no foreground"] += 1
            continue
        shares = table[k, pi != 0] / t_size[k]
        best = int(pi[pi != 0][np.argmax(shares)]) if shares.size else 0
        if not shares.size or shares.max() < 0.3:
            missed["foreground, no object"] += 1
            continue
        if (shares >= 0.2).sum() >= 2:
            missed["split"] += 1
            continue
        both = holds_most(best)
        if len(both) >= 2 and t in both:
            big = seed_size >= post.get("min_seed_size", 1)
            own = {int(s) for s in np.unique(seeds[where]) if s and big[s]}
            other = next(o for o in both if o != t)
            shared = own & set(np.unique(seeds[truth == other]).tolist())
            missed["merged: one seed over both" if shared else "merged: one had no seed"] += 1
            d = (np.asarray(centres[t]) - np.asarray(centres[other])) * spacing
            merges.append(int(np.argmax(np.abs(d))))
            continue
        missed["outline"] += 1
    for p in p_ids.tolist():
        if p in matched_p:
            continue
        c = col[p]
        on_true = 1 - (table[row[0], c] if 0 in row else 0) / p_size[c]
        if on_true < 0.3:
            wrong["nothing there"] += 1
        elif len(holds_most(p)) >= 2:
            wrong["merged"] += 1
        else:
            wrong["piece"] += 1
    return {"missed": missed, "unmatched predictions": wrong, "merge axes": merges}


def segmented_split(model_name: str, data: str | Path, split: str, diameter=None, limit: int = 0):
    """``(model, pairs, segment)`` for a model's ``split`` (``train``, ``validation`` or
    ``all``) of the files in ``data`` (images/ and masks/); ``segment(image_path, mask_path)``
    returns ``(image, probabilities, labels, truth)`` as ``skipseg evaluate`` segments it (the
    engine, the card's thresholds and flips, the file read with its channel axis)."""
    import tifffile

    from napari_skipseg.batch import open_source
    from napari_skipseg.evaluate import pair_files, split_names
    from napari_skipseg.inference.engine import predict, run
    from napari_skipseg.model.store import load_model, resolve_model

    folder = resolve_model(model_name)
    model = load_model(folder)
    if model.config.output != "instances":
        raise SystemExit(f"model {model.config.name!r} is semantic: these benchmarks are about instances")
    data = Path(data)
    names = None if split == "all" else split_names(folder, split)
    if names is not None:  # a split over several folders (nuclei3d: embryos and plant crops)
        names = [n for n in names if (data / "images" / n).is_file()]
    pairs = pair_files(data / "images", data / "masks", names)
    pairs = pairs[:limit] if limit else pairs

    def segment(image_path: Path, mask_path: Path):
        image, _, channel_axis = open_source(image_path, None)
        image = np.asarray(image)
        seg = run(predict(model, image, output="instances", channel_axis=channel_axis, keep_probabilities=True,
                          diameter=diameter))
        return image, np.asarray(seg.probabilities, np.float32), np.asarray(seg.labels), tifffile.imread(mask_path)

    return model, pairs, segment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei3d")
    parser.add_argument("--data", default=os.path.join(os.environ.get("SKIPSEG_DATA", "../shared/data"),
                                                       "nuclei3d_embryo"))
    parser.add_argument("--split", default="validation", choices=("validation", "train", "all"))
    parser.add_argument("--spacing", type=float, nargs="+", help="pixel size per axis, for the merge axes")
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--diameter", help="object diameter: 'auto' or pixels (default: none, the image as it is)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    from napari_skipseg.metrics import InstanceScores, match_instances

    diameter = args.diameter if args.diameter in (None, "auto") else float(args.diameter)
    model, pairs, segment = segmented_split(args.model, args.data, args.split, diameter, args.limit)
    cfg = model.config
    total, missed, wrong, axes = InstanceScores(0, 0, 0, 0.0), Counter(), Counter(), Counter()
    for image_path, mask_path in pairs:
        _, probabilities, labels, truth = segment(image_path, mask_path)
        total = total + match_instances(truth, labels, 0.5)
        found = sort_errors(truth, labels, probabilities, dict(cfg.postprocess), args.spacing)
        missed.update(found["missed"])
        wrong.update(found["unmatched predictions"])
        axes.update(found["merge axes"])
    names_of_axes = "ZYX"[-labels.ndim:]
    result = {
        "model": cfg.name, "data": str(args.data), "split": args.split, "images": len(pairs),
        "f1@0.5": round(total.f1, 4), "true positives": total.tp, "false positives": total.fp,
        "false negatives": total.fn,
        "missed, by reason": {r: missed[r] for r in REASONS},
        "unmatched predictions": dict(wrong),
        "merged pairs apart mainly along": {names_of_axes[a]: n for a, n in sorted(axes.items())},
        "spacing": args.spacing, "diameter": args.diameter,
    }
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
