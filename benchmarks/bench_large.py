"""Peak memory of segmenting stacks larger than memory: flat, whatever the stack's size.

    python benchmarks/bench_large.py [--sizes 0.5 1 2 4] [--plane 2048] [--tile 512]
                                     [--batch-size 4] [--json out.json] [--keep DIR]

For each size (GB of uint16 on disk) it writes a stack of ``plane x plane`` slices as a zarr
store in a temporary folder (skipping sizes that do not fit the free disk space, with a
margin for the result), then runs ``skipseg segment stack.zarr -o labels.zarr --kind
semantic`` in a fresh subprocess with a small model (by default a SkipUNet with 2 base
channels and depth 1, saved into a temporary SKIPSEG_HOME: the benchmark is about memory, and
time grows with the voxels, about 1 s per megapixel on 2 busy CPU cores), and records that subprocess's peak resident set size
(``ru_maxrss``), its time and its throughput. It prints a table and one JSON line (and writes
it to ``--json``), checks that every labels store is complete, and deletes the temporary
folder. The claim under test: peak RSS stays flat across sizes and under 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GB = 1024**3

CHILD = r"""
import resource, sys, time, torch
torch.set_num_threads(max(1, __import__("os").cpu_count() or 1))
from napari_skipseg.cli import main
t0 = time.perf_counter()
code = main(sys.argv[1:])
seconds = time.perf_counter() - t0
print("BENCH", code, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, flush=True)
"""


def make_model(home: Path, tile: int, base_channels: int, depth: int) -> None:
    import torch

    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.store import save_model
    from napari_skipseg.model.unet import SkipUNet

    torch.manual_seed(0)
    cfg = ModelConfig(name="bench", spatial_dims=2, num_classes=2, base_channels=base_channels, depth=depth,
                      output="semantic",
                      class_names=["background", "object"], tile=[tile, tile],
                      card={"task": "untrained benchmark model (speed and memory only)"})
    save_model(SkipUNet(cfg).eval(), home / "models" / "bench")


def make_stack(path: Path, n_slices: int, plane: int) -> None:
    """A uint16 stack on disk, written one slice at a time (never whole in memory)."""
    import numpy as np

    from napari_skipseg.io import ImageMeta
    from napari_skipseg.io.zarr_io import create_ome_zarr

    target = create_ome_zarr(path, (n_slices, plane, plane), np.uint16, ImageMeta("ZYX", (2.0, 0.3, 0.3), "micrometer"),
                             chunks=(1, plane, plane))
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:plane, :plane]
    base = (1000 + 800 * np.sin(yy / 37.0) * np.cos(xx / 23.0)).astype(np.uint16)
    for z in range(n_slices):
        target.array[z] = base + rng.integers(0, 200, (plane, plane), dtype=np.uint16)
    target.commit()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0], help="GB of uint16 each")
    ap.add_argument("--plane", type=int, default=2048, help="slice size (plane x plane pixels)")
    ap.add_argument("--tile", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--base-channels", type=int, default=2, help="of the benchmark SkipUNet")
    ap.add_argument("--depth", type=int, default=1, help="of the benchmark SkipUNet")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--keep", help="work in this folder and keep it (default: a temporary folder, deleted)")
    args = ap.parse_args()

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="skipseg-bench-large-"))
    work.mkdir(parents=True, exist_ok=True)
    home = work / "home"
    make_model(home, args.tile, args.base_channels, args.depth)
    env = {**os.environ, "SKIPSEG_HOME": str(home)}
    rows = []
    try:
        for size in args.sizes:
            slice_bytes = args.plane * args.plane * 2
            n = max(1, int(round(size * GB / slice_bytes)))
            free = shutil.disk_usage(work).free
            need = n * slice_bytes * 1.6  # the stack, and uint8 labels (compressed) with a margin
            if need > free:
                print(f"skipping {size} GB: needs {need / GB:.1f} GB of disk, {free / GB:.1f} GB free", file=sys.stderr)
                continue
            stack, out = work / f"stack_{size:g}GB.zarr", work / f"labels_{size:g}GB.zarr"
            t0 = time.perf_counter()
            make_stack(stack, n, args.plane)
            written = time.perf_counter() - t0
            cmd = [sys.executable, "-c", CHILD, "segment", str(stack), "-o", str(out), "--model", "bench",
                   "--kind", "semantic", "--device", "cpu", "--batch-size", str(args.batch_size), "-q"]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH")), None)
            if done.returncode != 0 or line is None:
                print(done.stdout, done.stderr, file=sys.stderr)
                raise SystemExit(f"segmenting the {size} GB stack failed")
            _, code, seconds, maxrss_kb = line.split()
            import zarr

            labels = zarr.open_array(out / "0", mode="r")
            assert labels.shape == (n, args.plane, args.plane)
            row = {"size_gb": size, "slices": n, "shape": [n, args.plane, args.plane],
                   "stack_bytes": n * slice_bytes, "seconds": round(float(seconds), 1),
                   "mpix_per_s": round(n * args.plane**2 / float(seconds) / 1e6, 2),
                   "peak_rss_mib": round(int(maxrss_kb) / 1024, 1), "write_stack_s": round(written, 1)}
            rows.append(row)
            print(f"{size:>5g} GB  {n:>4} x {args.plane} x {args.plane}  {row['seconds']:>7.1f} s  "
                  f"{row['mpix_per_s']:>6.2f} Mpx/s  peak RSS {row['peak_rss_mib']:>7.1f} MiB", flush=True)
            shutil.rmtree(stack, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    peaks = [r["peak_rss_mib"] for r in rows]
    summary = {"benchmark": "bench_large", "plane": args.plane, "tile": args.tile, "batch_size": args.batch_size,
               "model": f"SkipUNet base {args.base_channels} depth {args.depth} (untrained)", "cpu_count": os.cpu_count(), "rows": rows,
               "peak_rss_max_mib": max(peaks, default=None),
               "peak_rss_spread_mib": round(max(peaks) - min(peaks), 1) if peaks else None,
               "under_1_5_gb": all(p < 1.5 * 1024 for p in peaks)}
    print("size_gb | slices | seconds | Mpx/s | peak RSS MiB")
    for r in rows:
        print(f"{r['size_gb']:>7g} | {r['slices']:>6} | {r['seconds']:>7.1f} | {r['mpix_per_s']:>5.2f} | {r['peak_rss_mib']:>7.1f}")
    print(json.dumps(summary))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0 if summary["under_1_5_gb"] else 1


if __name__ == "__main__":
    sys.exit(main())
