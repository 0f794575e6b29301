"""Resampling between the input grid and the grid the network works on, piece by piece.

The engine resamples an image by a zoom per spatial axis (``scale``; 2.0: the network sees
the image twice as large) without ever holding the whole resampled stack: each unit (a
slice or a block) is read with a halo, resampled on its own, predicted, and its
probabilities are mapped back onto the input grid. :class:`Resampling` holds the mapping
between the two grids and says which pixels of one grid a piece of the other needs, so that
a piece resampled alone equals the same piece of the whole image resampled at once.

Pixel centres are aligned the way ``scipy.ndimage.zoom(..., grid_mode=True)`` and
``skimage.transform.resize`` align them: along an axis of ``n`` input pixels and ``w``
working pixels, input pixel ``i`` sits at working coordinate ``(i + 0.5) * w / n - 0.5``, so
the two grids cover the same extent. Interpolation is linear
(:func:`scipy.ndimage.affine_transform`, order 1, edges extended); before shrinking, the image
is smoothed with a Gaussian of ``(1 / zoom - 1) / 2`` pixels (as ``skimage.transform.rescale``
does with ``anti_aliasing=True``) so that fine texture does not alias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Smallest and largest zoom per axis the engine accepts.
SCALE_LIMITS = (1 / 64, 64.0)
#: Gaussian kernel radius in standard deviations (scipy's default ``truncate``).
TRUNCATE = 4.0


def parse_scale(scale, ndim: int) -> tuple[float, ...]:
    """``scale`` as ``ndim`` floats: a number, or a sequence of 1 or ``ndim`` numbers.

    Raises
    ------
    ValueError
        One line naming the problem: not numbers, the wrong count, not finite, or outside
        :data:`SCALE_LIMITS`.
    """
    from .scale import per_axis

    values = per_axis(float(scale) if isinstance(scale, np.number) else scale, ndim, "scale")
    lo, hi = SCALE_LIMITS
    for v in values:
        if not math.isfinite(v) or not lo <= v <= hi:
            raise ValueError(f"scale must be between 1/{1 / lo:.0f} and {hi:.0f} per axis, got {v:g}")
    return tuple(values)


class Resampling:
    """The mapping between an input grid of ``shape`` and the working grid of ``shape x scale``.

    Parameters
    ----------
    shape : tuple of int
        Spatial shape of the input.
    scale : tuple of float
        Zoom per spatial axis. The working shape is ``round(shape * scale)`` (at least 1),
        and the zoom actually applied along each axis is ``working / shape`` (:attr:`zoom`),
        so that both grids cover the same extent.
    """

    def __init__(self, shape: Sequence[int], scale: Sequence[float]) -> None:
        self.shape = tuple(int(n) for n in shape)
        self.scale = tuple(float(s) for s in scale)
        self.working = tuple(max(1, int(round(n * s))) for n, s in zip(self.shape, self.scale, strict=True))
        self.zoom = tuple(w / n for w, n in zip(self.working, self.shape, strict=True))
        self.sigma = tuple((1 / z - 1) / 2 if z < 1 else 0.0 for z in self.zoom)
        self.halo = tuple(int(TRUNCATE * s + 0.5) for s in self.sigma)  # scipy's kernel radius

    @property
    def identity(self) -> bool:
        """True when the working grid is the input grid (nothing to resample)."""
        return self.working == self.shape

    def area_factor(self) -> float:
        """Input pixels per working pixel: multiply an area (voxel count) measured on the
        working grid by this to get it on the input grid."""
        return float(np.prod([1 / z for z in self.zoom]))

    # -- which pixels a piece needs ----------------------------------------------------------

    def working_block(self, block: Sequence[slice]) -> tuple[slice, ...]:
        """The working pixels needed to interpolate probabilities at every input pixel of
        ``block`` (input slices), with one pixel to spare on each side, clipped to the grid."""
        if self.identity:
            return tuple(block)
        out = []
        for b, w, z in zip(block, self.working, self.zoom, strict=True):
            lo = math.floor((b.start + 0.5) * z - 0.5) - 1
            hi = math.ceil((b.stop - 0.5) * z - 0.5) + 2
            out.append(slice(max(lo, 0), min(hi, w)))
        return tuple(out)

    def input_region(self, region: Sequence[slice]) -> tuple[slice, ...]:
        """The input pixels needed to resample the working pixels of ``region``: those the
        interpolation touches, the smoothing kernel's radius and one pixel to spare on each
        side, clipped to the grid."""
        if self.identity:
            return tuple(region)
        out = []
        for r, n, z, g in zip(region, self.shape, self.zoom, self.halo, strict=True):
            lo = math.floor((r.start + 0.5) / z - 0.5) - g - 1
            hi = math.ceil((r.stop - 0.5) / z - 0.5) + g + 2
            out.append(slice(max(lo, 0), min(hi, n)))
        return tuple(out)

    # -- resampling ----------------------------------------------------------------------------

    def to_working(self, data: np.ndarray, read: Sequence[slice], region: Sequence[slice]) -> np.ndarray:
        """Resample ``data`` ``(C, *spatial)``, the input pixels ``read`` (from
        :meth:`input_region`), onto the working pixels ``region``: ``(C, *region shape)``
        float32, smoothed first along the axes that shrink."""
        if self.identity:
            return data
        from scipy import ndimage as ndi

        data = np.asarray(data, dtype=np.float32)
        if any(self.sigma):
            data = ndi.gaussian_filter(data, (0, *self.sigma), mode="nearest", truncate=TRUNCATE)
        matrix = [1 / z for z in self.zoom]
        offset = [(r.start + 0.5) / z - 0.5 - q.start for r, q, z in zip(region, read, self.zoom, strict=True)]
        return _affine(data, matrix, offset, tuple(r.stop - r.start for r in region))

    def to_input(self, probs: np.ndarray, region: Sequence[slice], block: Sequence[slice]) -> np.ndarray:
        """Interpolate ``probs`` ``(C, *spatial)``, given on the working pixels ``region``
        (from :meth:`working_block`), at the input pixels of ``block``: ``(C, *block shape)``
        float32. Linear weights sum to one, so probabilities still sum to one."""
        if self.identity:
            return probs
        offset = [(b.start + 0.5) * z - 0.5 - r.start for b, r, z in zip(block, region, self.zoom, strict=True)]
        return _affine(probs, list(self.zoom), offset, tuple(b.stop - b.start for b in block))


def _affine(data: np.ndarray, matrix: list[float], offset: list[float], shape: tuple[int, ...]) -> np.ndarray:
    """Linear resampling of each channel of ``data``: ``out[o] = data[matrix * o + offset]``."""
    from scipy import ndimage as ndi

    out = np.empty((data.shape[0], *shape), np.float32)
    for c in range(data.shape[0]):
        ndi.affine_transform(data[c], matrix, offset, output_shape=shape, output=out[c], order=1,
                             mode="nearest", prefilter=False)
    return out
