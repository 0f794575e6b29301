"""Seconds per 512x512 slice for a model on this machine, end to end through the engine.

    python benchmarks/bench_inference.py [--model nuclei2d] [--slices 8] [--device auto] [--flips on|off]

Prints a JSON line: network-only and engine (normalise, tile, blend, post-process) times.
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei2d")
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--output", default="instances")
    parser.add_argument("--flips", choices=("model", "on", "off"), default="model",
                        help="test-time flips: the model card's default, or on/off")
    args = parser.parse_args()

    import torch

    from napari_skipseg import load_model
    from napari_skipseg._sample_data import synthetic_nuclei
    from napari_skipseg.inference.device import describe, select_device
    from napari_skipseg.inference.engine import predict, run

    device = select_device(args.device)
    model = load_model(args.model, device=device)
    image, _ = synthetic_nuclei((args.slices, args.size, args.size), radius=9.0, seed=5)

    x = torch.randn(1, model.config.in_channels, args.size, args.size, device=device)
    with torch.inference_mode():
        model(x)
        t = time.perf_counter()
        for _ in range(3):
            model(x)
        net = (time.perf_counter() - t) / 3

    flips = None if args.flips == "model" else args.flips == "on"
    run(predict(model, image[:1], output=args.output, device=device, flips=flips))  # warm-up
    t = time.perf_counter()
    result = run(predict(model, image, output=args.output, device=device, flips=flips))
    engine = (time.perf_counter() - t) / args.slices
    print(json.dumps({
        "model": args.model, "device": describe(device), "slice": [args.size, args.size], "flips": args.flips,
        "network_s_per_slice": round(net, 3), "engine_s_per_slice": round(engine, 3),
        "megapixels_per_s": round(args.size**2 / engine / 1e6, 3),
        "objects": int(result.labels.max()) if result.labels is not None else None,
    }))


if __name__ == "__main__":
    main()
