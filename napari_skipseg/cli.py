"""skipseg: segment, inspect, train and fine-tune UNets on image stacks (the engine of the napari widgets).

Exit codes: 0 success, 2 bad input or options (one clear line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff", ".nii", ".nii.gz", ".dcm")


class CLIError(Exception):
    """Bad input or options: printed as one line, exit code 2."""


# --- numbers on the command line: argparse ``type=`` functions ------------------------------
# argparse puts "argument --NAME: " before the message of an ArgumentTypeError, and
# _Parser.error prints it as one line (exit code 2).

#: tile sizes beyond this do not fit in any accelerator's memory; below the minimum the
#: network sees too little context (and the engine refuses sizes off its size multiple)
TILE_RANGE = (16, 4096)
#: a spatial block (pixels per side) predicted at a time
BLOCK_RANGE = (8, 65536)


def whole_number(low: int | None = None, high: int | None = None, what: str = ""):
    """An argparse type: a whole number in ``low..high`` (either end open when None)."""

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if (low is not None and value < low) or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is out of range: {_span(low, high)}{what}")
        return value

    parse.__name__ = "whole number"
    return parse


def real_number(low: float | None = None, high: float | None = None, what: str = "",
                low_open: bool = False):
    """An argparse type: a finite number in ``low..high`` (either end open when None;
    ``low`` itself excluded when ``low_open``)."""
    import math

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if ((low is not None and (value < low or (low_open and value == low)))
                or (high is not None and value > high)):
            raise argparse.ArgumentTypeError(f"{value:g} is out of range: {_span(low, high, low_open)}{what}")
        return value

    parse.__name__ = "number"
    return parse


def _span(low, high, low_open: bool = False) -> str:
    first = f"above {low:g}" if low_open else f"{low:g}" if low is not None else ""
    if low is not None and high is not None:
        return f"use {first} to {high:g}"
    if low is not None:
        return f"use a number {first}" if low_open else f"use at least {low:g}"
    return f"use at most {high:g}"


class _Parser(argparse.ArgumentParser):
    """Bad options: one line naming what is wrong (exit code 2), not the usage text."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} -h)\n")


def _progress_driver(gen, desc: str, quiet: bool = False):
    """Drive a progress generator with a terminal bar; return its result."""
    from tqdm import tqdm

    bar = None
    best, last_val = None, ""
    try:
        while True:
            try:
                event = next(gen)
            except StopIteration as stop:
                return stop.value
            if quiet:
                continue
            if bar is None:
                bar = tqdm(total=event.total or None, desc=desc, unit="step", file=sys.stderr, dynamic_ncols=True)
                if event.message:
                    print(f"{desc}: {event.message}", file=sys.stderr)
            if event.total and bar.total != event.total:
                bar.total = event.total
            bar.n = event.done
            postfix = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in event.info.items()
                       if k in ("loss",)}
            if "score" in event.info.get("val", {}):  # the latest check stays in view until the next
                val = float(event.info["val"]["score"])
                best = val if best is None else max(best, val)
                last_val = f"{val:.3f} (best {best:.3f})"
            if last_val:
                postfix["val"] = last_val
            bar.set_postfix(postfix, refresh=False)
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()


@contextlib.contextmanager
def _sigint_deferred():
    """Within the block Ctrl-C (SIGINT) is noted instead of raising ``KeyboardInterrupt``;
    yields a function that says whether one came (main thread only; elsewhere never)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return
    seen: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        yield lambda: bool(seen)
    finally:
        signal.signal(signal.SIGINT, previous)


def _single_image_folder(p: Path) -> bool:
    """A folder that is one image: a zarr store or a DICOM series."""
    from .io import find_reader

    return p.is_dir() and find_reader(p) is not None


def _expand_inputs(inputs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir() and not _single_image_folder(p):
            found = sorted(q for q in p.iterdir() if not q.name.startswith(".") and (
                (q.is_file() and q.name.lower().endswith(IMAGE_SUFFIXES)) or _single_image_folder(q)))
            if not found:
                raise CLIError(f"{p}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)}, "
                               "zarr stores or DICOM series)")
            paths += found
        elif p.exists():
            paths.append(p)
        else:
            raise CLIError(f"{p}: no such file or folder")
    return paths


def _output_name(src: Path, fmt: str | None) -> str:
    from .batch import output_suffix

    name = src.name.rstrip("/")
    suffix = output_suffix(name) or next((s for s in (".ome.tif", ".ome.tiff") if name.lower().endswith(s)), "")
    if src.is_dir() and not suffix:  # a DICOM series: NIfTI keeps its orientation
        return name + (fmt or ".nii.gz")
    if fmt:
        stem = name[: -len(suffix)] if suffix else name
        return stem + fmt
    return name


def _output_paths(inputs: list[Path], out: Path, many: bool, fmt: str | None = None) -> list[Path]:
    if not many and out.suffix:
        return [out]
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: several inputs need an output folder, and this is a file")
    names = [_output_name(p, fmt) for p in inputs]
    if len(set(names)) != len(names):
        raise CLIError("two inputs have the same file name; their outputs would overwrite each other")
    return [out / name for name in names]


def cmd_segment(args) -> int:
    from .batch import OUTPUT_SUFFIXES, FileJob, output_suffix, segment_file
    from .io import read_image
    from .model.store import load_config, load_model

    inputs = _expand_inputs(args.inputs)
    many = len(inputs) > 1 or any(Path(i).is_dir() and not _single_image_folder(Path(i)) for i in args.inputs)
    fmt = None if args.format is None else "." + args.format.lstrip(".")
    outputs = _output_paths(inputs, Path(args.output), many, fmt)
    model_name, why = args.model, None
    if model_name is None:
        from .model.choose import choose_model

        image0, meta0 = read_image(inputs[0], lazy=True)
        model_name, why = choose_model(meta0, shape=image0.shape)
    cfg = load_config(model_name)
    size = _check_segment_inputs(args, cfg, inputs)
    # which model was chosen and why: said once the first result is written, so that an error
    # (found in the checks or while reading the pixels) stays the only line
    why = None if args.quiet else why
    jobs = []
    read = [*inputs, *map(Path, args.inputs)]  # also the folders named: nothing is written inside them
    for src, dst in zip(inputs, outputs, strict=True):
        if dst.resolve() == src.resolve():  # labels next to the image, inside its OME-Zarr
            if not src.is_dir() or output_suffix(src) != ".zarr":
                raise CLIError(f"{dst}: the output is the input; only an OME-Zarr input can take its "
                               "result inside it (as labels)")
            job = FileJob(src, dst, labels_name=args.labels_name or cfg.name)
        else:
            if output_suffix(dst) not in OUTPUT_SUFFIXES:
                raise CLIError(f"{dst}: unknown output format; use one of {', '.join(OUTPUT_SUFFIXES)}")
            job = FileJob(src, dst)
        job.check(read)  # not an input, holding one, or inside one
        if job.written.exists() and not args.overwrite:
            raise CLIError(f"{job.written}: exists; pass --overwrite to replace it")
        jobs.append(job)
    block = None if not args.block else (args.block[0] if len(args.block) == 1 else tuple(args.block))
    options = {"mode": args.mode, "output": args.output_kind, "tile": args.tile, "overlap": args.overlap,
               "batch_size": args.batch_size, "device": args.device, "block": block, "channel": args.channel,
               "flips": args.flips, **size}
    if args.link:
        options["link"] = True
    if args.scheduler or (args.workers or 0) > 1:
        if args.link:
            raise CLIError("--link runs on one machine; leave out --scheduler/--workers")
        code = _segment_on_cluster(args, jobs, model_name, options)
        if why and code == 0:
            print(why, file=sys.stderr)
        return code
    model = load_model(model_name)
    for job in jobs:
        t0 = time.perf_counter()
        summary = segment_file(job, model, options, overwrite=args.overwrite,
                               drive=lambda gen, name=job.src.name: _progress_driver(gen, name, args.quiet))
        if why:
            print(why, file=sys.stderr)
            why = None
        if not args.quiet:
            n = summary["objects"]
            extra = f", {n} objects" if n is not None else ""
            how = f", {summary['axes']}" if summary.get("axes") else ""
            print(f"{job.src} -> {summary['dst']} ({cfg.name}, {summary['device']}, "
                  f"{time.perf_counter() - t0:.1f} s{how}{extra})")
            if summary.get("scale_message"):
                print(f"{job.src.name}: {summary['scale_message']}", file=sys.stderr)
    return 0


def _check_segment_inputs(args, cfg, inputs: list[Path]) -> dict:
    """Settle ``--output``, ``--mode``, ``--channel``, ``--diameter``, ``--spacing`` and
    ``--link`` against the model and every input before anything is run; returns the
    object-size options for :func:`~napari_skipseg.batch.segment_file` (``diameter``,
    ``spacing``). Raises :class:`CLIError` (one line) for what cannot work."""
    from .inference.axes import AxesError, ChannelChoiceNeeded, arrange
    from .inference.scale import ScaleError, default_diameter, parse_diameter
    from .io import read_image

    if args.output_kind is None:  # what the model predicts
        args.output_kind = "instances" if cfg.output == "instances" else "semantic"
    elif args.output_kind == "instances" and cfg.output != "instances":
        raise CLIError(f"model {cfg.name} predicts semantic classes ({', '.join(cfg.class_names)}), not "
                       "instances; use --output semantic or --output probabilities")
    if args.mode != "auto" and int(args.mode[0]) != cfg.spatial_dims:
        raise CLIError(f"model {cfg.name} is a {cfg.spatial_dims}D model; it cannot run in --mode {args.mode}")
    dims = cfg.spatial_dims
    trained = (cfg.training_scale or {}).get("object_diameter")
    diameter = args.diameter if args.diameter is not None else default_diameter(cfg)
    spacing = None
    if args.spacing is not None:
        try:
            values = [float(v) for v in args.spacing.replace("x", ",").split(",") if v.strip()]
        except ValueError:
            raise CLIError(f"--spacing must be numbers (1 or {dims}, comma separated), got {args.spacing!r}") from None
        values = values * dims if len(values) == 1 else values
        if len(values) != dims or not all(np.isfinite(v) and v > 0 for v in values):
            raise CLIError(f"--spacing takes 1 or {dims} positive numbers (one per spatial axis of this "
                           f"{dims}D model), got {args.spacing!r}")
        spacing = tuple(values)
    for src in inputs:
        image, meta = read_image(src, lazy=True)
        try:
            arranged = arrange(image, meta, spatial_dims=dims, in_channels=cfg.in_channels,
                               channel=args.channel, model_name=cfg.name)
        except ChannelChoiceNeeded as err:
            raise CLIError(f"{src}: has {err.n_channels} channels (axes {err.axes}) and model {cfg.name} takes "
                           f"one; choose one with --channel N (0-{err.n_channels - 1})") from None
        except AxesError as err:
            text = str(err).replace("channel ", "--channel ", 1) if args.channel is not None else str(err)
            raise CLIError(f"{src}: {text}") from None
        if args.link and "T" not in arranged.lead_axes:
            raise CLIError(f"{src}: --link links objects between time frames; the image has no T axis "
                           f"(axes {meta.axes})")
        if args.diameter is not None:
            try:
                parse_diameter(args.diameter, dims, arranged.spatial_shape)
            except ScaleError as err:
                raise CLIError(f"--diameter: {err}") from None
    if args.diameter is not None and args.diameter.strip().lower() != "auto" and not trained:
        raise CLIError(f"model {cfg.name} does not record the object size it was trained at, so --diameter "
                       "cannot be used with it")
    from .inference.axes import size_options
    from .inference.engine import predict

    try:
        size_options(predict, diameter=diameter, explicit=args.diameter is not None)
    except AxesError as err:
        raise CLIError(f"--diameter: {err}") from None
    return {"diameter": diameter, "spacing": spacing}


def _segment_on_cluster(args, jobs, model_name: str, options: dict) -> int:
    """``--scheduler`` / ``--workers``: the same jobs on a dask.distributed cluster."""
    from .distributed import connect, segment_jobs

    t0 = time.perf_counter()
    client, cluster = connect(args.scheduler, args.workers)
    try:
        workers = len(client.scheduler_info().get("workers", {}))
        if not args.quiet:
            print(f"dask cluster {client.scheduler.address}: {workers} worker(s)", file=sys.stderr)

        def progress(done: int, total: int, name: str) -> None:
            if not args.quiet:
                print(f"  {done}/{total} tasks done ({name})", file=sys.stderr)

        summaries = segment_jobs(jobs, model_name, options, client, overwrite=args.overwrite, progress=progress)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    if not args.quiet:
        for s in summaries:
            extra = f", {s['objects']} objects" if s.get("objects") is not None else ""
            print(f"{s['src']} -> {s['dst']} ({s['model']}, {s['device']}{extra})")
        print(f"{len(summaries)} file(s) in {time.perf_counter() - t0:.1f} s on {workers} worker(s)")
    return 0


def cmd_features(args) -> int:
    """Write what crosses every skip connection, for one slice or block, as OME-TIFF + index.json."""
    from .features import capture_features
    from .features.export import INDEX_FILE, write_features
    from .features.taps import as_taps
    from .io import read_image

    src = Path(args.input)
    if not src.is_file():
        raise CLIError(f"{src}: no such file")
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: features are written to a folder, and this is a file")
    _check_features_output(out, src)
    image, meta = read_image(src, lazy=True)
    channel_axis = meta.axes.index("S") if meta.rgb else meta.channel_axis
    taps = as_taps(args.model)
    d = taps.spatial_dims
    axes = meta.axes.replace("C", "").replace("S", "")
    if len(axes) < d:
        raise CLIError(f"{src}: a {d}D model needs {d} spatial axes; the image has axes {meta.axes}")
    lead, spatial = axes[:-d], axes[-d:]
    index = []
    for letter in lead:
        n = image.shape[meta.axes.index(letter)]
        pick = {"Z": args.slice, "T": args.time}.get(letter)
        pick = n // 2 if pick is None and letter == "Z" else (pick or 0)
        if not 0 <= pick < n:
            raise CLIError(f"{src}: --{'slice' if letter == 'Z' else 'time'} {pick} is outside 0..{n - 1}")
        index.append(pick)
    center = None
    if args.slice is not None and "Z" not in lead:
        if "Z" not in spatial:
            raise CLIError(f"{src}: --slice given but the image has no Z axis (axes {meta.axes})")
        shape = [image.shape[meta.axes.index(a)] for a in spatial]
        if not 0 <= args.slice < shape[0]:
            raise CLIError(f"{src}: --slice {args.slice} is outside 0..{shape[0] - 1}")
        center = [args.slice] + [(s - 1) / 2 for s in shape[1:]]
    if args.center:
        if len(args.center) != d:
            raise CLIError(f"--center needs {d} coordinates ({spatial}) for this model")
        center = args.center
    if args.block and len(args.block) not in (1, d):
        raise CLIError(f"--block needs 1 or {d} sizes ({spatial}) for this model")
    block = None if not args.block else (args.block * d if len(args.block) == 1 else args.block)
    kinds = args.kinds or ["encoder", "decoder", "fused"]
    if not args.overwrite and out.is_dir() and (out / INDEX_FILE).exists():
        raise CLIError(f"{out / INDEX_FILE}: exists; pass --overwrite to replace the features there")
    gen = capture_features(taps, image, channel_axis=channel_axis, index=tuple(index), center=center,
                           block=block, device=args.device)
    t0 = time.perf_counter()
    capture = _progress_driver(gen, src.name, args.quiet)
    spacing = [meta.spacing[meta.axes.index(a)] for a in spatial]
    try:
        index_data = write_features(capture, out, spacing=spacing, unit=meta.unit, kinds=kinds,
                                    source=str(src), overwrite=args.overwrite)
    except FileExistsError as err:
        raise CLIError(str(err)) from err
    if not args.quiet:
        where = ", ".join(f"{a}={i}" for a, i in zip(lead, index, strict=True))
        print(f"{src} -> {out}: {len(index_data['maps'])} maps, {len(capture.records)} levels "
              f"({capture.model_name}, {capture.device}{', ' + where if where else ''}, "
              f"{time.perf_counter() - t0:.1f} s); index: {out / INDEX_FILE}")
    return 0


def _check_features_output(out: Path, src: Path) -> None:
    """Refuse a features folder whose files would replace the input (its index or an
    ``L<k>_<kind>.ome.tif`` of the same name), or that lies inside the input."""
    import re

    from .batch import check_output
    from .features.export import INDEX_FILE

    check_output(out / INDEX_FILE, [src])
    if re.fullmatch(r"L\d+_(encoder|decoder|fused)\.ome\.tif", src.name) and \
            os.path.realpath(src.parent) == os.path.realpath(out):
        raise CLIError(f"{out}: the features written there would replace the input {src}; "
                       "choose another output folder")


def cmd_models(args) -> int:
    from .model.store import (
        data_licence,
        list_models,
        load_config,
        render_card,
        resolve_model,
        weights_licence,
    )

    if args.card:  # the whole model card, as the widgets show it
        print(render_card(load_config(resolve_model(args.card))))
        return 0
    entries = list_models()
    if not entries:
        print("no models found")
        return 0
    for e in entries:
        c = e.config
        metrics = c.card.get("metrics", {})
        m = ", ".join(f"{k} {v}" for k, v in list(metrics.items())[:3])
        print(f"{e.name:<20} {e.source:<8} {c.spatial_dims}D {c.output:<10} {c.card.get('task', '')}")
        if args.verbose:
            print(f"{'':<20} {e.path}")
            if m:
                print(f"{'':<20} validation: {m}")
            print(f"{'':<20} licence: weights {weights_licence(c)}; training data {data_licence(c)}")
    return 0


def _training_bounds():
    from .model.config import MAX_CLASSES
    from .training.loop import MAX_LR, MAX_SECONDS, MAX_STEPS

    return {
        "steps": whole_number(0, MAX_STEPS), "time": real_number(0, MAX_SECONDS, " seconds", low_open=True),
        "lr": real_number(0, MAX_LR, low_open=True), "batch": whole_number(1, 1024),
        "classes": whole_number(2, MAX_CLASSES), "balance": real_number(0, 2),
        "seed": whole_number(0, 2**32 - 1),
    }


def cmd_import_model(args) -> int:
    """Convert a PyTorch checkpoint (read with weights_only=True) or a bioimage.io package
    into a model folder."""
    from .model.bioimageio import is_package
    from .model.store import import_checkpoint, load_model

    if is_package(args.checkpoint):
        return cmd_import_package(args)
    if str(args.checkpoint).lower().endswith(".zip") and Path(args.checkpoint).is_file():
        raise CLIError(f"{args.checkpoint}: not a bioimage.io model package (a zip archive holding rdf.yaml)")
    if args.config is None:  # a network of another package, or a TorchScript / torch.export program
        return _import_foreign(args)
    folder = import_checkpoint(args.checkpoint, args.config, args.output, overwrite=args.overwrite,
                               half=args.half)
    model = load_model(folder)  # proves the stored folder loads
    if not args.quiet:
        print(f"{args.checkpoint} -> {folder} ({model.config.name}, {model.num_parameters()} parameters); "
              f"use it with --model {args.output}")
    return 0


def cmd_import_package(args) -> int:
    """Store a bioimage.io model package (zip, folder or rdf.yaml) as a model."""
    from .model.bioimageio import import_package
    from .model.store import load_model

    folder = import_package(args.checkpoint, args.output, overwrite=args.overwrite)
    model = load_model(folder)  # proves the stored folder loads
    kind = getattr(model, "format", "pytorch_state_dict (SkipUNet)")
    if not args.quiet:
        print(f"{args.checkpoint} -> {folder} ({model.config.name}, {kind} weights); "
              f"use it with --model {args.output}")
    return 0


def cmd_export(args) -> int:
    """Write a model as a bioimage.io model package (zip)."""
    from .model.bioimageio import export_package

    sample = None
    if args.sample:
        from .io import read_image

        image, meta = read_image(args.sample)
        sample = np.asarray(image)
        if meta.axes and "C" in meta.axes:
            raise CLIError(f"{args.sample}: the sample must be a grey image (it has channels: axes {meta.axes})")
    out = _progress_driver(export_package(args.model, args.output, sample=sample, authors=args.author,
                                          overwrite=args.overwrite), "export", quiet=args.quiet)
    if not args.quiet:
        print(f"{args.model} -> {out} (bioimage.io model package; check it with `bioimageio test {out}`)")
    return 0


def _import_foreign(args) -> int:
    import json

    from .model.foreign import import_model
    from .model.store import load_model

    def parse(text, what):
        if text is None:
            return None
        try:
            return json.loads(Path(text).read_text() if text.lstrip()[:1] not in "{[" else text)
        except (OSError, ValueError) as err:
            raise CLIError(f"--{what}: not a JSON object or a file holding one ({err})") from err

    arch_args = parse(args.arch_args, "arch-args")
    skips = parse(args.skips, "skips")
    for value, what in ((arch_args, "arch-args"), (skips, "skips")):
        if value is not None and not isinstance(value, dict):
            raise CLIError(f"--{what} must be a JSON object, got {type(value).__name__}")
    shape = None
    if args.trace_shape:
        try:
            shape = tuple(int(v) for v in args.trace_shape.lower().split("x"))
        except ValueError as err:
            raise CLIError(f"--trace-shape must look like 256x256 or 64x128x128, got {args.trace_shape!r}") from err
    folder = import_model(args.checkpoint, name=args.output, arch=args.arch, arch_args=arch_args,
                          normalization=args.normalization, axes=args.axes, classes=args.classes,
                          skips=skips, trace_shape=shape, overwrite=args.overwrite, half=args.half)
    model = load_model(folder)  # proves the stored folder loads
    if not args.quiet:
        levels = (model.config.arch.get("skips") or {}).get("levels", [])
        where = ", ".join(f"x{'x'.join(map(str, lv['scale']))}" for lv in levels) or "none"
        print(f"{args.checkpoint} -> {folder} ({model.config.name}, {model.num_parameters()} parameters, "
              f"{model.config.spatial_dims}D, {model.config.num_classes} classes); {len(levels)} skip "
              f"connection(s) found, at scales {where}; use it with --model {args.output}")
    return 0


def cmd_train(args) -> int:
    from .training.recipe import train_from_folder

    gen = train_from_folder(
        args.data if len(args.data) > 1 else args.data[0], args.recipe, args.output, steps=args.steps, time_budget=args.time, device=args.device,
        init=args.init, lr=args.lr,
    )
    out = _progress_driver(gen, "train", args.quiet)
    print(f"saved {out}")
    return 0


def cmd_finetune(args) -> int:
    """Fine-tune a model on corrected masks and write a new model version (never overwriting)."""
    from .io import read_image
    from .model.store import _import_destination, discard_model, is_model_dir, load_model
    from .training.finetune import (
        Annotated,
        FinetuneOptions,
        activate_version,
        finetune,
        save_version,
    )

    if len(args.images) != len(args.masks):
        raise CLIError(f"{len(args.images)} image(s) but {len(args.masks)} mask(s); give one mask per image")
    dest, _ = _import_destination(args.output)
    if is_model_dir(dest) or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise CLIError(f"{dest}: exists; fine-tuned versions are never overwritten, choose a new name")
    model = load_model(args.model)
    data = []
    for img_path, mask_path in zip(args.images, args.masks, strict=True):
        for p in (img_path, mask_path):
            if not Path(p).is_file():
                raise CLIError(f"{p}: no such file")
        image, meta = read_image(img_path)
        mask, _ = read_image(mask_path)
        image, mask = np.asarray(image), np.asarray(mask)
        rgb = bool(meta.rgb)
        if rgb and meta.axes.index("S") != image.ndim - 1:
            image = np.moveaxis(image, meta.axes.index("S"), -1)
        elif meta.channel_axis is not None:
            raise CLIError(f"{img_path}: has {image.shape[meta.channel_axis]} channels; the model takes one "
                           "(split the channel you want into its own file)")
        data.append(Annotated(image, mask, None, name=Path(img_path).name, rgb=rgb))
    opts = FinetuneOptions(
        steps=args.steps if args.steps is not None else (100_000 if args.time else 300),
        time_budget=args.time, lr=args.lr, train=args.train, augment=args.augment,
        batch_size=args.batch_size, num_classes=args.num_classes, new_head=args.num_classes is not None,
        class_names=args.class_names, class_balance=args.class_balance,
        seed=args.seed,
    )
    existed = dest.is_dir()
    gen = finetune(model, data, opts, device=args.device)
    try:
        result = _progress_driver(gen, "finetune", args.quiet)
        # Ctrl-C while the version is written is held back until it is complete, then the
        # version is removed again: an interrupted run leaves the store as it was
        with _sigint_deferred() as interrupted:
            folder = save_version(result, data, dest, activate=False)
            if interrupted():
                discard_model(folder)
                if existed:
                    folder.mkdir(parents=True, exist_ok=True)  # the empty folder the user gave
                raise KeyboardInterrupt
            if args.activate and result.accepted:
                activate_version(folder)
    except KeyboardInterrupt:
        gen.close()  # releases accelerator memory now
        print("skipseg: interrupted; no model version was written", file=sys.stderr)
        return 130
    print(f"{args.model} -> {folder}: {result.message}; {result.steps} steps in {result.seconds:.0f} s")
    if not result.accepted:
        print(f"skipseg: warning: the new version is not better than {args.model} on the held-out data "
              "(saved anyway, with the labels)", file=sys.stderr)
    if not args.quiet:
        print(f"use it with: skipseg segment --model {folder} ...")
    return 0


def cmd_evaluate(args) -> int:
    from .evaluate import evaluate, pair_files, split_names
    from .model.store import load_model, resolve_model

    model = load_model(args.model)
    if args.save and not args.tune:
        raise CLIError("--save stores tuned post-processing: use it with --tune")
    if args.save and not Path(args.model).is_dir():
        raise CLIError(f"--save writes into the model's folder: give its path (e.g. models/{model.config.name}), "
                       f"not the name {args.model!r}")
    if args.tune and model.config.output != "instances":
        raise CLIError(f"model {model.config.name!r} is semantic: --tune tunes instance post-processing")
    names = split_names(resolve_model(args.model), args.split) if args.split else None
    pairs = pair_files(args.images, args.masks, names)
    if args.json:
        from .batch import check_output

        check_output(args.json, [p for pair in pairs for p in pair] + [resolve_model(args.model)])
    collected: list | None = [] if args.tune else None
    gen = evaluate(model, pairs, drive=lambda g: _progress_driver(g, "segment", True), device=args.device,
                   tile=args.tile, overlap=args.overlap, mode=args.mode, flips=args.flips, collect=collected)
    keys = None
    try:
        while True:
            try:
                score = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            if keys is None:
                keys = [k for k in score.metrics if k not in ("precision", "recall")]
                if not args.quiet:
                    print("image".ljust(40) + "".join(k.rjust(18) for k in keys) + "seconds".rjust(10))
            if not args.quiet:
                print(score.name[:39].ljust(40) + "".join(f"{score.metrics[k]:18.4f}" for k in keys)
                      + f"{score.seconds:10.1f}", flush=True)
    except KeyboardInterrupt:
        gen.close()
        raise
    over = result.overall
    print(f"overall ({len(result.images)} images, model {result.model}, {result.output}): "
          + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in over.items()))
    if args.json:
        import json

        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1) + "\n")
    if args.tune:
        _tune_and_save(model, collected, over, args)
    return 0


def _tune_and_save(model, collected: list, over: dict, args) -> None:
    from .evaluate import tune_instances
    from .model.store import save_model

    cfg = model.config
    params, metrics = tune_instances(cfg, collected)
    where = f"{args.split} split" if args.split else "the given images"
    print(f"tuned post-processing on {len(collected)} images ({where}): seed {params['seed']}, mask "
          f"{params['mask']}, min_size {params['min_size']}: f1@0.5 {over.get('f1@0.5', float('nan')):.4f} -> "
          f"{metrics['f1@0.5']:.4f}, mean matched IoU {metrics['mean_matched_iou']:.4f}")
    if not args.save:
        return
    flips = cfg.inference.get("flips", False) if args.flips is None else args.flips
    if params == dict(cfg.postprocess) and flips == cfg.inference.get("flips", False):
        print(f"{args.model}: the model's post-processing is already the best found; nothing written")
        return
    cfg.postprocess = params
    # the thresholds were found on what the network gave with (or without) test-time flips:
    # the model keeps that setting as its default
    cfg.inference = {**cfg.inference, "flips": bool(flips)}
    card_metrics = dict(cfg.card.get("metrics", {}))
    card_metrics.update({"f1@0.5": round(metrics["f1@0.5"], 4),
                         "mean_matched_iou": round(metrics["mean_matched_iou"], 4)})
    cfg.card["metrics"] = card_metrics
    cfg.card["postprocess_tuning"] = (f"tuned on {len(collected)} images of the {where}"
                                      + (" with test-time flips" if flips else "")
                                      + " by `skipseg evaluate --tune --save`")
    save_model(model, args.model)
    print(f"saved the tuned post-processing and metrics into {args.model}")


def cmd_study(args) -> int:
    """Train twin networks (skips on/off, plain/residual, depths) on the same data and budget;
    write study.json and the figures, print the summary table."""
    from .study import StudyOptions, format_summary, plot_study, run_study

    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: exists and is not a folder")
    if (out / "study.json").exists() and not args.overwrite:
        raise CLIError(f"{out / 'study.json'}: exists (give --overwrite to replace it, or another -o)")
    options = StudyOptions(
        data=args.data, train_images=args.train_images, val_images=args.val_images, crop=args.crop,
        steps=args.steps, batch_size=args.batch_size, patch=args.patch, lr=args.lr,
        base_channels=args.base_channels, depths=args.depths, blocks=args.blocks, norms=args.norms,
        seeds=args.seeds, output=args.output_kind, device=args.device,
    )
    options.validate()
    explorer = None
    if args.explorer_model:
        from .model.store import load_model

        explorer = load_model(args.explorer_model)
    from .inference.device import select_device

    options.device = select_device(options.device)  # refuses a device that is not here
    result = _progress_driver(run_study(options, explorer_model=explorer), "study", args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    result.to_json(out / "study.json")
    figures = plot_study(result, args.figures or out)
    print(format_summary(result))
    print(f"wrote {out / 'study.json'} and {len(figures)} figures: {', '.join(str(f) for f in figures)}")
    return 0


def cmd_view(args) -> int:
    try:
        import napari
    except ImportError as err:
        raise CLIError("napari is not installed: pip install 'napari-skipseg[all]'") from err
    viewer = launch_viewer(args.inputs, sample=args.sample)
    if args.screenshot:
        from qtpy.QtWidgets import QApplication

        for _ in range(20):
            QApplication.processEvents()
        viewer.screenshot(args.screenshot, canvas_only=False)
        viewer.close()
        return 0
    napari.run()
    return 0


def launch_viewer(inputs=(), sample: str = "nuclei2d"):
    """A napari viewer with the Segment widget docked and the inputs (or a sample) open."""
    import napari

    viewer = napari.Viewer(title="napari-skipseg")
    if inputs:
        for path in inputs:
            viewer.open(path, plugin="napari-skipseg")
    elif sample:
        viewer.open_sample("napari-skipseg", sample)
    viewer.window.add_plugin_dock_widget("napari-skipseg", "Segment")
    return viewer


EPILOG = """examples:
  skipseg models -v                          the models it can use, with their metrics
  skipseg segment image.tif -o labels.tif    default model chosen from the image
  skipseg segment big.zarr -o labels.zarr    streamed, memory bounded
  skipseg finetune --model nuclei2d --images a.tif --masks a_mask.tif -o mine --time 180
  skipseg COMMAND -h                         a command's options

""" + __doc__.split("\n\n", 1)[1].strip()  # the exit codes, as the module says them


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="skipseg", description=__doc__.splitlines()[0], epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment images or stacks with a model")
    p.add_argument("inputs", nargs="+", help="image files (.tif, .nii, .nii.gz), zarr stores, DICOM "
                   "series folders, or folders of them")
    p.add_argument("-o", "--out", dest="output", required=True,
                   help="output file (.tif, .nii, .nii.gz, .zarr: streamed) for one input, else a folder; "
                        "the input OME-Zarr itself to add the result as labels next to the image")
    p.add_argument("--model", help="model name or folder (default: chosen from the image)")
    p.add_argument("--mode", choices=["auto", "2d", "3d"], default="auto")
    p.add_argument("--output", "--output-kind", "--kind", dest="output_kind", default=None,
                   choices=["instances", "semantic", "probabilities"],
                   help="what to write: instance labels, semantic labels or class probabilities "
                        "(default: what the model predicts)")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--channel", type=whole_number(0), help="segment this channel of a multi-channel image "
                   "(needed when the image has several channels and the model takes one)")
    p.add_argument("--diameter", help="object diameter in pixels: a number, one per spatial axis (3D: "
                   "'4,23,23') or 'auto' (estimated; the default for instance models that record the "
                   "object size they were trained at); the image is resampled to the model's scale")
    p.add_argument("--spacing", help="pixel/voxel size per spatial axis, e.g. '0.3,0.1,0.1' (default: "
                   "from the file's metadata)")
    p.add_argument("--link", action="store_true", help="time-lapses: give an object the same id in "
                   "consecutive frames (overlap matching); frames are always segmented one by one")
    p.add_argument("--tile", type=whole_number(*TILE_RANGE, " pixels"), help="tile size in pixels (default: the model's)")
    p.add_argument("--overlap", type=real_number(0, 0.5), default=0.125, help="tile overlap fraction (0 to 0.5)")
    p.add_argument("--batch-size", type=whole_number(1, 1024), default=4)
    p.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time flips: average 4 (2D) or 8 (3D) flipped passes, that many times "
                        "slower (default: the model's setting, see its card)")
    p.add_argument("--block", type=whole_number(*BLOCK_RANGE, " pixels"), nargs="+",
                   help="spatial block predicted at a time (bounds memory; default: whole slices, "
                        "3D volumes in blocks of up to 8M voxels)")
    p.add_argument("--format", choices=["tif", "nii", "nii.gz", "zarr"],
                   help="output format for a folder of outputs (default: the input's; DICOM -> nii.gz)")
    p.add_argument("--labels-name", help="name of the labels written into an OME-Zarr input "
                   "(-o the input itself; default: the model name)")
    p.add_argument("--scheduler", help="dask.distributed scheduler address, e.g. tcp://10.0.0.5:8786")
    p.add_argument("--workers", type=whole_number(1, 256),
                   help="run on a local dask cluster of this many processes")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("features", help="write the feature maps crossing every skip connection (OME-TIFF)")
    p.add_argument("input", help="image file")
    p.add_argument("-o", "--output", required=True, help="folder for L<k>_<kind>.ome.tif files and index.json")
    p.add_argument("--model", required=True, help="model name or folder")
    p.add_argument("--slice", type=whole_number(0), help="Z slice (2D models; for 3D models: centre of the block)")
    p.add_argument("--time", type=whole_number(0), help="time point (default 0)")
    p.add_argument("--center", type=real_number(), nargs="+", help="block centre in pixels, spatial axes (3D models)")
    p.add_argument("--block", type=whole_number(*BLOCK_RANGE, " pixels"), nargs="+",
                   help="block size in pixels (default: whole slice / model tile)")
    p.add_argument("--kinds", nargs="+", choices=["encoder", "decoder", "fused"], help="which maps to write")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("models", help="list the models that can be used")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--card", metavar="MODEL", help="print this model's card (name or folder)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("import-model", help="convert a PyTorch state dict (ours with --config, another "
                       "package's with --arch), a TorchScript / torch.export program or a bioimage.io model "
                       "package into a stored model "
                       "(tensors only: nothing in a weights file is executed)")
    p.add_argument("checkpoint", help=".pt/.pth/.ckpt file holding a state dict (or .safetensors), a program, or a "
                   "bioimage.io package (.zip, or its folder or rdf.yaml)")
    p.add_argument("--config", help="config.json describing a SkipUNet (for our own networks)")
    p.add_argument("--arch", metavar="DOTTED.CLASS",
                   help="network class of another package (monai, pytorch3dunet, segmentation_models_pytorch), "
                   "e.g. monai.networks.nets.BasicUNet; not needed for TorchScript / torch.export programs")
    p.add_argument("--arch-args", metavar="JSON", help="the class's keyword arguments (JSON object or file)")
    p.add_argument("--normalization", choices=("percentile", "none"), default="percentile",
                   help="how images are scaled for the network (default: percentile 1-99.8 to 0-1)")
    p.add_argument("--axes", choices=("yx", "zyx"), help="the network's spatial axes (default: from its convolutions)")
    p.add_argument("--classes", nargs="+", metavar="NAME", help="one name per output channel")
    p.add_argument("--skips", metavar="JSON", help="skip map naming modules, for networks that do not trace: "
                   '{"encoder": [...], "fused": [...], "skip_first": true}')
    p.add_argument("--trace-shape", metavar="YxX", help="example input for tracing (default 256x256 or 128x128x128)")
    p.add_argument("-o", "--output", required=True,
                   help="model name (stored in the user model folder) or a folder path")
    p.add_argument("--half", action="store_true", help="store float weights as float16")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_import_model)

    p = sub.add_parser("export", help="write a model as a bioimage.io model package (.zip) for the "
                       "BioImage Model Zoo, deepImageJ, ilastik, QuPath")
    p.add_argument("model", help="model name or folder")
    p.add_argument("-o", "--output", required=True, help="the package to write (.zip)")
    p.add_argument("--sample", help="a grey image like the training data, for the test tensors and the "
                   "cover (default: synthetic nuclei)")
    p.add_argument("--author", action="append", help="an author to name (repeat for several)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="score a model on images with known masks (F1, IoU, Dice, pixel error)")
    p.add_argument("images", help="an image file, or a folder of images")
    p.add_argument("masks", help="its mask, or a folder of masks with the same file names")
    p.add_argument("--model", required=True, help="model name or folder")
    p.add_argument("--split", choices=["train", "validation"],
                   help="only the images of the model's recorded split (validation_split.json)")
    p.add_argument("--mode", choices=["auto", "2d", "3d"], default="auto")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--tile", type=whole_number(*TILE_RANGE, " pixels"), help="tile size in pixels (default: the model's)")
    p.add_argument("--overlap", type=real_number(0, 0.5), default=0.125, help="tile overlap fraction (0 to 0.5)")
    p.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                   help="test-time flips: average 4 (2D) or 8 (3D) flipped passes, that many times "
                        "slower (default: the model's setting, see its card)")
    p.add_argument("--json", help="also write the per-image and overall metrics to this JSON file")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the overall line")
    p.add_argument("--tune", action="store_true",
                   help="instance models: also search the watershed thresholds that score best on these "
                        "images (use the validation split) and print them")
    p.add_argument("--save", action="store_true",
                   help="with --tune: write the tuned thresholds and the metrics they give into the model "
                        "folder's config and card (the folder path must be given as --model)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("study", help="what skips buy, measured: train twin networks with and without skips "
                       "(plain/residual, shallow/deep) on the same data and budget; gradients, losses, scores")
    p.add_argument("data", help="folder with images/ and masks/ (same file names; instance labels), "
                   "split as the bundled models' data (hash of the file name)")
    p.add_argument("-o", "--output", required=True, help="folder for study.json (and the figures)")
    p.add_argument("--figures", help="folder for the PNG figures (default: the output folder)")
    p.add_argument("--steps", type=whole_number(1, 100_000), default=300, help="training steps per network")
    p.add_argument("--seeds", type=whole_number(1, 20), default=3, help="seeds 0..N-1, every network once per seed")
    p.add_argument("--depths", type=whole_number(1, 6), nargs="+", default=[2, 4], help="downsamplings")
    p.add_argument("--blocks", nargs="+", choices=["plain", "residual"], default=["plain", "residual"])
    p.add_argument("--norms", nargs="+", choices=["batch", "none"], default=["batch"],
                   help="batch norm as in the product, or none (every batch norm removed)")
    p.add_argument("--base-channels", type=whole_number(1, 64), default=8)
    p.add_argument("--patch", type=whole_number(16, 1024, " pixels"), default=64)
    p.add_argument("--batch-size", type=whole_number(1, 256), default=4)
    p.add_argument("--lr", type=real_number(0, 1, low_open=True), default=2e-3)
    p.add_argument("--train-images", type=whole_number(1, 10_000), default=60)
    p.add_argument("--val-images", type=whole_number(1, 10_000), default=20, help="held-out images scored")
    p.add_argument("--crop", type=whole_number(16, 4096, " pixels"), default=256,
                   help="every image is cut to its central crop x crop pixels")
    p.add_argument("--output-kind", choices=["instances", "semantic"], default="instances",
                   help="instances: F1@0.5 of watershed objects; semantic: Dice of the foreground")
    p.add_argument("--explorer-model", help="also split this trained 2D model's gradient-flow view (the Skip "
                   "connections widget) by path on the first held-out image")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda or mps")
    p.add_argument("--overwrite", action="store_true", help="replace an existing study.json")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_study)

    p = sub.add_parser("view", help="open napari with the plugin's widgets and an image or sample")
    p.add_argument("inputs", nargs="*", help="images to open (default: a sample)")
    p.add_argument("--sample", default="nuclei2d", help="sample to open when no input is given")
    p.add_argument("--screenshot", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_view)

    bound = _training_bounds()
    p = sub.add_parser("train", help="train a model from a folder with images/ and masks/")
    p.add_argument("data", nargs="+", help="folder(s) with images/ and masks/ (same file names); several "
                   "are trained on together (see the recipe's target_spacing, folders and split_group)")
    p.add_argument("--recipe", required=True, help="recipe JSON (model + training options)")
    p.add_argument("-o", "--output", required=True, help="folder to write the model to")
    p.add_argument("--steps", type=bound["steps"])
    p.add_argument("--time", type=bound["time"], help="time budget in seconds")
    p.add_argument("--lr", type=bound["lr"], help="peak learning rate, above 0 and at most 1 (default: the recipe's)")
    p.add_argument("--init", help="start from this model's weights (same network as the recipe's) "
                   "to continue training")
    p.add_argument("--device", default="auto")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("finetune", help="fine-tune a model on corrected masks; writes a new model version")
    p.add_argument("--model", required=True, help="model to start from (name or folder)")
    p.add_argument("--images", nargs="+", required=True, help="image files (2D images or stacks)")
    p.add_argument("--masks", nargs="+", required=True, help="corrected label files, one per image (0 = background)")
    p.add_argument("-o", "--output", required=True,
                   help="new model: a name (stored in the user model folder) or a folder path; never overwritten")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--steps", type=bound["steps"], help="training steps (default 300)")
    budget.add_argument("--time", type=bound["time"], help="time budget in seconds, everything included")
    p.add_argument("--train", default="auto", choices=["auto", "all", "decoder", "decoder+last"],
                   help="what to train (auto: the decoder and the last encoder stages; every weight with "
                        "--num-classes, a new head)")
    p.add_argument("--lr", type=bound["lr"], help="peak learning rate, warm-up then cosine, at most 1 "
                                            "(default 0.0003; 0.003 with --num-classes)")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no flips/turns/intensity changes")
    p.add_argument("--class-balance", type=bound["balance"], metavar="B",
                   help="weigh each class's cross-entropy by its frequency ** -B in the labels (0: none, "
                        "1: every class as much; default 1 with new classes, else 0)")
    p.add_argument("--batch-size", type=bound["batch"], default=4)
    p.add_argument("--num-classes", type=bound["classes"], help="new classes (masks hold class ids 0..N-1): a new head "
                   "for N classes (semantic output), the rest of the network kept")
    p.add_argument("--class-names", nargs="+", help="names of the classes (with --num-classes)")
    p.add_argument("--seed", type=bound["seed"], default=0)
    p.add_argument("--activate", action="store_true", help="make it the active model if it is better")
    p.add_argument("--device", default="auto")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_finetune)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings on the command line: ``skipseg: warning: ...`` on one line, no source lines."""
    return f"skipseg: warning: {' '.join(str(message).split())}\n"


def main(argv: list[str] | None = None) -> int:
    import logging
    import warnings

    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.formatwarning = _one_line_warning
    # pydicom warns about values of tags it parses; our reader checks the tags it uses itself
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    # zarr's reads left pending when one chunk fails are reported by asyncio as the process
    # ends ("Task was destroyed but it is pending"), after our one-line error: not for users
    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    from .inference.engine import SegmentationError
    from .model.config import ModelConfigError
    from .model.store import ModelLoadError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("skipseg: interrupted", file=sys.stderr)
        return 130
    except (CLIError, SegmentationError, ModelLoadError, ModelConfigError, OSError, ValueError) as err:
        message = " ".join(str(err).split("\n")) or type(err).__name__  # one line
        print(f"skipseg: error: {message}", file=sys.stderr)
        return 2
    except MemoryError:
        print("skipseg: error: not enough memory (try a smaller --tile or --batch-size)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
