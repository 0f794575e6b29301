"""npe2 writers: save Image and Labels layers as OME-TIFF, NIfTI or OME-Zarr with their voxel
spacing (and, for NIfTI, the affine of the file the layer came from).

Axes and unit come from the layer's ``metadata["skipseg"]`` when it fits the data
(see :mod:`napari_skipseg._reader`), else from the number of dimensions; the
spacing of Z, Y and X comes from the layer's ``scale``. No napari or torch import.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_skipseg.io import ImageMeta, default_axes
from napari_skipseg.io import write_image as _write


def write_image(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 writer for one Image layer.

    Parameters
    ----------
    path : str
        Destination ``.tif``/``.tiff``/``.ome.tif``/``.ome.tiff`` file.
    data : array-like
        The layer data.
    attributes : dict
        The layer's attributes (``name``, ``scale``, ``rgb``, ``metadata``, ...).

    Returns
    -------
    list of str
        The path written.
    """
    return [_write(path, data, layer_meta(data, attributes))]


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 writer for one Labels layer; see :func:`write_image`.

    Saved to an existing OME-Zarr image (``image.zarr``), the labels are added next to the
    image as ``labels/<layer name>`` (OME-NGFF labels) instead of replacing it.
    """
    import os

    if isinstance(data, list):  # a multiscale labels layer: its full resolution
        data = data[0]
    meta = layer_meta(data, attributes)
    if path.rstrip("/").lower().endswith(".zarr") and os.path.isdir(path):
        from napari_skipseg.io import read_image

        try:
            _, image_meta = read_image(path, lazy=True)
        except ValueError:
            image_meta = None
        if image_meta is not None and image_meta.extra.get("ome_zarr"):
            from napari_skipseg.io.zarr_io import write_labels_next_to

            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in attributes.get("name") or "labels")
            return [write_labels_next_to(path, name.lstrip("."), data, meta, overwrite=True)]
    return [_write(path, data, meta)]


def layer_meta(data: Any, attributes: dict[str, Any]) -> ImageMeta:
    """Build the :class:`ImageMeta` of a layer from its data and attributes."""
    ndim = np.ndim(data)
    rgb = bool(attributes.get("rgb", False))
    stored = (attributes.get("metadata") or {}).get("skipseg") or {}
    axes = stored.get("axes")
    if not axes or len(axes) != ndim or axes.endswith("S") != rgb:
        axes = default_axes(ndim, rgb)
    spacing = [1.0] * ndim
    scaled = [i for i, a in enumerate(axes) if a != "S"]  # napari's scale skips RGB samples
    scale = attributes.get("scale")
    if scale is not None and len(scale) == len(scaled):
        for i, s in zip(scaled, scale, strict=True):
            if axes[i] in "ZYX":
                spacing[i] = float(s)
    unit = stored.get("unit", "pixel")
    extra = dict(stored.get("extra") or {}) if stored.get("axes") == axes else {}
    return ImageMeta(axes, tuple(spacing), unit, name=attributes.get("name", ""), extra=extra)
