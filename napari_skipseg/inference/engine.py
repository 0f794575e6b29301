"""The inference engine: one generator for napari, the CLI and scripts.

``predict`` yields :class:`Progress` events and returns a :class:`Segmentation`. Drive it
with :func:`run` (or ``napari_skipseg.segment``) when progress does not matter.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass, field

import numpy as np

from .postprocess import instance_labels, semantic_labels
from .preprocess import check_pixel_dtype, normalize, percentile_range
from .tiling import blend_window, tile_grid

OUTPUTS = ("instances", "semantic", "probabilities")
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
        Tiles per forward pass; tiles of consecutive slices share batches.
    device : str
        ``auto`` (CUDA, then MPS, then CPU), or a device name.
    keep_probabilities : bool
        Also return class probabilities (always kept for ``output="probabilities"``).
    """
    import torch

    from ..model.store import load_model
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
    tile_shape = _tile_shape(tile, cfg, ndim_spatial, spatial)
    overlap_px = tuple(int(round(t * overlap)) for t in tile_shape)
    tiles = tile_grid(spatial, tile_shape, overlap_px)
    units = list(np.ndindex(*lead_shape)) if lead_shape else [()]
    total = len(units) * len(tiles)

    norm = cfg.normalization or {}
    if norm.get("kind", "percentile") == "percentile":
        sample = image[..., :n_read] if n_channels else image
        lo, hi = percentile_range(sample, norm.get("low", 1.0), norm.get("high", 99.8))
    else:
        lo, hi = 0.0, 1.0

    # the caller's model is put back as it was (device, train/eval) when the job ends or is
    # cancelled, so a job leaves nothing behind, not even weights in accelerator memory
    was_training = bool(getattr(model, "training", False))
    home = next((p.device for p in model.parameters()), None) if hasattr(model, "parameters") else None
    amp = autocast_dtype(dev)
    desc = describe(dev)
    classes = cfg.num_classes
    keep = keep_probabilities or output == "probabilities"
    probs_out = np.zeros((classes, *shape), dtype=np.float32) if keep else None
    labels_out = None
    if output != "probabilities":
        labels_out = np.zeros(shape, dtype=np.uint32 if output == "instances" else np.uint8)
    window = blend_window(tuple(min(t, s) for t, s in zip(tile_shape, spatial, strict=True)), overlap_px)
    acc: dict[tuple, list[np.ndarray]] = {}
    remaining: dict[tuple, int] = {}
    next_label = 0
    done = 0
    batch: list[tuple[tuple, tuple[slice, ...], np.ndarray]] = []

    def read_unit(idx: tuple) -> np.ndarray:
        data = np.asarray(image[idx])
        if n_channels:
            data = data[..., :n_read]
            data = data.mean(axis=-1, keepdims=True) if grey else data
            data = np.moveaxis(data, -1, 0)
        else:
            data = data[None]
        return normalize(data, lo, hi)

    def run_batch() -> None:
        x = torch.from_numpy(np.stack([b[2] for b in batch])).to(dev)
        with torch.inference_mode(), torch.autocast(dev.split(":")[0], dtype=amp, enabled=amp is not None):
            p = torch.softmax(model(x).float(), dim=1).cpu().numpy()
        for (idx, sl, _), pi in zip(batch, p, strict=True):
            a, w = acc[idx]
            a[(slice(None), *sl)] += pi * window
            w[sl] += window
            remaining[idx] -= 1
        batch.clear()

    def finish(idx: tuple) -> None:
        nonlocal next_label
        a, w = acc.pop(idx)
        del remaining[idx]
        probs = a / w
        if probs_out is not None:
            probs_out[(slice(None), *idx)] = probs
        if output == "semantic":
            labels_out[idx] = semantic_labels(probs, cfg.output)
        elif output == "instances":
            params = {**cfg.postprocess, **(postprocess or {})}
            lab = instance_labels(probs, params)
            lab[lab > 0] += next_label  # unique ids across slices
            next_label = int(lab.max()) if lab.any() else next_label
            labels_out[idx] = lab

    try:
        model.to(dev).eval()
        yield Progress(0, total, f"{cfg.name} on {desc}", {"device": desc})
        for idx in units:
            data = read_unit(idx)
            acc[idx] = [np.zeros((classes, *spatial), np.float32), np.zeros(spatial, np.float32)]
            remaining[idx] = len(tiles)
            for sl in tiles:
                batch.append((idx, sl, np.ascontiguousarray(data[(slice(None), *sl)])))
                if len(batch) == batch_size:
                    run_batch()
                    done += batch_size
                    for j in [j for j, r in remaining.items() if r == 0]:
                        finish(j)
                    yield Progress(done, total, f"{cfg.name} on {desc}")
        if batch:
            done += len(batch)
            run_batch()
        for j in [j for j, r in remaining.items() if r == 0]:
            finish(j)
        yield Progress(done, total, "done")
    finally:
        if home is not None and next(model.parameters()).device != home:
            model.to(home)
        model.train(was_training)
        release(dev)

    return Segmentation(
        labels=labels_out,
        probabilities=probs_out,
        output=output,
        model_name=cfg.name,
        device=desc,
        seconds=time.perf_counter() - t0,
        class_names=list(cfg.class_names),
    )


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


def _tile_shape(tile, cfg, ndim: int, spatial: tuple[int, ...]) -> tuple[int, ...]:
    if tile is None:
        shape = tuple(cfg.default_tile())
    elif isinstance(tile, int):
        shape = (tile,) * ndim
    else:
        shape = tuple(int(t) for t in tile)
    if len(shape) != ndim or min(shape) < 1:
        raise SegmentationError(f"tile must be {ndim} positive sizes, got {tile!r}")
    return shape
