"""Seconds per 512 x 512 slice (2D models) or per 128^3 block (3D models) of each bundled
model on this CPU, end to end through the engine (normalise, tile, infer, post-process),
written into the model cards with ``--write``.

    python benchmarks/bench_model_cards.py [--models em2d nuclei2d] [--threads 2] [--repeat 3] [--write]

Run it on an otherwise idle machine: the figure goes into each card's ``speed`` line.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np


def measure(name: str, repeat: int, flips: bool | None = None) -> tuple[float, str]:
    from napari_skipseg.inference.engine import predict, run
    from napari_skipseg.model.store import load_model

    model = load_model(name)
    cfg = model.config
    rng = np.random.default_rng(0)
    if cfg.spatial_dims == 2:
        shape, what = (512, 512), "512 x 512 slice"
    else:
        shape, what = (128, 128, 128), "128^3 block"
    if cfg.in_channels > 1:
        image = rng.integers(0, 255, (*shape, cfg.in_channels), dtype=np.uint8)
        channel_axis = len(shape)
    else:
        image, channel_axis = rng.integers(0, 255, shape, dtype=np.uint8), None
    output = "instances" if cfg.output == "instances" else "semantic"
    run(predict(model, image, output=output, channel_axis=channel_axis, device="cpu", flips=flips))  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        run(predict(model, image, output=output, channel_axis=channel_axis, device="cpu", flips=flips))
        times.append(time.perf_counter() - t)
    return float(np.median(times)), what


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", help="default: every bundled model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--write", action="store_true", help="write the figure into the bundled cards")
    args = ap.parse_args()

    import torch

    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.store import list_models, render_card

    torch.set_num_threads(args.threads)
    entries = [e for e in list_models() if e.source == "bundled" and (not args.models or e.name in args.models)]
    cpu = platform.processor() or platform.machine()
    rows = []
    for e in entries:
        seconds, what = measure(e.name, args.repeat)
        line = f"{seconds:.2f} s per {what} on {args.threads} CPU threads ({cpu}, torch {torch.__version__}), end to end"
        row = {"model": e.name, "seconds": round(seconds, 3), "per": what, "threads": args.threads}
        if e.config.inference.get("flips"):  # the default runs test-time flips: also without
            plain, _ = measure(e.name, args.repeat, flips=False)
            line += f", with its default test-time flips ({plain:.2f} s without: --no-flips)"
            row["seconds_without_flips"] = round(plain, 3)
        rows.append(row)
        print(f"{e.name:<16} {line}")
        if args.write:
            path = Path(e.path) / "config.json"
            cfg = ModelConfig.from_json(path)
            cfg.card["speed"] = line
            cfg.to_json(path)
            (Path(e.path) / "card.md").write_text(render_card(cfg))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
