"""What skips buy, measured: the study behind docs/skip_connections.md's figures and README's row.

    SKIPSEG_THREADS=1 OMP_NUM_THREADS=1 python benchmarks/bench_skip_study.py

Runs ``skipseg study`` on nuclei2d (60 training images, 20 held-out, central 256 x 256 crops)
with twin networks: plain and residual blocks, depth 2 and 4, with batch norm and without any
normalisation, each with and without skips; 300 steps of batch 8 x 64 x 64 patches, 8 base
channels, 3 seeds; plus the explorer's gradient-flow view of the bundled nuclei2d split by
path. Writes benchmarks/results/skip_study/study.json and the figures into docs/figures/.
Takes about 25 minutes on one CPU thread. Extra arguments are passed on to ``skipseg study``
(e.g. ``--steps 20 --seeds 1`` for a quick look; give ``-o`` and ``--figures`` elsewhere then).
The data folder is ``../shared/data/nuclei2d`` beside the checkout, or ``$SKIPSEG_STUDY_DATA``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "nuclei2d"  # ../shared/data (never copied in); else SKIPSEG_STUDY_DATA


def main(extra: list[str]) -> int:
    import torch

    torch.set_num_threads(int(os.environ.get("SKIPSEG_THREADS", "1")))
    from napari_skipseg.cli import main as cli

    data = os.environ.get("SKIPSEG_STUDY_DATA", str(DATA))
    args = ["study", data, "-o", str(ROOT / "benchmarks" / "results" / "skip_study"),
            "--figures", str(ROOT / "docs" / "figures"),
            "--steps", "300", "--seeds", "3", "--batch-size", "8", "--patch", "64", "--base-channels", "8",
            "--depths", "2", "4", "--blocks", "plain", "residual", "--norms", "batch", "none",
            "--train-images", "60", "--val-images", "20", "--crop", "256",
            "--explorer-model", "nuclei2d", "--device", "cpu", "--overwrite", *extra]
    return cli(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
