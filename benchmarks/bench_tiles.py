"""How the tile shape sets the speed of a 3D model: the engine on one volume, tile by tile.

    python benchmarks/bench_tiles.py [--model hippocampus3d] [--volume 128]
        [--tiles auto 64x64x64 72x72x72 80x80x80] [--repeat 2]

For each tile shape (``auto``: the model's tile fitted to the volume, what the engine uses by
default) the engine segments a random ``volume``^3 float32 volume (semantic output, no test-time
flips, the default backend and threads) after one warm-up run; the best of ``--repeat`` runs is
printed in Mvox/s with the number of tiles and the voxels they compute. The plain loop (the
unfused model in eval mode on the whole volume at once, torch's threads) runs in the same
process, so the ratio to it compares figures of one run. A table, not a JSON file: this is the
experiment behind README's remark on 3D tiles, not one of the tracked benchmarks.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="hippocampus3d")
    parser.add_argument("--volume", type=int, default=128)
    parser.add_argument("--tiles", nargs="+", default=["auto", "64x64x64", "72x72x72", "80x80x80"])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import torch

    from napari_skipseg.inference.engine import plan, predict, run
    from napari_skipseg.inference.tiling import tile_grid
    from napari_skipseg.model.store import load_model

    model = load_model(args.model)
    cfg = model.config
    if cfg.spatial_dims != 3:
        sys.exit(f"{args.model} is a {cfg.spatial_dims}D model; this benchmark is for 3D models")
    n = args.volume
    image = np.random.default_rng(0).normal(size=(n, n, n)).astype(np.float32)

    def best_of(fn) -> float:
        fn()
        times = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    x = torch.from_numpy(image)[None, None]

    def plain():
        with torch.inference_mode():
            model.eval()(x)

    plain_s = best_of(plain)
    print(f"{args.model}, {n}^3 volume, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'tile':<18}{'tiles':>6}{'Mvox computed':>15}{'seconds':>9}{'Mvox/s':>8}{'x plain':>9}")
    print(f"{'plain (whole)':<18}{1:>6}{n**3 / 1e6:>15.2f}{plain_s:>9.2f}{n**3 / plain_s / 1e6:>8.3f}{1.0:>9.2f}")
    for spec in args.tiles:
        tile = None if spec == "auto" else tuple(int(v) for v in spec.split("x"))
        shape = plan(cfg, (n, n, n), tile=tile)["tile"]
        overlap = tuple(int(round(t * predict.__kwdefaults__["overlap"])) for t in shape)  # the engine's default
        count = len(tile_grid((n, n, n), shape, overlap))
        seconds = best_of(lambda tile=tile: run(predict(model, image, output="semantic", tile=tile, flips=False)))
        label = f"{spec} ({'x'.join(map(str, shape))})" if spec == "auto" else spec
        print(f"{label:<18}{count:>6}{count * int(np.prod(shape)) / 1e6:>15.2f}{seconds:>9.2f}"
              f"{n**3 / seconds / 1e6:>8.3f}{plain_s / seconds:>9.2f}")


if __name__ == "__main__":
    main()
