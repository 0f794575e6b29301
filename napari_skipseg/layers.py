"""Adapters between napari layers and the core library (no Qt here).

``source_from_layer`` turns an Image layer into what the engine takes; ``result_layers``
turns a :class:`~napari_skipseg.inference.engine.Segmentation` into napari layer data
tuples placed exactly over the source (same scale and translate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LayerSource:
    """An image layer's data as the engine wants it, and where the results must be drawn."""

    name: str
    data: object  # numpy / dask / zarr array, level 0 of a multiscale layer
    channel_axis: int | None
    scale: tuple[float, ...]  # per axis of the result (channel axis removed)
    translate: tuple[float, ...]
    units: tuple | None = None
    skipseg: dict | None = None  # the layer's metadata["skipseg"] (axes, spacing, unit, extra)
    axes: str = ""  # one letter (TCZYXS) per axis of ``data``; "" when unknown
    axes_from: str = ""  # "metadata", "axis labels" or "guessed"


#: Layers larger than this (bytes), or backed by dask/zarr, are segmented into zarr stores
#: on disk (see :func:`result_stores`) instead of numpy arrays in memory.
STREAM_BYTES = 1 << 30


def source_from_layer(layer) -> LayerSource:
    """Read what the engine needs from an napari Image layer (call on the main thread).

    A multiscale layer is segmented at full resolution (its first level)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    channel_axis = -1 if getattr(layer, "rgb", False) else None
    scale = tuple(float(s) for s in layer.scale)
    translate = tuple(float(t) for t in layer.translate)
    stored = (getattr(layer, "metadata", None) or {}).get("skipseg")
    axes, axes_from = layer_axes(layer)
    return LayerSource(layer.name, data, channel_axis, scale, translate,
                       skipseg=dict(stored) if isinstance(stored, dict) else None, axes=axes, axes_from=axes_from)


#: napari axis labels (lower case) -> our axis letters.
AXIS_LABELS = {"t": "T", "time": "T", "frame": "T", "z": "Z", "depth": "Z", "plane": "Z", "c": "C",
               "channel": "C", "ch": "C", "y": "Y", "x": "X"}


def layer_axes(layer) -> tuple[str, str]:
    """What each axis of an Image layer is: ``(axes, where)``.

    ``axes`` has one letter (TCZYX, S for RGB samples) per axis of the layer's data;
    ``where`` says how it is known: ``"metadata"`` (our reader's ``metadata["skipseg"]``),
    ``"axis labels"`` (the layer's ``axis_labels``, e.g. ``("t", "y", "x")``),
    ``"guessed"`` (:func:`~napari_skipseg.inference.axes.guess_axes`; ``"shape"`` for a plain
    YX image), or ``("", "unknown")`` beyond 5 axes.
    """
    from .inference.axes import guess_axes
    from .io import ImageMeta

    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(int(n) for n in data.shape)
    rgb = bool(getattr(layer, "rgb", False))

    def fits(axes: str) -> bool:
        try:
            ImageMeta(axes).validate(shape)
        except ValueError:
            return False
        return True

    stored = ((getattr(layer, "metadata", None) or {}).get("skipseg") or {}).get("axes")
    if isinstance(stored, str) and fits(stored) and stored.endswith("S") == rgb:
        return stored, "metadata"
    labels = [AXIS_LABELS.get(str(a).strip().lower(), "?") for a in tuple(getattr(layer, "axis_labels", ()))]
    named = "".join(labels) + ("S" if rgb else "")
    if "?" not in named and fits(named):
        return named, "axis labels"
    try:
        axes, guessed = guess_axes(shape, rgb)
    except ValueError:
        return "", "unknown"
    return axes, "guessed" if guessed else "shape"


def arrange_source(source: LayerSource, model_config, *, axes: str | None = None, channel: int | None = None,
                   mode: str = "auto"):
    """``source`` brought into the engine's axis order for a model: ``(engine_source, arranged)``.

    ``engine_source`` is a :class:`LayerSource` whose data, scale and translate are in the
    engine's order (``(lead..., [Z,] Y, X [, C])``, the chosen channel taken out);
    ``arranged`` (:class:`~napari_skipseg.inference.axes.Arranged`) turns the result back
    (:func:`restore_result`), or is None when the axes are unknown (more than 5: ``source``
    is returned as it is). ``axes`` overrides ``source.axes``. Raises
    :class:`~napari_skipseg.inference.axes.AxesError` (a 3D model without Z, a channel to
    choose) without reading any pixels.
    """
    from .inference.axes import arrange
    from .io import ImageMeta

    axes = axes or source.axes
    if not axes:  # more axes than letters: the engine takes it as it is (and says what is wrong)
        return source, None
    plain = axes.replace("S", "")
    by_letter = dict(zip(plain, source.scale, strict=False))
    shift = dict(zip(plain, source.translate, strict=False))
    stored = source.skipseg or {}
    meta = ImageMeta(axes, tuple(abs(by_letter.get(a, 1.0)) or 1.0 if a in "ZYX" else 1.0 for a in axes),
                     str(stored.get("unit") or "pixel"), name=source.name, path=stored.get("path"),
                     extra=dict(stored.get("extra") or {}))
    dims = model_config.spatial_dims if mode in (None, "auto") else int(mode[0])
    arranged = arrange(source.data, meta, spatial_dims=dims, in_channels=model_config.in_channels,
                       channel=channel, model_name=model_config.name)
    engine = LayerSource(source.name, arranged.image, arranged.channel_axis,
                         tuple(by_letter.get(a, 1.0) for a in arranged.axes),
                         tuple(shift.get(a, 0.0) for a in arranged.axes),
                         units=source.units, skipseg=source.skipseg, axes=arranged.meta.axes,
                         axes_from=source.axes_from)
    return engine, arranged


def restore_result(result, arranged, source: LayerSource):
    """``result`` of segmenting :func:`arrange_source`'s engine source, with its labels and
    probabilities back in the layer's axis order; returns ``(result, placed)`` where
    ``placed`` is the :class:`LayerSource` to draw them over (the layer's scale and
    translate without its channel axis)."""
    if arranged is None:
        return result, source
    result.labels = arranged.to_file_order(result.labels)
    result.probabilities = arranged.to_file_order(result.probabilities, leading=1)
    plain = (source.axes or "").replace("S", "")
    if len(plain) == len(source.scale):
        scale = tuple(s for a, s in zip(plain, source.scale, strict=True) if a != "C")
        translate = tuple(t for a, t in zip(plain, source.translate, strict=True) if a != "C")
    else:
        scale, translate = source.scale, source.translate
    placed = LayerSource(source.name, None, None, scale, translate, units=source.units, skipseg=source.skipseg,
                         axes=arranged.file_axes, axes_from=source.axes_from)
    return result, placed


def is_lazy(data) -> bool:
    """Whether ``data`` should be segmented into zarr stores: a dask or zarr array (not
    numpy), or one larger than :data:`STREAM_BYTES`."""
    if isinstance(data, np.ndarray) and not isinstance(data, np.memmap):
        return data.nbytes > STREAM_BYTES
    nbytes = int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize
    return not isinstance(data, np.ndarray) or nbytes > STREAM_BYTES


def results_dir() -> str:
    """Folder for the zarr stores of segmented lazy layers: ``<user data>/results``."""
    import os

    from .model.store import user_model_dir

    return os.path.join(os.path.dirname(str(user_model_dir())), "results")


def result_stores(source: LayerSource, model_config, options: dict, folder: str | None = None):
    """OME-Zarr stores on disk for the labels and probabilities of segmenting ``source``.

    Returns ``(targets, outputs)``: the :class:`~napari_skipseg.io.zarr_io.ZarrTarget` s to
    commit (or abort) when the job ends, and the ``labels_out`` / ``probabilities_out``
    keyword arguments for :func:`~napari_skipseg.inference.engine.predict`. Chunks line up
    with the engine's units (one slice, or one 3D block, per chunk).
    """
    import os
    import time

    from .inference.engine import plan
    from .io import ImageMeta
    from .io.zarr_io import create_ome_zarr

    geo = plan(model_config, tuple(source.data.shape), channel_axis=source.channel_axis,
               mode=options.get("mode", "auto"), tile=options.get("tile"), block=options.get("block"),
               overlap=options.get("overlap", 0.125))
    folder = folder or results_dir()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in source.name)[:60] or "image"
    base = os.path.join(folder, f"{safe}-{model_config.name}-{stamp}-{os.getpid()}-{id(source) % 10000}")
    spacing = tuple(abs(s) for s in source.scale) if len(source.scale) == len(geo["shape"]) else ()
    meta = _fit_meta(geo["shape"], spacing)
    targets, outputs = [], {}
    output = options.get("output", "instances")
    try:
        if output != "probabilities":
            dtype = np.uint32 if output == "instances" else np.uint8
            t = create_ome_zarr(base + ".labels.zarr", geo["shape"], dtype, meta, chunks=geo["chunks"],
                                label=True, class_names=list(model_config.class_names or []) if output == "semantic" else None)
            targets.append(t)
            outputs["labels_out"] = t.array
        if options.get("keep_probabilities") or output == "probabilities":
            shape = (model_config.num_classes, *geo["shape"])
            pmeta = ImageMeta("C" + meta.axes, (1.0, *meta.spacing), meta.unit)
            t = create_ome_zarr(base + ".probabilities.zarr", shape, np.float32, pmeta, chunks=(1, *geo["chunks"]))
            targets.append(t)
            outputs["probabilities_out"] = t.array
    except BaseException:
        for t in targets:
            t.abort()
        raise
    return targets, outputs


def _fit_meta(shape, spacing):
    from .io import ImageMeta, default_axes

    if not 2 <= len(shape) <= 5:
        raise ValueError(f"cannot store a result of shape {tuple(shape)} (2 to 5 axes)")
    axes = default_axes(len(shape))
    spacing = spacing if len(spacing) == len(shape) and all(s > 0 for s in spacing) else ()
    meta = ImageMeta(axes, spacing)
    return ImageMeta(axes, tuple(s if a in "ZYX" else 1.0 for a, s in zip(axes, meta.spacing, strict=True)))


def reopen_committed(targets) -> dict:
    """Commit the stores of :func:`result_stores` and open their arrays at the final paths:
    ``{"labels": zarr.Array, "probabilities": zarr.Array}`` (those present)."""
    import zarr

    out = {}
    for t in targets:
        path = t.commit()
        key = "probabilities" if path.endswith(".probabilities.zarr") else "labels"
        out[key] = zarr.open_array(f"{path}/0", mode="r+")
    return out


def result_layers(result, source: LayerSource, maps: list[tuple[str, object]] | None = None) -> list[tuple]:
    """Layer data tuples for a segmentation of ``source``: Labels and probability Images
    (``maps``: the probability images as ``(name, array)``, default
    :func:`probability_maps`; the labels come last)."""
    meta = {"skipseg": {"source": source.name, "model": result.model_name, "device": result.device,
                        "seconds": round(result.seconds, 3)}}
    stored = source.skipseg or {}
    if stored.get("axes"):  # the source's axes, spacing, unit and orientation, without channels
        axes = stored["axes"]
        keep = [i for i, a in enumerate(axes) if a not in "CS"]
        spacing = tuple(stored.get("spacing") or (1.0,) * len(axes))
        if len(spacing) == len(axes):
            meta["skipseg"].update({
                "axes": "".join(axes[i] for i in keep), "spacing": tuple(spacing[i] for i in keep),
                "unit": stored.get("unit", "pixel"), "path": stored.get("path"),
                "extra": dict(stored.get("extra") or {}),
            })
    if not isinstance(result.labels, np.ndarray) and result.labels is not None:
        meta["skipseg"]["store"] = str(getattr(result.labels, "store", ""))
    placed = {"scale": source.scale, "translate": source.translate}
    layers: list[tuple] = []
    if result.probabilities is not None:
        show = result.output == "probabilities"
        for name, prob in probability_maps(result) if maps is None else maps:
            layers.append((
                prob,
                {"name": f"{source.name} [{result.model_name}] p({name})", **placed, "metadata": meta,
                 "colormap": "magma", "contrast_limits": (0.0, 1.0), "visible": show,
                 "blending": "additive", "opacity": 0.7},
                "image",
            ))
    if result.labels is not None:
        kwargs = {"name": f"{source.name} [{result.model_name}] {result.output}", **placed, "metadata": meta,
                  "opacity": 0.5}
        if result.output == "semantic":
            kwargs.update(semantic_display(result.class_names))
        layers.append((result.labels, kwargs, "labels"))
    return layers


#: names of a class 0 that is the background (drawn transparent, as napari draws label 0)
BACKGROUND_NAMES = frozenset({"background", "bg", "none", "void", "nothing", "other"})


def semantic_display(class_names) -> dict:
    """Labels-layer arguments for a semantic map whose values are class ids: the class names
    as the layer's features (napari's status bar shows the name under the cursor) and, when
    class 0 is a structure (em2d's "membrane") rather than the background, a colormap that
    draws class 0 too. Without class names: nothing (napari's defaults)."""
    if not class_names:
        return {}
    names = [str(n) for n in class_names]
    out = {"features": {"index": list(range(len(names))), "class": names}}
    if names[0].strip().lower() not in BACKGROUND_NAMES:
        from napari.utils.colormaps import DirectLabelColormap, label_colormap

        cycle = label_colormap(max(len(names), 2))
        colors = {i: tuple(float(c) for c in cycle.map(i + 1)) for i in range(len(names))}
        # no value is the background: every class, 0 included, has its colour
        out["colormap"] = DirectLabelColormap(color_dict={None: (0.0, 0.0, 0.0, 0.0), **colors},
                                              background_value=-1)
    return out


def probability_maps(result) -> list[tuple[str, np.ndarray]]:
    """The probability images worth showing: foreground for an instance model (interior +
    boundary), every class but the background otherwise. Few layers keep napari fast."""
    probs = result.probabilities
    names = result.class_names or [f"class {i}" for i in range(probs.shape[0])]
    if not isinstance(probs, np.ndarray):  # zarr on disk: stay lazy (napari reads what it shows)
        import dask.array as da

        lazy = da.from_zarr(probs) if hasattr(probs, "store") else da.asarray(probs)
        if len(names) == 3 and names[1:] == ["interior", "boundary"]:
            return [("foreground", lazy[1] + lazy[2])]
        return [(names[i], lazy[i]) for i in range(1 if len(names) > 1 else 0, len(names))]
    if len(names) == 3 and names[1:] == ["interior", "boundary"]:
        return [("foreground", probs[1] + probs[2])]
    return [(names[i], np.ascontiguousarray(probs[i])) for i in range(1 if len(names) > 1 else 0, len(names))]
