"""Import time of the plugin: what starting napari with it costs, and that torch stays out.

    python benchmarks/bench_import.py [--runs 7] [--json out.json | --json -]

Imports ``napari_skipseg`` and every module the napari manifest (``napari.yaml``) names
(reader, writers, widgets, sample data) in fresh interpreters:

- ``plugin_own_s``: the plugin's own modules' share (``python -X importtime``, self time of
  every ``napari_skipseg.*`` module summed; median over runs). Goal: under 0.5 s.
- ``wall_s``: wall time of the same imports with everything they pull in (numpy, qtpy,
  magicgui, ...), minus a bare interpreter's start (median over runs).
- ``torch_imported``: whether any of it imported torch (it must not).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def manifest_modules() -> list[str]:
    import yaml

    data = yaml.safe_load((ROOT / "napari_skipseg" / "napari.yaml").read_text())
    names = [c["python_name"].split(":")[0] for c in data["contributions"]["commands"]]
    return list(dict.fromkeys(["napari_skipseg", *names]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", help="write the result as JSON to this file ('-': stdout, no table)")
    args = parser.parse_args()

    modules = manifest_modules()
    code = "import sys\n" + "".join(f"import {m}\n" for m in modules) + "print('torch' in sys.modules)"
    own, wall, bare = [], [], []
    torch_imported = False
    for _ in range(args.runs):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        bare.append(time.perf_counter() - t)
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        wall.append(time.perf_counter() - t)
        torch_imported |= out.stdout.strip() == "True"
        out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True,
                             check=True)
        us = 0
        for line in out.stderr.splitlines():
            if not line.startswith("import time:") or "|" not in line:
                continue
            parts = [p.strip() for p in line[len("import time:"):].split("|")]
            if parts[2].strip().startswith("napari_skipseg") and parts[0].isdigit():
                us += int(parts[0])
        own.append(us / 1e6)
    result = {
        "modules": modules,
        "plugin_own_s": statistics.median(own),
        "wall_s": statistics.median(wall) - statistics.median(bare),
        "interpreter_start_s": statistics.median(bare),
        "torch_imported": torch_imported,
        "runs": args.runs,
        "goal_met": statistics.median(own) < 0.5 and not torch_imported,
    }
    if args.json == "-":
        print(json.dumps(result))
        return
    print(f"plugin's own modules: {result['plugin_own_s']:.3f} s (goal < 0.5 s); with dependencies: "
          f"{result['wall_s']:.3f} s over a bare interpreter ({result['interpreter_start_s']:.3f} s); "
          f"torch imported: {torch_imported}")
    print("modules: " + ", ".join(modules))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
