"""One fine-tuning setting on the membrane benchmark, at a fixed number of steps.

    python benchmarks/bench_finetune_variants.py [--steps 360] [--train all] [--lr 0.003]
        [--elastic 0.5] [--class-balance 0.5] [--seed 0] [--ema 0] [--val-fraction 0.25]
        [--patch 128] [--batch 4] [--dice-weight 1] [--no-tune] [--invert] [--threads 1]

What ``bench_finetune.py --which em`` runs (nuclei2d, new 2-class head, em2d images 00 and 01,
membrane = 1), but for a fixed number of steps instead of a time budget, so that settings can
be compared on a machine shared with other jobs (several of these at one thread each). Prints
the pooled membrane pixel F1 on images 02-23 at the model's own decision, and precision,
recall and F1 when the membrane probability (after the model's tuned bias, if any) is
thresholded at 0.3 ... 0.7. docs/finetune.md lists the settings tried with it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=360)
    parser.add_argument("--train", default="auto")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--elastic", type=float, default=0.0)
    parser.add_argument("--class-balance", type=float, default=0.0,
                        help="0 (the default here, as the runs in docs/finetune.md before the class weights); the tool uses 1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema", type=float, default=0.98)
    parser.add_argument("--val-fraction", type=float, default=0.25)
    parser.add_argument("--patch", type=int, help="square patch side (default: the fine-tune's 128)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--dice-weight", type=float, default=1.0, help="weight of the soft Dice term (loss: CE + w * Dice)")
    parser.add_argument("--no-tune", dest="tune", action="store_false")
    parser.add_argument("--invert", action="store_true", help="invert the EM images' contrast first")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", help="append the result as one JSON line to this file")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from bench_finetune import em_sets, membrane_f1

    from napari_skipseg.inference.engine import run
    from napari_skipseg.model.store import load_model
    from napari_skipseg.training.data import prepare_image
    from napari_skipseg.training.finetune import Annotated, FinetuneOptions, finetune

    train_items, eval_items = em_sets()
    base = load_model("nuclei2d")
    if args.invert:
        base.config.normalization = {**base.config.normalization, "invert": True}
    opts = FinetuneOptions(steps=args.steps, train=args.train, lr=args.lr, elastic=args.elastic, tune=args.tune,
                           class_balance=args.class_balance, seed=args.seed, ema=args.ema,
                           val_fraction=args.val_fraction, num_classes=2, new_head=True,
                           patch=[args.patch] * 2 if args.patch else None, batch_size=args.batch, dice_weight=args.dice_weight,
                           class_names=["background", "membrane"])
    data = [Annotated(img, mask, None, name=name) for name, img, mask in train_items]
    t0 = time.perf_counter()
    result = run(finetune(base, data, opts, device="cpu"))
    seconds = time.perf_counter() - t0
    model = result.model
    f1 = membrane_f1(model, eval_items)
    sweep = {}
    counts = {t: np.zeros(3) for t in (0.3, 0.4, 0.5, 0.6, 0.7)}
    for _, img, mask in eval_items:
        x = torch.from_numpy(prepare_image(img, 1, 2, model.config.normalization)[None])
        with torch.inference_mode():
            p = torch.softmax(model(x), 1)[0, 1].numpy()
        truth = mask == 1
        for t, c in counts.items():
            pred = p > t
            c += [(pred & truth).sum(), (pred & ~truth).sum(), (~pred & truth).sum()]
    for t, (tp, fp, fn) in counts.items():
        sweep[t] = {"f1": round(2 * tp / max(2 * tp + fp + fn, 1), 4), "precision": round(tp / max(tp + fp, 1), 3),
                    "recall": round(tp / max(tp + fn, 1), 3)}
    out = {"options": {"steps": args.steps, "train": result.options["train"], "lr": result.options["lr"],
                       "elastic": args.elastic, "class_balance": result.options["class_balance"], "seed": args.seed, "ema": args.ema, "tune": args.tune,
                       "invert": args.invert,
                       "val_fraction": args.val_fraction, "patch": args.patch, "batch": args.batch,
                       "dice_weight": args.dice_weight},
           "membrane_f1": round(f1, 4), "held_out": round(result.after.get("score", float("nan")), 4),
           "threshold": result.after.get("threshold"), "best_step": result.best_step, "seconds": round(seconds, 1),
           "threshold_sweep": sweep}
    print(f"membrane pixel F1 on {len(eval_items)} slices: {f1:.4f} (held-out band {out['held_out']:.4f}, "
          f"best step {result.best_step}, {seconds:.0f} s)")
    vals = [(h["step"], round(h["val"]["score"], 3)) for h in result.history if "val" in h]
    out["held_out_curve"] = vals
    print("held-out score by step:", " ".join(f"{s}:{v}" for s, v in vals))
    for t, r in sweep.items():
        print(f"  threshold {t}: F1 {r['f1']:.4f}  precision {r['precision']:.3f}  recall {r['recall']:.3f}")
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(out) + "\n")


if __name__ == "__main__":
    main()
