"""Export the bundled models as bioimage.io packages and run bioimage.io's own test on each.

    python benchmarks/bench_bioimageio.py [--models nuclei2d em2d hippocampus3d nuclei3d]
        [--out /tmp/skipseg-bioimageio] [--data ../shared/data] [--json results.json]

For every model: ``skipseg export`` (in-process, :func:`napari_skipseg.model.bioimageio.export_package`)
with a validation image of its training data as the sample (synthetic nuclei when the data
folder is absent), then ``bioimageio test PACKAGE`` (bioimageio.core's command line, in a
subprocess that finds this checkout's ``napari_skipseg`` for the ``pytorch_state_dict``
architecture). Prints a table: export seconds, package size, test status and seconds, and
which weight formats reproduced the test output. Exits 1 if any test failed.

Needs bioimageio.spec and bioimageio.core (``pip install 'napari-skipseg[bioimageio]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: A validation image of each model's training data (none of them was trained on).
SAMPLES = {
    "nuclei2d": "nuclei2d/images/0287e7ee5b007c91ae2bd7628d09735e70496bc6127ecb7f3dd043e04ce37426.tif",
    "em2d": "em2d/images/02.tif",
    "hippocampus3d": "hippocampus3d/images/hippocampus_045.tif",
    "nuclei3d": "nuclei3d_embryo/images/Emb01_t301.tif",
    "nuclei3d_plant": "nuclei3d/images/1135_mini.tif",
}


def bioimageio_cli() -> list[str]:
    exe = shutil.which("bioimageio", path=str(Path(sys.executable).parent)) or shutil.which("bioimageio")
    return [exe] if exe else [sys.executable, "-m", "bioimageio.core"]


def run_one(name: str, out: Path, data: Path) -> dict:
    import tifffile

    from napari_skipseg.inference.engine import run
    from napari_skipseg.model.bioimageio import export_package

    sample_path = data / SAMPLES.get(name, "")
    sample = tifffile.imread(sample_path) if name in SAMPLES and sample_path.is_file() else None
    t0 = time.perf_counter()
    package = run(export_package(name, out / f"{name}.zip", sample=sample, overwrite=True))
    export_s = time.perf_counter() - t0
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run([*bioimageio_cli(), "test", str(package)], capture_output=True, text=True, env=env,
                          cwd=out, timeout=1800)
    test_s = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    (out / f"{name}.test.txt").write_text(text)
    formats = {}
    for fmt in ("pytorch_state_dict", "torchscript", "onnx"):
        m = re.search(rf"(✔️|❌)\s+weights\.{fmt}\s+Reproduce test outputs", text)
        formats[fmt] = "passed" if m and m.group(1) == "✔️" else "failed" if m else "not run"
    status = re.search(r"(✔️|❌)\s+bioimageio format validation", text)
    return {
        "model": name, "sample": str(sample_path.relative_to(data)) if sample is not None else "synthetic",
        "export_s": round(export_s, 1), "package_mb": round(package.stat().st_size / 1e6, 1),
        "test": "passed" if proc.returncode == 0 and status and status.group(1) == "✔️" else "failed",
        "test_rc": proc.returncode, "test_s": round(test_s, 1), "formats": formats,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["nuclei2d", "em2d", "hippocampus3d", "nuclei3d"])
    parser.add_argument("--out", default="/tmp/skipseg-bioimageio")
    data = next((d for d in (ROOT.parent / "shared" / "data", ROOT.parents[1] / "shared" / "data") if d.is_dir()),
                ROOT.parent / "shared" / "data")
    parser.add_argument("--data", default=str(data), help="the shared data folder (default: ../shared/data)")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    print(f"{'model':<15} {'export s':>8} {'MB':>6} {'bioimageio test':>15} {'test s':>7}  "
          "state_dict / torchscript / onnx   sample")
    for name in args.models:
        r = run_one(name, out, Path(args.data))
        rows.append(r)
        f = r["formats"]
        print(f"{r['model']:<15} {r['export_s']:>8} {r['package_mb']:>6} {r['test']:>15} {r['test_s']:>7}  "
              f"{f['pytorch_state_dict']} / {f['torchscript']} / {f['onnx']}   {r['sample']}", flush=True)
    passed = sum(r["test"] == "passed" for r in rows)
    print(f"bioimageio test passed for {passed} of {len(rows)} models (logs: {out}/<model>.test.txt)")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
