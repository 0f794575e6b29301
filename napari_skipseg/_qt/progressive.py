"""Results as they come: a Segment run whose layers appear when it starts and fill up.

:func:`progressive_job` (worker thread) makes the result arrays, hands them to the GUI in
its first event, then drives the engine with them as its outputs, nearest the slice in
view first; every later event names the regions finished (``info["regions"]``, in the
layer's axis order). :class:`ProgressiveRun` (GUI thread) adds the layers, one per
event-loop turn, and redraws them only when a finished region is in view; on cancel it
keeps what is done, marked as partial, or removes it, as :class:`CancelChoice` says. The
GUI thread never copies or scans the stack: the worker writes into the arrays the layers
show, and the GUI asks napari to redraw the slice in view.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QComboBox

from ..interactive import (
    intersects,
    remembered_scale,
    result_point,
    to_engine_point,
    to_file_where,
    units_at,
)
from ._jobs import job

#: Pause between adding one result layer and the next (ms): napari takes a while to build
#: each (vispy visuals, layer controls); the viewer answers in between.
LAYER_GAP_MS = 40
#: How long the Segment widget's settings must rest before the next run is prepared (ms).
WARM_DELAY_MS = 300
#: Texts of the cancel choice, and whether each keeps the finished part.
CANCEL_CHOICES = {"on cancel: remove the results": False, "on cancel: keep what is done": True}


class CancelChoice(QComboBox):
    """What Cancel does with a run's layers: remove them (default: nothing changes) or
    keep the finished slices/blocks, the layers named and marked partial."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.addItems(list(CANCEL_CHOICES))
        self.setToolTip("Cancel removes the layers of the run, or keeps the slices (blocks) already done; "
                        "kept layers are named '(partial)' and their metadata says which parts are done")

    @property
    def keep(self) -> bool:
        return CANCEL_CHOICES.get(self.currentText(), False)

    def set_keep(self, keep: bool) -> None:
        self.setCurrentText(next(t for t, k in CANCEL_CHOICES.items() if k == bool(keep)))


def _is_foreground(class_names) -> bool:
    return len(class_names) == 3 and list(class_names[1:]) == ["interior", "boundary"]


def _prelude(model_name: str, source, options: dict) -> dict:
    """What a run and its warm-up (:func:`warm_run`) work out before any pixel is
    segmented: the model (:func:`~napari_skipseg._preload.loaded_model`), the image in
    engine order, the object-size options and the geometry at scale 1."""
    from .._preload import loaded_model
    from ..inference.axes import size_options
    from ..inference.engine import plan, predict
    from ..layers import arrange_source

    model = loaded_model(model_name)
    cfg = model.config
    options = dict(options)
    options.pop("results_folder", None)
    axes, channel = options.pop("axes", None), options.pop("channel", None)
    link, diameter = options.pop("link", False), options.pop("diameter", None)
    explicit = diameter not in (None, "auto")
    if diameter is None:
        from ..inference.scale import default_diameter

        diameter = default_diameter(cfg)
    engine_source, arranged = arrange_source(source, cfg, axes=axes, channel=channel,
                                             mode=options.get("mode", "auto"))
    size = {}
    if arranged is not None:
        size = size_options(predict, diameter=diameter, spacing=arranged.spatial_spacing,
                            unit=arranged.meta.unit, explicit=explicit)
    data, channel_axis = engine_source.data, engine_source.channel_axis
    geo = plan(cfg, tuple(data.shape), channel_axis=channel_axis, mode=options.get("mode", "auto"),
               tile=options.get("tile"), block=options.get("block"), overlap=options.get("overlap", 0.125))
    return {"model": model, "cfg": cfg, "options": options, "axes": axes, "channel": channel, "link": link,
            "size": size, "arranged": arranged, "data": data, "channel_axis": channel_axis, "geo": geo}


def _run_scale(pre: dict, model_name: str, source):
    """The run's resampling (diameter "auto": estimated), once per layer, model and settings."""
    from ..inference.device import select_device

    options = pre["options"]
    return remembered_scale(pre["model"], model_name, source.data, pre["data"], channel_axis=pre["channel_axis"],
                            mode=options.get("mode", "auto"), device=select_device(options.get("device", "auto")),
                            settings=(pre["axes"], pre["channel"]), size=pre["size"])


#: One run's preparation at a time: a run started while the warm-up prepares the same thing
#: waits for it and takes its result instead of working it out a second time.
PREPARING = threading.Lock()


def warm_run(model_name: str, source, options: dict, stop: threading.Event | None = None) -> list[str]:
    """Do now, in the calling (background) thread, what a Segment run of ``source`` with
    ``options`` would do first: load the model, work out the resampling (diameter "auto":
    the estimate) and build the backend for its tiles (the ONNX sessions of a full run and
    of live mode). A run started later finds them done. ``stop`` set: return at the next
    step. Returns the steps done (for tests and benchmarks)."""
    from .._preload import ensure_loaded

    done = []
    ensure_loaded()
    with PREPARING:
        if stop is not None and stop.is_set():
            return done
        pre = _prelude(model_name, source, options)
        done.append("model")
        if stop is not None and stop.is_set():
            return done
        choice = _run_scale(pre, model_name, source)
        done.append("scale")
    if stop is not None and stop.is_set():
        return done
    from ..inference import backends as bk
    from ..inference.device import select_device
    from ..inference.engine import plan, tile_voxels

    opts, cfg, data = pre["options"], pre["cfg"], pre["data"]
    geometry = dict(channel_axis=pre["channel_axis"], mode=opts.get("mode", "auto"), tile=opts.get("tile"),
                    block=opts.get("block"), overlap=opts.get("overlap", 0.125), scale=choice)
    geo = plan(cfg, tuple(data.shape), **geometry)
    window = tuple(min(t, s) for t, s in zip(geo["tile"], geo["working"], strict=True))
    device = select_device(opts.get("device", "auto"))
    voxels = tile_voxels(cfg, tuple(data.shape), **geometry)
    for batch in (4, 1):  # a run of several tiles (workers of one thread each), live mode's one tile
        if stop is not None and stop.is_set():
            return done
        try:
            bk.make_runner(pre["model"], device, tile_spatial=window, voxels=voxels, batch_size=batch)
        except Exception:  # noqa: BLE001 - the run itself reports what fails
            return done
    done.append("backend")
    return done


#: Longest wait (s) of a run's worker for its result layers to be in the viewer.
READY_WAIT_S = 3.0


@job
def progressive_job(model_name: str, source, options: dict, near=None, ready: threading.Event | None = None):
    """Like the Segment widget's batch job for in-memory images, but the result arrays are
    made first and handed to the GUI (first event: ``info["layers"]``, layer data tuples
    over them), then filled unit by unit from the slice at ``near`` (a pixel of the result
    in the source's axis order) outward, once ``ready`` is set (the GUI has added the layers
shown during the run; at most :data:`READY_WAIT_S`). With test-time flips, the units in view are first
    segmented once without them (``info["preview"]``: their regions), so that a first look
    comes in a third of the time; the full run then writes over them. Returns
    ``(result, placed, thread id)``."""
    from .._preload import ensure_loaded

    ensure_loaded()
    from ..inference.axes import link_frames
    from ..inference.engine import Progress, Segmentation, image_intensity_range, plan, predict
    from ..layers import restore_result, result_layers

    with PREPARING:
        pre = _prelude(model_name, source, options)
    model, cfg, options, link = pre["model"], pre["cfg"], pre["options"], pre["link"]
    arranged, data, channel_axis, geo = pre["arranged"], pre["data"], pre["channel_axis"], pre["geo"]
    shape, output = geo["shape"], options.get("output", "instances")
    keep = bool(options.get("keep_probabilities")) or output == "probabilities"
    # np.zeros takes no time and no memory until written: the worker writes each unit once
    labels = None if output == "probabilities" else np.zeros(shape, np.uint32 if output == "instances" else np.uint8)
    probs = np.zeros((cfg.num_classes, *shape), np.float32) if keep else None
    names = list(cfg.class_names) or [f"class {i}" for i in range(cfg.num_classes)]
    fg = np.zeros(shape, np.float32) if keep and _is_foreground(names) else None
    order = arranged.order if arranged is not None else None
    shell = Segmentation(labels, probs, output, cfg.name, "", 0.0, names)
    shell, placed = restore_result(shell, arranged, source)
    if probs is None:
        maps = None
    elif fg is not None:
        maps = [("foreground", arranged.to_file_order(fg) if arranged is not None else fg)]
    else:
        maps = [(names[i], shell.probabilities[i]) for i in range(1 if len(names) > 1 else 0, len(names))]
    layers = result_layers(shell, placed, maps=maps)
    yield Progress(0, 1, "result layers", {"layers": layers, "shape": tuple(shell.labels.shape if labels is not None
                                                                          else shell.probabilities.shape[1:])})
    if ready is not None:
        ready.wait(READY_WAIT_S)

    with PREPARING:
        options["scale"] = _run_scale(pre, model_name, source)
    near_engine = to_engine_point(order, near) if near is not None else None
    # the normalisation range of the whole image, once for the preview and the run
    options["intensity_range"] = image_intensity_range(cfg, data, channel_axis=channel_axis)
    flips = options.get("flips")
    flips = bool(cfg.inference.get("flips", False) if flips is None else flips)
    if flips and labels is not None and near_engine is not None:
        geometry = plan(cfg, tuple(data.shape), channel_axis=channel_axis, mode=options.get("mode", "auto"),
                        tile=options.get("tile"), block=options.get("block"),
                        overlap=options.get("overlap", 0.125), scale=options["scale"])
        in_view = units_at(geometry["units"], near_engine, len(geometry["spatial"]))
        if in_view:
            quick = {**options, "flips": False, "keep_probabilities": False}
            done = []
            gen = predict(model, data, channel_axis=channel_axis, units=in_view, labels_out=labels, **quick)
            while True:
                try:
                    event = next(gen)
                except StopIteration:
                    break
                done += event.info.get("units_done") or []
            yield Progress(0, 1, "first look (without test-time flips)",
                           {"preview": [to_file_where(order, w) for w in done]})
    outputs = {"probabilities_out": probs} if keep else {}
    if labels is not None:
        outputs["labels_out"] = labels
    gen = predict(model, data, channel_axis=channel_axis, near=near_engine, **options, **outputs)
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            result = stop.value
            break
        done = event.info.get("units_done")
        if done:
            if fg is not None:  # the foreground map of an instance model, for these units only
                for where in done:
                    fg[where] = probs[(1, *where)] + probs[(2, *where)]
            event.info["regions"] = [to_file_where(order, w) for w in done]
        yield event
    if link and result.labels is not None and arranged is not None and "T" in arranged.lead_axes:
        result.info["objects"] = link_frames(result.labels, arranged.axes.index("T"))
        result.info["linked"] = True
    result, placed = restore_result(result, arranged, source)
    return result, placed, threading.get_ident()


def view_point(viewer, layer, shape, axes: str = "") -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The pixel of a result of ``shape`` (source order, no channels) in view over
    ``layer`` (whose axes are ``axes``, see :func:`napari_skipseg.layers.layer_axes`), and
    the result's axes shown on screen: ``(point, displayed)``."""
    data_point = layer.world_to_data(viewer.dims.point)
    point = result_point(axes, data_point, shape)
    offset = viewer.dims.ndim - len(shape)
    displayed = tuple(d - offset for d in viewer.dims.displayed if d - offset >= 0)
    return point, displayed


class ProgressiveRun:
    """The GUI side of one progressive run: adds its layers, redraws them as regions in
    view finish, and keeps or removes them on cancel.

    Parameters
    ----------
    viewer : napari.Viewer
    image_layer : napari.layers.Image
        The layer segmented (the view point is read over it).
    axes : str
        Its axes as the run takes them (default: :func:`napari_skipseg.layers.layer_axes`).
    status : QLabel, optional
        Where to say how many slices (blocks) are done.
    """

    def __init__(self, viewer, image_layer, axes: str = "", status=None) -> None:
        self.viewer = viewer
        self.status = status  # a label for "n of m slices done"
        self.image_layer = image_layer
        self.started = time.perf_counter()
        self.layers: list = []  # added, labels first
        self.pending: list = []  # layer data tuples still to add (labels last)
        self.regions: list[tuple] = []  # finished, in the layers' axis order
        self.units = 0
        self.shape: tuple[int, ...] | None = None
        self.first_shown: float | None = None  # perf_counter when the slice in view was first drawn
        self.first_full: float | None = None  # ... drawn at full quality (after a first look)
        self.preview: list[tuple] = []  # regions shown from the first look, not yet from the run
        self.labels_data = None  # the labels array of the run (a first look is undone there)
        self.complete = False
        self.ended = False  # cancelled and dealt with
        self.worker = None
        #: set once the layers shown during the run are in the viewer: the worker waits for
        #: it before it computes (napari builds a layer slower while the worker holds the GIL)
        self.ready = threading.Event()
        # the selection before the run, put back when its layers are removed
        self.selected = list(viewer.layers.selection)
        self.active = viewer.layers.selection.active
        data = image_layer.data[0] if getattr(image_layer, "multiscale", False) else image_layer.data
        self.axes = axes or _axes(image_layer)
        self.near = None
        if len(self.axes) == len(data.shape):
            rshape = tuple(n for a, n in zip(self.axes, data.shape, strict=True) if a not in "CS")
            self.near, _ = view_point(viewer, image_layer, rshape, self.axes)

    # -- events from the worker ----------------------------------------------------------
    def attach(self, worker) -> None:
        """Follow ``worker``'s events (before the widget's own handlers)."""
        self.worker = worker
        worker.yielded.connect(self.on_event)

    def on_event(self, event) -> None:
        stopping = self.ended or (self.worker is not None and self.worker.abort_requested)
        if stopping:  # cancelled: events still queued add no layer and draw nothing, but
            self.regions.extend(event.info.get("regions", []))  # what they name is written
            return
        if "layers" in event.info:
            self.pending = list(event.info["layers"])
            self.shape = tuple(event.info["shape"])
            self.labels_data = next((d for d, _, kind in self.pending if kind == "labels"), None)
            # in a turn of its own: not with the other handlers of this event (the widget's
            # progress bar paints at once, and with it the canvas)
            QTimer.singleShot(0, self._add_next)
            return
        if "preview" in event.info:  # the slice in view, segmented without test-time flips
            self.preview = list(event.info["preview"])
            if self.status is not None and self.preview:
                self.status.setText("segmenting: a first look at the slice in view (without test-time flips); "
                                    "the full result follows")
            if self.layers and any(self._in_view(w) for w in self.preview):
                self._redraw(full=False)
            return
        if "units" in event.info:
            self.units = int(event.info["units"])
        regions = event.info.get("regions")
        if regions:
            self.regions.extend(regions)
            self.preview = [w for w in self.preview if w not in regions]
            if self.status is not None and self.units:
                unit = "slices" if all(not isinstance(w[0], slice) for w in self.regions) else "parts"
                self.status.setText(f"segmenting: {len(self.regions)} of {self.units} {unit} done "
                                    "(the one in view first)")
            if self.layers and any(self._in_view(w) for w in regions):
                self._redraw()

    def _in_view(self, where) -> bool:
        if self.shape is None:
            return False
        point, displayed = view_point(self.viewer, self.image_layer, self.shape, self.axes)
        return intersects(where, point, displayed)

    def _redraw(self, full: bool = True) -> None:
        for layer in self.layers:
            if layer in self.viewer.layers and layer.visible:
                layer.refresh()
        if self.layers:
            now = time.perf_counter()
            if self.first_shown is None:
                self.first_shown = now
            if full and self.first_full is None:
                self.first_full = now

    def _add_next(self, hidden: bool = False) -> None:
        """Add one layer (labels first) and come back on the next event-loop turn. Hidden
        layers (the probabilities beside labels) wait for the end of the run (``hidden``:
        add them now): napari builds a layer on the GUI thread, slower while the worker
        computes, and nothing of a hidden one is seen before the run ends."""
        if self.ended or not self.pending:
            return
        if not hidden and not self.pending[-1][1].get("visible", True):
            self.ready.set()
            return
        data, kwargs, kind = self.pending.pop()
        try:
            layer = getattr(self.viewer, f"add_{kind}")(data, **kwargs)
        except Exception as err:  # noqa: BLE001 - undo, report, stop the run, keep the viewer working
            from napari.utils.notifications import show_error

            self.cancel(keep=False)
            if self.status is not None:
                self.status.setText(f"failed to add the result: {err}")
            show_error(f"Segment failed to add the result: {err}")
            if self.worker is not None:
                self.worker.quit()
            return
        self.layers.append(layer)
        if len(self.layers) > 1:  # keep the labels, added first, on top and selected
            layers = self.viewer.layers
            layers.move(layers.index(layer), layers.index(self.layers[0]))
        self.viewer.layers.selection.active = self.layers[0]
        if len(self.layers) == 1:
            now = time.perf_counter()
            if self.first_shown is None and any(self._in_view(w) for w in self.regions + self.preview):
                self.first_shown = now
            if self.first_full is None and any(self._in_view(w) for w in self.regions):
                self.first_full = now
        if self.pending and self.pending[-1][1].get("visible", True):
            QTimer.singleShot(LAYER_GAP_MS, self._add_next)  # let the viewer paint and take input between
        else:  # the worker may go on (after this turn: the new layer's first paint)
            QTimer.singleShot(0, self.ready.set)

    # -- end ------------------------------------------------------------------------------
    def finish(self, result) -> tuple[list, list]:
        """The run is complete: record its time, redraw. Returns the layers added (labels
        first) and the layer data tuples still to add (hidden ones), for the widget to add
        one per event-loop turn."""
        self.complete = True
        pending, self.pending = self.pending, []
        for i, (data, kwargs, kind) in enumerate(pending):
            meta = dict(kwargs.get("metadata") or {})
            meta["skipseg"] = {**(meta.get("skipseg") or {}), "device": result.device,
                               "seconds": round(result.seconds, 3)}
            pending[i] = (data, {**kwargs, "metadata": meta}, kind)
        for layer in self.layers:
            meta = dict(layer.metadata or {})
            info = dict(meta.get("skipseg") or {})
            info.update(device=result.device, seconds=round(result.seconds, 3))
            meta["skipseg"] = info
            layer.metadata = meta
        if result.info.get("linked"):  # ids changed in place all over the stack
            for layer in self.layers:
                layer.refresh()
        else:
            self._redraw()
        return list(self.layers), pending

    def cancel(self, keep: bool) -> str:
        """The run was cancelled: keep its finished part (marked partial) or remove its
        layers. Returns the status line."""
        if self.ended:
            return ""
        if keep and self.regions:  # the layers not added yet hold finished parts too
            while self.pending:
                self._add_next(hidden=True)
        self.ended = True
        self.ready.set()
        self.pending = []
        self._undo_preview()
        alive = [layer for layer in self.layers if layer in self.viewer.layers]
        if self.complete:
            if keep:
                return "cancelled after the run had finished: its result is kept"
        if keep and alive and self.regions:
            total = max(self.units, len(self.regions))
            for layer in alive:
                meta = dict(layer.metadata or {})
                info = dict(meta.get("skipseg") or {})
                info["partial"] = {"done": len(self.regions), "of": total,
                                   "regions": [_plain(w) for w in self.regions]}
                meta["skipseg"] = info
                layer.metadata = meta
                if not layer.name.endswith("(partial)"):
                    layer.name = f"{layer.name} (partial)"
                layer.refresh()
            unit = "slices" if all(not isinstance(w[0], slice) for w in self.regions) else "parts"
            return f"cancelled; kept {len(self.regions)} of {total} {unit} done (layers marked partial)"
        for layer in alive:
            self.viewer.layers.remove(layer)
        self.layers = []
        kept = [layer for layer in self.selected if layer in self.viewer.layers]
        self.viewer.layers.selection.clear()
        self.viewer.layers.selection.update(kept)
        if self.active in self.viewer.layers:
            self.viewer.layers.selection.active = self.active
        return "cancelled; no layer was changed"


    def _undo_preview(self) -> None:
        """A first look the run did not replace is no result: its slices go back to empty."""
        undone = [w for w in self.preview if w not in self.regions]
        self.preview = []
        if self.labels_data is None:
            return
        for where in undone:
            self.labels_data[where] = 0


def _axes(layer) -> str:
    from ..layers import layer_axes

    return layer_axes(layer)[0]


def _plain(where: tuple) -> list:
    """A region as JSON-friendly numbers: ints, and [start, stop] for slices."""
    return [[w.start or 0, w.stop] if isinstance(w, slice) else int(w) for w in where]


class RunWarmer:
    """Prepares the Segment widget's next run while the user is still choosing: once the
    image, model and options have rested :data:`WARM_DELAY_MS`, :func:`warm_run` loads the
    model, estimates the diameter ("auto") and builds the backend in a background thread,
    so that pressing Segment (or switching live mode on) starts segmenting at once.
    In-memory images only (a lazy one is read slice by slice: its run is another job).

    Parameters
    ----------
    segment : SegmentWidget
        The widget whose image, model and options it follows.
    """

    def __init__(self, segment) -> None:
        self.segment = segment
        self.timer = QTimer(segment)
        self.timer.setSingleShot(True)
        self.timer.timeout.connect(self.start)
        self.worker = None
        self.stop_event: threading.Event | None = None
        self.pending = False  # settings changed while a warm-up ran: another one after it
        self.warmed: tuple | None = None  # the key of the last warm-up finished
        self.steps: list[str] = []  # what the last warm-up did
        for name, signal in (("model_combo", "currentTextChanged"), ("layer_combo", "currentTextChanged"),
                             ("diameter_edit", "editingFinished"), ("axes_edit", "editingFinished"),
                             ("channel_combo", "currentTextChanged"), ("mode_combo", "currentTextChanged"),
                             ("device_combo", "currentTextChanged"), ("tile_spin", "valueChanged"),
                             ("overlap_spin", "valueChanged")):
            widget = getattr(segment, name, None)
            if widget is not None and hasattr(widget, signal):
                getattr(widget, signal).connect(self.schedule)
        self.schedule()

    @property
    def busy(self) -> bool:
        """A warm-up is waiting for the settings to rest, or running."""
        return self.timer.isActive() or self.worker is not None

    def schedule(self, *_args) -> None:
        """The settings changed: warm up once they have rested."""
        self.timer.start(WARM_DELAY_MS)

    def _wanted(self):
        from ..interactive import model_stamp
        from ..layers import is_lazy, source_from_layer

        seg = self.segment
        layer = seg._current_layer()  # noqa: SLF001 - the widget's own choices
        entry = seg._models.get(seg.model_combo.currentText())  # noqa: SLF001
        if layer is None or entry is None:
            return None
        try:
            source = source_from_layer(layer)
        except Exception:  # noqa: BLE001 - an odd layer: Segment says what is wrong
            return None
        if is_lazy(source.data):
            return None
        options = seg.options()
        if seg._check(source, entry, options):  # noqa: SLF001 - Segment would not start either
            return None
        model_ref = str(entry.path)
        key = (layer.name, id(layer.data), model_ref, model_stamp(model_ref),
               tuple(sorted((k, repr(v)) for k, v in options.items() if k not in ("output", "link", "flips"))))
        return key, model_ref, source, options

    def start(self) -> None:
        """Warm up for the current settings (unless done for them already)."""
        from napari.qt.threading import create_worker

        if self.worker is not None:
            self.pending = True
            return
        if self.segment.worker is not None:  # a run prepares itself
            return
        wanted = self._wanted()
        if wanted is None or wanted[0] == self.warmed:
            return
        key, model_ref, source, options = wanted
        self.stop_event = threading.Event()
        self.worker = create_worker(warm_run, model_ref, source, options, self.stop_event,
                                    _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(lambda steps: self._done(key, steps))
        self.worker.finished.connect(self._finished)
        self.worker.start()

    def stop(self) -> None:
        """Stop at the next step (the widget closes)."""
        self.timer.stop()
        self.pending = False
        if self.stop_event is not None:
            self.stop_event.set()

    def _done(self, key, steps) -> None:
        self.steps = list(steps)
        if "backend" in self.steps:
            self.warmed = key

    def _finished(self) -> None:
        self.worker = None
        if self.pending:
            self.pending = False
            self.start()
