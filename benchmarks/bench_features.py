"""Seconds to capture every skip connection of a 512x512 slice (and to summarise, ablate,
and trace gradients), for a model on this machine.

    python benchmarks/bench_features.py [--model nuclei2d] [--size 512] [--device cpu] [--repeat 5]

Without stored weights for ``--model`` (e.g. before the bundled model is trained) the
network is built from ``models/<model>/recipe.json`` with random weights: the time depends
on the architecture, not on the weights. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def build_model(name: str):
    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.store import ModelLoadError, load_model
    from napari_skipseg.model.unet import SkipUNet

    try:
        return load_model(name), "trained"
    except ModelLoadError:
        recipe = ROOT / "models" / name / "recipe.json"
        cfg = ModelConfig.from_dict(json.loads(recipe.read_text())["model"])
        return SkipUNet(cfg).eval(), "random weights (architecture of the recipe)"


def timed(fn, repeat: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nuclei2d")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()

    import numpy as np
    import torch

    from napari_skipseg._sample_data import synthetic_nuclei
    from napari_skipseg.features import (
        ablate_skips,
        capture_features,
        channel_norm,
        gradient_flow,
        pca_rgb,
        prepare_input,
    )
    from napari_skipseg.features.taps import as_taps
    from napari_skipseg.inference.device import describe, select_device
    from napari_skipseg.inference.engine import run

    if args.threads:
        torch.set_num_threads(args.threads)
    device = select_device(args.device)
    model, weights = build_model(args.model)
    taps = as_taps(model)
    image, _ = synthetic_nuclei((args.size, args.size), seed=1)
    prepared = prepare_input(taps, image)

    capture = run(capture_features(taps, image, device=device))
    t_capture = timed(lambda: run(capture_features(taps, image, device=device)), args.repeat)
    t_prepared = timed(lambda: run(capture_features(taps, prepared, device=device)), args.repeat)
    with torch.inference_mode():
        x = torch.from_numpy(prepared.data[None]).to(device)
        t_plain = timed(lambda: model.to(device)(x), args.repeat)
    t_norm = timed(lambda: [channel_norm(r.encoder) for r in capture.records], args.repeat)
    t_pca = timed(lambda: [pca_rgb(r.encoder) for r in capture.records], args.repeat)
    t_ablate = timed(lambda: run(ablate_skips(taps, prepared, 0, device=device)), max(1, args.repeat // 2))
    t_grad = timed(lambda: run(gradient_flow(taps, prepared, device=device)), max(1, args.repeat // 2))
    mb = sum(r.maps(k).nbytes for r in capture.records for k in ("encoder", "decoder", "fused")) / 2**20
    print(json.dumps({
        "model": args.model, "weights": weights, "device": describe(device),
        "slice": [args.size, args.size], "levels": len(capture.records),
        "capture_all_levels_s": round(t_capture, 3),
        "capture_from_prepared_s": round(t_prepared, 3),
        "plain_forward_s": round(t_plain, 3),
        "norm_all_levels_encoder_s": round(t_norm, 3),
        "pca_all_levels_encoder_s": round(t_pca, 3),
        "ablation_s": round(t_ablate, 3),
        "gradient_flow_s": round(t_grad, 3),
        "feature_memory_mib": round(mb, 1),
        "repeat": args.repeat,
        "numpy": np.__version__, "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
