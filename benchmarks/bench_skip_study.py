"""What skips buy, measured: the study behind docs/skip_connections.md's figures and README's row.

    SKIPSEG_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/bench_skip_study.py [--quick]

Twin networks on nuclei2d (60 training images, 20 held-out, central 256 x 256 crops, the
bundled models' split), 300 steps of batch 4 x 64 x 64 patches, 8 base channels, seeds 0-2:

- part A (``skipseg study``'s defaults for blocks and norms): plain and residual blocks with
  batch norm, depth 2 and 4, each with and without skips; plus the explorer's gradient-flow
  view of the bundled nuclei2d split by path;
- part B: plain and residual blocks without any normalisation, depth 4, with and without skips.

Part A runs as one process per seed, part B as one more (one thread each), in parallel; the
results are merged. Writes
benchmarks/results/skip_study.json and the figures into docs/figures/, prints the table.
About 15 CPU minutes. ``--quick``: 10 steps, one seed, into /tmp/skip_study_quick. The data
folder is ``../shared/data/nuclei2d`` beside the checkout, or ``$SKIPSEG_STUDY_DATA``.
The same runs, in one process: ``skipseg study DATA -o OUT --steps 300 --seeds 3 --depths 2 4
--explorer-model nuclei2d`` (part A) and ``... --depths 4 --norms none`` (part B).
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "nuclei2d"  # ../shared/data (never copied in)


def part(options: dict, explorer: str | None):
    import torch

    torch.set_num_threads(1)
    from napari_skipseg.inference.engine import run
    from napari_skipseg.model.store import load_model
    from napari_skipseg.study import StudyOptions, run_study

    model = load_model(explorer) if explorer else None
    return run(run_study(StudyOptions(**options), explorer_model=model))


def main(argv: list[str]) -> int:
    from napari_skipseg.study import StudyResult, format_summary, plot_study

    quick = "--quick" in argv
    data = os.environ.get("SKIPSEG_STUDY_DATA", str(DATA))
    budget = {"data": data, "train_images": 60, "val_images": 20, "crop": 256, "steps": 10 if quick else 300,
              "batch_size": 4, "patch": 64, "base_channels": 8, "device": "cpu"}
    seeds = 1 if quick else 3
    parts = [({**budget, "depths": [2, 4], "blocks": ["plain", "residual"], "norms": ["batch"], "seeds": 1,
               "first_seed": seed}, "nuclei2d" if seed == 0 else None) for seed in range(seeds)]
    parts.append(({**budget, "depths": [4], "blocks": ["plain", "residual"], "norms": ["none"], "seeds": seeds},
                  None))
    out = Path("/tmp/skip_study_quick") if quick else ROOT / "benchmarks" / "results"
    figures = out if quick else ROOT / "docs" / "figures"
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(len(parts)) as pool:
        results = list(pool.map(part, *zip(*parts, strict=True)))
    for i, r in enumerate(results):  # each part on its own first, in case the merge refuses
        r.to_json(out / f"skip_study_part{i}.json")
    result = StudyResult.merge(results)
    result.to_json(out / "skip_study.json")
    paths = plot_study(result, figures)
    print(format_summary(result))
    for i in range(len(results)):
        (out / f"skip_study_part{i}.json").unlink()
    print(f"{result.seconds:.0f} s; wrote {out / 'skip_study.json'} and {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
