"""Adapters between the skip-connection explorer core and napari layers (no Qt here).

``piece_request`` reads, from an image layer and the viewer state, which slice (2D
models) or block around the cursor (3D models) to run the network on. The ``*_layer``
functions turn core results into napari layer data tuples ``(data, kwargs, kind)``
placed exactly over the source image with :func:`~napari_skipseg.features.layer_placement`.
"""

from __future__ import annotations

import numpy as np

from .features.capture import KINDS, AblationResult, FeatureCapture, PreparedInput
from .features.placement import layer_placement
from .features.summaries import contrast_range, summarise
from .layers import LayerSource

META_KEY = "skipseg_features"
#: One colour per kind, chosen to stay apart when overlaid additively on a grey image.
KIND_COLORMAPS = {"encoder": "green", "decoder": "magenta", "fused": "yellow"}
KIND_LABELS = {"encoder": "encoder (skip)", "decoder": "decoder (up)", "fused": "fused"}
VIEW_LABELS = {"channels": "channels", "norm": "norm", "pca": "PCA RGB", "topk": "top-{k} channels"}
#: Fixed colours for class labels (0 stays transparent), so that outputs compare at a glance.
CLASS_COLORS = ["transparent", "#ffb000", "#00d0ff", "#ff4fa0", "#8cff5a", "#b08cff", "#ffffff"]


def piece_request(layer, dims_point, cursor_position, spatial_dims: int) -> dict:
    """``index`` (leading axes) and ``center`` (spatial axes) in the data pixels of
    ``layer`` for the viewer's current slice and the cursor; keyword arguments for
    :func:`~napari_skipseg.features.capture_features`."""
    ndim = layer.ndim
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    shape = tuple(data.shape[:ndim])
    lead = ndim - spatial_dims
    if lead < 0:
        return {}
    point = np.asarray(layer.world_to_data(dims_point), float)
    index = tuple(int(np.clip(round(p), 0, s - 1)) for p, s in zip(point[:lead], shape[:lead], strict=True))
    center = None
    if cursor_position is not None and len(cursor_position):
        c = np.asarray(layer.world_to_data(cursor_position), float)[lead:]
        if np.all(np.isfinite(c)) and all(0 <= v <= s - 1 for v, s in zip(c, shape[lead:], strict=True)):
            center = tuple(float(v) for v in c)
    return {"index": index, "center": center}


def _placement(source: LayerSource, prepared: PreparedInput, level_scale, leading: int):
    n_lead = len(prepared.index)
    d = len(prepared.shape)
    if len(source.scale) != n_lead + d:
        raise ValueError(
            f"layer {source.name!r} has {len(source.scale)} axes; the features were computed for "
            f"{n_lead} leading and {d} spatial axes"
        )
    return layer_placement(level_scale, source.scale, source.translate, prepared.index, prepared.origin, leading)


def layer_name(level: int, kind: str, view: str, k: int = 4) -> str:
    return f"L{level} {KIND_LABELS[kind]} · {VIEW_LABELS[view].format(k=k)}"


def feature_layer(capture: FeatureCapture, source: LayerSource, level: int, kind: str, view: str = "channels",
                  k: int = 4, visible: bool = True) -> tuple:
    """A napari image layer tuple for one level and kind of ``capture`` in one view.

    Channel stacks (``channels``, ``topk``) get the channel as their first axis, a slider
    in napari; ``norm`` is one float32 map; ``pca`` an RGB uint8 image.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    rec = next((r for r in capture.records if r.level == level), None)
    if rec is None:
        raise ValueError(f"no level {level} in this capture (levels {[r.level for r in capture.records]})")
    data, info = summarise(rec.maps(kind), view, k)
    n_lead = len(capture.input.index)
    stack = view in ("channels", "topk")
    if stack:
        data = data.reshape(data.shape[0], *(1,) * n_lead, *data.shape[1:])
    elif view == "pca":
        data = data.reshape(*(1,) * n_lead, *data.shape)
    else:
        data = data.reshape(*(1,) * n_lead, *data.shape)
    scale, translate = _placement(source, capture.input, rec.scale, leading=1 if stack else 0)
    meta = {META_KEY: {"source": source.name, "model": capture.model_name, "level": level, "kind": kind,
                       "view": view, "level_scale": list(rec.scale), **info}}
    kwargs = {"name": layer_name(level, kind, view, k), "scale": scale, "translate": translate,
              "metadata": meta, "visible": visible}
    if view == "pca":
        kwargs.update(rgb=True, opacity=0.65, blending="translucent")
    else:
        # a norm has a floor (it is never 0 where any channel is active): start above it
        low = 5.0 if view == "norm" else 0.5
        kwargs.update(colormap=KIND_COLORMAPS[kind], contrast_limits=contrast_range(data, low, 99.5),
                      blending="additive", opacity=0.85)
    return data, kwargs, "image"


def class_colormap(n: int) -> dict:
    """Labels colormap for class labels ``0..n-1`` (0 transparent)."""
    colors = {i: CLASS_COLORS[i % len(CLASS_COLORS)] if i else "transparent" for i in range(max(n, 2))}
    return {**colors, None: "white"}


def ablation_layers(result: AblationResult, source: LayerSource, class_names=(), side_by_side: bool = True,
                    image_kwargs: dict | None = None) -> list[tuple]:
    """Layer tuples for a skip ablation: the original output, the output without the
    skip(s) and the difference map (how far the class probabilities moved).

    With ``side_by_side`` the last two are shifted right (by one and two widths of the
    piece, plus a gap) so that the three lie next to each other, and the image is shown
    again (same data, no copy) under the shifted output; ``image_kwargs`` (colormap,
    contrast limits) style it like the original image layer.
    """
    prepared = result.input
    d = len(prepared.shape)
    n_lead = len(prepared.index)
    scale, translate = _placement(source, prepared, (1,) * d, leading=0)
    what = ", ".join(f"L{k} {how}" for k, how in sorted(result.ablate.items()))
    meta = {META_KEY: {"source": source.name, "model": result.model_name, "ablation": what,
                       "changed_fraction": result.changed_fraction, "class_names": list(class_names)}}
    width = prepared.shape[-1] * scale[-1] * 1.05
    colors = class_colormap(max(len(class_names), int(result.original_probabilities.shape[0])))

    def shifted(placed, n: int) -> tuple[float, ...]:
        if not side_by_side:
            return tuple(placed)
        return (*placed[:-1], placed[-1] + n * width)

    def lead(a):
        return a.reshape(*(1,) * n_lead, *a.shape)

    layers = []
    if side_by_side:
        layers.append((source.data, {"name": "ablation: image (copy)", "scale": source.scale,
                                     "translate": shifted(source.translate, 1), "metadata": meta,
                                     "rgb": source.channel_axis is not None, **(image_kwargs or {})}, "image"))
    layers += [
        (lead(result.original), {"name": "ablation: output (original)", "scale": scale, "translate": translate,
                                 "metadata": meta, "opacity": 0.6, "colormap": colors}, "labels"),
        (lead(result.ablated), {"name": f"ablation: output ({what} off)", "scale": scale,
                                "translate": shifted(translate, 1), "metadata": meta, "opacity": 0.6,
                                "colormap": colors}, "labels"),
        (lead(result.difference), {"name": f"ablation: change ({what} off)", "scale": scale,
                                   "translate": shifted(translate, 2), "metadata": meta, "colormap": "inferno",
                                   "contrast_limits": (0.0, 1.0),
                                   # on its own panel it must show on a light canvas too
                                   "blending": "translucent" if side_by_side else "additive"}, "image"),
    ]
    return layers


def is_feature_layer(layer) -> bool:
    return META_KEY in getattr(layer, "metadata", {})


def feature_key(layer) -> tuple | None:
    """``(level, kind, view)`` of a feature layer, else None."""
    info = getattr(layer, "metadata", {}).get(META_KEY, {})
    if "level" not in info:
        return None
    return info["level"], info["kind"], info["view"]


def region_from_layer(region_layer, image_layer, prepared: PreparedInput):
    """The output region drawn in a Shapes layer (bounding box of all shapes, as slices in
    image pixels) or painted in a Labels layer (mask of labels > 0 on the image's grid),
    for :func:`~napari_skipseg.features.gradient_flow`."""
    d = len(prepared.shape)
    kind = type(region_layer).__name__
    if kind == "Shapes":
        if image_layer is None:
            raise ValueError("the image layer the features came from is gone")
        if not len(region_layer.data):
            raise ValueError(f"{region_layer.name!r} holds no shape; draw a rectangle around the region")
        verts = np.concatenate([np.asarray(s, float) for s in region_layer.data])
        pix = np.array([image_layer.world_to_data(region_layer.data_to_world(v)) for v in verts])[:, -d:]
        lo = np.floor(pix.min(axis=0) + 0.5).astype(int)
        hi = np.floor(pix.max(axis=0) + 0.5).astype(int) + 1
        return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    if kind == "Labels":
        data = np.asarray(region_layer.data[0] if getattr(region_layer, "multiscale", False) else region_layer.data)
        extra = data.ndim - d
        if extra < 0 or extra > len(prepared.index) or data.shape[extra:] != prepared.image_shape:
            raise ValueError(
                f"{region_layer.name!r} (shape {data.shape}) is not on the image's grid {prepared.image_shape}"
            )
        if extra:
            data = data[prepared.index[-extra:]]
        return data > 0
    raise ValueError(f"{region_layer.name!r} is a {kind} layer; use Shapes or Labels to mark the region")
