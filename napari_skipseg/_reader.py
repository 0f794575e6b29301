"""npe2 reader: open image files as napari Image layers with their voxel spacing.

TIFF, OME-Zarr (pyramids as multiscale layers, labels as Labels layers), plain zarr, NIfTI
and DICOM series. Zarr stays on disk (napari reads the chunks it shows); other formats are
read lazily when larger than :data:`LAZY_BYTES`.

Each layer keeps ``metadata["skipseg"] = {"axes", "spacing", "unit", "path"}``
describing its own data (after channels are split off), for other code to read.
No napari or torch import here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from napari_skipseg.io import ImageMeta, ImageReadError, find_reader, read_image

PathLike = str | os.PathLike
LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: PathLike | list[PathLike]) -> Callable[..., list[LayerData]] | None:
    """npe2 ``get_reader`` hook.

    Parameters
    ----------
    path : path-like or list of path-like
        What napari asks to open; a list must hold exactly one path.

    Returns
    -------
    callable or None
        :func:`read_layers_or_notify` if the file type is supported, else ``None``.
    """
    if isinstance(path, list | tuple):
        if len(path) != 1:
            return None
        path = path[0]
    return read_layers_or_notify if find_reader(path) is not None else None


def read_layers_or_notify(path: PathLike | list[PathLike]) -> list[LayerData]:
    """:func:`read_layers` for napari: a file that cannot be read (empty, truncated,
    corrupt, odd axes) gives one error notification saying why, and no layer, instead of
    an exception with a traceback."""
    try:
        return read_layers(path)
    except ImageReadError as err:
        try:
            from napari.utils.notifications import show_error
        except ImportError:  # not inside napari: behave like read_layers
            raise err from None
        show_error(f"napari-skipseg cannot open {err}")
        return [(None,)]  # napari's "nothing to add" sentinel


def read_layers(path: PathLike | list[PathLike]) -> list[LayerData]:
    """Read one file (or a one-element list) into napari layer data tuples.

    Parameters
    ----------
    path : path-like or list of path-like
        The file.

    Returns
    -------
    list of tuple
        One ``(data, kwargs, "image")`` tuple. A C axis is split by napari through
        ``channel_axis``; ``kwargs["metadata"]`` then holds one dict per channel.
    """
    if isinstance(path, list | tuple):
        (path,) = path
    data, meta = read_image(path, lazy=True)
    ome = meta.extra.get("ome_zarr")
    if not _is_zarr_array(data) and _nbytes(data) <= LAZY_BYTES:
        data = np.asarray(data)  # small: in memory is faster to browse
    kwargs: dict[str, Any] = {
        "name": meta.name,
        "scale": meta.scale_for_napari(),
        "rgb": meta.rgb,
        "metadata": {"skipseg": layer_metadata(meta)},
    }
    shape = tuple(data.shape)
    if ome and len(ome["levels"]) > 1:  # a pyramid: napari shows the level that fits the view
        from napari_skipseg.io.zarr_io import read_levels

        data = read_levels(path)
        kwargs["multiscale"] = True
    c = meta.channel_axis
    if c is not None:
        n = shape[c]
        per_channel = layer_metadata(_without_axis(meta, c))
        kwargs["channel_axis"] = c
        kwargs["name"] = [f"{meta.name} [{i}]" for i in range(n)]
        kwargs["metadata"] = [{"skipseg": dict(per_channel)} for _ in range(n)]
    layers: list[LayerData] = [(data, kwargs, "image")]
    for label in (ome or {}).get("labels", []):  # OME-Zarr labels next to the image
        layers.append(_label_layer(os.path.join(os.fspath(path), "labels", label), f"{meta.name} {label}"))
    return layers


#: Images up to this many bytes are read into memory; larger ones (and zarr) stay on disk.
LAZY_BYTES = 1 << 30


def _nbytes(data: Any) -> int:
    return int(np.prod(data.shape)) * np.dtype(data.dtype).itemsize


def _is_zarr_array(data: Any) -> bool:
    from napari_skipseg.io.validate import unwrap

    return type(unwrap(data)).__module__.startswith("zarr")


def _label_layer(path: str, name: str) -> LayerData:
    from napari_skipseg.io.zarr_io import read_levels, read_zarr

    data, meta = read_zarr(path, lazy=True)
    levels = read_levels(path)
    kwargs: dict[str, Any] = {"name": name, "scale": meta.scale_for_napari(),
                              "metadata": {"skipseg": layer_metadata(meta)}, "opacity": 0.5}
    if len(levels) > 1:
        kwargs["multiscale"] = True
        data = levels
    features = label_properties(path)
    if features:
        kwargs["features"] = features  # napari shows the class under the cursor
    return (data, kwargs, "labels")


def label_properties(path: str) -> dict[str, list] | None:
    """The OME-NGFF label ``properties`` that name a class (``label-value`` and ``class``) of
    the label image at `path`, as layer features (``index``, ``class``); None without any."""
    import zarr

    try:
        attrs = dict(zarr.open_group(path, mode="r").attrs)
    except Exception:  # noqa: BLE001 - not a group: no properties
        return None
    image_label = (attrs.get("ome") if isinstance(attrs.get("ome"), dict) else attrs).get("image-label")
    props = image_label.get("properties") if isinstance(image_label, dict) else None
    if not isinstance(props, list):
        return None
    rows = {}
    for p in props:
        if isinstance(p, dict) and isinstance(p.get("label-value"), int) and isinstance(p.get("class"), str):
            rows[p["label-value"]] = p["class"]
    if not rows:
        return None
    return {"index": sorted(rows), "class": [rows[k] for k in sorted(rows)]}


def layer_metadata(meta: ImageMeta) -> dict[str, Any]:
    """The ``metadata["skipseg"]`` dict of a layer whose data has ``meta.axes``; ``extra``
    carries what a writer of the same format puts back (e.g. the NIfTI affine)."""
    return {
        "axes": meta.axes,
        "spacing": tuple(meta.spacing),
        "unit": meta.unit,
        "path": meta.path,
        "extra": dict(meta.extra),
    }


def _without_axis(meta: ImageMeta, i: int) -> ImageMeta:
    axes = meta.axes[:i] + meta.axes[i + 1 :]
    return replace(meta, axes=axes, spacing=meta.spacing[:i] + meta.spacing[i + 1 :])
