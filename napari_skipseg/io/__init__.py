"""Read and write image files as (array, :class:`ImageMeta`) pairs.

No Qt, napari or torch here. Readers are found by file suffix in :data:`READERS`;
a new format adds its reader function there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .meta import AXES, ImageMeta, ImageReadError, default_axes
from .tiff import read_tiff
from .tiff import write_tiff as write_image

__all__ = [
    "AXES",
    "READERS",
    "ImageMeta",
    "ImageReadError",
    "default_axes",
    "find_reader",
    "read_image",
    "write_image",
]

Reader = Callable[..., tuple[Any, ImageMeta]]

#: Lower-case file suffix -> reader ``f(path, lazy=False) -> (array, ImageMeta)``.
READERS: dict[str, Reader] = {
    ".tif": read_tiff,
    ".tiff": read_tiff,
    ".ome.tif": read_tiff,
    ".ome.tiff": read_tiff,
}


def find_reader(path: str | os.PathLike) -> Reader | None:
    """Return the reader registered for the suffix of `path`, or ``None``.

    The longest matching suffix wins (``.ome.tif`` before ``.tif``).
    """
    name = os.path.basename(os.fspath(path).rstrip("/\\")).lower()
    for suffix in sorted(READERS, key=len, reverse=True):
        if name.endswith(suffix):
            return READERS[suffix]
    return None


def read_image(path: str | os.PathLike, lazy: bool = False) -> tuple[Any, ImageMeta]:
    """Read an image file with its axes and voxel spacing.

    Parameters
    ----------
    path : str or path-like
        The file; its suffix picks the reader (see :data:`READERS`).
    lazy : bool
        Return an array that reads pixels from disk on access (memory map or
        zarr) where the format allows, instead of a numpy array.

    Returns
    -------
    data : array-like
        The pixels, one axis per letter of ``meta.axes``.
    meta : ImageMeta
        Axes, spacing, unit, name and path.

    Raises
    ------
    ImageReadError
        If the suffix is not supported or the file cannot be read; the message
        starts with the path.
    """
    reader = find_reader(path)
    if reader is None:
        supported = ", ".join(sorted(READERS))
        raise ImageReadError(path, f"unsupported file type; supported: {supported}")
    return reader(path, lazy=lazy)
