"""Post-processing tried against touching objects merged (what ``bench_errors.py`` finds), on
an instance model's own probabilities: F1 at IoU 0.5 per split for each variant.

- ``bundled``: the card's seeded watershed (``instance_labels`` with its thresholds);
- ``thresholds from train``: seed and mask thresholds searched on the training split
  (``skipseg evaluate --tune``'s grid), applied to every split (needs ``--splits`` with train);
- ``distance seeds h=H``: seeds from the maxima (h-maxima, ``H`` object diameters deep) of the
  distance to the foreground's edge, in units of the card's training object diameter per axis,
  flooded down that distance within the foreground;
- ``seedless regions kept >=N``: the bundled result plus every foreground region that holds
  no object and has at least ``N`` pixels, as an object of its own;
- ``finer in Z xF`` (3D, ``--z-zooms``): the volume resampled ``F`` times finer in Z before the
  network, its probabilities resampled back (linear), then the bundled watershed.

    PYTHONPATH=$PWD python benchmarks/bench_postprocess_variants.py --model nuclei3d \\
        --data ../shared/data/nuclei3d_embryo --splits train validation --z-zooms 1.5 2 [--json OUT]
    PYTHONPATH=$PWD python benchmarks/bench_postprocess_variants.py --model nuclei2d \\
        --data ../shared/data/nuclei2d --splits validation
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def distance_seeds(probabilities: np.ndarray, post: dict, diameter, h: float) -> np.ndarray:
    """Objects flooded from the h-maxima of the distance (in object diameters) to the edge of
    the foreground."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima

    from napari_skipseg.inference.postprocess import seeded_watershed

    fg = probabilities[1] + probabilities[2] > post["mask"]
    dist = ndi.distance_transform_edt(fg, sampling=1 / np.asarray(diameter, float)).astype(np.float32)
    seeds = ndi.label(h_maxima(dist, h) & fg)[0]
    return seeded_watershed(dist, seeds, fg, min_size=int(post["min_size"]))


def keep_seedless(probabilities: np.ndarray, post: dict, floor: int) -> np.ndarray:
    """The bundled labels plus each foreground region without an object of at least ``floor``
    pixels."""
    from scipy import ndimage as ndi

    from napari_skipseg.inference.postprocess import instance_labels

    labels = instance_labels(probabilities, post)
    regions, n = ndi.label(probabilities[1] + probabilities[2] > post["mask"])
    taken = np.zeros(n + 1, bool)
    taken[np.unique(regions[labels > 0])] = True
    size = np.bincount(regions.ravel(), minlength=n + 1)
    new = np.flatnonzero(~taken & (size >= floor))
    new = new[new > 0]
    lut = np.zeros(n + 1, np.uint32)
    lut[new] = int(labels.max()) + 1 + np.arange(new.size, dtype=np.uint32)
    return np.where(labels > 0, labels, lut[regions])


def finer_in_z(model, image: np.ndarray, factor: float) -> np.ndarray:
    """Probabilities of ``image`` segmented ``factor`` times finer in Z, back on its grid."""
    from scipy import ndimage as ndi

    from napari_skipseg.inference.engine import predict, run

    fine = ndi.zoom(image.astype(np.float32), (factor, 1, 1), order=1)
    seg = run(predict(model, fine, output="instances", keep_probabilities=True))
    probs = np.asarray(seg.probabilities, np.float32)
    back = np.stack([ndi.zoom(c, np.array(image.shape) / np.array(c.shape), order=1) for c in probs])
    return back[(slice(None), *(slice(0, s) for s in image.shape))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei3d")
    parser.add_argument("--data", default=os.path.join(os.environ.get("SKIPSEG_DATA", "../shared/data"),
                                                       "nuclei3d_embryo"))
    parser.add_argument("--splits", nargs="+", default=["validation"], choices=("train", "validation"))
    parser.add_argument("--heights", type=float, nargs="+", default=[0.05, 0.1, 0.15],
                        help="h-maxima depths for the distance seeds, in object diameters")
    parser.add_argument("--floors", type=int, nargs="+", default=[1, 4, 10],
                        help="size floors for seedless regions, in multiples of the card's min_size")
    parser.add_argument("--z-zooms", type=float, nargs="*", default=[])
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))

    from bench_errors import segmented_split

    from napari_skipseg.evaluate import tune_instances
    from napari_skipseg.inference.postprocess import instance_labels
    from napari_skipseg.metrics import InstanceScores, match_instances

    data = {}  # split -> [(image, probabilities, truth)]
    for split in args.splits:
        model, pairs, segment = segmented_split(args.model, args.data, split)
        data[split] = []
        for pair in pairs:
            image, probabilities, _, truth = segment(*pair)
            data[split].append((image, probabilities, truth))
        print(f"{split}: {len(data[split])} images segmented", flush=True)
    cfg = model.config
    post = dict(cfg.postprocess)
    diameter = cfg.training_scale["object_diameter"]

    def f1(labels_of) -> dict:
        out = {}
        for split, items in data.items():
            total = InstanceScores(0, 0, 0, 0.0)
            for image, probs, truth in items:
                total = total + match_instances(truth, labels_of(image, probs), 0.5)
            out[split] = round(total.f1, 4)
        return out

    rows = {"bundled": f1(lambda image, p: instance_labels(p, post))}
    if "train" in data:
        tuned, _ = tune_instances(cfg, [(p, t) for _, p, t in data["train"]])
        rows[f"thresholds from train (seed {tuned['seed']:g}, mask {tuned['mask']:g}, "
             f"min_size {tuned['min_size']:g})"] = f1(lambda image, p: instance_labels(p, tuned))
    for h in args.heights:
        rows[f"distance seeds h={h:g}"] = f1(lambda image, p, h=h: distance_seeds(p, post, diameter, h))
    for k in args.floors:
        floor = k * int(post["min_size"])
        rows[f"seedless regions kept >={floor}"] = f1(lambda image, p, floor=floor: keep_seedless(p, post, floor))
    for z in args.z_zooms:
        rows[f"finer in Z x{z:g}"] = f1(lambda image, p, z=z: instance_labels(finer_in_z(model, image, z), post))
    result = {"model": cfg.name, "data": str(args.data), "f1@0.5": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    for name, scores in rows.items():
        print(f"{name:60s} " + "  ".join(f"{s} {v:.4f}" for s, v in scores.items()))


if __name__ == "__main__":
    main()
