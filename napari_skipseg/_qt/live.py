"""Live mode of the Segment widget: the slice in view is segmented as the user moves.

While the checkbox is on, every move through the stack's Z or T (``viewer.dims``) asks for
the units that make the slice in view (2D models: the slice; 3D models: the blocks holding
it, see :func:`napari_skipseg.interactive.units_at`). A single step or a slowly moved
slider asks at once; a slider dragged fast waits until it rests a little longer than the
interval between its moves (:func:`debounce_ms`). A request no longer in view is stopped at
once (its network call too, :class:`Stopper`) and left to wind down while the next one
starts. Units computed stay in a small cache (:class:`UnitCache`, least
recently used out), emptied when the image, the model, or any option (diameter, thresholds,
output, tile, ...) changes; a Labels layer shows them (:class:`CachedLabels`: memory of
the cached units only). The network runs in a worker thread exactly as in a full run of the
whole image (same normalisation range, resampling, backend and unit geometry: see
:class:`LiveContext`), so a shown slice is what a full run gives for it (instance ids
aside: they are numbered per request).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QVBoxLayout, QWidget

from ..interactive import (
    CachedLabels,
    UnitCache,
    UnitSink,
    model_stamp,
    remembered_scale,
    result_point,
    to_engine_point,
    to_file_where,
    units_at,
)
from ._jobs import job
from ._labels import WrapLabel
from .theme import hint

#: Units kept in the cache (slices of a 2D run, blocks of a 3D run).
CACHE_UNITS = 64
#: Shortest and longest wait (ms) after a move of a slider dragged fast.
DEBOUNCE_MS = (40, 150)
#: Moves further apart than this (s) are single steps, not a slider being dragged.
DRAG_GAP_S = 0.5
#: A slider whose moves come closer than this (s) is dragged fast: nothing starts until it rests.
FAST_DRAG_S = 0.1


def debounce_ms(interval_s: float | None) -> int:
    """How long to wait after a move before its slice is segmented (0: at once).

    A single step (``interval_s`` None) or a slider moved slowly (moves at least
    :data:`FAST_DRAG_S` apart) starts at once, on the chance that it stays there: the
    next move stops that request at once (:class:`Stopper`), so the slice stopped on waits
    neither for the slider to be thought at rest nor for a request it left behind. A slider
    dragged fast waits 1.3 times the interval between its moves (within
    :data:`DEBOUNCE_MS`), so that it starts nothing until it rests."""
    if interval_s is None or interval_s >= FAST_DRAG_S:
        return 0
    lo, hi = DEBOUNCE_MS
    return int(min(max(1.3 * interval_s * 1000, lo), hi))


class Stopper:
    """Ends one live request at once from the GUI thread: the engine hands over its runner
    (``predict(on_runner=)``) and :meth:`stop` makes its network calls in progress end
    (ONNX Runtime; a PyTorch call runs to the end of its tile)."""

    def __init__(self) -> None:
        import threading

        self.stopped = False
        self.runner = None
        self._lock = threading.Lock()

    def attach(self, runner) -> None:
        with self._lock:
            self.runner = runner
            if self.stopped:
                runner.stop()

    def stop(self) -> None:
        with self._lock:
            self.stopped = True
            if self.runner is not None:
                self.runner.stop()


@dataclass
class LiveContext:
    """What every live request of one image, model and set of options shares, worked out
    once in the worker thread: the loaded model (its fused and ONNX copies are cached on
    it), the image in engine order, and everything a full run would decide for the whole
    image: normalisation range, resampling (``diameter="auto"`` estimated once), backend,
    units."""

    key: tuple
    model: object
    data: object
    channel_axis: int | None
    predict_options: dict
    units: list
    spatial_dims: int
    order: tuple | None
    result_shape: tuple  # source order, no channels
    dtype: object
    placed: object  # LayerSource: where the labels are drawn
    name: str
    index: dict = field(default_factory=dict)  # ((lead), ((start, stop), ...)) -> unit index

    def units_in_view(self, point) -> list[int]:
        """The units that make the slice at ``point`` (source order)."""
        return units_at(self.units, to_engine_point(self.order, point), self.spatial_dims)

    def unit_index(self, where: tuple) -> int:
        n = len(self.units[0][0])
        lead = tuple(int(v) for v in where[:n])
        block = tuple((s.start, s.stop) for s in where[n:])
        return self.index[(lead, block)]


def build_context(key, model_ref: str, source, options: dict) -> LiveContext:
    """The :class:`LiveContext` for ``source`` (a LayerSource) segmented with ``options``
    (the Segment widget's)."""
    from .._preload import loaded_model
    from ..inference.axes import size_options
    from ..inference.backends import choose_backend
    from ..inference.device import select_device
    from ..inference.engine import (
        image_intensity_range,
        plan,
        predict,
        tile_voxels,
    )
    from ..layers import arrange_source, restore_result

    model = loaded_model(model_ref)
    cfg = model.config
    opts = dict(options)
    for k in ("results_folder", "link", "keep_probabilities"):
        opts.pop(k, None)
    axes, channel, diameter = opts.pop("axes", None), opts.pop("channel", None), opts.pop("diameter", None)
    explicit = diameter not in (None, "auto")
    if diameter is None:
        from ..inference.scale import default_diameter

        diameter = default_diameter(cfg)
    if opts.get("output") == "probabilities":  # live mode shows labels
        opts["output"] = "instances" if cfg.output == "instances" else "semantic"
    mode = opts.get("mode", "auto")
    engine_source, arranged = arrange_source(source, cfg, axes=axes, channel=channel, mode=mode)
    size = {}
    if arranged is not None:
        size = size_options(predict, diameter=diameter, spacing=arranged.spatial_spacing, unit=arranged.meta.unit,
                            explicit=explicit)
    data, channel_axis = engine_source.data, engine_source.channel_axis
    device = select_device(opts.get("device", "auto"))
    choice = remembered_scale(model, model_ref, source.data, data, channel_axis=channel_axis, mode=mode,
                              device=device, settings=(axes, channel), size=size)
    lo_hi = image_intensity_range(cfg, data, channel_axis=channel_axis)
    geometry = dict(channel_axis=channel_axis, mode=mode, tile=opts.get("tile"), block=opts.get("block"),
                    overlap=opts.get("overlap", 0.125), scale=choice)
    geo = plan(cfg, tuple(data.shape), **geometry)
    window = tuple(min(t, s) for t, s in zip(geo["tile"], geo["working"], strict=True))
    backend = choose_backend(opts.get("backend", "auto"), model, device, window,
                             tile_voxels(cfg, tuple(data.shape), **geometry))
    opts.update(device=device, scale=choice, intensity_range=lo_hi, backend=backend)
    dtype = np.uint32 if opts.get("output", "instances") == "instances" else np.uint8
    order = arranged.order if arranged is not None else None

    class _Shell:
        labels = np.zeros((1,) * len(geo["shape"]), dtype)
        probabilities = None

    shell, placed = restore_result(_Shell(), arranged, source)
    shape = tuple(int(geo["shape"][order.index(i)]) for i in range(len(order))) if order else tuple(geo["shape"])
    spatial_dims = len(geo["spatial"])
    index = {(tuple(lead), tuple((s.start, s.stop) for s in block)): i for i, (lead, block) in enumerate(geo["units"])}
    return LiveContext(key, model, data, channel_axis, opts, geo["units"], spatial_dims, order, shape, dtype, placed,
                       f"{source.name} [{cfg.name}] live", index)


@dataclass
class LiveResult:
    key: tuple
    point: tuple
    blocks: list  # (unit index, where in source order, labels in source order with where's box shape)
    seconds: float
    context: LiveContext


@job
def live_job(key, model_ref: str, source, options: dict, context: LiveContext | None, point: tuple,
             stopper: Stopper | None = None):
    """Worker: segment the units in view at ``point`` (source order) as a full run would.
    Yields the engine's progress (so that a superseded request can be cancelled between
    batches; ``stopper``: at once); returns a :class:`LiveResult`, or None when stopped."""
    from ..inference.engine import Progress, predict

    t0 = time.perf_counter()
    if context is None or context.key != key:
        yield Progress(0, 1, "preparing")
        context = build_context(key, model_ref, source, options)
    todo = context.units_in_view(point)
    sink = UnitSink(tuple(context.data.shape[:-1] if context.channel_axis is not None else context.data.shape),
                    context.dtype)
    if stopper is not None and stopper.stopped:
        return None
    try:
        yield from predict(context.model, context.data, channel_axis=context.channel_axis, units=todo,
                           labels_out=sink, keep_probabilities=False,
                           on_runner=stopper.attach if stopper is not None else None, **context.predict_options)
    except Exception:
        if stopper is not None and stopper.stopped:  # the network call ended early: nothing to show
            return None
        raise
    blocks = []
    back = tuple(int(i) for i in np.argsort(context.order)) if context.order is not None else None
    n_lead = len(context.units[0][0])
    for where, labels in sink.blocks:
        full = labels.reshape((1,) * n_lead + labels.shape)
        if back is not None:
            full = np.ascontiguousarray(np.transpose(full, back))
        blocks.append((context.unit_index(where), to_file_where(context.order, where), full))
    return LiveResult(key, tuple(point), blocks, time.perf_counter() - t0, context)


class LiveMode(QWidget):
    """The "live" checkbox of the Segment widget and what it drives (see the module).

    Parameters
    ----------
    segment : SegmentWidget
        The widget whose image, model and options live mode follows.
    """

    def __init__(self, segment, parent=None) -> None:
        super().__init__(parent)
        self.segment = segment
        self.viewer = segment.viewer
        self.check = QCheckBox("live: segment the slice in view")
        self.check.setToolTip("while on, moving through Z or T segments the slice in view (3D models: the block "
                              "around it) at once; slices done are kept in a small cache until the image, model "
                              "or an option changes")
        self.check.setChecked(False)
        # its own line: a long status does not widen the dock; secondary text in the theme's colour
        self.status = hint(WrapLabel(""))
        column = QVBoxLayout(self)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        column.addWidget(self.check)
        column.addWidget(self.status)
        self.cache = UnitCache(CACHE_UNITS)
        self.context: LiveContext | None = None
        self.layer = None
        self.worker = None
        self.running: tuple | None = None  # (key, point) of the request in the worker
        self.stopper: Stopper | None = None  # ends the request in the worker at once
        self.retired: list = []  # workers of requests stopped, still winding down
        self.waiting: tuple | None = None  # (key, point) to start when the worker is free
        self.shown: list[tuple] = []  # (point, perf_counter, "cached" | "computed", ms) per slice shown
        self.last_shown: tuple | None = None  # (key, point) of the slice shown last
        self._last_move: float | None = None
        self._moved = False  # request() runs within a dims move (napari has sliced the layers)
        self._interval: float | None = None
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self.request)
        self.check.toggled.connect(self._toggled)
        for name, signal in (("model_combo", "currentTextChanged"), ("output_combo", "currentTextChanged"),
                             ("device_combo", "currentTextChanged"), ("mode_combo", "currentTextChanged"),
                             ("layer_combo", "currentTextChanged"), ("diameter_edit", "editingFinished"),
                             ("axes_edit", "editingFinished"), ("flips_check", "toggled"),
                             ("tile_spin", "valueChanged"), ("overlap_spin", "valueChanged"),
                             ("channel_combo", "currentTextChanged")):
            widget = getattr(segment, name, None)  # the options the key is made of; see _key
            if widget is not None and hasattr(widget, signal):
                getattr(widget, signal).connect(self.options_changed)

    @property
    def enabled(self) -> bool:
        return self.check.isChecked()

    # -- switching -------------------------------------------------------------------------
    def _toggled(self, on: bool) -> None:
        if on:
            self.viewer.dims.events.current_step.connect(self._on_move)
            self.status.setText("")
            self.request()
            return
        self.viewer.dims.events.current_step.disconnect(self._on_move)
        self.timer.stop()
        self.waiting = None
        if self.worker is not None:
            self.worker.quit()
        if self.layer is not None and self.layer in self.viewer.layers:
            self.viewer.layers.remove(self.layer)
        self.layer = None
        self.cache.clear()
        self.last_shown = None
        self.status.setText("")

    def options_changed(self, *_args) -> None:
        """An option or the model changed: the cache no longer holds what they give."""
        if self.enabled:
            self.timer.start(DEBOUNCE_MS[0])

    def _on_move(self, _event=None) -> None:
        now = time.perf_counter()
        gap = None if self._last_move is None else now - self._last_move
        self._last_move = now
        if gap is None or gap > DRAG_GAP_S:
            self._interval = None
        else:
            self._interval = gap if self._interval is None else 0.5 * (self._interval + gap)
        if self._cached_in_view():
            self.timer.stop()
            self._moved = True
            self.request()  # from the cache: no reason to wait
            self._moved = False
            return
        self._stop_if_left()
        delay = debounce_ms(self._interval)
        if delay:
            self.timer.start(delay)
        else:
            self.timer.stop()
            self.request()

    def _stop_if_left(self) -> None:
        """The request in the worker is no longer in view: end it now (its network call
        too), so that the slice under the slider does not wait for it."""
        if self.worker is None or self.running is None or self.context is None:
            return
        layer = self.segment._current_layer()  # noqa: SLF001
        point = self.view_point(layer) if layer is not None else None
        key, running_point = self.running
        if point is None or key != self.context.key:
            return
        if set(self.context.units_in_view(point)) <= set(self.context.units_in_view(running_point)):
            return  # (3D: the block computed holds the new slice too)
        self._retire()

    def _retire(self) -> None:
        """Stop the request in the worker and let it wind down on its own (its network
        call ends at once; the rest, e.g. post-processing under way, in a moment), so that
        the next request need not wait for it."""
        if self.stopper is not None:
            self.stopper.stop()
        self.worker.quit()
        self.retired.append(self.worker)
        self.worker, self.running, self.stopper = None, None, None

    def _cached_in_view(self) -> bool:
        layer = self.segment._current_layer()  # noqa: SLF001
        if self.context is None or layer is None:
            return False
        point = self.view_point(layer)
        return point is not None and self.cache.has(self.context.units_in_view(point))

    # -- requests --------------------------------------------------------------------------
    def _source(self):
        layer = self.segment._current_layer()  # noqa: SLF001 - the widget's own image choice
        if layer is None:
            return None, None
        from ..layers import source_from_layer

        return layer, source_from_layer(layer)

    def _key(self, layer, model_ref: str, options: dict) -> tuple:
        """What the labels depend on: the image (layer and data), the model (its files'
        times: a new version of it is another model) and every option."""
        stamp = model_stamp(model_ref)
        opts = tuple(sorted((k, v) for k, v in options.items() if k not in ("link", "keep_probabilities")))
        return (layer.name, id(layer.data), tuple(layer.data.shape), model_ref, stamp, opts)

    def view_point(self, layer) -> tuple | None:
        """The pixel of the result (source order) in view over ``layer``."""
        axes = self.segment.current_axes()
        data = layer.data
        if len(axes) != len(data.shape):
            return None
        shape = tuple(n for a, n in zip(axes, data.shape, strict=True) if a not in "CS")
        return result_point(axes, layer.world_to_data(self.viewer.dims.point), shape)

    def request(self) -> None:
        """Show the slice in view: from the cache at once, else segment it in the worker."""
        if not self.enabled:
            return
        t0 = time.perf_counter()
        layer, source = self._source()
        entry = self.segment._models.get(self.segment.model_combo.currentText())  # noqa: SLF001
        if layer is None or entry is None:
            self.status.setText("live: choose an image and a model")
            return
        options = self.segment.options()
        problem = self.segment._check(source, entry, options)  # noqa: SLF001 - same checks as Segment
        if problem:
            self.status.setText(f"live: {problem}")
            return
        model_ref = str(entry.path)
        key = self._key(layer, model_ref, options)
        if self.cache.use(key):  # another image, model or option: what is cached is stale
            self.context = None
            if self.layer is not None and self.layer in self.viewer.layers:
                self.layer.refresh()
        point = self.view_point(layer)
        if point is None:
            self.status.setText("live: the axes of the image are unknown; set them in 'axes'")
            return
        if self.context is not None and self.context.key == key:
            todo = self.context.units_in_view(point)
            if self.cache.has(todo):
                if self.last_shown == (key, point) and self.layer in self.viewer.layers:
                    return  # nothing changed (e.g. a layer was added to the viewer)
                self.cache.touch(todo)
                self._show(point, "cached", t0)
                return
        wanted = (key, point, model_ref, source, options)
        if self.worker is not None:
            if self.running is not None and self.running[:2] == (key, point):
                self.waiting = None  # already being computed
                return
            if self.context is not None and self.context.key == key and not self.retired:
                self._retire()  # superseded: stopped, and this one starts at once
                self._start(wanted)
                return
            self.waiting = wanted
            if self.stopper is not None:
                self.stopper.stop()  # superseded: its network call ends at once
            self.worker.quit()
            self.status.setText(f"live: {self._where(point)} waiting ...")
            return
        self._start(wanted)

    def _start(self, wanted) -> None:
        from napari.qt.threading import create_worker

        key, point, model_ref, source, options = wanted
        self.running = (key, point)
        self.stopper = Stopper()
        self.status.setText(f"live: {self._where(point)} computing ...")
        self.worker = create_worker(live_job, key, model_ref, source, options, self.context, point, self.stopper,
                                    _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(self._on_result)
        self.worker.errored.connect(self._on_error)
        worker = self.worker
        worker.finished.connect(lambda: self._on_finished(worker))
        worker.start()

    def _on_result(self, result: LiveResult | None) -> None:
        if result is None or not self.enabled or result.key != self.cache.key:  # switched off, or the options changed
            return
        self.context = result.context
        for index, where, labels in result.blocks:
            self.cache.put(index, where, labels)
        layer, _ = self._source()
        if layer is not None and self.view_point(layer) == result.point:
            self._show(result.point, "computed", None, result.seconds)

    def _on_error(self, err) -> None:
        message = " ".join(str(err).split("\n")) or type(err).__name__
        self.status.setText(f"live: failed: {message}")

    def _on_finished(self, worker=None) -> None:
        if worker is not None and worker is not self.worker:  # a request retired before
            if worker in self.retired:
                self.retired.remove(worker)
            if self.worker is None and self.waiting is not None and self.enabled:
                wanted, self.waiting = self.waiting, None
                self._start(wanted)
            return
        self.worker = None
        self.running = None
        self.stopper = None
        wanted, self.waiting = self.waiting, None
        if wanted is not None and self.enabled:
            self._start(wanted)

    # -- showing ---------------------------------------------------------------------------
    def _where(self, point) -> str:
        axes = "".join(a for a in self.segment.current_axes() if a not in "CS")
        lead = [f"{a.lower()}={p}" for a, p in zip(axes, point, strict=False) if a in "TZ"]
        return ", ".join(lead) or "image"

    def _ensure_layer(self, refresh: bool = True) -> None:
        """Add the live layer, or point it at the cache, or redraw it (``refresh``)."""
        ctx = self.context
        data = CachedLabels(self.cache, ctx.result_shape, ctx.dtype)
        if self.layer is None or self.layer not in self.viewer.layers:
            self.layer = self.viewer.add_labels(data, name=ctx.name, scale=ctx.placed.scale,
                                                translate=ctx.placed.translate, opacity=0.5,
                                                metadata={"skipseg": {"live": True}})
            self.layer.editable = False  # a preview: a full run makes the labels to correct
        elif self.layer.data.shape != data.shape or self.layer.data.dtype != data.dtype or self.layer.name != ctx.name:
            self.layer.data = data
            self.layer.name = ctx.name
        elif refresh:
            self.layer.refresh()

    def _show(self, point, how: str, t0: float | None, seconds: float | None = None) -> None:
        # a cached slice reached by a move: napari sliced the layer (the cache) for the move
        # already, before this handler ran; a redraw would slice it again
        self._ensure_layer(refresh=not (how == "cached" and self._moved))
        self._moved = False
        now = time.perf_counter()
        ms = 1000 * (seconds if seconds is not None else now - (t0 or now))
        self.shown.append((point, now, how, ms))
        self.last_shown = (self.cache.key, point)
        if how == "cached":
            self.status.setText(f"live: {self._where(point)} cached ({ms:.0f} ms)")
        else:
            self.status.setText(f"live: {self._where(point)} done in {ms:.0f} ms")
