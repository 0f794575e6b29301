"""Read and write image files as (array, :class:`ImageMeta`) pairs.

No Qt, napari or torch here. Readers are found by file suffix in :data:`READERS`
(a new format adds its reader function there), and folders by :data:`FOLDER_READERS`
(zarr stores, DICOM series). Formats and what they keep:

- TIFF / OME-TIFF / ImageJ (``.tif``): axes, spacing, unit; lazy as memory map or zarr.
- OME-Zarr and plain zarr (``.zarr`` folders): axes, spacing, unit, pyramid levels,
  labels; always lazy (zarr arrays).
- NIfTI (``.nii``, ``.nii.gz``): spacing, unit, qform/sform affine; ``.nii`` lazy (dask).
- DICOM series (a folder of slices, or one ``.dcm`` slice): ordered by position, spacing,
  affine; lazy per slice (dask).

The format libraries (zarr, nibabel, pydicom, dask) are imported only when a file of their
format is read or written.

Hostile files: every reader checks what the metadata claim through
:mod:`napari_skipseg.io.validate` before allocating (sizes against the bytes present and
against ``SKIPSEG_MAX_BYTES``, 64 GiB, for a lazy read and ``SKIPSEG_MAX_EAGER_BYTES``, the
smaller of 16 GiB and half the memory, for a read into memory), and every value it takes
from metadata (axes, shape, dtype, spacing, unit, OME-Zarr attributes, DICOM tags). Lazy
arrays raise :class:`ImageReadError` naming the file where a damaged chunk is pulled. A
problem is one :class:`ImageReadError` naming the file; NIfTI geometry that cannot be
written back (NaN quaternion, singular sform) is dropped with a warning instead, since the
voxels are fine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from .meta import AXES, ImageMeta, ImageReadError, default_axes
from .tiff import read_tiff, write_tiff

__all__ = [
    "AXES",
    "FOLDER_READERS",
    "READERS",
    "WRITE_SUFFIXES",
    "ImageMeta",
    "ImageReadError",
    "default_axes",
    "find_reader",
    "read_image",
    "write_image",
]

Reader = Callable[..., tuple[Any, ImageMeta]]



def read_zarr(path, lazy: bool = False):
    """OME-Zarr or plain zarr; see :func:`napari_skipseg.io.zarr_io.read_zarr`."""
    from .zarr_io import read_zarr as _read

    return _read(path, lazy=lazy)


def read_nifti(path, lazy: bool = False):
    """NIfTI; see :func:`napari_skipseg.io.nifti.read_nifti`."""
    from .nifti import read_nifti as _read

    return _read(path, lazy=lazy)


def read_dicom(path, lazy: bool = False):
    """A DICOM series; see :func:`napari_skipseg.io.dicom.read_dicom`."""
    from .dicom import read_dicom as _read

    return _read(path, lazy=lazy)


def _is_zarr(path: str) -> bool:
    from .zarr_io import is_zarr

    return is_zarr(path)


def _is_dicom_folder(path: str) -> bool:
    from .dicom import is_dicom_folder

    return is_dicom_folder(path)


#: Lower-case file suffix -> reader ``f(path, lazy=False) -> (array, ImageMeta)``.
#: ``.zarr`` names a folder (a zarr store).
READERS: dict[str, Reader] = {
    ".tif": read_tiff,
    ".tiff": read_tiff,
    ".ome.tif": read_tiff,
    ".ome.tiff": read_tiff,
    ".zarr": read_zarr,
    ".nii": read_nifti,
    ".nii.gz": read_nifti,
    ".dcm": read_dicom,
}

#: Folders of any name: ``(test(path) -> bool, reader)``, tried in order.
FOLDER_READERS: list[tuple[Callable[[str], bool], Reader]] = [
    (_is_zarr, read_zarr),
    (_is_dicom_folder, read_dicom),
]


def find_reader(path: str | os.PathLike) -> Reader | None:
    """Return the reader for `path`, or ``None``.

    Files go by suffix, the longest matching one winning (``.ome.tif`` before ``.tif``);
    folders by :data:`FOLDER_READERS` (zarr stores, DICOM series).
    """
    path = os.fspath(path)
    name = os.path.basename(path.rstrip("/\\")).lower()
    if os.path.isdir(path):
        for test, reader in FOLDER_READERS:
            if test(path):
                return reader
        return None
    for suffix in sorted(READERS, key=len, reverse=True):
        if name.endswith(suffix) and suffix != ".zarr":
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
        if os.path.isdir(path):
            raise ImageReadError(path, "this folder is neither a zarr store nor a DICOM series")
        supported = ", ".join(sorted(READERS))
        raise ImageReadError(
            path, f"unsupported file type; supported: {supported} files, DICOM and zarr folders"
        )
    return reader(path, lazy=lazy)


#: Suffixes :func:`write_image` writes, and the format of each.
WRITE_SUFFIXES = {
    ".ome.tif": "OME-TIFF", ".ome.tiff": "OME-TIFF", ".tif": "OME-TIFF", ".tiff": "OME-TIFF",
    ".nii.gz": "NIfTI", ".nii": "NIfTI", ".zarr": "OME-Zarr",
}  # fmt: skip


def write_image(path: str | os.PathLike, data: Any, meta: ImageMeta | None = None, **kwargs: Any) -> str:
    """Write an array with its axes and spacing, in the format its suffix names, atomically.

    ``.tif``/``.tiff``: OME-TIFF (:func:`napari_skipseg.io.tiff.write_tiff`);
    ``.nii``/``.nii.gz``: NIfTI with the source's affine
    (:func:`napari_skipseg.io.nifti.write_nifti`); ``.zarr``: OME-Zarr
    (:func:`napari_skipseg.io.zarr_io.write_ome_zarr`, replacing an existing store).

    Returns
    -------
    str
        The path written.
    """
    name = os.fspath(path).rstrip("/\\").lower()
    if name.endswith((".nii", ".nii.gz")):
        from .nifti import write_nifti

        return write_nifti(path, data, meta)
    if name.endswith(".zarr"):
        from .zarr_io import write_ome_zarr

        return write_ome_zarr(path, data, meta, **kwargs)
    if not name.endswith((".tif", ".tiff")):
        raise ValueError(
            f"{path}: write_image writes OME-TIFF (.tif, .tiff), NIfTI (.nii, .nii.gz) "
            "or OME-Zarr (.zarr)"
        )
    return write_tiff(path, data, meta, **kwargs)
