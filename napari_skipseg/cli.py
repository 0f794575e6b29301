"""``skipseg``: the command line front end (same engine as the napari widgets).

Exit codes: 0 success, 2 bad input or options (one clear line on stderr), 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".tif", ".tiff")


class CLIError(Exception):
    """Bad input or options: printed as one line, exit code 2."""


def _progress_driver(gen, desc: str, quiet: bool = False):
    """Drive a progress generator with a terminal bar; return its result."""
    from tqdm import tqdm

    bar = None
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
            if "val" in event.info:
                postfix["val"] = f"{event.info['val'].get('score', 0):.3f}"
            bar.set_postfix(postfix, refresh=False)
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()


def _expand_inputs(inputs: list[str]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and q.name.lower().endswith(IMAGE_SUFFIXES))
            if not found:
                raise CLIError(f"{p}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        elif p.exists():
            paths.append(p)
        else:
            raise CLIError(f"{p}: no such file or folder")
    return paths


def _output_paths(inputs: list[Path], out: Path, many: bool) -> list[Path]:
    if not many and out.suffix:
        return [out]
    if out.exists() and not out.is_dir():
        raise CLIError(f"{out}: several inputs need an output folder, and this is a file")
    names = [p.name for p in inputs]
    if len(set(names)) != len(names):
        raise CLIError("two inputs have the same file name; their outputs would overwrite each other")
    return [out / name for name in names]


def cmd_segment(args) -> int:
    from .inference.engine import SegmentationError, predict
    from .io import read_image, write_image
    from .model.store import load_config, load_model

    inputs = _expand_inputs(args.inputs)
    many = len(inputs) > 1 or any(Path(i).is_dir() for i in args.inputs)
    outputs = _output_paths(inputs, Path(args.output), many)
    for o in outputs:
        if o.exists() and not args.overwrite:
            raise CLIError(f"{o}: exists; pass --overwrite to replace it")
    model_name = args.model
    if model_name is None:
        from . import default_model_for

        _, meta0 = read_image(inputs[0], lazy=True)
        model_name = default_model_for(meta0)
    cfg = load_config(model_name)
    model = load_model(model_name)
    for src, dst in zip(inputs, outputs, strict=True):
        image, meta = read_image(src, lazy=True)
        channel_axis = meta.axes.index("S") if meta.rgb else meta.channel_axis
        if args.channel is not None:
            if meta.channel_axis is None:
                raise CLIError(f"{src}: --channel given but the image has no channel axis (axes {meta.axes})")
            if not 0 <= args.channel < image.shape[meta.channel_axis]:
                raise CLIError(f"{src}: --channel {args.channel} out of range (the image has "
                               f"{image.shape[meta.channel_axis]} channels)")
            image = np.take(image, args.channel, axis=meta.channel_axis)
            channel_axis = None
        gen = predict(
            model, image, channel_axis=channel_axis, mode=args.mode, output=args.output_kind,
            tile=args.tile, overlap=args.overlap, batch_size=args.batch_size, device=args.device,
        )
        t0 = time.perf_counter()
        try:
            result = _progress_driver(gen, src.name, args.quiet)
        except SegmentationError as err:  # name the file: there may be many
            raise CLIError(f"{src}: {err}") from err
        out_meta = meta.without_channels()
        dst.parent.mkdir(parents=True, exist_ok=True)
        if result.labels is not None:
            write_image(dst, result.labels, out_meta)
        else:
            from dataclasses import replace

            prob_meta = replace(out_meta, axes="C" + out_meta.axes, spacing=(1.0, *out_meta.spacing))
            write_image(dst, result.probabilities, prob_meta)
        if not args.quiet:
            n = int(result.labels.max()) if args.output_kind == "instances" else None
            extra = f", {n} objects" if n is not None else ""
            print(f"{src} -> {dst} ({cfg.name}, {result.device}, {time.perf_counter() - t0:.1f} s{extra})")
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


def cmd_models(args) -> int:
    from .model.store import list_models

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
    return 0


def cmd_import_model(args) -> int:
    """Convert a PyTorch checkpoint (read with weights_only=True) into a model folder."""
    from .model.store import import_checkpoint, load_model

    folder = import_checkpoint(args.checkpoint, args.config, args.output, overwrite=args.overwrite,
                               half=args.half)
    model = load_model(folder)  # proves the stored folder loads
    if not args.quiet:
        print(f"{args.checkpoint} -> {folder} ({model.config.name}, {model.num_parameters()} parameters); "
              f"use it with --model {args.output}")
    return 0


def cmd_train(args) -> int:
    from .training.recipe import train_from_folder

    gen = train_from_folder(
        args.data, args.recipe, args.output, steps=args.steps, time_budget=args.time, device=args.device
    )
    out = _progress_driver(gen, "train", args.quiet)
    print(f"saved {out}")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="skipseg", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("segment", help="segment images or stacks with a model")
    p.add_argument("inputs", nargs="+", help="image files or folders")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    p.add_argument("--model", help="model name or folder (default: chosen from the image)")
    p.add_argument("--mode", choices=["auto", "2d", "3d"], default="auto")
    p.add_argument("--output-kind", "--kind", dest="output_kind", default="instances",
                   choices=["instances", "semantic", "probabilities"])
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--channel", type=int, help="segment this channel of a multi-channel image")
    p.add_argument("--tile", type=int, help="tile size in pixels (default: the model's)")
    p.add_argument("--overlap", type=float, default=0.125, help="tile overlap fraction")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("features", help="write the feature maps crossing every skip connection (OME-TIFF)")
    p.add_argument("input", help="image file")
    p.add_argument("-o", "--output", required=True, help="folder for L<k>_<kind>.ome.tif files and index.json")
    p.add_argument("--model", required=True, help="model name or folder")
    p.add_argument("--slice", type=int, help="Z slice (2D models; for 3D models: centre of the block)")
    p.add_argument("--time", type=int, help="time point (default 0)")
    p.add_argument("--center", type=float, nargs="+", help="block centre in pixels, spatial axes (3D models)")
    p.add_argument("--block", type=int, nargs="+", help="block size in pixels (default: whole slice / model tile)")
    p.add_argument("--kinds", nargs="+", choices=["encoder", "decoder", "fused"], help="which maps to write")
    p.add_argument("--device", default="auto", help="auto, cuda, mps or cpu")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_features)

    p = sub.add_parser("models", help="list the models that can be used")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("import-model", help="convert a PyTorch .pt/.pth state dict into a stored model "
                       "(tensors only: nothing in the file is executed)")
    p.add_argument("checkpoint", help=".pt/.pth/.ckpt file holding a state dict (or .safetensors)")
    p.add_argument("--config", required=True, help="config.json describing the network")
    p.add_argument("-o", "--output", required=True,
                   help="model name (stored in the user model folder) or a folder path")
    p.add_argument("--half", action="store_true", help="store float weights as float16")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_import_model)

    p = sub.add_parser("view", help="open napari with the plugin's widgets and an image or sample")
    p.add_argument("inputs", nargs="*", help="images to open (default: a sample)")
    p.add_argument("--sample", default="nuclei2d", help="sample to open when no input is given")
    p.add_argument("--screenshot", help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_view)

    p = sub.add_parser("train", help="train a model from a folder with images/ and masks/")
    p.add_argument("data", help="folder with images/ and masks/ (same file names)")
    p.add_argument("--recipe", required=True, help="recipe JSON (model + training options)")
    p.add_argument("-o", "--output", required=True, help="folder to write the model to")
    p.add_argument("--steps", type=int)
    p.add_argument("--time", type=float, help="time budget in seconds")
    p.add_argument("--device", default="auto")
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
