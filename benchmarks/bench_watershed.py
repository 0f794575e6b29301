"""The instance post-processing (``postprocess.seeded_watershed``: only the foreground regions
holding several seeds are flooded) against scikit-image's watershed over the whole image, on
real probabilities: pixels that differ and time, at several threshold sets.

    SKIPSEG_DATA=../shared/data PYTHONPATH=$PWD python benchmarks/bench_watershed.py [--cache DIR]

Images: the nuclei2d validation image with the most objects, its probabilities tiled to
1024 x 1024 (as bench_annotate.py times the sliders), and the nuclei3d validation volume with
the most objects. No test-time flips. The reference is ``watershed(-interior, markers=seeds, mask=foreground)`` with small
seeds dropped before and small objects after, renumbered (``postprocess._keep_sizes``).
Median of 5 runs each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SKIPSEG_DATA", ROOT.parent / "shared" / "data"))
THRESHOLDS = [(0.99, 0.7, 4, 4), (0.99, 0.5, 10, 50), (0.5, 0.5, 4, 8), (0.9, 0.2, 4, 4), (0.3, 0.8, 1, 1),
              (0.95, 0.5, 10, 50)]  # seed, mask, min_seed_size, min_size


def reference(interior, seeds, mask, min_seed, min_size):
    from skimage.segmentation import watershed

    from napari_skipseg.inference.postprocess import _keep_sizes

    markers = _keep_sizes(seeds, min_seed, renumber=False)
    return _keep_sizes(watershed(-interior, markers=markers, mask=mask), min_size, renumber=True)


def median_time(fn, *args, repeat=5) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cache", type=Path, default=None, help="folder to keep probabilities in (bench_annotate's)")
    args = p.parse_args(argv)

    from scipy import ndimage as ndi

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_annotate import model_output

    from napari_skipseg.batch import open_source
    from napari_skipseg.inference.postprocess import seeded_watershed
    from napari_skipseg.io import read_image
    from napari_skipseg.model.store import load_model, resolve_model

    cases = []
    for name, folder in (("nuclei2d", DATA / "nuclei2d"), ("nuclei3d", DATA / "nuclei3d_embryo")):
        names = sorted(json.loads((resolve_model(name) / "validation_split.json").read_text())["validation"])
        names = [n for n in names if (folder / "images" / n).exists()]
        if not names:
            print(f"no {name} validation images in {folder}/images (set SKIPSEG_DATA)", file=sys.stderr)
            return 2
        # the image with the most objects
        names = [max(names, key=lambda n: len(np.unique(np.asarray(read_image(folder / "masks" / n)[0]))))]
        image, _, ca = open_source(folder / "images" / names[0], None)
        probs = model_output(load_model(name), np.asarray(image), ca, False, args.cache, names[0])
        if probs.ndim == 3:
            reps = [int(np.ceil(1024 / n)) for n in probs.shape[1:]]
            probs = np.ascontiguousarray(np.tile(probs, (1, *reps))[:, :1024, :1024])
        cases.append((f"{name} {names[0][:16]} {' x '.join(map(str, probs.shape[1:]))}", probs))
    print("seed mask min_seed min_size | objects | pixels differing | ms ours / scikit-image")
    worst = 0
    for what, probs in cases:
        print(what)
        interior, foreground = probs[1], probs[1] + probs[2]
        for seed_t, mask_t, min_seed, min_size in THRESHOLDS:
            seeds, mask = ndi.label(interior > seed_t)[0], foreground > mask_t
            ours = seeded_watershed(interior, seeds, mask, min_seed, min_size)
            ref = reference(interior, seeds, mask, min_seed, min_size)
            differ = int((ours != ref).sum())
            worst = max(worst, differ)
            t_ours = median_time(seeded_watershed, interior, seeds, mask, min_seed, min_size)
            t_ref = median_time(reference, interior, seeds, mask, min_seed, min_size)
            print(f"  {seed_t:4g} {mask_t:4g} {min_seed:8d} {min_size:8d} | {int(ref.max()):7d} | {differ:16d} | "
                  f"{t_ours * 1000:6.1f} / {t_ref * 1000:6.1f}", flush=True)
    print(f"most pixels differing in one case: {worst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
