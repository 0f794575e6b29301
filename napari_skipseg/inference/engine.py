"""The inference engine: one generator for napari, the CLI and scripts.

``predict`` yields :class:`Progress` events and returns a :class:`Segmentation`. Drive it
with :func:`run` (or ``napari_skipseg.segment``) when progress does not matter.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from .postprocess import instance_labels, semantic_labels
from .preprocess import check_pixel_dtype, normalize, percentile_range
from .tiling import blend_window, block_grid, block_tiles, default_block, fit_tile

OUTPUTS = ("instances", "semantic", "probabilities")
#: Voxels per block by default (2D: a 4096 x 4096 plane, 3D: e.g. 128 x 256 x 256); a block
#: costs about 16 bytes per voxel and class while it is being predicted.
BLOCK_VOXELS = {2: 2**24, 3: 2**23}
MODES = ("auto", "2d", "3d")


class SegmentationError(ValueError):
    """The image and the model or options do not fit together; the message says how."""


@dataclass
class Progress:
    """Progress of a long job: ``done`` of ``total`` steps, and what is happening."""

    done: int
    total: int
    message: str = ""
    info: dict = field(default_factory=dict)


@dataclass
class Segmentation:
    """Result of :func:`predict`.

    ``labels`` has the image's shape without its channel axis (None for
    ``output="probabilities"``); ``probabilities`` is ``(classes, *labels.shape)`` float32
    when asked for.
    """

    labels: np.ndarray | None
    probabilities: np.ndarray | None
    output: str
    model_name: str
    device: str
    seconds: float
    class_names: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


def predict(
    model,
    image,
    *,
    channel_axis: int | None = None,
    mode: str = "auto",
    output: str = "instances",
    tile: int | tuple[int, ...] | None = None,
    overlap: float = 0.125,
    batch_size: int = 4,
    device: str = "auto",
    keep_probabilities: bool = False,
    postprocess: dict | None = None,
    block: int | tuple[int, ...] | None = None,
    labels_out=None,
    probabilities_out=None,
    units=None,
    intensity_range: tuple[float, float] | None = None,
    backend: str = "auto",
    threads: int | None = None,
    flips: bool | None = None,
) -> Generator[Progress, None, Segmentation]:
    """Segment ``image`` with ``model``, tile by tile; yields progress, returns the result.

    Parameters
    ----------
    model : SkipUNet or str
        A loaded network or the name/folder of a stored model.
    image : array-like
        numpy, dask or zarr array shaped ``(..., [Z,] Y, X)``, with an optional channel axis
        at ``channel_axis`` (RGB images: ``-1``). Leading axes (time, or Z for a 2D model)
        are processed slice by slice and read one slice at a time.
    mode : {"auto", "2d", "3d"}
        ``2d`` runs the network on each YX slice; ``3d`` on ZYX blocks (3D models only).
        ``auto`` follows the model.
    output : {"instances", "semantic", "probabilities"}
        What ``labels`` holds. Instances need a model trained for them.
    tile : int or tuple, optional
        Tile shape (spatial); default from the model's config.
    overlap : float
        Fraction of the tile shared with the neighbouring tile (0 to 0.5).
    batch_size : int
        Tiles in flight at once; tiles of consecutive slices share batches. On an
        accelerator they make one forward pass; on a CPU they are shared out between worker
        threads that run at the same time (see ``threads``).
    device : str
        ``auto`` (CUDA, then MPS, then CPU), or a device name.
    keep_probabilities : bool
        Also return class probabilities (always kept for ``output="probabilities"``).
    postprocess : dict, optional
        Instance post-processing parameters over the model's own.
    block : int or tuple, optional
        Spatial block processed at a time (default: the whole slice or volume when it has at
        most :data:`BLOCK_VOXELS` voxels, else a part of it). Every block is predicted from
        the tiles of the whole image's grid that touch it, so probabilities and semantic
        labels do not depend on the block size; instances are found per block (objects
        crossing a block border are split there, with distinct ids).
    labels_out, probabilities_out : array-like, optional
        Where to write the labels (image shape without channels) and probabilities
        (``(classes, *shape)``), e.g. zarr arrays on disk: each finished slice or block is
        written there at once and dropped, so memory is bounded by the block, tile and batch
        sizes, not by the image. The result then holds these arrays instead of numpy.
    units : sequence of int, optional
        Process only these units (indices into :func:`unit_list`; used by
        :mod:`napari_skipseg.distributed`). Instance ids then start at 1 within the run.
    intensity_range : (float, float), optional
        Normalisation range to use instead of the image's percentiles (the same for every
        part of a split run).
    backend : {"auto", "torch", "onnxruntime"}
        What runs the network (see :mod:`napari_skipseg.inference.backends`): a copy of the
        model with batch norms folded into the convolutions, in PyTorch, or that copy
        exported to ONNX Runtime (CPU only, when installed). ``auto`` (or
        ``$SKIPSEG_BACKEND``) takes ONNX Runtime on a CPU for large 2D jobs or when the
        export is cached, else PyTorch (3D: PyTorch). The model passed in is never modified.
    threads : int, optional
        CPU threads to use (default ``$SKIPSEG_THREADS``, else torch's thread count, i.e. the
        physical cores). They go to up to 4 worker threads, each running its own tiles, so
        reading, blending, post-processing and writing overlap with the network.
    flips : bool, optional
        Test-time flips: average the network's probabilities over the tile flipped along
        every combination of spatial axes (4 passes in 2D, 8 in 3D). Default: the model's
        ``inference["flips"]`` (set for bundled models where it measurably helps), else off.

    Returns
    -------
    Segmentation
        ``info`` holds ``intensity_range``, ``block``, ``units``, ``objects`` (instances found),
        ``label_counts`` (instances per unit, in order) and ``backend`` (what ran the network).
    """
    from ..model.store import load_model
    from . import backends as bk
    from .device import autocast_dtype, describe, release, select_device

    t0 = time.perf_counter()
    if output not in OUTPUTS:
        raise SegmentationError(f"output must be one of {OUTPUTS}, got {output!r}")
    if mode not in MODES:
        raise SegmentationError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0 <= overlap <= 0.5:
        raise SegmentationError(f"overlap must be between 0 and 0.5, got {overlap}")
    if not (hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__")):
        image = np.asarray(image)  # lists and other array-likes
    try:
        check_pixel_dtype(image.dtype)
    except ValueError as err:
        raise SegmentationError(str(err)) from None
    dev = select_device(device)
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        model = load_model(model)
    cfg = model.config
    if output == "instances" and cfg.output != "instances":
        raise SegmentationError(
            f"model {cfg.name!r} predicts semantic classes; choose output 'semantic' or 'probabilities'"
        )
    ndim_spatial = cfg.spatial_dims if mode == "auto" else int(mode[0])
    if ndim_spatial != cfg.spatial_dims:
        raise SegmentationError(f"model {cfg.name!r} is a {cfg.spatial_dims}D model; it cannot run in {mode} mode")

    image, n_channels = _channels_last(image, channel_axis)
    shape = tuple(image.shape[:-1]) if n_channels else tuple(image.shape)
    if len(shape) < ndim_spatial:
        raise SegmentationError(
            f"a {ndim_spatial}D model needs an image with at least {ndim_spatial} spatial axes; "
            f"got shape {tuple(image.shape)}" + (" (with a channel axis)" if n_channels else "")
        )
    if len(shape) > 5:
        raise SegmentationError(f"images with more than 5 axes besides channels are not supported; got {shape}")
    if min(image.shape) < 1:
        raise SegmentationError(f"the image is empty (shape {tuple(image.shape)})")
    if n_channels not in (0, 1, 3, 4) and n_channels != cfg.in_channels:
        raise SegmentationError(
            f"model {cfg.name!r} takes {cfg.in_channels} channel(s); the image has {n_channels}"
        )
    if cfg.in_channels > 1 and n_channels != cfg.in_channels:
        raise SegmentationError(
            f"model {cfg.name!r} takes {cfg.in_channels} channels; the image has {n_channels or 1}"
        )
    grey = cfg.in_channels == 1 and n_channels > 1  # RGB -> grey for single-channel models
    n_read = 3 if grey and n_channels == 4 else n_channels  # RGBA: ignore alpha

    lead_shape, spatial = shape[:-ndim_spatial], shape[-ndim_spatial:]
    tile_shape = _tile_shape(tile, cfg, ndim_spatial, spatial, overlap)
    overlap_px = tuple(int(round(t * overlap)) for t in tile_shape)
    block_shape = _block_shape(block, tile_shape, spatial)
    all_units = unit_list(lead_shape, spatial, block_shape)
    todo = list(range(len(all_units))) if units is None else [int(i) for i in units]
    plans = {u: block_tiles(all_units[u][1], spatial, tile_shape, overlap_px) for u in todo}
    total = sum(len(plans[u][1]) for u in todo)

    norm = cfg.normalization or {}
    if intensity_range is not None:
        lo, hi = (float(v) for v in intensity_range)
    else:
        lo, hi = image_intensity_range(cfg, image, channel_axis=-1 if n_channels else None)
    # stain separation / contrast inversion named in the config (preprocess.InputTransform)
    from .preprocess import InputTransform, wants_input_transform

    transform = InputTransform(image, n_channels, norm) if cfg.in_channels == 1 and wants_input_transform(norm) else None

    amp = autocast_dtype(dev)
    classes = cfg.num_classes
    keep = keep_probabilities or output == "probabilities"
    label_dtype = np.uint32 if output == "instances" else np.uint8
    if probabilities_out is not None:
        _check_out("probabilities_out", probabilities_out, (classes, *shape))
        if not keep:
            raise SegmentationError("probabilities_out given, but probabilities are not kept "
                                    "(pass keep_probabilities=True or output='probabilities')")
    if batch_size < 1:
        raise SegmentationError(f"batch_size must be at least 1, got {batch_size}")
    window = blend_window(tuple(min(t, s) for t, s in zip(tile_shape, spatial, strict=True)), overlap_px)
    probs_out = probabilities_out if probabilities_out is not None else (
        np.zeros((classes, *shape), dtype=np.float32) if keep else None)
    labels_out_ = None
    if output != "probabilities":
        if labels_out is not None:
            _check_out("labels_out", labels_out, shape)
            labels_out_ = labels_out
        else:
            labels_out_ = np.zeros(shape, dtype=label_dtype)
    # unit -> [weighted probability sum, weight sum]; a unit covered by one tile exactly
    # keeps that tile's probabilities as they are ([probabilities, None])
    acc: dict[int, list] = {}
    remaining: dict[int, int] = {}
    direct: set[int] = set()
    counts: list[int] = []
    next_label = 0
    done = 0
    batch: list[tuple[int, tuple[slice, ...], tuple[slice, ...], np.ndarray]] = []
    pending: deque = deque()  # (tiles' (unit, src, dst), future of their probabilities)
    full = tuple(slice(0, int(t)) for t in window.shape)

    def read_unit(idx: tuple, region: tuple[slice, ...]) -> np.ndarray:
        data = np.asarray(image[(*idx, *region)])
        if transform is not None:
            return transform(data)
        if n_channels:
            data = data[..., :n_read]
            data = data.mean(axis=-1, keepdims=True) if grey else data
            data = np.moveaxis(data, -1, 0)
        else:
            data = data[None]
        return normalize(data, lo, hi)

    def submit() -> None:
        x = np.stack([b[3] for b in batch])
        pending.append(([b[:3] for b in batch], pool.submit(runner, x)))
        batch.clear()

    def collect() -> int:
        meta, future = pending.popleft()
        p = future.result()
        for (u, src, dst), pi in zip(meta, p, strict=True):
            if u in direct:
                acc[u] = [pi, None]
            else:
                a, w = acc[u]
                if src == full:
                    a[(slice(None), *dst)] += pi * window
                    w[dst] += window
                else:
                    a[(slice(None), *dst)] += pi[(slice(None), *src)] * window[src]
                    w[dst] += window[src]
            remaining[u] -= 1
        return len(meta)

    def finish(u: int) -> None:
        nonlocal next_label
        a, w = acc.pop(u)
        del remaining[u]
        direct.discard(u)
        probs = a if w is None else a / w
        idx, blk = all_units[u]
        where = (*idx, *blk)
        if probs_out is not None:
            probs_out[(slice(None), *where)] = probs
        if output == "semantic":
            labels_out_[where] = semantic_labels(probs, cfg.output)
        elif output == "instances":
            params = {**cfg.postprocess, **(postprocess or {})}
            lab = instance_labels(probs, params)
            n = int(lab.max()) if lab.any() else 0
            lab[lab > 0] += next_label  # unique ids across slices and blocks
            next_label += n
            counts.append(n)
            labels_out_[where] = lab

    def finish_ready() -> None:
        for j in [j for j, r in remaining.items() if r == 0]:
            finish(j)

    # the caller's model is left as it is: the network runs on a fused copy (or, for a
    # module that cannot be copied, on the model itself, put back as it was afterwards)
    was_training = bool(getattr(model, "training", False))
    home = next((p.device for p in model.parameters()), None) if hasattr(model, "parameters") else None
    runner = None
    try:
        try:
            runner = bk.make_runner(model, dev, backend=backend, tile_spatial=window.shape,
                                    voxels=total * int(np.prod(window.shape)),
                                    batch_size=batch_size, threads=threads, amp=amp,
                                    flips=bool(cfg.inference.get("flips", False) if flips is None else flips))
        except bk.BackendError as err:
            raise SegmentationError(str(err)) from None
        backend_info, fallback = runner.describe(), runner.fallback
        desc = describe(dev)
        if dev.split(":")[0] == "cpu":
            n = runner.budget
            desc = f"cpu ({n} thread{'s' if n > 1 else ''}, float32, {runner.name})"
        per_call = runner.batch
        max_pending = runner.workers + 1  # one batch waiting while the workers run theirs
        with bk.worker_threads(runner, dev) as pool:
            yield Progress(0, total, f"{cfg.name} on {desc}", {"device": desc, "backend": backend_info})
            for u in todo:
                region, tiles = plans[u]
                data = read_unit(all_units[u][0], region)
                blk_shape = tuple(b.stop - b.start for b in all_units[u][1])
                remaining[u] = len(tiles)
                if len(tiles) == 1 and tiles[0][1] == full and tiles[0][2] == tuple(slice(0, b) for b in blk_shape):
                    direct.add(u)  # one tile covers the unit exactly: nothing to blend
                    acc[u] = [None, None]
                else:
                    acc[u] = [np.zeros((classes, *blk_shape), np.float32), np.zeros(blk_shape, np.float32)]
                for tile_sl, src, dst in tiles:
                    batch.append((u, src, dst, np.ascontiguousarray(data[(slice(None), *tile_sl)])))
                    if len(batch) == per_call:
                        submit()
                        while len(pending) >= max_pending:
                            done += collect()
                            finish_ready()
                            yield Progress(done, total, f"{cfg.name} on {desc}")
                del data
            if batch:
                submit()
            while pending:
                done += collect()
                finish_ready()
                if pending:
                    yield Progress(done, total, f"{cfg.name} on {desc}")
            finish_ready()
            yield Progress(done, total, "done")
    finally:
        uses_original = runner is None or runner.uses_original
        runner = None  # drop an accelerator copy before its memory is released
        if uses_original:
            if home is not None and next(model.parameters()).device != home:
                model.to(home)
            model.train(was_training)
        release(dev)

    return Segmentation(
        labels=labels_out_,
        probabilities=probs_out,
        output=output,
        model_name=cfg.name,
        device=desc,
        seconds=time.perf_counter() - t0,
        class_names=list(cfg.class_names),
        info={"intensity_range": (lo, hi), "block": block_shape, "units": len(todo),
              "objects": next_label if output == "instances" else None, "label_counts": counts,
              "backend": backend_info, **({"backend_fallback": fallback} if fallback else {})},
    )


def image_intensity_range(config, image, channel_axis: int | None = None) -> tuple[float, float]:
    """The normalisation range :func:`predict` uses for ``image`` with a model of ``config``:
    intensity percentiles from a strided sample (never the whole stack), or ``(0, 1)``."""
    image, n_channels = _channels_last(image, channel_axis)
    grey = config.in_channels == 1 and n_channels > 1
    n_read = 3 if grey and n_channels == 4 else n_channels
    norm = config.normalization or {}
    if norm.get("kind", "percentile") != "percentile":
        return 0.0, 1.0
    sample = image[..., :n_read] if n_channels else image
    return percentile_range(sample, norm.get("low", 1.0), norm.get("high", 99.8))


def unit_list(lead_shape: tuple[int, ...], spatial: tuple[int, ...], block: tuple[int, ...]) -> list[tuple]:
    """The units :func:`predict` works through, in order: ``(lead index, block slices)`` for
    every slice/volume of the leading axes and every spatial block of it."""
    leads = list(np.ndindex(*lead_shape)) if lead_shape else [()]
    blocks = block_grid(spatial, block)
    return [(idx, blk) for idx in leads for blk in blocks]


def plan(model_config, image_shape: tuple[int, ...], *, channel_axis: int | None = None, mode: str = "auto",
         tile=None, block=None, overlap: float = 0.125) -> dict:
    """Geometry of a :func:`predict` run without running it: output ``shape``, leading
    ``lead_shape``, ``block`` shape, ``units`` (see :func:`unit_list`) and zarr ``chunks``
    that line up with the units (so units can be written concurrently)."""
    ndim = model_config.spatial_dims if mode == "auto" else int(mode[0])
    shape = tuple(int(s) for i, s in enumerate(image_shape)
                  if channel_axis is None or i != channel_axis % len(image_shape))
    lead, spatial = shape[:-ndim], shape[-ndim:]
    tile_shape = _tile_shape(tile, model_config, ndim, spatial, overlap)
    block_shape = _block_shape(block, tile_shape, spatial)
    return {"shape": shape, "lead_shape": lead, "spatial": spatial, "tile": tile_shape, "block": block_shape,
            "units": unit_list(lead, spatial, block_shape),
            "chunks": (1,) * len(lead) + tuple(min(b, s) for b, s in zip(block_shape, spatial, strict=True))}


def _block_shape(block, tile_shape: tuple[int, ...], spatial: tuple[int, ...]) -> tuple[int, ...]:
    nd = len(spatial)
    if block is None:
        return default_block(spatial, tile_shape, BLOCK_VOXELS[nd])
    shape = (int(block),) * nd if isinstance(block, int | np.integer) else tuple(int(b) for b in block)
    if len(shape) != nd or min(shape) < 1:
        raise SegmentationError(f"block must be {nd} positive sizes, got {block!r}")
    return tuple(min(b, s) for b, s in zip(shape, spatial, strict=True))


def _check_out(name: str, out, shape: tuple[int, ...]) -> None:
    if not hasattr(out, "__setitem__") or tuple(getattr(out, "shape", ())) != tuple(shape):
        raise SegmentationError(f"{name} must be an array of shape {tuple(shape)} that can be written to; "
                                f"got {type(out).__name__} of shape {getattr(out, 'shape', None)}")


def run(gen: Generator[Progress, None, Segmentation], callback=None) -> Segmentation:
    """Drive a progress generator to the end and return its result."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if callback is not None:
            callback(event)


def _channels_last(image, channel_axis: int | None):
    if channel_axis is None:
        return image, 0
    ndim = len(image.shape)
    if not -ndim <= channel_axis < ndim:
        raise SegmentationError(f"channel_axis {channel_axis} is out of range for shape {tuple(image.shape)}")
    axis = channel_axis % ndim
    if image.shape[axis] == 0:
        raise SegmentationError(f"the image is empty: its channel axis has length 0 (shape {tuple(image.shape)})")
    if axis != ndim - 1:
        image = np.moveaxis(image, axis, -1) if isinstance(image, np.ndarray) else _moveaxis_lazy(image, axis)
    return image, int(image.shape[-1])


def _moveaxis_lazy(image, axis):
    try:
        import dask.array as da

        return da.moveaxis(da.asarray(image), axis, -1)
    except ImportError:
        return np.moveaxis(np.asarray(image), axis, -1)


def _tile_shape(tile, cfg, ndim: int, spatial: tuple[int, ...], overlap: float = 0.125) -> tuple[int, ...]:
    """The tile shape of a run: the one asked for, else the model's default fitted to the
    image (:func:`~napari_skipseg.inference.tiling.fit_tile`: fewer voxels computed twice)."""
    if tile is None:
        shape = tuple(cfg.default_tile())
        if len(shape) == ndim and ndim == cfg.spatial_dims:
            return fit_tile(spatial, shape, overlap, cfg.size_multiple())
    elif isinstance(tile, int):
        shape = (tile,) * ndim
    else:
        shape = tuple(int(t) for t in tile)
    if len(shape) != ndim or min(shape) < 1:
        raise SegmentationError(f"tile must be {ndim} positive sizes, got {tile!r}")
    return shape
