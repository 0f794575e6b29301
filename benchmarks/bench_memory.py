"""Does segmenting the same stack again and again grow the process's memory?

    python benchmarks/bench_memory.py [--runs 50] [--shape 4 256 256] [--model auto] [--device cpu]

Runs ``napari_skipseg.segment`` ``--runs`` times in one process on one synthetic stack and
prints the resident set size (RSS) after each run, then one JSON line with the first, last
and largest RSS and the growth (last - first, max - first) in MiB. RSS comes from psutil
when installed, else from ``/proc/self/status`` (VmRSS). ``--model auto`` takes the bundled
``nuclei2d`` when its weights are installed, else an untrained network built from its recipe
(same size and speed); ``--model tiny`` a four-channel test network. On CUDA the allocated
GPU memory after each run is printed too.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

MIB = 1024 * 1024


def rss_bytes() -> int:
    """Resident set size of this process."""
    try:
        import psutil
    except ImportError:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("cannot measure RSS: no psutil and no /proc/self/status") from None
    return psutil.Process(os.getpid()).memory_info().rss


def build_model(name: str):
    """The model to run and a short description of it."""
    import torch

    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.store import list_models, load_model
    from napari_skipseg.model.unet import SkipUNet

    if name == "tiny":
        torch.manual_seed(0)
        cfg = ModelConfig(name="tiny", base_channels=4, depth=2, output="instances", num_classes=3,
                          class_names=["background", "interior", "boundary"], tile=[128, 128])
        return SkipUNet(cfg).eval(), "tiny (untrained, 4 channels, depth 2)"
    if name != "auto":
        return load_model(name), name
    if "nuclei2d" in {e.name for e in list_models()}:
        return load_model("nuclei2d"), "nuclei2d (bundled)"
    recipe = Path(__file__).resolve().parent.parent / "models" / "nuclei2d" / "recipe.json"
    cfg = ModelConfig.from_dict(json.loads(recipe.read_text())["model"])
    torch.manual_seed(0)
    return SkipUNet(cfg).eval(), "nuclei2d architecture, untrained (bundled weights not installed)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--shape", type=int, nargs="+", default=[4, 256, 256])
    parser.add_argument("--model", default="auto", help="auto, tiny, or a model name/folder")
    parser.add_argument("--output", default="instances")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only the summary")
    args = parser.parse_args()

    import torch

    import napari_skipseg
    from napari_skipseg._sample_data import synthetic_nuclei

    model, described = build_model(args.model)
    image, _ = synthetic_nuclei(tuple(args.shape), seed=7)
    cuda = args.device.startswith("cuda")
    figures, gpu = [], []
    t0 = time.perf_counter()
    for i in range(args.runs):
        labels = napari_skipseg.segment(image, model=model, output=args.output, device=args.device)
        del labels
        figures.append(rss_bytes())
        if cuda:
            gpu.append(torch.cuda.memory_allocated())
        if not args.quiet:
            extra = f"  gpu allocated {gpu[-1] / MIB:8.1f} MiB" if cuda else ""
            print(f"run {i + 1:3d}: rss {figures[-1] / MIB:8.1f} MiB{extra}", flush=True)
    first, last, peak = figures[0], figures[-1], max(figures)
    summary = {
        "model": described, "shape": args.shape, "runs": args.runs, "device": args.device,
        "seconds": round(time.perf_counter() - t0, 1),
        "rss_first_mib": round(first / MIB, 1), "rss_last_mib": round(last / MIB, 1),
        "rss_max_mib": round(peak / MIB, 1),
        "rss_median_mib": round(sorted(figures)[len(figures) // 2] / MIB, 1),
        "growth_last_minus_first_mib": round((last - first) / MIB, 1),
        "max_growth_mib": round((peak - first) / MIB, 1),
    }
    if cuda:
        summary["gpu_allocated_last_mib"] = round(gpu[-1] / MIB, 1)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
