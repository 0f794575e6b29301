"""Time per training step of the weight average: torch's AveragedModel (training.loop.WeightAverage)
against the dict-of-tensors average it replaced, on the bundled nuclei2d network.

    python benchmarks/bench_weight_average.py
"""

from __future__ import annotations

import statistics
import time

import torch


class DictAverage:
    """The previous implementation (for the comparison only)."""

    def __init__(self, model, decay):
        self.decay = decay
        self.avg = {k: v.detach().clone() for k, v in model.state_dict().items() if v.dtype.is_floating_point}

    def update(self, model, step):
        d = min(self.decay, (1 + step) / (10 + step))
        with torch.no_grad():
            current = model.state_dict()
            for k, a in self.avg.items():
                a.mul_(d).add_(current[k].detach(), alpha=1 - d)


def main():
    from napari_skipseg.model.store import load_model
    from napari_skipseg.training.loop import WeightAverage

    torch.set_num_threads(1)
    model = load_model("nuclei2d").train()
    n = sum(p.numel() for p in model.parameters())
    for cls in (DictAverage, WeightAverage, DictAverage, WeightAverage):
        avg = cls(model, 0.98)
        times = []
        for step in range(30):
            t0 = time.perf_counter()
            avg.update(model, step)
            times.append(time.perf_counter() - t0)
        print(f"{cls.__name__}: {statistics.median(times) * 1e3:.2f} ms per update ({n} parameters)")


if __name__ == "__main__":
    main()
