"""How large the objects of a label image are, per spatial axis.

The size of an object along each axis is its *equivalent-ellipsoid diameter*: the
axis-aligned second moments of its pixels give each axis' share (a solid ellipsoid of
semi-axis ``a`` along an axis has variance ``a**2 / (n + 2)`` there, ``n`` the number of
spatial axes), scaled so that their geometric mean is the object's equivalent diameter (the
diameter of the disc/ball of the same area/volume). A disc or ball of diameter ``D`` measures
``D`` on every axis; a ball squashed to half its height along Z measures ``D/2`` along Z;
objects of random orientation measure about their equivalent diameter on every axis.

:func:`object_diameters` measures each object of one label image, :func:`median_diameter`
the median over many images (what a model's ``training_scale.object_diameter`` records, see
``benchmarks/measure_training_scale.py``), and
:mod:`napari_skipseg.inference.size` estimates the same quantity in a new image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def object_diameters(labels: np.ndarray, min_size: int = 1, exclude_border: bool = False) -> np.ndarray:
    """Per-axis equivalent-ellipsoid diameters (pixels) of every object in ``labels``.

    Parameters
    ----------
    labels : ndarray of int
        Instance labels (0 = background) with 1 or more spatial axes.
    min_size : int
        Objects with fewer pixels are left out (specks).
    exclude_border : bool
        Leave out objects that touch the array's border (cut by it, so smaller than they are).

    Returns
    -------
    ndarray, shape (objects, labels.ndim)
        One row per object, in label order; empty when there is no object.
    """
    labels = np.asarray(labels)
    nd = labels.ndim
    if labels.size == 0 or not labels.any():
        return np.zeros((0, nd))
    if labels.min() < 0:
        raise ValueError("labels must be non-negative")
    flat = labels.ravel().astype(np.int64)
    counts = np.bincount(flat)
    ids = np.flatnonzero(counts)
    ids = ids[(ids > 0) & (counts[ids] >= max(1, min_size))]
    if exclude_border and ids.size:
        edge = np.unique(np.concatenate([np.take(labels, [0, -1], axis=a).ravel() for a in range(nd)]))
        ids = ids[~np.isin(ids, edge)]
    if ids.size == 0:
        return np.zeros((0, nd))
    n = counts[ids].astype(np.float64)
    var = np.empty((ids.size, nd))
    for axis in range(nd):
        shape = [1] * nd
        shape[axis] = labels.shape[axis]
        coord = np.broadcast_to(np.arange(labels.shape[axis], dtype=np.float64).reshape(shape), labels.shape).ravel()
        s1 = np.bincount(flat, weights=coord)[ids]
        s2 = np.bincount(flat, weights=coord * coord)[ids]
        mean = s1 / n
        # + 1/12: a pixel is a unit interval, not a point (a 1-pixel-thick object is 1 px thick)
        var[:, axis] = np.maximum(s2 / n - mean * mean, 0.0) + 1.0 / 12.0
    widths = 2.0 * np.sqrt((nd + 2) * var)
    unit_ball = math.pi ** (nd / 2) / math.gamma(nd / 2 + 1)
    equivalent = 2.0 * (n / unit_ball) ** (1.0 / nd)
    geo = np.exp(np.mean(np.log(widths), axis=1))
    return widths * (equivalent / geo)[:, None]


def median_diameter(masks: Iterable[np.ndarray], *, min_size: int = 1, connected: bool = False,
                    exclude_border: bool = False) -> tuple[float, ...] | None:
    """The median per-axis object diameter (pixels) over all objects of ``masks``.

    Parameters
    ----------
    masks : iterable of ndarray
        Label images (all with the same number of axes).
    min_size : int
        Objects with fewer pixels are left out.
    connected : bool
        Treat each mask as binary/semantic: its objects are the connected components of
        ``mask > 0`` (e.g. cell interiors separated by membranes) rather than its label ids.
    exclude_border : bool
        Leave out objects cut by the border of their mask.

    Returns
    -------
    tuple of float or None
        One diameter per axis, or None when no object was found.
    """
    rows = []
    for mask in masks:
        mask = np.asarray(mask)
        if connected:
            from scipy import ndimage

            mask = ndimage.label(mask > 0)[0]
        rows.append(object_diameters(mask, min_size=min_size, exclude_border=exclude_border))
    if not rows:
        return None
    allrows = np.concatenate(rows)
    if allrows.shape[0] == 0:
        return None
    return tuple(float(v) for v in np.median(allrows, axis=0))
