"""Image metadata shared by every reader and writer: axes, voxel spacing, unit."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

#: Every axis letter we know, in canonical order. S holds RGB(A) samples.
AXES = "TCZYXS"
SPATIAL = "ZYX"


class ImageReadError(ValueError):
    """A file (or an array with its metadata) cannot be read as an image.

    Parameters
    ----------
    path : str or None
        The file at fault; ``None`` for an in-memory array.
    problem : str
        What is wrong, in words (line breaks are folded: the message is one line).
    """

    def __init__(self, path: object, problem: str) -> None:
        problem = " ".join(str(problem).split())  # one line, whatever a library's message held
        super().__init__(path, problem)
        self.path = None if path is None else str(path)
        self.problem = problem

    def __str__(self) -> str:
        return f"{self.path or '<array>'}: {self.problem}"


@dataclass
class ImageMeta:
    """Axes and physical voxel size of an image array.

    Parameters
    ----------
    axes : str
        One upper-case letter per array axis, from ``TCZYXS``. ``S`` holds RGB(A)
        samples and is always last when present.
    spacing : tuple of float
        Size of a step along each axis, in `unit` for Z, Y and X and 1.0 for T, C
        and S. Empty means 1.0 for every axis.
    unit : str
        Unit of the spatial spacing, e.g. ``"micrometer"``; ``"pixel"`` if unknown.
    name : str
        A short name for the image, e.g. the file name without its suffix.
    path : str or None
        The file the image came from, if any.
    extra : dict
        Format-specific metadata that a writer of the same format puts back, e.g.
        ``affine`` (4 x 4 voxel-to-world matrix, NIfTI/RAS convention, from NIfTI and
        DICOM), ``nifti`` (qform/sform and their codes), ``dicom`` (series UID,
        orientation), ``ome_zarr`` (NGFF version, pyramid level paths). Plain JSON-able
        values only.
    """

    axes: str
    spacing: tuple[float, ...] = ()
    unit: str = "pixel"
    name: str = ""
    path: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing) or (1.0,) * len(self.axes)

    @property
    def spatial_axes(self) -> tuple[int, ...]:
        """Indices of the Z, Y and X axes present, in array order."""
        return tuple(i for i, a in enumerate(self.axes) if a in SPATIAL)

    @property
    def channel_axis(self) -> int | None:
        """Index of the C axis, or ``None`` without one."""
        return self.axes.index("C") if "C" in self.axes else None

    @property
    def rgb(self) -> bool:
        """Whether the last axis holds RGB(A) samples."""
        return self.axes.endswith("S")

    @property
    def spatial_spacing(self) -> tuple[float, ...]:
        """Spacing along the Z, Y and X axes present, in array order."""
        return tuple(self.spacing[i] for i in self.spatial_axes)

    def scale_for_napari(self) -> tuple[float, ...]:
        """Spacing of every axis except C and S.

        This is napari's ``scale`` for a layer built from the array, with the
        channels split by ``channel_axis`` and RGB samples shown by ``rgb=True``.
        """
        return tuple(s for a, s in zip(self.axes, self.spacing, strict=True) if a not in "CS")

    def without_channels(self) -> ImageMeta:
        """The same metadata with the C and S axes removed (for label images)."""
        keep = [i for i, a in enumerate(self.axes) if a not in "CS"]
        return replace(
            self,
            axes="".join(self.axes[i] for i in keep),
            spacing=tuple(self.spacing[i] for i in keep),
            extra=dict(self.extra),
        )

    def validate(self, shape: Sequence[int]) -> None:
        """Check that this metadata describes an array of `shape`.

        Parameters
        ----------
        shape : sequence of int
            Shape of the array.

        Raises
        ------
        ImageReadError
            If the axes or spacing do not fit `shape` or break the conventions.
        """
        axes, ndim = self.axes, len(shape)

        def fail(problem: str) -> None:
            raise ImageReadError(self.path, f"axes {axes!r} for shape {tuple(shape)}: {problem}")

        if not 2 <= ndim <= len(AXES):
            fail(f"{ndim} dimensions; expected 2 to {len(AXES)}")
        if len(axes) != ndim:
            fail(f"{len(axes)} axis letters for {ndim} dimensions")
        if unknown := sorted(set(axes) - set(AXES)):
            fail(f"unknown axis letters {''.join(unknown)!r}; use {AXES!r}")
        if len(set(axes)) != len(axes):
            fail("repeated axis letters")
        if not axes.rstrip("S").endswith("YX"):
            fail("Y and X must be the last axes (before S)")
        if "S" in axes[:-1]:
            fail("S (RGB samples) must be the last axis")
        if self.rgb and shape[-1] not in (3, 4):
            fail(f"S axis has {shape[-1]} samples; RGB needs 3 or 4")
        if len(self.spacing) != ndim:
            fail(f"{len(self.spacing)} spacing values for {ndim} axes")
        if not all(math.isfinite(s) and s > 0 for s in self.spacing):
            fail(f"spacing {self.spacing} must be positive and finite")


def default_axes(ndim: int, rgb: bool = False) -> str:
    """Axes to assume for an array with no metadata.

    Parameters
    ----------
    ndim : int
        Number of array dimensions, RGB samples included.
    rgb : bool
        Whether the last axis holds RGB(A) samples.

    Returns
    -------
    str
        ``YX``, ``ZYX``, ``TZYX``, ``TCZYX`` (with ``S`` appended when `rgb`).

    Raises
    ------
    ValueError
        If there is no such default for `ndim`.
    """
    n = ndim - rgb
    guesses = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TCZYX"}
    if n not in guesses:
        raise ValueError(f"no default axes for a {ndim}-dimensional{' RGB' * rgb} array")
    return guesses[n] + "S" * rgb


def file_stem(path, suffixes: Sequence[str]) -> str:
    """File or folder name of ``path`` without the first of ``suffixes`` it ends with."""
    name = os.path.basename(os.fspath(path).rstrip("/\\"))
    for suffix in suffixes:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
