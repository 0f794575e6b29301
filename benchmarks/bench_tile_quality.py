"""3D tiling against one whole-volume tile: what the tiles change in the output.

    PYTHONPATH=$PWD python benchmarks/bench_tile_quality.py [--limit 5] [--zoom 1.5]

nuclei3d's validation embryo volumes (51 x ~125 x ~128, one tile as they are) are zoomed by
``--zoom`` on every axis (1.5: 76 x 186 x 190, more voxels than one tile may have), then
segmented three ways at scale 1 with flips off: as **one tile** (``tile`` = the volume: the
whole-volume pass), with the **old** default tiles (``fit_tile`` of the configured
48 x 96 x 96, overlap 1/8 of the tile: what the engine chose before 2026-11-30) and with the
**new** default tiles (``fit_volume_tiles``: the fewest voxels computed within 5 configured
tiles' voxels, the configured tile's overlap). Printed: the share of voxels whose most
probable class equals the whole-volume pass's, the mean absolute probability difference,
and F1@0.5 against the zoomed masks (objects pooled).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=Path("/work/shared/data/nuclei3d_embryo"))
    p.add_argument("--limit", type=int, default=5)
    p.add_argument("--zoom", type=float, default=1.5)
    args = p.parse_args(argv)

    from bench_scale import zoom_pair

    from napari_skipseg.batch import open_source
    from napari_skipseg.evaluate import ImageScore, overall, score_image
    from napari_skipseg.inference.engine import plan, predict, run
    from napari_skipseg.inference.tiling import fit_tile
    from napari_skipseg.io import read_image
    from napari_skipseg.model.store import load_model, resolve_model

    model = load_model("nuclei3d")
    cfg = model.config
    names = sorted(json.loads((resolve_model("nuclei3d") / "validation_split.json").read_text())["validation"])
    names = names[: args.limit]
    scores: dict = {k: [] for k in ("whole", "old", "new")}
    agree: dict = {k: [] for k in ("old", "new")}
    diff: dict = {k: [] for k in ("old", "new")}
    for name in names:
        image, _, _ = open_source(args.data / "images" / name, None)
        mask = np.asarray(read_image(args.data / "masks" / name)[0])
        img, lab = zoom_pair(np.asarray(image), mask, args.zoom, None)
        tiles = {"whole": img.shape, "old": fit_tile(img.shape, tuple(cfg.default_tile()), 0.125, cfg.size_multiple()),
                 "new": None}
        res = {}
        for k, t in tiles.items():
            res[k] = run(predict(model, img, output="instances", keep_probabilities=True, device="cpu", tile=t,
                                 flips=False))
            m, c = score_image(lab, np.asarray(res[k].labels), "instances", cfg.num_classes)
            scores[k].append(ImageScore(name, m, c, 0.0))
        ref = res["whole"].probabilities
        for k in ("old", "new"):
            agree[k].append(float((np.argmax(res[k].probabilities, 0) == np.argmax(ref, 0)).mean()))
            diff[k].append(float(np.abs(res[k].probabilities - ref).mean()))
        print(f"{name} {img.shape}: old tiles {tiles['old']}, new {plan(cfg, img.shape)['tile']}; class agreement "
              f"old {agree['old'][-1]:.5f}, new {agree['new'][-1]:.5f}", flush=True)
    print("F1@0.5 " + ", ".join(f"{k} {overall(v, 'instances')['f1@0.5']:.4f}" for k, v in scores.items()))
    print("class agreement with the whole-volume pass " + ", ".join(f"{k} {np.mean(v):.5f}" for k, v in agree.items()))
    print("mean |p - p_whole| " + ", ".join(f"{k} {np.mean(v):.5f}" for k, v in diff.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
