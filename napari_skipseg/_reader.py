"""npe2 reader: open image files as napari Image layers with their voxel spacing.

Each layer keeps ``metadata["skipseg"] = {"axes", "spacing", "unit", "path"}``
describing its own data (after channels are split off), for other code to read.
No napari or torch import here.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

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
    data, meta = read_image(path)
    kwargs: dict[str, Any] = {
        "name": meta.name,
        "scale": meta.scale_for_napari(),
        "rgb": meta.rgb,
        "metadata": {"skipseg": layer_metadata(meta)},
    }
    c = meta.channel_axis
    if c is not None:
        n = data.shape[c]
        per_channel = layer_metadata(_without_axis(meta, c))
        kwargs["channel_axis"] = c
        kwargs["name"] = [f"{meta.name} [{i}]" for i in range(n)]
        kwargs["metadata"] = [{"skipseg": dict(per_channel)} for _ in range(n)]
    return [(data, kwargs, "image")]


def layer_metadata(meta: ImageMeta) -> dict[str, Any]:
    """The ``metadata["skipseg"]`` dict of a layer whose data has ``meta.axes``."""
    return {
        "axes": meta.axes,
        "spacing": tuple(meta.spacing),
        "unit": meta.unit,
        "path": meta.path,
    }


def _without_axis(meta: ImageMeta, i: int) -> ImageMeta:
    axes = meta.axes[:i] + meta.axes[i + 1 :]
    return replace(meta, axes=axes, spacing=meta.spacing[:i] + meta.spacing[i + 1 :])
