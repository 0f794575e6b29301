"""Fine-tuning benchmarks: domain shift, a new structure, and the speed of a training step.

    python benchmarks/bench_finetune.py [--which shift em speed] [--time 180] [--train auto]
        [--lr LR] [--no-augment] [--seeds 1] [--first-seed 0] [--json benchmarks/results/finetune.json]

With ``--seeds N`` each fine-tune runs N times (``FinetuneOptions.seed`` 0 .. N-1, or from
``--first-seed``: the patch draws, augmentation and a new head's initial weights) and its
goal is judged on the mean; one run varies by about +-0.01 (membranes). The JSON file keeps
the entries of benchmarks not run this time.

1. **Domain shift** (goal: F1@0.5 up by >= 0.30 and to >= 0.70). nuclei2d is trained on
   fluorescence (bright nuclei, dark background, grey). We make H&E-like bright-field images
   from fluorescence images of its *validation* split (never trained on) by a fixed,
   seeded transform (:func:`to_he`): the normalised fluorescence becomes haematoxylin density
   (nuclei, with their chromatin texture), a smooth random field becomes eosin density
   (cytoplasm/stroma, weaker over nuclei), the two are mixed into RGB by Beer-Lambert with
   skimage's H&E stain vectors (``skimage.color.combine_stains``), then blurred (sigma 1) and
   given Gaussian noise (sd 0.02), as uint8 RGB. Dark purple nuclei on pink, like a stained
   section. The instance masks are unchanged. Fine-tune on 2 images (fully reviewed), at most
   ``--time`` seconds in all, then segment 12 other such images with the model and compute
   F1 at IoU 0.5 before (nuclei2d as it is) and after (the new version).
2. **New structure** (goal: membrane pixel F1 >= 0.78): em2d (ISBI 2012 serial-section EM;
   mask 1 = cell interior, 0 = membrane). The labels a user would paint are membrane = 1,
   the rest 0. nuclei2d gets a new 2-class head and is fine-tuned on images 00 and 01 for at
   most ``--time`` seconds; pixel F1 of the membrane class over images 02..23 (pooled).
3. **Step speed**: seconds per training step inside the loop (patch sampling, augmentation,
   forward, backward, optimiser) vs the same network's forward + backward + optimiser step
   on a fixed batch of the same shape, measured alone.

Data: ``../shared/data`` (see its README); nothing is copied into the repository.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SKIPSEG_DATA", ROOT.parent / "shared" / "data"))
KEEP = os.environ.get("SKIPSEG_BENCH_KEEP")  # copy the fine-tuned models here


# -- data ---------------------------------------------------------------------------------------


def to_he(fluo: np.ndarray, seed: int) -> np.ndarray:
    """H&E-like uint8 RGB bright-field image from a grey fluorescence image (deterministic)."""
    from scipy import ndimage as ndi
    from skimage.color import combine_stains, rgb_from_hed

    rng = np.random.default_rng(seed)
    f = fluo.astype(np.float32)
    lo, hi = np.percentile(f, [1, 99.8])
    f = np.clip((f - lo) / max(hi - lo, 1e-6), 0, 1)
    h = 0.005 + 0.12 * f  # haematoxylin: nuclei and their texture
    field = ndi.gaussian_filter(rng.normal(size=f.shape), 12)
    field = (field - field.min()) / max(np.ptp(field), 1e-6)
    e = (0.03 + 0.06 * field) * (1 - 0.6 * f)  # eosin: cytoplasm / stroma, weaker over nuclei
    hed = np.stack([h, e, np.zeros_like(h)], axis=-1)
    rgb = combine_stains(hed, rgb_from_hed)
    rgb = np.stack([ndi.gaussian_filter(rgb[..., c], 1.0) for c in range(3)], axis=-1)
    rgb = rgb + rng.normal(0, 0.02, rgb.shape)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def shift_sets(n_train: int = 2, n_eval: int = 12):
    """(train, eval) lists of (name, rgb, instance mask) from nuclei2d's validation split."""
    import tifffile

    names = json.loads((ROOT / "models" / "nuclei2d" / "validation_split.json").read_text())["validation"]
    chosen = []
    for name in sorted(names):
        img = tifffile.imread(DATA / "nuclei2d" / "images" / name)
        mask = tifffile.imread(DATA / "nuclei2d" / "masks" / name)
        if img.ndim != 2 or max(img.shape) > 520 or len(np.unique(mask)) - 1 < 10:
            continue
        seed = int(name[:8], 16)
        chosen.append((name, to_he(img, seed), mask.astype(np.int32)))
        if len(chosen) == n_train + n_eval:
            break
    return chosen[:n_train], chosen[n_train:]


def em_sets(train=("00.tif", "01.tif")):
    import tifffile

    folder = DATA / "em2d"
    out_train, out_eval = [], []
    for path in sorted((folder / "images").iterdir()):
        img = tifffile.imread(path)
        membrane = (tifffile.imread(folder / "masks" / path.name) == 0).astype(np.uint8)
        (out_train if path.name in train else out_eval).append((path.name, img, membrane))
    return out_train, out_eval


# -- evaluation ---------------------------------------------------------------------------------


def instance_f1(model, items) -> float:
    from napari_skipseg.inference.engine import predict, run
    from napari_skipseg.metrics import InstanceScores, match_instances

    total = InstanceScores(0, 0, 0, 0.0)
    for _, img, mask in items:
        seg = run(predict(model, img, channel_axis=-1 if img.ndim == 3 else None, output="instances",
                          device="cpu"))
        total = total + match_instances(mask, seg.labels)
    return total.f1


def membrane_f1(model, items) -> float:
    from napari_skipseg.inference.engine import predict, run

    tp = fp = fn = 0
    for _, img, mask in items:
        pred = run(predict(model, img, output="semantic", device="cpu")).labels == 1
        truth = mask == 1
        tp += int((pred & truth).sum())
        fp += int((pred & ~truth).sum())
        fn += int((~pred & truth).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1)


def _finetune(model, train_items, rgb: bool, opts, store: Path):
    from napari_skipseg.training.finetune import Annotated, finetune, save_version

    data = [Annotated(img, mask, None, name=name, rgb=rgb) for name, img, mask in train_items]
    t0 = time.perf_counter()
    gen = finetune(model, data, opts, device="cpu")
    last = 0.0
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        if "val" in ev.info or time.perf_counter() - last > 30:
            last = time.perf_counter()
            val = ev.info.get("val", {}).get("score")
            print(f"  [{time.perf_counter() - t0:6.1f} s] {ev.message}" + (f" val {val:.3f}" if val is not None else ""),
                  file=sys.stderr)
    seconds = time.perf_counter() - t0
    folder = save_version(result, data, store / f"{model.config.name}-bench", activate=False)
    if KEEP:
        import shutil

        keep = Path(KEEP) / store.name
        shutil.rmtree(keep, ignore_errors=True)
        shutil.copytree(folder, keep)
    return result, seconds, folder


def bench_shift(args, store: Path, seed: int = 0) -> dict:
    from napari_skipseg.model.store import load_model
    from napari_skipseg.training.finetune import FinetuneOptions

    train_items, eval_items = shift_sets()
    base = load_model("nuclei2d")
    before = instance_f1(base, eval_items)
    opts = FinetuneOptions(steps=args.steps or 100000, time_budget=None if args.steps else args.time, lr=args.lr,
                           train=args.train, augment=args.augment, seed=seed)
    result, seconds, folder = _finetune(base, train_items, True, opts, store / f"shift{seed}")
    from napari_skipseg.model.store import load_model as load

    tuned = load(folder)
    after = instance_f1(tuned, eval_items)
    return {"goal": "F1@0.5 +0.30 and >= 0.70", "train_images": [n for n, _, _ in train_items],
            "eval_images": len(eval_items), "before": round(before, 4), "after": round(after, 4),
            "gain": round(after - before, 4), "seconds": round(seconds, 1), "steps": result.steps,
            "best_step": result.best_step, "normalization": result.normalization,
            "postprocess": tuned.config.postprocess, "guard": result.message, "accepted": result.accepted,
            "met": bool(after - before >= 0.30 and after >= 0.70)}


def bench_em(args, store: Path, seed: int = 0) -> dict:
    from napari_skipseg.model.store import load_model
    from napari_skipseg.training.finetune import FinetuneOptions

    train_items, eval_items = em_sets()
    base = load_model("nuclei2d")
    opts = FinetuneOptions(steps=args.steps or 100000, time_budget=None if args.steps else args.time, lr=args.lr, train=args.train, augment=args.augment,
                           num_classes=2, class_names=["background", "membrane"], seed=seed)
    result, seconds, folder = _finetune(base, train_items, False, opts, store / f"em{seed}")
    tuned = load_model(folder)
    after = membrane_f1(tuned, eval_items)
    return {"goal": "membrane pixel F1 >= 0.78", "train_images": [n for n, _, _ in train_items],
            "eval_images": len(eval_items), "before": None, "after": round(after, 4),
            "held_out_reviewed": result.after, "seconds": round(seconds, 1), "steps": result.steps,
            "best_step": result.best_step, "met": bool(after >= 0.78)}


def over_seeds(bench, args, store: Path, goal) -> dict:
    """``bench`` for ``args.seeds`` seeds from ``args.first_seed``: one run as it is; several:
    the common fields with ``after``, ``seconds`` and ``steps`` the means, each run's whole
    entry in ``runs`` and ``met`` judged on the mean (``goal(before, after)``)."""
    runs = []
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        r = bench(args, store, seed)
        print(json.dumps({"seed": seed, **r}, default=str), file=sys.stderr)
        runs.append(r)
    if len(runs) == 1:
        return runs[0]
    out = {k: v for k, v in runs[0].items() if k not in ("best_step", "held_out_reviewed", "guard", "accepted",
                                                           "postprocess", "normalization")}
    out["after"] = round(float(np.mean([r["after"] for r in runs])), 4)
    if out.get("gain") is not None:
        out["gain"] = round(out["after"] - out["before"], 4)
    out["seconds"] = round(float(np.mean([r["seconds"] for r in runs])), 1)
    out["steps"] = int(round(np.mean([r["steps"] for r in runs])))
    out["met"] = goal(out["before"], out["after"])
    out["runs"] = [{"seed": args.first_seed + i, **r} for i, r in enumerate(runs)]
    return out


def bench_speed(args) -> dict:
    import torch

    from napari_skipseg.model.store import load_model
    from napari_skipseg.training.data import Sample, instance_target
    from napari_skipseg.training.finetune import set_trainable
    from napari_skipseg.training.loop import TrainConfig, loss_fn, train

    train_items, _ = em_sets()
    from napari_skipseg.training.data import prepare_image

    model = load_model("nuclei2d")
    samples = [Sample(n, prepare_image(img, 1, 2, model.config.normalization), instance_target(m.astype(np.int32)))
               for n, img, m in train_items]
    out = {}
    for what in ("all", "decoder+last"):
        # the loop and the bare step alternate, so both see the same load on a shared machine
        m = load_model("nuclei2d")
        set_trainable(m, what)
        steps = 24
        tcfg = TrainConfig(patch=[128, 128], batch_size=args.batch, steps=steps, val_every=10**9, warmup=5,
                           augment=True)
        gen = train(m, samples, [], tcfg, device="cpu")
        bare = load_model("nuclei2d")
        set_trainable(bare, what)
        bare.train()
        opt = torch.optim.AdamW([p for p in bare.parameters() if p.requires_grad], 1e-3)
        x = torch.randn(args.batch, 1, 128, 128)
        y = torch.randint(0, 3, (args.batch, 128, 128))
        loop_times, alone = [], []
        for _ in range(steps):
            t = time.perf_counter()
            next(gen)
            loop_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            loss = loss_fn(bare(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            alone.append(time.perf_counter() - t)
        gen.close()
        loop_step, alone_step = float(np.median(loop_times[4:])), float(np.median(alone[4:]))
        out[what] = {"loop_step_s": round(loop_step, 4), "forward_backward_alone_s": round(alone_step, 4),
                     "ratio": round(loop_step / alone_step, 3)}
    out["batch"] = f"{args.batch} x 1 x 128 x 128, nuclei2d ({torch.get_num_threads()} threads)"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--which", nargs="+", default=["shift", "em", "speed"], choices=["shift", "em", "speed"])
    parser.add_argument("--time", type=float, default=180.0, help="seconds per fine-tune, all included")
    parser.add_argument("--steps", type=int, help="a fixed number of steps instead of the time budget "
                        "(to compare methods on a machine shared with other jobs)")
    parser.add_argument("--train", default="auto", help="what trains (default: the tool's choice, "
                        "decoder+last for nuclei, all for the new membrane head)")
    parser.add_argument("--lr", type=float, help="peak learning rate (default: the tool's, 3e-4 / 3e-3 new head)")
    parser.add_argument("--no-augment", dest="augment", action="store_false")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seeds", type=int, default=1, help="runs per fine-tune (seeds 0 .. N-1); goals judged on the mean")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds run: this one and the next --seeds - 1")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "finetune.json"))
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")

    import tempfile

    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 2))
    results: dict = {"cpu_threads": torch.get_num_threads(), "options": {
        "time": args.time, "steps": args.steps, "train": args.train, "lr": args.lr, "augment": args.augment,
        "seeds": list(range(args.first_seed, args.first_seed + args.seeds))}}
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["SKIPSEG_HOME"] = tmp
        store = Path(tmp)
        if "shift" in args.which:
            results["domain_shift"] = over_seeds(bench_shift, args, store,
                                                 lambda b, a: bool(a - b >= 0.30 and a >= 0.70))
        if "em" in args.which:
            results["new_structure"] = over_seeds(bench_em, args, store, lambda b, a: bool(a >= 0.78))
        if "speed" in args.which:
            results["step_speed"] = bench_speed(args)
    print(f"{'benchmark':<16}{'before':>9}{'after':>9}{'seconds':>9}{'steps':>7}  goal met")
    for key in ("domain_shift", "new_structure"):
        r = results.get(key)
        if r:
            b = "-" if r["before"] is None else f"{r['before']:.3f}"
            print(f"{key:<16}{b:>9}{r['after']:>9.3f}{r['seconds']:>9.1f}{r['steps']:>7}  {r['met']}")
    if "step_speed" in results:
        for what, r in results["step_speed"].items():
            if isinstance(r, dict):
                print(f"step ({what}): loop {r['loop_step_s']:.3f} s, forward+backward alone "
                      f"{r['forward_backward_alone_s']:.3f} s (x{r['ratio']})")
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():  # keep what was not rerun, with the options and date it was run with
        old = json.loads(path.read_text())
        for key, value in old.items():
            if key in ("domain_shift", "new_structure", "step_speed") and key not in results:
                results[key] = {**value, "from_earlier_run": value.get("from_earlier_run", old.get("date", "an earlier run"))}
            elif key not in results:
                results[key] = value
    results["date"] = time.strftime("%Y-%m-%d %H:%M")
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
