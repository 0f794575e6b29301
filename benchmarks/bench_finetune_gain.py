"""Where a fine-tune's held-out gain comes from: re-tuning the post-processing, or training.

    python benchmarks/bench_finetune_gain.py [--steps 5 60] [--size 512] [--json FILE]

The new-user trial of issue 21: the napari sample "synthetic nuclei 2D" (512 x 512, seed 1),
its true labels as the corrections, the whole image reviewed (one image: the last 25 % along X
is held out), nuclei2d fine-tuned for each number of ``--steps`` (default options otherwise,
one thread). For each run: the held-out F1@0.5 of the starting model as it is (``before``),
of the starting weights with the post-processing re-tuned on the held-out band (``retuned``),
of the starting weights with the batch-norm statistics training gathered (``restats``), of
the trained model (``trained``) and of the version kept (``kept``: the simplest of these that
does best), the gains, the steps kept and the seconds. The
model store is a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 60])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.environ.setdefault("SKIPSEG_HOME", tempfile.mkdtemp(prefix="skipseg_gain_"))
    import torch

    from napari_skipseg._sample_data import synthetic_nuclei
    from napari_skipseg.training.finetune import Annotated, FinetuneOptions, run_finetune

    torch.set_num_threads(int(os.environ.get("SKIPSEG_THREADS", "1")))
    image, labels = synthetic_nuclei((args.size, args.size), seed=1)
    data = [Annotated(image, labels.astype("int32"), None, name="synthetic nuclei 2D")]
    runs = []
    for steps in args.steps:
        t0 = time.perf_counter()
        result = run_finetune("nuclei2d", data, FinetuneOptions(steps=steps), device="cpu")
        before, retuned, after = (result.before["score"], result.retuned["score"], result.after["score"])
        restats = result.restats.get("score", retuned)
        trained = result.trained["score"]
        run = {"steps": steps, "best_step": result.best_step, "seconds": round(time.perf_counter() - t0, 1),
               "before": round(before, 4), "retuned": round(retuned, 4), "trained": round(trained, 4),
               "kept": round(after, 4),
               "restats": round(restats, 4), "gain_retuning": round(retuned - before, 4),
               "gain_training": round(trained - retuned, 4), "gain_statistics": round(restats - retuned, 4),
               "gain_weights": round(trained - restats, 4),
               "accepted": result.accepted, "held_out": result.split.get("text"),
               "postprocess": result.model.config.postprocess, "message": result.message}
        runs.append(run)
        print(f"{steps:4d} steps ({run['seconds']:.0f} s): {result.message}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": runs}, fh, indent=1)
            fh.write("\n")


if __name__ == "__main__":
    main()
