"""Inference and fine-tuning speed: ours against a plain PyTorch loop, MONAI and ONNX Runtime.

    python benchmarks/bench_speed.py [--models nuclei2d ...] [--slices 64] [--size 512]
        [--volume 256] [--repeat 3] [--threads N] [--plain-volume 128] [--skip monai]
        [--json benchmarks/results/speed.json] [--quick]

A 3D volume too large for the plain loop and ONNX Runtime to take whole (256^3 needs ~10 GB
for nuclei3d): ONNX Runtime is skipped and the plain loop is timed on a ``--plain-volume``
cube of the same data, its times scaled by the voxel ratio (its rate at that size; a larger
whole volume is not faster per voxel), so that "x plain" compares rates.

For every bundled model (or those named), on the same weights and the same input, with the
same number of CPU threads for everyone:

- **network only**: megapixels (2D: a stack of ``--slices`` slices of ``--size``^2) or
  megavoxels (3D: a ``--volume``^3 volume) per second through the network alone, on inputs
  normalised beforehand;
- **end to end**: from a TIFF file on disk to a label TIFF on disk: read, normalise,
  network, softmax, labels (the model's semantic labels: argmax, or foreground for an
  instance model), write. For ours this is the path ``skipseg segment IN -o OUT.tif
  --output semantic`` takes (:func:`napari_skipseg.batch.segment_file`); the instance
  post-processing (watershed) is shown on a row of its own.

Methods:

1. ``plain``: the model in eval mode under ``torch.inference_mode``, one slice (3D: the whole
   volume) at a time, no tiling;
2. ``monai``: ``monai.inferers.sliding_window_inference`` with its defaults (overlap 0.25,
   constant blending), ``roi_size`` = the model's tile, ``sw_batch_size=1``, one slice at a
   time (3D: the volume);
3. ``onnxruntime``: the model exported to ONNX (``torch.onnx.export``, dynamic batch),
   run by an ONNX Runtime CPU session with default options (intra-op threads = the thread
   count), one slice (3D: the volume) at a time;
4. ``ours``: napari_skipseg's engine as users get it (``backend="auto"``), and
   ``ours-torch``: the same engine forced onto its PyTorch backend (what an install without
   onnxruntime gets).

Methods are interleaved (A B C D, A B C D, ...) ``--repeat`` times, so all see the same load
on a shared machine; the table shows medians, and the speed-ups are medians over repeats of
each repeat's ratio (methods run back to back, under the same load). ``efficiency`` is the network's FLOP rate (FLOPs
counted with ``torch.utils.flop_counter.FlopCounterMode`` for what each method computes,
overlaps included) divided by the rate of a large 3x3 convolution (64 -> 64 channels,
256 x 256, the better of NCHW and channels-last, run alone or once per worker; the best of
its runs, one per repeat) measured in the same run. Fine-tuning: steps per second of ``napari_skipseg.training.loop.train`` (no
validation) and the share of each step spent drawing patches (``PatchSampler.batch``).
Import time: see ``benchmarks/bench_import.py``.

A comparison whose package is missing gets a "not installed" row.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.util
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("plain", "monai", "onnxruntime", "ours", "ours-torch")


# -- inputs ----------------------------------------------------------------------------------------


def make_input(cfg, args) -> np.ndarray:
    """uint16 test data: 2D: ``slices`` nuclei slices of ``size``^2; 3D: a ``volume``^3 volume."""
    from scipy import ndimage as ndi

    from napari_skipseg._sample_data import synthetic_nuclei

    if cfg.spatial_dims == 2:
        base, _ = synthetic_nuclei((args.size, args.size), radius=9.0, seed=5)
        image = np.stack([np.roll(base, 37 * i, axis=i % 2) for i in range(args.slices)])
    else:
        rng = np.random.default_rng(5)
        n = args.volume
        blobs = ndi.gaussian_filter(rng.random((n, n, n), dtype=np.float32), 3.0)
        image = (np.clip((blobs - blobs.mean()) / (6 * blobs.std()) + 0.3, 0, 1) * 4000).astype(np.uint16)
        image += rng.integers(0, 200, image.shape, dtype=np.uint16)
    if cfg.in_channels > 1:
        image = np.repeat(image[..., None], cfg.in_channels, axis=-1)
    return image


def preparer(cfg, image):
    """Slice -> normalised network input ``(1, C, *spatial)`` float32, exactly as the engine."""
    from napari_skipseg.inference.engine import image_intensity_range
    from napari_skipseg.inference.preprocess import InputTransform, normalize, wants_input_transform

    channels = cfg.in_channels > 1
    norm = cfg.normalization or {}
    if cfg.in_channels == 1 and wants_input_transform(norm):
        transform = InputTransform(image, 0, norm)
        return lambda s: transform(s)[None]
    lo, hi = image_intensity_range(cfg, image, channel_axis=-1 if channels else None)

    def prep(s):
        s = np.moveaxis(s, -1, 0) if channels else s[None]
        return normalize(s, lo, hi)[None]

    return prep


def units(cfg, image):
    """What the baselines run the network on, one at a time: slices (2D) or the volume."""
    if cfg.spatial_dims == 2:
        return [image[i] for i in range(image.shape[0])]
    return [image]


# -- the four methods ----------------------------------------------------------------------------------


class Plain:
    name = "plain"

    def __init__(self, model):
        self.model = model.eval()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return torch.softmax(self.model(torch.from_numpy(x)), dim=1).numpy()


class Monai:
    name = "monai"

    def __init__(self, model, roi):
        from monai.inferers import sliding_window_inference

        self.model, self.roi, self.swi = model.eval(), tuple(roi), sliding_window_inference
        self.windows = 0

    def predictor(self, x):
        self.windows += x.shape[0]
        return self.model(x)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            out = self.swi(torch.from_numpy(x), roi_size=self.roi, sw_batch_size=1, predictor=self.predictor)
            return torch.softmax(torch.as_tensor(out), dim=1).numpy()


class Ort:
    name = "onnxruntime"

    def __init__(self, model, example_shape, threads, arena=True):
        import onnxruntime as ort
        import torch

        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (torch.zeros(example_shape),), buf, dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}})
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.enable_cpu_mem_arena = arena
        self.session = ort.InferenceSession(buf.getvalue(), so, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        logits = self.session.run(None, {"x": np.ascontiguousarray(x)})[0]
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)


class Ours:
    """The engine's network runner over the engine's tiles (network only), and the CLI's
    file path (end to end)."""

    def __init__(self, model, backend, cfg, spatial, threads, batch_size=4):
        from napari_skipseg.inference import backends as bk
        from napari_skipseg.inference.engine import _tiles_in_flight, plan
        from napari_skipseg.inference.tiling import tile_grid

        self.model, self.backend, self.name = model, backend, "ours" if backend == "auto" else "ours-torch"
        geo = plan(cfg, tuple(spatial))  # the engine's tiles and overlap (each tile computed once)
        tile, overlap = geo["tile"], geo["overlap"]
        self.window = tuple(min(t, s) for t, s in zip(tile, spatial, strict=True))
        self.grid = tile_grid(spatial, tile, overlap)
        # tiles in flight as the engine sends them (large 3D tiles: one at a time, on all threads)
        batch_size = _tiles_in_flight(batch_size, len(self.grid), self.window, cfg)
        t = time.perf_counter()
        self.runner = bk.make_runner(model, "cpu", backend=backend, tile_spatial=self.window,
                                     voxels=2**40, batch_size=batch_size, threads=threads)
        self.setup_s = time.perf_counter() - t
        self.bk = bk

    def network(self, xs: list[np.ndarray]) -> None:
        """Every tile of every normalised unit through the runner, as the engine sends them."""
        tiles = [x[0][(slice(None), *sl)] for x in xs for sl in self.grid]
        b = self.runner.batch
        with self.bk.worker_threads(self.runner, "cpu") as pool:
            futures, k = [], 0
            while k < len(tiles):
                futures.append(pool.submit(self.runner, np.stack(tiles[k:k + b])))
                k += b
                while len(futures) > self.runner.workers:
                    futures.pop(0).result()
            for f in futures:
                f.result()

    @property
    def tiles_per_unit(self) -> int:
        return len(self.grid)


# -- FLOPs and the reference convolution ---------------------------------------------------------------


def count_flops(model, shape) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta").eval()
    with FlopCounterMode(display=False) as fc, torch.no_grad():
        meta(torch.empty(shape, device="meta"))
    return int(fc.get_total_flops())


def conv_reference(threads: int) -> float:
    """GFLOP/s of a 64 -> 64 channel 3x3 convolution on 256 x 256: the best of NCHW and
    channels-last, one call on all threads or one call per thread at once."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).eval()
    flops = 2 * 64 * 64 * 9 * 256 * 256
    best = 0.0
    before = torch.get_num_threads()
    for cl in (False, True):
        c = conv.to(memory_format=torch.channels_last) if cl else conv
        x = torch.randn(1, 64, 256, 256)
        if cl:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            c(x)
            ts = []
            for _ in range(3):
                t = time.perf_counter()
                c(x)
                ts.append(time.perf_counter() - t)
            best = max(best, flops / min(ts) / 1e9)
            if threads > 1:  # one 1-thread call per core, as the engine's workers
                torch.set_num_threads(1)
                try:
                    def one(_, c=c, x=x):
                        with torch.inference_mode():
                            return c(x)

                    with ThreadPoolExecutor(threads) as ex:
                        list(ex.map(one, range(threads)))
                        ts = []
                        for _ in range(3):
                            t = time.perf_counter()
                            list(ex.map(one, range(threads)))
                            ts.append(time.perf_counter() - t)
                finally:
                    torch.set_num_threads(before)
                best = max(best, threads * flops / min(ts) / 1e9)
    return best


# -- one model ------------------------------------------------------------------------------------------


def bench_model(entry, args, threads, tmp: Path) -> dict:
    import tifffile

    from napari_skipseg.batch import FileJob, segment_file
    from napari_skipseg.inference.engine import predict, run
    from napari_skipseg.inference.postprocess import semantic_labels
    from napari_skipseg.model.store import load_model

    model = load_model(entry.path)
    cfg = model.config
    image = make_input(cfg, args)
    no_channels = image.shape[:-1] if cfg.in_channels > 1 else image.shape
    spatial = tuple(no_channels[-cfg.spatial_dims:])
    src = tmp / f"{cfg.name}-input.tif"
    tifffile.imwrite(src, image)
    prep = preparer(cfg, image)
    xs = [prep(u) for u in units(cfg, image)]
    pixels = int(np.prod(image.shape[: image.ndim - (cfg.in_channels > 1)]))
    unit = "Mvox" if cfg.spatial_dims == 3 else "Mpx"
    from napari_skipseg.inference.engine import plan

    fitted = list(plan(cfg, tuple(no_channels))["tile"])
    print(f"\n{cfg.name}: {cfg.spatial_dims}D, input {image.shape} {image.dtype}, model tile {cfg.default_tile()}, "
          f"fitted tile {fitted}, {threads} thread(s)", file=sys.stderr)

    methods: dict = {}
    missing: dict = {}
    # the plain loop and ONNX Runtime take a whole slice/volume at once: skip them (with a
    # row saying so) where its activations would not fit in memory (measured: ~75 bytes per
    # voxel and base channel for a 3D SkipUNet in PyTorch; a 256^3 volume at width 16 peaks
    # near 20 GB)
    need = 100 * cfg.base_channels * int(np.prod(xs[0].shape[2:]))
    avail = _available_memory()
    whole_fits = avail is None or need < 0.5 * avail
    too_big = f"skipped: a whole unit needs ~{need / 2**30:.1f} GiB, {avail / 2**30 if avail else 0:.1f} GiB free"
    plain_factor, plain_src, plain_x = 1.0, src, None
    if whole_fits:
        methods["plain"] = Plain(model)
    elif cfg.spatial_dims == 3 and args.plain_volume and args.plain_volume < min(spatial):
        # the whole volume does not fit: the plain loop runs on a --plain-volume cube of the
        # same data and its times are scaled by the voxel ratio (its rate at that size)
        k = args.plain_volume
        cube = image[:k, :k, :k]
        plain_factor = float(np.prod(spatial)) / k**3
        plain_src = tmp / f"{cfg.name}-plain-cube.tif"
        tifffile.imwrite(plain_src, cube)
        plain_x = prep(cube)
        methods["plain"] = Plain(model)
        missing["plain-note"] = (f"plain: {too_big.removeprefix('skipped: ')}; its times are those of a {k}^3 "
                                 f"cube of the same data x {plain_factor:g} (its rate at {k}^3)")
    else:
        missing["plain"] = too_big
    if "monai" in args.skip:
        missing["monai"] = "skipped (--skip monai)"
    elif importlib.util.find_spec("monai"):
        methods["monai"] = Monai(model, cfg.default_tile())
    else:
        missing["monai"] = "not installed (pip install monai)"
    if not (importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx")):
        missing["onnxruntime"] = "not installed (pip install onnx onnxruntime)"
        ort_setup = None
    elif not whole_fits:
        missing["onnxruntime"] = too_big
        ort_setup = None
    else:
        t = time.perf_counter()
        # a whole volume: no memory arena, or the session would keep its peak for the run
        methods["onnxruntime"] = Ort(model, xs[0].shape, threads, arena=cfg.spatial_dims == 2)
        ort_setup = time.perf_counter() - t
    ours = Ours(model, "auto", cfg, spatial, threads)
    ours_torch = Ours(model, "torch", cfg, spatial, threads)
    if ours.runner.name == "torch":
        missing["ours-note"] = "onnxruntime not installed: ours runs its PyTorch backend"

    # FLOPs: per method, for what it computes (MONAI: counted windows; ours: engine tiles)
    flops_unit = count_flops(model, xs[0].shape)
    flops = {"plain": flops_unit * len(xs), "onnxruntime": flops_unit * len(xs)}
    flops_tile = count_flops(model, (1, cfg.in_channels, *ours.window))
    flops["ours"] = flops["ours-torch"] = flops_tile * ours.tiles_per_unit * len(xs)

    # warm-up (and MONAI's window count), then accuracy against the plain loop
    sub = xs[: min(2, len(xs))]
    for name, m in methods.items():
        for x in ([plain_x] if name == "plain" and plain_x is not None else sub):
            m(x)
    ours.network(sub)
    ours_torch.network(sub)
    if "monai" in methods:
        methods["monai"].windows = 0
        methods["monai"](xs[0])
        flops["monai"] = count_flops(model, (1, cfg.in_channels, *cfg.default_tile())) * methods["monai"].windows * len(xs)

    def e2e_baseline(m, dst, src=src):
        data = tifffile.imread(src)
        labels = np.empty(data.shape[: data.ndim - (cfg.in_channels > 1)], np.uint8)
        if cfg.spatial_dims == 2:
            for i in range(data.shape[0]):
                labels[i] = semantic_labels(m(prep(data[i]))[0], cfg.output)
        else:
            labels[...] = semantic_labels(m(prep(data))[0], cfg.output)
        tifffile.imwrite(dst, labels)

    def e2e_ours(backend, output, dst):
        # test-time flips off: the same network work as the baselines (a model may default to them)
        segment_file(FileJob(src, dst), model, {"output": output, "device": "cpu", "backend": backend,
                                                "threads": threads, "flips": False}, overwrite=True)

    net_fns = {name: (lambda m=m: [m(x) for x in xs]) for name, m in methods.items()}
    if plain_x is not None:
        net_fns["plain"] = lambda m=methods["plain"]: m(plain_x)
    net_fns["ours"] = lambda: ours.network(xs)
    net_fns["ours-torch"] = lambda: ours_torch.network(xs)
    e2e_fns = {name: (lambda m=m, name=name: e2e_baseline(m, tmp / f"{name}.tif")) for name, m in methods.items()}
    if plain_x is not None:
        e2e_fns["plain"] = lambda m=methods["plain"]: e2e_baseline(m, tmp / "plain.tif", plain_src)
    e2e_fns["ours"] = lambda: e2e_ours("auto", "semantic", tmp / "ours.tif")
    e2e_fns["ours-torch"] = lambda: e2e_ours("torch", "semantic", tmp / "ours-torch.tif")
    if cfg.output == "instances":
        e2e_fns["ours (instances)"] = lambda: e2e_ours("auto", "instances", tmp / "ours-instances.tif")

    # warm-up of the file path on two slices (the tile shape, hence the network, is the same;
    # a 3D volume's network was prepared by the network-only warm-up above)
    warm_e2e = None
    if cfg.spatial_dims == 2 and len(xs) > 2:
        small = tmp / f"{cfg.name}-warmup.tif"
        tifffile.imwrite(small, image[:2])
        t = time.perf_counter()
        segment_file(FileJob(small, tmp / "warmup-out.tif"), model, {"output": "semantic", "device": "cpu",
                                                                    "threads": threads, "flips": False},
                     overwrite=True)
        warm_e2e = time.perf_counter() - t

    net_t: dict = {k: [] for k in net_fns}
    e2e_t: dict = {k: [] for k in e2e_fns}
    conv_t: list = []
    for r in range(args.repeat):
        conv_t.append(conv_reference(threads))
        for name, fn in net_fns.items():
            t = time.perf_counter()
            fn()
            net_t[name].append(time.perf_counter() - t)
        for name, fn in e2e_fns.items():
            t = time.perf_counter()
            fn()
            e2e_t[name].append(time.perf_counter() - t)
        if plain_x is not None:
            net_t["plain"][-1] *= plain_factor
            e2e_t["plain"][-1] *= plain_factor
        print(f"  repeat {r + 1}/{args.repeat}: " + ", ".join(
            f"{k} {net_t[k][-1]:.1f}/{e2e_t[k][-1]:.1f} s" for k in net_fns), file=sys.stderr)

    # accuracy: labels written by each method vs the plain loop's; probabilities on one unit
    agree, prob_diff = {}, None
    if "plain" in methods and plain_x is None:
        ref = tifffile.imread(tmp / "plain.tif")
        for name in e2e_fns:
            if name != "ours (instances)":
                agree[name] = float((tifffile.imread(tmp / f"{name}.tif").reshape(ref.shape) == ref).mean())
        p_plain = methods["plain"](xs[0])[0]
        probs = run(predict(model, image[0] if cfg.spatial_dims == 2 else image, output="probabilities",
                            device="cpu", threads=threads, flips=False,
                            channel_axis=-1 if cfg.in_channels > 1 else None)).probabilities
        prob_diff = float(np.abs(probs - p_plain).max())

    conv = max(conv_t)  # what the hardware can do: the best of the reference runs
    mp = pixels / 1e6
    rows = {}
    for name in list(net_fns) + [k for k in e2e_fns if k not in net_fns]:
        net = statistics.median(net_t[name]) if name in net_t else None
        e2e = statistics.median(e2e_t[name]) if name in e2e_t else None
        rows[name] = {
            "network_s": net, "e2e_s": e2e,
            "network_rate": mp / net if net else None, "e2e_rate": mp / e2e if e2e else None,
            "gflops": flops[name] / 1e9 if name in flops else None,
            "efficiency": flops[name] / net / 1e9 / conv if net and name in flops else None,
            "label_agreement": agree.get(name),
            "network_runs_s": net_t.get(name), "e2e_runs_s": e2e_t.get(name),
        }
    for name, why in missing.items():
        rows[name] = {"missing": why}
    # paired ratios: each repeat's methods ran back to back under the same load
    paired = {}
    for a, b in (("ours", "plain"), ("ours", "onnxruntime"), ("ours", "monai"), ("ours-torch", "plain")):
        if a in net_t and b in net_t:
            paired[f"{a}/{b}"] = {
                "network": statistics.median(x / y for x, y in zip(net_t[b], net_t[a], strict=True)),
                "e2e": statistics.median(x / y for x, y in zip(e2e_t[b], e2e_t[a], strict=True)),
            }
    plain_net, plain_e2e = rows["plain"].get("network_s"), rows["plain"].get("e2e_s")
    for r in rows.values():
        if r.get("network_s") and plain_net:
            r["network_x_plain"] = plain_net / r["network_s"]
        if r.get("e2e_s") and plain_e2e:
            r["e2e_x_plain"] = plain_e2e / r["e2e_s"]
    return {
        "model": cfg.name, "dims": cfg.spatial_dims, "input": list(image.shape), "unit": unit,
        "tile": cfg.default_tile(), "fitted_tile": fitted, "tiles_per_unit": ours.tiles_per_unit, "threads": threads, "conv3x3_gflops": conv, "conv3x3_runs": conv_t,
        "ours_backend": ours.runner.describe(), "ours_torch_backend": ours_torch.runner.describe(),
        "ours_setup_s": round(ours.setup_s, 2), "ort_baseline_setup_s": ort_setup,
        "ours_two_slice_file_s": warm_e2e, "max_probability_diff_vs_plain": prob_diff,
        "plain_scaled_from": args.plain_volume if plain_x is not None else None, "plain_factor": plain_factor,
        "methods": rows, "paired_ratios": paired,
    }


# -- fine-tuning --------------------------------------------------------------------------------------


def bench_finetune(entry, args, threads) -> dict:
    """Steps per second of the training loop and the share spent drawing patches."""
    import torch

    from napari_skipseg._sample_data import synthetic_nuclei
    from napari_skipseg.model.store import load_model
    from napari_skipseg.training import loop
    from napari_skipseg.training.data import Sample, instance_target, prepare_image

    model = load_model(entry.path)
    cfg = model.config
    shape = (256, 256) if cfg.spatial_dims == 2 else (32, 128, 128)
    samples = []
    for seed in range(3):
        img, lab = synthetic_nuclei(shape, radius=9.0 if cfg.spatial_dims == 2 else 6.0, seed=seed)
        if cfg.in_channels > 1:
            img = np.repeat(img[..., None], cfg.in_channels, axis=-1)
        target = instance_target(lab) if cfg.output == "instances" else np.minimum(lab > 0, cfg.num_classes - 1).astype(np.int64)
        samples.append(Sample(f"s{seed}", prepare_image(img, cfg.in_channels, cfg.spatial_dims, cfg.normalization),
                              target, lab if cfg.output == "instances" else None))
    patch = [128, 128] if cfg.spatial_dims == 2 else [16, 64, 64]
    steps = args.ft_steps
    tcfg = loop.TrainConfig(patch=patch, batch_size=4, steps=steps, val_every=10**7, warmup=2)
    waited = []
    original = loop.PatchSampler.batch

    def timed(self, n):
        t = time.perf_counter()
        try:
            return original(self, n)
        finally:
            waited.append(time.perf_counter() - t)

    loop.PatchSampler.batch = timed  # measuring only: the loop itself is unchanged
    step_t = []
    try:
        torch.set_num_threads(threads)
        gen = loop.train(model, samples, [], tcfg, device="cpu")
        while True:
            t = time.perf_counter()
            try:
                next(gen)
            except StopIteration:
                break
            step_t.append(time.perf_counter() - t)
    finally:
        loop.PatchSampler.batch = original
    skip = min(2, len(step_t) - 1)  # first steps: allocation warm-up
    total = sum(step_t[skip:])
    return {"model": cfg.name, "steps": len(step_t), "patch": patch, "batch": 4, "threads": threads,
            "steps_per_s": (len(step_t) - skip) / total, "data_wait_share": sum(waited[skip:]) / total,
            "median_step_s": statistics.median(step_t[skip:])}


# -- output ----------------------------------------------------------------------------------------------


def fmt(v, spec=".2f", empty="-"):
    return empty if v is None else format(v, spec)


def print_table(results: dict) -> None:
    lines = []
    head = (f"{'model':<14}{'method':<18}{'network':>10}{'x plain':>9}{'end-to-end':>12}{'x plain':>9}"
            f"{'efficiency':>12}{'labels = plain':>16}")
    lines += [head, "-" * len(head)]
    for m in results["models"]:
        u = m["unit"] + "/s"
        for name, r in m["methods"].items():
            if "missing" in r:
                lines.append(f"{m['model']:<14}{name:<18}{r['missing']}")
                continue
            net = f"{fmt(r['network_rate'])} {u}" if r["network_rate"] else "-"
            lines.append(
                f"{m['model']:<14}{name:<18}{net:>10}{fmt(r.get('network_x_plain')):>9}"
                f"{fmt(r['e2e_rate']) + ' ' + u:>12}{fmt(r.get('e2e_x_plain')):>9}{fmt(r['efficiency']):>12}"
                f"{fmt(r['label_agreement'], '.5f') if r['label_agreement'] is not None else '-':>16}")
        ratios = [f"{k} network x{r['network']:.2f}, end to end x{r['e2e']:.2f}"
                  for k, r in m.get("paired_ratios", {}).items()]
        lines.append(f"{'':<14}speed-ups (median over repeats of each repeat's ratio): " + "; ".join(ratios))
        lines.append(f"{'':<14}ours = {m['ours_backend']} (setup: fuse + export {m['ours_setup_s']} s); "
                     f"conv3x3 reference {m['conv3x3_gflops']:.1f} GFLOP/s (best of {len(m['conv3x3_runs'])}); "
                     f"max |p_ours - p_plain| = {fmt(m['max_probability_diff_vs_plain'], '.2e')}")
    for f in results.get("finetune", []):
        lines.append(f"{f['model']:<14}{'fine-tune':<18}{f['steps_per_s']:.2f} steps/s (batch {f['batch']} x "
                     f"{'x'.join(map(str, f['patch']))}), waiting for data {100 * f['data_wait_share']:.2f} % "
                     f"of the step")
    imp = results.get("import")
    if imp:
        lines.append(f"{'import':<14}{'plugin start':<18}{imp['plugin_own_s']:.3f} s own modules "
                     f"(goal < 0.5 s), {imp['wall_s']:.3f} s in all with dependencies; torch imported: "
                     f"{imp['torch_imported']}")
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", help="bundled model names (default: all bundled)")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--volume", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, help="CPU threads for every method (default: torch's, "
                        "the physical cores)")
    parser.add_argument("--ft-steps", type=int, default=20, help="fine-tuning steps to time")
    parser.add_argument("--skip", nargs="+", default=[], choices=("monai",),
                        help="comparisons not to run (MONAI's sliding window takes minutes on a 256^3 volume)")
    parser.add_argument("--plain-volume", type=int, default=128,
                        help="3D: where the whole volume does not fit in memory, time the plain loop on a cube "
                        "of this side and scale by the voxel ratio (0: skip it)")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "speed.json"))
    parser.add_argument("--quick", action="store_true", help="8 slices, a 128^3 volume, 1 repeat, 6 steps")
    args = parser.parse_args()
    if args.quick:
        args.slices, args.volume, args.repeat, args.ft_steps = 8, 128, 1, 6

    import torch

    from napari_skipseg.model.store import list_models

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    entries = [e for e in list_models() if e.source == "bundled"]
    if args.models:
        known = {e.name: e for e in list_models()}
        unknown = [n for n in args.models if n not in known]
        if unknown:
            parser.error(f"unknown model(s) {unknown}; have {sorted(known)}")
        entries = [known[n] for n in args.models]
    versions = {"torch": torch.__version__}
    for pkg in ("monai", "onnxruntime", "onnx"):
        if importlib.util.find_spec(pkg):
            versions[pkg] = __import__(pkg).__version__
    results: dict = {
        "command": "python benchmarks/bench_speed.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} logical CPUs, {_cpu_name()}",
        "load_average_start": os.getloadavg(), "threads": threads, "versions": versions,
        "models": [], "finetune": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("SKIPSEG_CACHE", str(Path(tmp) / "cache"))  # exports count as setup, every run
        for e in entries:
            results["models"].append(bench_model(e, args, threads, Path(tmp)))
        for e in entries:
            results["finetune"].append(bench_finetune(e, args, threads))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_import.py"), "--json", "-"],
                         capture_output=True, text=True)
    if out.returncode == 0:
        results["import"] = json.loads(out.stdout)
    else:
        print(out.stderr, file=sys.stderr)
    results["load_average_end"] = os.getloadavg()
    print_table(results)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"wrote {path}")


def _available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


if __name__ == "__main__":
    main()
