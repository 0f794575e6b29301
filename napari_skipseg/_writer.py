"""npe2 writers: save Image and Labels layers as OME-TIFF, NIfTI or OME-Zarr with their voxel
spacing (and, for NIfTI, the affine of the file the layer came from).

Axes and unit come from the layer's ``metadata["skipseg"]`` when it fits the data
(see :mod:`napari_skipseg._reader`), else from the number of dimensions; the
spacing of Z, Y and X comes from the layer's ``scale``. No napari or torch import.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from napari_skipseg.io import ImageMeta, default_axes
from napari_skipseg.io import write_image as _write


class WriteRefused(ValueError):
    """The writer will not replace what is at the path (it did not write it)."""


def write_image(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 writer for one Image layer.

    An existing zarr store is replaced only when this plugin wrote it (it carries our
    marker, :func:`napari_skipseg.io.zarr_io.written_by_us`); anything else raises
    :class:`WriteRefused` and stays as it was.

    Parameters
    ----------
    path : str
        Destination ``.tif``/``.tiff``/``.ome.tif``/``.ome.tiff``, ``.nii``/``.nii.gz`` or
        ``.zarr``.
    data : array-like
        The layer data.
    attributes : dict
        The layer's attributes (``name``, ``scale``, ``rgb``, ``metadata``, ...).

    Returns
    -------
    list of str
        The path written.
    """
    if isinstance(data, list):  # a multiscale layer: its full resolution
        data = data[0]
    _refuse_foreign_store(path)
    return [_write(path, data, layer_meta(data, attributes))]


def write_labels(path: str, data: Any, attributes: dict[str, Any]) -> list[str]:
    """npe2 writer for one Labels layer; see :func:`write_image`.

    Saved to an existing OME-Zarr image (``image.zarr``), the labels are added next to the
    image as ``labels/<layer name>`` (OME-NGFF labels) instead of replacing it; an existing
    ``labels/<layer name>`` is replaced only when this plugin wrote it. Any other existing
    zarr store is replaced only when this plugin wrote it as labels; otherwise
    :class:`WriteRefused` is raised and nothing is written.
    """
    if isinstance(data, list):  # a multiscale labels layer: its full resolution
        data = data[0]
    meta = layer_meta(data, attributes)
    names = class_names(attributes)
    zarr_kwargs = {"label": True, "class_names": names} if _is_zarr_path(path) else {}
    if _existing_store(path):
        from napari_skipseg.io.zarr_io import MARKER, written_by_us

        if written_by_us(path) and _attrs(path).get(MARKER, {}).get("label"):
            return [_write(path, data, meta, **zarr_kwargs)]  # our own labels, saved again
        if _is_ome_image(path):
            from napari_skipseg.io.zarr_io import write_labels_next_to

            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in attributes.get("name") or "labels")
            name = name.lstrip(".") or "labels"
            dest = os.path.join(path, "labels", name)
            if os.path.lexists(dest) and not written_by_us(dest):
                raise WriteRefused(f"{dest}: labels there were not written by napari-skipseg and are kept; "
                                   "rename the layer to save it next to them")
            return [write_labels_next_to(path, name, data, meta, overwrite=True, class_names=names)]
        _refuse_foreign_store(path)
    return [_write(path, data, meta, **zarr_kwargs)]


def _is_zarr_path(path: str) -> bool:
    return path.rstrip("/\\").lower().endswith(".zarr")


def class_names(attributes: dict[str, Any]) -> list[str] | None:
    """The class of each label value 0..n-1 from a Labels layer's features (columns
    ``index`` and ``class``, as :func:`napari_skipseg.layers.semantic_display` sets them),
    written as OME-NGFF label properties; None when the features do not name them all."""
    features = attributes.get("features")
    try:
        index = [int(v) for v in features["index"]]
        names = [str(v) for v in features["class"]]
    except (KeyError, TypeError, ValueError):
        return None
    if not index or sorted(index) != list(range(len(index))):
        return None
    out = [""] * len(index)
    for i, n in zip(index, names, strict=True):
        out[i] = n
    return out


def _existing_store(path: str) -> bool:
    return path.rstrip("/\\").lower().endswith(".zarr") and os.path.lexists(path)


def _attrs(path: str) -> dict:
    import zarr

    try:
        return dict(zarr.open(path, mode="r").attrs)
    except Exception:  # noqa: BLE001 - not a zarr store
        return {}


def _is_ome_image(path: str) -> bool:
    """An OME-Zarr image (multiscales, not itself a label image): labels can go next to it."""
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    from napari_skipseg.io import read_image

    try:
        _, image_meta = read_image(path, lazy=True)
    except ValueError:
        return False
    ome = image_meta.extra.get("ome_zarr")
    attrs = _attrs(path)
    return bool(ome) and "image-label" not in (attrs.get("ome") or attrs)


def _refuse_foreign_store(path: str) -> None:
    """Raise :class:`WriteRefused` when `path` is an existing ``.zarr`` this plugin did not write."""
    from napari_skipseg.io.zarr_io import written_by_us

    if _existing_store(path) and not written_by_us(path):
        raise WriteRefused(f"{path}: exists and was not written by napari-skipseg, so it is not replaced; "
                           "save to a new name")


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
