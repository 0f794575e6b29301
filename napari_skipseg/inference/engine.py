"""The inference engine: one generator for napari, the CLI and scripts.

``predict`` yields :class:`Progress` events and returns a :class:`Segmentation`. Drive it
with :func:`run` (or ``napari_skipseg.segment``) when progress does not matter.

A run goes through five stages, each a named function or small class below:

1. **plan** (:func:`plan`, :class:`Geometry`, :class:`UnitPlan`): check the options against
   the model and the image; choose the resampling (:func:`choose_scale`), the tile shape
   and the units (slices or blocks) of work, and for every unit the tiles of the whole
   image's grid that touch it.
2. **read and resample** (:class:`UnitReader`): read one unit's pixels with the halo its
   tiles need, normalise them as the model was trained, resample them onto the working grid.
3. **run** (:class:`TileBatches`): cut tiles, gather them into batches and keep the worker
   threads busy with them.
4. **blend** (:class:`Blender`): sum each unit's tile probabilities weighted by a smooth
   window.
5. **finish** (:class:`Finisher`): map a unit's probabilities back onto the input grid,
   write them, make labels (semantic or instances) and write those.

:func:`predict` wires the stages together and :func:`_stream` drives them, unit by unit, so
that memory is bounded by a unit, not by the image.
"""

from __future__ import annotations

import math
import numbers
import time
from collections import deque
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .postprocess import DEFAULT_INSTANCE_PARAMS, instance_labels, semantic_labels
from .preprocess import check_pixel_dtype, normalize, percentile_range
from .resample import Resampling, parse_scale
from .tiling import (
    blend_window,
    block_grid,
    block_tiles,
    default_block,
    fit_tile,
    fit_tile_volume,
    tile_starts,
)

OUTPUTS = ("instances", "semantic", "probabilities")
#: Voxels per block by default (2D: a 4096 x 4096 plane, 3D: e.g. 128 x 256 x 256); a block
#: costs about 16 bytes per voxel and class while it is being predicted. With resampling
#: the budget counts voxels of the working grid.
BLOCK_VOXELS = {2: 2**24, 3: 2**23}
MODES = ("auto", "2d", "3d")
#: Most tiles one slice (2D) or volume (3D) may be cut into; smaller tiles are refused.
MAX_TILES = 2**20
#: A volume with at most this many times the configured tile's voxels is predicted as one
#: tile (:func:`~napari_skipseg.inference.tiling.fit_tile_volume`): no voxel computed twice,
#: no seams, and about the memory of the default batch of configured tiles.
VOLUME_TILE_GROW = 5.0
#: Post-processing parameters that are areas (voxel counts) on the grid the network sees.
AREA_PARAMS = ("min_size", "min_seed_size")


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


# == the generator ==============================================================================


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
    scale: float | Sequence[float] | None = None,
    diameter=None,
    spacing: Sequence[float] | None = None,
    unit: str | None = None,
    near: Sequence[int] | None = None,
    on_runner: Callable | None = None,
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
        Tile shape (spatial, on the grid the network sees); default from the model's config,
        fitted to the image (3D: the whole volume when it has at most
        :data:`VOLUME_TILE_GROW` configured tiles' voxels, else the tiles of at most that
        many voxels that compute the fewest, :func:`~napari_skipseg.inference.tiling.fit_volume_tiles`).
        At least the network's size multiple (:meth:`ModelConfig.size_multiple`) along each
        axis the image is longer than that.
    overlap : float
        Fraction of the tile shared with the neighbouring tile (0 to 0.5); for the default 3D
        tiles, of the model's configured tile (larger tiles do not widen the seams).
    batch_size : int
        Tiles in flight at once; tiles of consecutive slices share batches. On an
        accelerator they make one forward pass; on a CPU they are shared out between worker
        threads that run at the same time (see ``threads``).
    device : str
        ``auto`` (CUDA, then MPS, then CPU), or a device name.
    keep_probabilities : bool
        Also return class probabilities (always kept for ``output="probabilities"``).
    postprocess : dict, optional
        Instance post-processing parameters over the model's own. Sizes (``min_size``,
        ``min_seed_size``) count pixels of the grid the network sees; with ``scale`` they
        are converted to pixels of the image.
    block : int or tuple, optional
        Spatial block processed at a time (default: the whole slice or volume when it has at
        most :data:`BLOCK_VOXELS` voxels, else a part of it). Every block is predicted from
        the tiles of the whole image's grid that touch it, so probabilities and semantic
        labels do not depend on the block size (a tile that consecutive blocks share is
        computed once: :func:`share_tiles`); instances are found per block (objects
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
    scale : float or sequence of float, optional
        Zoom per spatial axis before the network (2.0: it sees the image twice as large;
        between 1/64 and 64). Each unit is resampled on its own, with a halo, and its
        probabilities are interpolated back onto the image's grid, so every output keeps
        the image's shape. Overrides ``diameter``. 1 (or None without a diameter): the image
        is used as it is.
    diameter : number, sequence, "auto" or None
        Object diameter in the image, in pixels (one number, or one per spatial axis), for a
        model whose card records the object size it was trained at; the image is resampled
        so that its objects take that size (see
        :func:`napari_skipseg.inference.scale.resolve_scale`). ``"auto"``: estimated from the
        image (:func:`napari_skipseg.inference.size.estimate_diameter`).
    spacing : sequence of float, optional
        The image's pixel size per spatial axis, in ``unit`` (passed to ``resolve_scale``).
    unit : str, optional
        Unit of ``spacing`` (e.g. ``"um"``).
    near : sequence of int, optional
        A point of the output (its leading axes, optionally followed by spatial
        coordinates): the units nearest to it are done first, then outward
        (:func:`order_units`), e.g. the slice in view first. Instance ids follow that order.
    on_runner : callable, optional
        Called with the runner (:class:`~napari_skipseg.inference.backends.Runner`) once it
        is made, e.g. to keep it for ``runner.stop()`` from another thread (live mode ends
        a request no longer in view at once, not after its tile).

    Returns
    -------
    Segmentation
        ``info`` holds ``intensity_range``, ``block``, ``units``, ``objects`` (instances found),
        ``label_counts`` (instances per unit, in order), ``backend`` (what ran the network),
        ``scale`` (zoom per spatial axis), ``diameter`` (object diameter in image pixels, when
        given or estimated), ``scale_message`` (one line for the user; empty when the image
        was not resampled) and ``scale_source``. The first progress event's ``info`` holds
        ``device``, ``backend``, ``units`` (how many), ``scale``, ``diameter`` and ``scale_message``.
    """
    from ..model.store import load_model
    from .device import autocast_dtype, release, select_device

    t0 = time.perf_counter()
    overlap = _check_options(output, mode, overlap, batch_size)
    image = _as_array(image)
    dev = select_device(device)
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        model = load_model(model)
    cfg = model.config
    if output == "instances" and cfg.output != "instances":
        raise SegmentationError(
            f"model {cfg.name!r} predicts semantic classes; choose output 'semantic' or 'probabilities'"
        )
    layout = _layout(cfg, image, channel_axis, mode)
    choice = resolve_run_scale(model, image, channel_axis=channel_axis, mode=mode, device=dev, scale=scale,
                               diameter=diameter, spacing=spacing, unit=unit)
    image = layout.image
    geo = _geometry(cfg, layout.shape, layout.ndim, tile=tile, block=block, overlap=overlap,
                    scale=choice.scale)
    todo = list(range(len(geo.units))) if units is None else [int(i) for i in units]
    if near is not None:
        todo = order_units(geo.units, todo, near)
    plans = [geo.unit_plan(u) for u in todo]
    jobs = share_tiles(plans)
    total = sum(len(j) for j in jobs)

    if intensity_range is not None:
        lo, hi = (float(v) for v in intensity_range)
    else:
        lo, hi = image_intensity_range(cfg, image, channel_axis=-1 if layout.n_channels else None)
    reader = UnitReader(cfg, image, layout.n_channels, lo, hi, geo.resampling)
    classes = cfg.num_classes
    keep = keep_probabilities or output == "probabilities"
    probs_out, labels_out_ = _outputs(output, classes, geo.shape, keep, labels_out, probabilities_out)
    window = blend_window(geo.window_shape, geo.overlap)
    finisher = Finisher(output, cfg, instance_params(cfg, postprocess, geo.resampling), probs_out, labels_out_,
                        geo.resampling)
    scale_info = {"scale": choice.scale, "diameter": choice.diameter, "scale_message": choice.message}

    from . import backends as bk

    model_state = _ModelState(model)
    runner = None
    try:
        runner = _make_runner(model, dev, cfg, backend=backend, window=window, voxels=total * window.size,
                              batch_size=_tiles_in_flight(batch_size, total, window.shape, cfg),
                              threads=threads, amp=autocast_dtype(dev), flips=flips)
        backend_info, fallback = runner.describe(), runner.fallback
        if on_runner is not None:
            on_runner(runner)
        desc = _describe(dev, runner)
        message = f"{cfg.name} on {desc}"
        with bk.worker_threads(runner, dev) as pool:
            yield Progress(0, total, message, {"device": desc, "backend": backend_info, "units": len(todo),
                                               **scale_info})
            done = yield from _stream(plans, jobs, reader, TileBatches(pool, runner), Blender(classes, window),
                                      finisher, total, message, first_alone=near is not None)
            yield Progress(done, total, "done", _finished(finisher))
    finally:
        uses_original = runner is None or runner.uses_original
        runner = None  # drop an accelerator copy before its memory is released
        model_state.restore(uses_original)
        release(dev)

    return Segmentation(
        labels=labels_out_,
        probabilities=probs_out,
        output=output,
        model_name=cfg.name,
        device=desc,
        seconds=time.perf_counter() - t0,
        class_names=list(cfg.class_names),
        info={"intensity_range": (lo, hi), "block": geo.block, "units": len(todo),
              "objects": finisher.next_label if output == "instances" else None,
              "label_counts": finisher.counts, "backend": backend_info,
              **({"backend_fallback": fallback} if fallback else {}),
              **scale_info, "scale_source": choice.source},
    )


def _stream(plans: list[UnitPlan], jobs: list[list], reader: UnitReader, batches: TileBatches,
            blender: Blender, finisher: Finisher, total: int, message: str,
            first_alone: bool = False) -> Generator[Progress, None, int]:
    """Drive the stages over ``plans`` and their tiles (``jobs``, :func:`share_tiles`): read a
    unit, queue the tiles it computes; whenever the workers are saturated, blend what came
    back (into every unit a tile touches) and finish the units that are complete, in order.
    Yields progress after each batch absorbed; returns the number of tiles done. ``first_alone``:
    the first unit's tiles make batches of their own (not shared with the next unit's), so
    that it is finished as early as it can be (the unit in view)."""
    done = 0
    by_index = {p.index: p for p in plans}

    def absorb() -> int:
        meta, probs = batches.collect()
        for targets, p in zip(meta, probs, strict=True):
            for u, src, dst in targets:
                blender.add(u, src, dst, p)
        for u in blender.complete():
            finisher(by_index[u], blender.take(u))
        return len(meta)

    for unit, tiles in zip(plans, jobs, strict=True):
        blender.open(unit)
        if not tiles:  # every tile of this unit was computed for an earlier one
            continue
        data = reader(unit)
        for tile_sl, targets in tiles:
            for u, _, _ in targets:
                blender.open(by_index[u])
            if batches.add(targets, np.ascontiguousarray(data[(slice(None), *tile_sl)])):
                while batches.saturated:
                    done += absorb()
                    yield Progress(done, total, message, _finished(finisher))
        if first_alone and unit is plans[0]:
            batches.flush()
        del data
    batches.flush()
    while batches.pending:
        done += absorb()
        if batches.pending:
            yield Progress(done, total, message, _finished(finisher))
    for u in blender.complete():
        finisher(by_index[u], blender.take(u))
    return done


def _finished(finisher: Finisher) -> dict:
    """A progress event's ``info`` naming the units finished since the last event."""
    where = finisher.drain()
    return {"units_done": where} if where else {}


def order_units(units: list, todo: Sequence[int], near: Sequence[int]) -> list[int]:
    """``todo`` (indices into ``units``, see :func:`unit_list`) sorted nearest to ``near``
    first: by the distance of each unit's leading index to ``near``'s first entries
    (summed over the leading axes), then by the distance from the rest of ``near`` (spatial
    coordinates, e.g. the Z in view of a 3D run) to the unit's block; ties keep their order.

    Raises
    ------
    SegmentationError
        ``near`` has more entries than the output has axes.
    """
    if not units:
        return list(todo)
    n_lead, n_spatial = len(units[0][0]), len(units[0][1])
    point = [int(v) for v in near]
    if len(point) > n_lead + n_spatial:
        raise SegmentationError(f"near must have at most {n_lead + n_spatial} coordinates, got {len(point)}")
    lead_pt, spatial_pt = point[:n_lead], point[n_lead:]

    def key(pos_index):
        pos, i = pos_index
        lead, block = units[i]
        d_lead = sum(abs(a - b) for a, b in zip(lead, lead_pt, strict=False))
        d_space = sum(max(s.start - p, 0, p - (s.stop - 1)) for s, p in zip(block, spatial_pt, strict=False))
        return d_lead, d_space, pos

    return [i for _, i in sorted(enumerate(todo), key=key)]


def share_tiles(plans: list[UnitPlan], span: int = 1) -> list[list]:
    """Which unit computes each tile, and which units it is blended into.

    Neighbouring blocks of a volume need some of the same tiles (those across their
    border). A tile is computed once, by the first unit that needs it, and blended into
    that unit and every unit up to ``span`` places later in ``plans`` that needs it too
    (those units' sums are then open at once: ``span + 1`` units' memory at most); a unit
    further on computes it again. Returns, per plan, a list of ``(tile slices within that
    unit's region, [(unit index, part of the tile, where it goes in that unit), ...])``.
    Probabilities are the same as with every unit computing all its tiles, up to the order
    of the sums.
    """
    def key(plan: UnitPlan, tile_sl: tuple[slice, ...]) -> tuple:
        return plan.lead, tuple(r.start + t.start for r, t in zip(plan.region, tile_sl, strict=True))

    users: dict[tuple, list] = {}  # tile -> [(position, unit index, src, dst), ...] in plan order
    for pos, plan in enumerate(plans):
        for tile_sl, src, dst in plan.tiles:
            users.setdefault(key(plan, tile_sl), []).append((pos, plan.index, src, dst))
    served: set[tuple[int, tuple]] = set()
    jobs: list[list] = []
    for pos, plan in enumerate(plans):
        mine = []
        for tile_sl, _src, _dst in plan.tiles:
            k = key(plan, tile_sl)
            if (pos, k) in served:
                continue
            targets = [(u, s_, d_) for p_, u, s_, d_ in users[k] if pos <= p_ <= pos + span]
            served.update((p_, k) for p_, _, _, _ in users[k] if pos <= p_ <= pos + span)
            mine.append((tile_sl, targets))
        jobs.append(mine)
    return jobs


# == stage 1: plan ================================================================================


@dataclass(frozen=True)
class UnitPlan:
    """One unit of work: a slice (or block) of the image and the tiles that make it.

    ``index``: position in :func:`unit_list`; ``lead``: index into the leading axes;
    ``block``: spatial slices of the input it produces; ``working``: the working-grid pixels
    predicted for it (``block`` itself without resampling); ``region``: the working-grid
    pixels its tiles cover; ``read``: the input pixels to read for them; ``tiles``: per tile,
    its slices within ``region``, the part of the tile inside ``working`` (tile coordinates)
    and where that part goes (coordinates within ``working``).
    """

    index: int
    lead: tuple[int, ...]
    block: tuple[slice, ...]
    working: tuple[slice, ...]
    region: tuple[slice, ...]
    read: tuple[slice, ...]
    tiles: list

    @property
    def working_shape(self) -> tuple[int, ...]:
        return tuple(s.stop - s.start for s in self.working)


@dataclass(frozen=True)
class Geometry:
    """Where a run works, decided before anything is read (stage *plan*).

    ``shape``: output shape (the image without channels); ``lead_shape`` and ``spatial``
    split it; ``resampling`` maps ``spatial`` onto the working grid the network sees;
    ``tile`` and ``overlap`` (pixels) are on the working grid, ``block`` and ``units`` (see
    :func:`unit_list`) on the input grid.
    """

    shape: tuple[int, ...]
    lead_shape: tuple[int, ...]
    spatial: tuple[int, ...]
    tile: tuple[int, ...]
    overlap: tuple[int, ...]
    block: tuple[int, ...]
    units: list
    resampling: Resampling

    @property
    def working(self) -> tuple[int, ...]:
        """Spatial shape of the working grid."""
        return self.resampling.working

    @property
    def window_shape(self) -> tuple[int, ...]:
        """Shape of every tile the network gets (the tile, cut to a smaller image)."""
        return tuple(min(t, s) for t, s in zip(self.tile, self.working, strict=True))

    @property
    def chunks(self) -> tuple[int, ...]:
        """Chunks of an output array that line up with the units (one unit per chunk)."""
        return (1,) * len(self.lead_shape) + tuple(min(b, s) for b, s in zip(self.block, self.spatial, strict=True))

    def unit_plan(self, index: int) -> UnitPlan:
        """The tiles of the whole working grid that unit ``index`` needs, and what to read."""
        lead, block = self.units[index]
        working = self.resampling.working_block(block)
        region, tiles = block_tiles(working, self.working, self.tile, self.overlap)
        return UnitPlan(index, lead, block, working, region, self.resampling.input_region(region), tiles)


@dataclass(frozen=True)
class _Layout:
    """The image with its channels last, and how its axes split."""

    image: object
    n_channels: int
    shape: tuple[int, ...]
    ndim: int

    @property
    def spatial(self) -> tuple[int, ...]:
        return self.shape[-self.ndim:]


def plan(model_config, image_shape: tuple[int, ...], *, channel_axis: int | None = None, mode: str = "auto",
         tile=None, block=None, overlap: float = 0.125, scale=None) -> dict:
    """Geometry of a :func:`predict` run without running it.

    Returns a dict: output ``shape``, leading ``lead_shape``, ``spatial`` shape, ``tile``
    shape and ``overlap`` (pixels, on the working grid), ``block`` shape, ``units`` (see
    :func:`unit_list`), zarr ``chunks`` that line up with the units (so units can be written
    concurrently), ``scale`` and the ``working`` spatial shape. Pass the same ``scale`` as
    to :func:`predict` (a resolved one: see :func:`choose_scale`) so that the units agree.

    Raises
    ------
    SegmentationError
        The same one-line errors :func:`predict` raises for these options.
    """
    geo = _plan_geometry(model_config, image_shape, channel_axis=channel_axis, mode=mode, tile=tile, block=block,
                         overlap=overlap, scale=scale)
    return {"shape": geo.shape, "lead_shape": geo.lead_shape, "spatial": geo.spatial, "tile": geo.tile,
            "overlap": geo.overlap, "block": geo.block, "units": geo.units, "chunks": geo.chunks,
            "scale": geo.resampling.scale, "working": geo.working}


def tile_voxels(model_config, image_shape: tuple[int, ...], **options) -> int:
    """Voxels the network gets in a whole :func:`predict` run (tiles times tile size) for
    the geometry :func:`plan` describes with the same ``options``: what ``backend="auto"``
    decides by (:func:`napari_skipseg.inference.backends.choose_backend`). A run of a few of
    its units that must give what the whole run gives passes the backend this chooses."""
    geo = _plan_geometry(model_config, image_shape, **options)
    tiles = sum(len(geo.unit_plan(u).tiles) for u in range(len(geo.units)))
    return tiles * math.prod(geo.window_shape)


def _plan_geometry(model_config, image_shape, *, channel_axis=None, mode="auto", tile=None, block=None,
                   overlap=0.125, scale=None) -> Geometry:
    mode_ = _check_mode(mode)
    overlap = _check_overlap(overlap)
    image_shape = tuple(int(s) for s in image_shape)
    if channel_axis is not None:
        if not -len(image_shape) <= channel_axis < len(image_shape):
            raise SegmentationError(f"channel_axis {channel_axis} is out of range for shape {image_shape}")
        shape = tuple(s for i, s in enumerate(image_shape) if i != channel_axis % len(image_shape))
    else:
        shape = image_shape
    ndim = _spatial_dims(model_config, mode_, shape, f"shape {image_shape}"
                         + (" (with a channel axis)" if channel_axis is not None else ""))
    scale = getattr(scale, "scale", scale)  # a ScaleChoice, or the zooms
    nd_scale = (1.0,) * ndim if scale is None else _parse_scale(scale, ndim)
    return _geometry(model_config, shape, ndim, tile=tile, block=block, overlap=overlap, scale=nd_scale)


def unit_list(lead_shape: tuple[int, ...], spatial: tuple[int, ...], block: tuple[int, ...]) -> list[tuple]:
    """The units :func:`predict` works through, in order: ``(lead index, block slices)`` for
    every slice/volume of the leading axes and every spatial block of it."""
    leads = list(np.ndindex(*lead_shape)) if lead_shape else [()]
    blocks = block_grid(spatial, block)
    return [(idx, blk) for idx in leads for blk in blocks]


def resolve_run_scale(model, image, *, channel_axis: int | None = None, mode: str = "auto", device: str = "cpu",
                      scale=None, diameter=None, spacing=None, unit: str | None = None):
    """The resampling :func:`predict` would use for ``image`` with ``model`` (a loaded
    network): resolved once, e.g. on a dask client, whose ``ScaleChoice`` is then passed to
    :func:`plan` and to every :func:`predict` of the run as ``scale=`` (so ``diameter="auto"``
    is estimated once and every part of a split run agrees). Raises :class:`SegmentationError`."""
    cfg = model.config
    layout = _layout(cfg, _as_array(image), channel_axis, mode)
    estimate = _estimator(model, image, channel_axis=channel_axis, device=device, mode=mode)
    return choose_scale(cfg, layout.spatial, scale=scale, diameter=diameter, spacing=spacing, unit=unit,
                        estimate=estimate)


def choose_scale(config, spatial: Sequence[int], *, scale=None, diameter=None, spacing=None,
                 unit: str | None = None, estimate: Callable[[], Sequence[float] | None] | None = None):
    """The resampling of a run: ``scale`` when given, else what
    :func:`~napari_skipseg.inference.scale.resolve_scale` makes of ``diameter`` and
    ``spacing``. Returns a :class:`~napari_skipseg.inference.scale.ScaleChoice` whose
    ``scale`` is exactly 1.0 per axis when the image is not to be resampled.

    Raises
    ------
    SegmentationError
        A scale, diameter or pixel size that cannot be used (one line).
    """
    from .scale import ScaleChoice, ScaleError, resolve_scale

    ndim = len(spatial)
    if isinstance(scale, ScaleChoice):  # resolved before (resolve_run_scale): kept with its message
        if len(scale.scale) != ndim:
            raise SegmentationError(f"the resampling was resolved for {len(scale.scale)} spatial axes; "
                                    f"this run has {ndim}")
        return scale
    if scale is not None:
        s = _parse_scale(scale, ndim)
        if all(v == 1.0 for v in s):
            return ScaleChoice((1.0,) * ndim, None, "none", "")
        return ScaleChoice(s, None, "given", "image resampled " + " x ".join(f"{v:.2f}" for v in s)
                           + " (scale given)")
    try:
        choice = resolve_scale(config, tuple(spatial), diameter=diameter, spacing=spacing, unit=unit,
                               estimate=estimate)
    except ScaleError as err:
        raise SegmentationError(str(err)) from None
    s = _parse_scale(choice.scale, ndim)
    if choice.identity:
        s = (1.0,) * ndim
    return ScaleChoice(s, choice.diameter, choice.source, choice.message)


def _estimator(model, image, *, channel_axis, device: str, mode: str) -> Callable[[], Sequence[float] | None]:
    """A zero-argument callable estimating the object diameter in ``image`` (for
    ``diameter="auto"``); it imports the estimator only when called."""

    def estimate():
        try:
            from .size import estimate_diameter
        except ImportError as err:
            raise SegmentationError(f"diameter 'auto' needs the size estimator, which cannot be loaded here "
                                    f"({type(err).__name__}: {err}); give the diameter in pixels") from None
        return estimate_diameter(model, image, channel_axis=channel_axis, device=device, mode=mode)

    return estimate


def _geometry(cfg, shape: tuple[int, ...], ndim: int, *, tile, block, overlap: float,
              scale: tuple[float, ...]) -> Geometry:
    """Stage *plan*: tile, overlap, block and units for an image of ``shape`` (no channels)
    whose last ``ndim`` axes are spatial, resampled by ``scale``."""
    lead, spatial = shape[:-ndim], shape[-ndim:]
    resampling = Resampling(spatial, scale)
    tile_shape = _tile_shape(tile, cfg, ndim, resampling.working, overlap)
    overlap_px = _overlap_pixels(tile, cfg, ndim, tile_shape, overlap)
    block_shape = _block_shape(block, tile_shape, spatial, resampling)
    return Geometry(shape, lead, spatial, tile_shape, overlap_px, block_shape,
                    unit_list(lead, spatial, block_shape), resampling)


def _check_options(output: str, mode: str, overlap, batch_size) -> float:
    """The options that need neither the model nor the image; returns ``overlap`` as a float."""
    if output not in OUTPUTS:
        raise SegmentationError(f"output must be one of {OUTPUTS}, got {output!r}")
    _check_mode(mode)
    overlap = _check_overlap(overlap)
    if not isinstance(batch_size, numbers.Integral) or isinstance(batch_size, bool) or batch_size < 1:
        raise SegmentationError(f"batch_size must be at least 1, got {batch_size!r}")
    return overlap


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise SegmentationError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def _check_overlap(overlap) -> float:
    try:
        value = float(overlap)
    except (TypeError, ValueError):
        raise SegmentationError(f"overlap must be a number between 0 and 0.5, got {overlap!r}") from None
    if not (math.isfinite(value) and 0 <= value <= 0.5):
        raise SegmentationError(f"overlap must be between 0 and 0.5 (a fraction of the tile), got {overlap}")
    return value


def _parse_scale(scale, ndim: int) -> tuple[float, ...]:
    try:
        return parse_scale(scale, ndim)
    except ValueError as err:
        raise SegmentationError(str(err)) from None


def _as_array(image):
    """``image`` as something with ``shape``, ``dtype`` and slicing, of a supported dtype."""
    if not (hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__")):
        image = np.asarray(image)  # lists and other array-likes
    try:
        check_pixel_dtype(image.dtype)
    except ValueError as err:
        raise SegmentationError(str(err)) from None
    return image


def _spatial_dims(cfg, mode: str, shape: tuple[int, ...], shown: str = "") -> int:
    """Spatial axes the network runs on (2 or 3), checked against the model and ``shape``
    (the image without its channel axis); ``shown`` describes the image in messages."""
    ndim = cfg.spatial_dims if mode == "auto" else int(mode[0])
    if ndim != cfg.spatial_dims:
        raise SegmentationError(f"model {cfg.name!r} is a {cfg.spatial_dims}D model; it cannot run in {mode} mode")
    if len(shape) < ndim:
        raise SegmentationError(f"a {ndim}D model needs an image with at least {ndim} spatial axes; "
                                f"got {shown or f'shape {tuple(shape)}'}")
    if len(shape) > 5:
        raise SegmentationError(f"images with more than 5 axes besides channels are not supported; got {shape}")
    return ndim


def _layout(cfg, image, channel_axis: int | None, mode: str) -> _Layout:
    """The image with channels last, checked against the model: axes, emptiness, channels."""
    full_shape = tuple(image.shape)
    image, n_channels = _channels_last(image, channel_axis)
    shape = tuple(image.shape[:-1]) if n_channels else tuple(image.shape)
    ndim = _spatial_dims(cfg, mode, shape, f"shape {full_shape}" + (" (with a channel axis)" if n_channels else ""))
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
    return _Layout(image, n_channels, shape, ndim)


def _tile_shape(tile, cfg, ndim: int, spatial: tuple[int, ...], overlap: float = 0.125) -> tuple[int, ...]:
    """The tile shape of a run on a (working) grid of ``spatial``: the one asked for, checked
    (:func:`_check_tile`), else the model's default fitted to the image
    (:func:`~napari_skipseg.inference.tiling.fit_tile`: fewer voxels computed twice)."""
    if tile is None:
        shape = tuple(int(t) for t in cfg.default_tile())
        if len(shape) != ndim:
            raise SegmentationError(f"model {cfg.name!r} has a default tile of {len(shape)} sizes; "
                                    f"it cannot run on {ndim}D tiles")
        if ndim == 3:
            return fit_tile_volume(spatial, shape, overlap, cfg.size_multiple(),
                                   max_voxels=int(VOLUME_TILE_GROW * math.prod(shape)))
        return fit_tile(spatial, shape, overlap, cfg.size_multiple())
    if isinstance(tile, numbers.Real) and not isinstance(tile, bool):
        if not (math.isfinite(tile) and tile == int(tile)):
            raise SegmentationError(f"tile must be {ndim} positive sizes (whole pixels), got {tile!r}")
        shape = (int(tile),) * ndim
    else:
        try:
            values = list(tile)
            shape = tuple(int(t) for t in values)
        except (TypeError, ValueError, OverflowError):
            raise SegmentationError(f"tile must be {ndim} positive sizes, got {tile!r}") from None
        if any(v != s for v, s in zip(values, shape, strict=True)):
            raise SegmentationError(f"tile must be {ndim} positive sizes (whole pixels), got {tile!r}")
    if len(shape) != ndim or min(shape, default=0) < 1:
        axes = "ZYX"[-ndim:]
        raise SegmentationError(f"tile must be {ndim} positive sizes ({', '.join(axes)}) for this {ndim}D run, "
                                f"got {tile!r}")
    _check_tile(shape, cfg, spatial, overlap, tile)
    return shape


def _overlap_pixels(tile, cfg, ndim: int, tile_shape: tuple[int, ...], overlap: float) -> tuple[int, ...]:
    """Pixels consecutive tiles share: ``overlap`` of the tile; for the default 3D tiles, of
    the model's configured tile (:func:`~napari_skipseg.inference.tiling.fit_volume_tiles`
    grows tiles to recompute less, not to widen the seams)."""
    if tile is None and ndim == 3:
        return tuple(min(int(round(t * overlap)), max(s - 1, 0))
                     for t, s in zip(cfg.default_tile(), tile_shape, strict=True))
    return tuple(int(round(t * overlap)) for t in tile_shape)


def _check_tile(shape: tuple[int, ...], cfg, spatial: tuple[int, ...], overlap: float, asked) -> None:
    """Refuse tiles smaller than the network's size multiple along an axis the image is longer
    than, and tiles so small that they would cut a slice or volume into more than
    :data:`MAX_TILES` tiles; the message names the smallest tile allowed."""
    multiple = tuple(int(m) for m in cfg.size_multiple())

    def fmt(sizes) -> str:
        return str(sizes[0]) if len(set(sizes)) == 1 else " x ".join(str(s) for s in sizes)

    if any(t < m and t < n for t, m, n in zip(shape, multiple, spatial, strict=True)):
        raise SegmentationError(
            f"tile {asked!r} is smaller than model {cfg.name!r} can use: the smallest tile allowed is "
            f"{fmt(multiple)} (its input sizes are multiples of that)")

    def count(sizes) -> int:
        return math.prod(len(tile_starts(n, t, int(round(t * overlap))))
                         for n, t in zip(spatial, sizes, strict=True))

    if count(shape) > MAX_TILES:
        k = 1
        while count(smallest := tuple(min(max(t, k * m), n) for t, m, n in zip(shape, multiple, spatial,
                                                                               strict=True))) > MAX_TILES:
            k += 1
        raise SegmentationError(
            f"tile {asked!r} would cut each {'slice' if len(shape) == 2 else 'volume'} into {count(shape)} "
            f"tiles (at most {MAX_TILES}); the smallest tile allowed here is {fmt(smallest)}")


def _block_shape(block, tile_shape: tuple[int, ...], spatial: tuple[int, ...],
                 resampling: Resampling | None = None) -> tuple[int, ...]:
    """The block (on the input grid): the one asked for, cut to the image, else
    :func:`~napari_skipseg.inference.tiling.default_block` with a budget of
    :data:`BLOCK_VOXELS` working-grid voxels."""
    nd = len(spatial)
    if block is None:
        if resampling is None or resampling.identity:
            return default_block(spatial, tile_shape, BLOCK_VOXELS[nd])
        zoom = resampling.zoom
        tile_in = tuple(max(1, math.ceil(t / z)) for t, z in zip(tile_shape, zoom, strict=True))
        budget = int(BLOCK_VOXELS[nd] / max(1.0, math.prod(zoom)))
        return default_block(spatial, tile_in, budget)
    try:
        shape = (int(block),) * nd if isinstance(block, int | np.integer) else tuple(int(b) for b in block)
    except (TypeError, ValueError):
        raise SegmentationError(f"block must be {nd} positive sizes, got {block!r}") from None
    if len(shape) != nd or min(shape) < 1:
        raise SegmentationError(f"block must be {nd} positive sizes, got {block!r}")
    return tuple(min(b, s) for b, s in zip(shape, spatial, strict=True))


# == stage 2: read and resample ======================================================================


class UnitReader:
    """Reads one unit's pixels, normalised as the model was trained, on the working grid.

    Parameters
    ----------
    config : ModelConfig
        Says how to normalise (``normalization``) and how many channels the network takes.
    image : array-like
        The image with channels last (if any); read one region at a time.
    n_channels : int
        Length of the channel axis (0: none).
    lo, hi : float
        Normalisation range (:func:`image_intensity_range`).
    resampling : Resampling
        Input grid -> working grid; units are read with the halo the interpolation needs.
    """

    def __init__(self, config, image, n_channels: int, lo: float, hi: float, resampling: Resampling) -> None:
        from .preprocess import InputTransform, wants_input_transform

        norm = config.normalization or {}
        self.image, self.n_channels, self.lo, self.hi = image, n_channels, lo, hi
        self.grey = config.in_channels == 1 and n_channels > 1  # RGB -> grey for single-channel models
        self.n_read = 3 if self.grey and n_channels == 4 else n_channels  # RGBA: ignore alpha
        # stain separation / contrast inversion named in the config (preprocess.InputTransform)
        use_transform = config.in_channels == 1 and wants_input_transform(norm)
        self.transform = InputTransform(image, n_channels, norm) if use_transform else None
        self.resampling = resampling

    def read(self, lead: tuple[int, ...], region: tuple[slice, ...]) -> np.ndarray:
        """The input pixels ``region`` of the slice/volume ``lead``, normalised: ``(C, *region)``."""
        data = np.asarray(self.image[(*lead, *region)])
        if self.transform is not None:
            return self.transform(data)
        if self.n_channels:
            data = data[..., : self.n_read]
            data = data.mean(axis=-1, keepdims=True) if self.grey else data
            data = np.moveaxis(data, -1, 0)
        else:
            data = data[None]
        return normalize(data, self.lo, self.hi)

    def __call__(self, unit: UnitPlan) -> np.ndarray:
        """The network's input for ``unit``: its tiles' region of the working grid,
        ``(C, *region shape)``."""
        data = self.read(unit.lead, unit.read)
        return self.resampling.to_working(data, unit.read, unit.region)


# == stage 3: run ===================================================================================


class TileBatches:
    """Tiles gathered into batches, each handed to a worker thread as soon as it is full.

    At most ``runner.workers + 1`` batches are in flight (one waiting while the workers run
    theirs): :attr:`saturated` says when the caller should :meth:`collect` before adding
    more. Results come back in the order the batches were submitted.
    """

    def __init__(self, pool, runner) -> None:
        self.pool, self.runner = pool, runner
        self.per_call = runner.batch
        self.max_pending = runner.workers + 1
        self.batch: list[tuple[tuple, np.ndarray]] = []
        self.queue: deque = deque()  # (tiles' meta, future of their probabilities)

    def add(self, meta: tuple, tile: np.ndarray) -> bool:
        """Queue ``tile`` (``(C, *tile)``) with ``meta``; True when that filled a batch and
        it was submitted."""
        self.batch.append((meta, tile))
        if len(self.batch) == self.per_call:
            self.flush()
            return True
        return False

    def flush(self) -> None:
        """Submit the tiles queued so far (if any) as one batch."""
        if not self.batch:
            return
        x = np.stack([t for _, t in self.batch])
        self.queue.append(([m for m, _ in self.batch], self.pool.submit(self.runner, x)))
        self.batch = []

    @property
    def saturated(self) -> bool:
        return len(self.queue) >= self.max_pending

    @property
    def pending(self) -> int:
        """Batches submitted and not collected yet."""
        return len(self.queue)

    def collect(self) -> tuple[list, np.ndarray]:
        """Wait for the oldest batch: its tiles' meta and probabilities ``(N, classes, *tile)``."""
        meta, future = self.queue.popleft()
        return meta, future.result()


# == stage 4: blend ==================================================================================


class Blender:
    """Sums each unit's tile probabilities weighted by a smooth window (stage *blend*).

    A unit covered by one tile exactly keeps that tile's probabilities as they are; others
    get ``sum(window * p) / sum(window)`` over their tiles, which is what the whole image
    computed at once would give them.
    """

    def __init__(self, classes: int, window: np.ndarray) -> None:
        self.classes, self.window = classes, window
        self.full = tuple(slice(0, int(t)) for t in window.shape)
        self.acc: dict[int, list] = {}  # unit -> [weighted sum, weight sum] or [probabilities, None]
        self.remaining: dict[int, int] = {}  # tiles still to come, in the order units were opened

    def open(self, unit: UnitPlan) -> None:
        """Expect ``unit``'s tiles (once: a unit already open is left as it is)."""
        if unit.index in self.acc:
            return
        shape = unit.working_shape
        tiles = unit.tiles
        self.remaining[unit.index] = len(tiles)
        if len(tiles) == 1 and tiles[0][1] == self.full and tiles[0][2] == tuple(slice(0, b) for b in shape):
            self.acc[unit.index] = [None, None]  # one tile covers the unit exactly: nothing to blend
        else:
            self.acc[unit.index] = [np.zeros((self.classes, *shape), np.float32), np.zeros(shape, np.float32)]

    def add(self, u: int, src: tuple[slice, ...], dst: tuple[slice, ...], p: np.ndarray) -> None:
        """Blend one tile's probabilities ``p``: its part ``src`` goes to ``dst`` of unit ``u``."""
        a, w = self.acc[u]
        if a is None:
            self.acc[u] = [p, None]
        elif src == self.full:
            a[(slice(None), *dst)] += p * self.window
            w[dst] += self.window
        else:
            a[(slice(None), *dst)] += p[(slice(None), *src)] * self.window[src]
            w[dst] += self.window[src]
        self.remaining[u] -= 1

    def complete(self) -> list[int]:
        """Units whose tiles have all arrived and that were opened after no unit still
        waiting for tiles, in the order they were opened (so units are finished in order)."""
        out = []
        for u, r in self.remaining.items():
            if r:
                break
            out.append(u)
        return out

    def take(self, u: int) -> np.ndarray:
        """The blended probabilities of a complete unit, ``(classes, *working shape)``; the
        unit is forgotten."""
        a, w = self.acc.pop(u)
        del self.remaining[u]
        return a if w is None else np.divide(a, w, out=a)


# == stage 5: finish ==================================================================================


class Finisher:
    """Maps a unit's probabilities onto the input grid, writes them and its labels (stage *finish*).

    Instance ids are made unique across units by an offset (:attr:`next_label`);
    :attr:`counts` lists the instances found per unit, in order.
    """

    def __init__(self, output: str, config, params: dict, probs_out, labels_out, resampling: Resampling) -> None:
        self.output, self.config, self.params = output, config, params
        self.probs_out, self.labels_out, self.resampling = probs_out, labels_out, resampling
        self.next_label = 0
        self.counts: list[int] = []
        self.finished: list[tuple] = []  # where units were written, since the last drain()

    def drain(self) -> list[tuple]:
        """Where the units finished since the last call were written (``(*lead, *block)``)."""
        out, self.finished = self.finished, []
        return out

    def __call__(self, unit: UnitPlan, probs: np.ndarray) -> None:
        probs = self.resampling.to_input(probs, unit.working, unit.block)
        where = (*unit.lead, *unit.block)
        self.finished.append(where)
        if self.probs_out is not None:
            self.probs_out[(slice(None), *where)] = probs
        if self.output == "semantic":
            self.labels_out[where] = semantic_labels(probs, self.config.output)
        elif self.output == "instances":
            lab = instance_labels(probs, self.params)
            n = int(lab.max()) if lab.any() else 0
            lab[lab > 0] += self.next_label  # unique ids across slices and blocks
            self.next_label += n
            self.counts.append(n)
            self.labels_out[where] = lab


def instance_params(config, postprocess: dict | None, resampling: Resampling | None = None) -> dict:
    """Instance post-processing parameters of a run: the model's, overridden by
    ``postprocess``. Areas (:data:`AREA_PARAMS`) count pixels of the grid the network sees;
    with resampling they are converted to pixels of the input grid (at least 1)."""
    params = {**config.postprocess, **(postprocess or {})}
    if resampling is None or resampling.identity:
        return params
    params = {**DEFAULT_INSTANCE_PARAMS, **params}
    factor = resampling.area_factor()
    for key in AREA_PARAMS:
        if key in params and params[key] > 1:
            params[key] = max(1, int(round(params[key] * factor)))
    return params


def _outputs(output: str, classes: int, shape: tuple[int, ...], keep: bool, labels_out, probabilities_out):
    """The arrays results are written into: the caller's (checked) or new numpy arrays."""
    if probabilities_out is not None:
        _check_out("probabilities_out", probabilities_out, (classes, *shape))
        if not keep:
            raise SegmentationError("probabilities_out given, but probabilities are not kept "
                                    "(pass keep_probabilities=True or output='probabilities')")
    probs = probabilities_out if probabilities_out is not None else (
        np.zeros((classes, *shape), dtype=np.float32) if keep else None)
    labels = None
    if output != "probabilities":
        if labels_out is not None:
            _check_out("labels_out", labels_out, shape)
            labels = labels_out
        else:
            labels = np.zeros(shape, dtype=np.uint32 if output == "instances" else np.uint8)
    return probs, labels


def _check_out(name: str, out, shape: tuple[int, ...]) -> None:
    if not hasattr(out, "__setitem__") or tuple(getattr(out, "shape", ())) != tuple(shape):
        raise SegmentationError(f"{name} must be an array of shape {tuple(shape)} that can be written to; "
                                f"got {type(out).__name__} of shape {getattr(out, 'shape', None)}")


# == the network and the caller's model ==================================================================


class _ModelState:
    """The caller's model as it was (device, train/eval), to put back after a run that had
    to use it itself (a module that cannot be copied); a fused copy leaves it untouched."""

    def __init__(self, model) -> None:
        self.model = model
        self.training = bool(getattr(model, "training", False))
        self.home = next((p.device for p in model.parameters()), None) if hasattr(model, "parameters") else None

    def restore(self, used: bool) -> None:
        if not used:
            return
        if self.home is not None and next(self.model.parameters()).device != self.home:
            self.model.to(self.home)
        self.model.train(self.training)


def _make_runner(model, dev: str, cfg, *, backend: str, window: np.ndarray, voxels: int, batch_size: int,
                 threads: int | None, amp, flips: bool | None):
    """The runner for this job (:func:`napari_skipseg.inference.backends.make_runner`)."""
    from . import backends as bk

    try:
        return bk.make_runner(model, dev, backend=backend, tile_spatial=window.shape, voxels=voxels,
                              batch_size=batch_size, threads=threads, amp=amp,
                              flips=bool(cfg.inference.get("flips", False) if flips is None else flips))
    except bk.BackendError as err:
        raise SegmentationError(str(err)) from None


def _tiles_in_flight(batch_size: int, total: int, window: tuple[int, ...], cfg) -> int:
    """Tiles handed to the runner at once: ``batch_size``, but no more than the job has (two
    tiles run on two workers rather than in one call on one) and, for tiles of more than
    twice the configured tile's voxels, no more than fit in ``batch_size`` configured tiles
    (at least one), so that large tiles do not multiply the memory a batch takes."""
    n = min(batch_size, max(total, 1))
    configured = math.prod(int(t) for t in cfg.default_tile())
    voxels = math.prod(window)
    if voxels > 2 * configured:
        n = min(n, max(1, batch_size * configured // voxels))
    return n


def _describe(dev: str, runner) -> str:
    """The device as shown to the user (on a CPU: threads, precision and backend)."""
    from .device import describe

    if dev.split(":")[0] == "cpu":
        n = runner.budget
        return f"cpu ({n} thread{'s' if n > 1 else ''}, float32, {runner.name})"
    return describe(dev)


# == helpers shared with other modules =====================================================================


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
