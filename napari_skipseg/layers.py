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


def source_from_layer(layer) -> LayerSource:
    """Read what the engine needs from an napari Image layer (call on the main thread)."""
    data = layer.data[0] if getattr(layer, "multiscale", False) else layer.data
    channel_axis = -1 if getattr(layer, "rgb", False) else None
    scale = tuple(float(s) for s in layer.scale)
    translate = tuple(float(t) for t in layer.translate)
    return LayerSource(layer.name, data, channel_axis, scale, translate)


def result_layers(result, source: LayerSource) -> list[tuple]:
    """Layer data tuples for a segmentation of ``source``: Labels and probability Images."""
    meta = {"skipseg": {"source": source.name, "model": result.model_name, "device": result.device,
                        "seconds": round(result.seconds, 3)}}
    placed = {"scale": source.scale, "translate": source.translate}
    layers: list[tuple] = []
    if result.probabilities is not None:
        show = result.output == "probabilities"
        for name, prob in probability_maps(result):
            layers.append((
                prob,
                {"name": f"{source.name} [{result.model_name}] p({name})", **placed, "metadata": meta,
                 "colormap": "magma", "contrast_limits": (0.0, 1.0), "visible": show,
                 "blending": "additive", "opacity": 0.7},
                "image",
            ))
    if result.labels is not None:
        layers.append((
            result.labels,
            {"name": f"{source.name} [{result.model_name}] {result.output}", **placed, "metadata": meta,
             "opacity": 0.5},
            "labels",
        ))
    return layers


def probability_maps(result) -> list[tuple[str, np.ndarray]]:
    """The probability images worth showing: foreground for an instance model (interior +
    boundary), every class but the background otherwise. Few layers keep napari fast."""
    probs = result.probabilities
    names = result.class_names or [f"class {i}" for i in range(probs.shape[0])]
    if len(names) == 3 and names[1:] == ["interior", "boundary"]:
        return [("foreground", probs[1] + probs[2])]
    return [(names[i], np.ascontiguousarray(probs[i])) for i in range(1 if len(names) > 1 else 0, len(names))]
