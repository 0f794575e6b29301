"""Where a feature map sits over the image it was computed from.

Feature pixel ``i`` at a level whose pixels are ``s`` input pixels wide summarises input
pixels ``i*s .. (i+1)*s - 1``; its centre is input coordinate ``i*s + (s - 1)/2``. In the
world coordinates of an image with scale ``a`` and translate ``t`` (napari places data
pixel ``j``'s centre at ``t + j*a``) that is ``t + (s - 1)/2 * a + i * (s*a)``: a layer with
scale ``s*a`` and translate ``t + (s - 1)/2 * a`` lies exactly over the image.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def feature_placement(
    level_scale: Sequence[int],
    image_scale: Sequence[float] | None = None,
    image_translate: Sequence[float] | None = None,
    origin: Sequence[int] | None = None,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Scale and translate (per spatial axis) that put a feature map over its image.

    Parameters
    ----------
    level_scale : sequence of int
        Input pixels per feature pixel along each spatial axis (``2**k`` at level ``k``
        of a UNet pooling by 2).
    image_scale, image_translate : sequence of float, optional
        The image's scale and translate along the same axes (default 1 and 0).
    origin : sequence of int, optional
        Index, in image pixels, of the first input pixel the network saw (when features
        were computed for a crop of the image; default 0).

    Returns
    -------
    scale, translate : tuple of float
        ``scale = image_scale * level_scale`` and
        ``translate = image_translate + origin * image_scale + (level_scale - 1) / 2 * image_scale``.
    """
    s = np.asarray(level_scale, dtype=float)
    n = s.size
    a = np.ones(n) if image_scale is None else np.asarray(image_scale, dtype=float)
    t = np.zeros(n) if image_translate is None else np.asarray(image_translate, dtype=float)
    o = np.zeros(n) if origin is None else np.asarray(origin, dtype=float)
    if not (a.size == t.size == o.size == n):
        raise ValueError(
            f"level_scale {tuple(level_scale)}, image scale {tuple(a)}, translate {tuple(t)} "
            f"and origin {tuple(o)} must have one value per spatial axis"
        )
    scale = a * s
    translate = t + o * a + (s - 1.0) / 2.0 * a
    return tuple(float(v) for v in scale), tuple(float(v) for v in translate)


def layer_placement(
    level_scale: Sequence[int],
    image_scale: Sequence[float],
    image_translate: Sequence[float],
    index: Sequence[int] = (),
    origin: Sequence[int] | None = None,
    leading: int = 0,
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Scale and translate for a whole layer of features over an image layer.

    The image layer has ``len(index)`` leading axes (e.g. Z for a 2D model applied to a
    stack, or time) followed by the spatial axes the network ran over. The feature layer
    has ``leading`` extra axes first (e.g. 1 for channels as a slider axis, scale 1 and
    translate 0), then one axis of length 1 per leading image axis, placed at ``index``,
    then the spatial axes, placed by :func:`feature_placement`.
    """
    n_lead = len(index)
    image_scale = tuple(float(v) for v in image_scale)
    image_translate = tuple(float(v) for v in image_translate)
    if len(image_scale) != n_lead + len(level_scale) or len(image_translate) != len(image_scale):
        raise ValueError(
            f"image scale {image_scale} / translate {image_translate} do not match "
            f"{n_lead} leading and {len(level_scale)} spatial axes"
        )
    lead_scale = image_scale[:n_lead]
    lead_translate = tuple(t + i * a for t, i, a in zip(image_translate[:n_lead], index, lead_scale, strict=True))
    scale, translate = feature_placement(level_scale, image_scale[n_lead:], image_translate[n_lead:], origin)
    return (1.0,) * leading + lead_scale + scale, (0.0,) * leading + lead_translate + translate


def block_around(
    center: Sequence[float], block: Sequence[int], shape: Sequence[int]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Origin and size of a block of (at most) ``block`` pixels centred on ``center``,
    shifted to lie inside an image of spatial ``shape``."""
    if not len(center) == len(block) == len(shape):
        raise ValueError(f"center {tuple(center)}, block {tuple(block)} and shape {tuple(shape)} differ in length")
    size = tuple(max(1, min(int(b), int(s))) for b, s in zip(block, shape, strict=True))
    origin = tuple(
        int(min(max(int(round(float(c))) - b // 2, 0), s - b))
        for c, b, s in zip(center, size, shape, strict=True)
    )
    return origin, size
