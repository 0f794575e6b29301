"""nuclei2d's ``diameter="auto"`` with and without its training size range, on data it was
neither trained nor tuned on: the middle Z slice of every mouse-embryo volume
(../shared/data/nuclei3d_embryo: another organism, another microscope, 2D slices of 3D nuclei).

    SKIPSEG_DATA=../shared/data python benchmarks/bench_range_heldout.py [--limit N]

Prints pooled F1@0.5 per method: ``plain`` (not resampled), ``auto, range`` (the bundled card:
resample only objects outside the training range), ``auto, median`` (the card without
``diameter_range``: every image resampled to the training median).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="first N volumes only (0: all)")
    args = parser.parse_args()

    import sys

    import tifffile

    from napari_skipseg.metrics import InstanceScores, match_instances
    from napari_skipseg.model.store import load_model

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_scale import (  # the same calls as the zoom benchmark (no flips)
        segment_auto,
        segment_plain,
    )

    root = Path(os.environ.get("SKIPSEG_DATA", "../shared/data")) / "nuclei3d_embryo"
    names = sorted(p.name for p in (root / "images").glob("*.tif"))
    if args.limit:
        names = names[: args.limit]
    if not names:
        raise SystemExit(f"no images in {root / 'images'}: set SKIPSEG_DATA to the shared data folder")
    ranged = load_model("nuclei2d")
    median = copy.deepcopy(ranged)
    median.config.training_scale = {k: v for k, v in median.config.training_scale.items() if k != "diameter_range"}
    methods = {"plain": (ranged, False), "auto, range": (ranged, True), "auto, median": (median, True)}
    totals = {m: InstanceScores(0, 0, 0, 0.0) for m in methods}
    for name in names:
        vol = tifffile.imread(root / "images" / name)
        gt = tifffile.imread(root / "masks" / name)
        z = vol.shape[0] // 2
        image = vol[z].astype(np.float32)
        truth = gt[z].astype(np.int64)
        for method, (model, auto) in methods.items():
            labels = segment_auto(model, image, None, False)[0] if auto else segment_plain(model, image, None, False)
            totals[method] = totals[method] + match_instances(truth, np.asarray(labels))
    print(json.dumps({"data": "nuclei3d_embryo middle Z slices", "images": len(names),
                      "f1@0.5": {m: round(s.f1, 4) for m, s in totals.items()},
                      "objects": totals["plain"].tp + totals["plain"].fn}))


if __name__ == "__main__":
    main()
