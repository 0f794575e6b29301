"""Object size and pixel size: how much to resample an image so that the network sees its
objects at the size it was trained at (Cellpose's diameter, StarDist's scale, nnU-Net's
target spacing).

:func:`resolve_scale` turns what the user said (``diameter``: a number, one per spatial axis,
``"auto"`` or None) and what the image and the model's card know (pixel sizes) into a
:class:`ScaleChoice`: the zoom per spatial axis that the engine applies before the network
(``working grid = input grid x scale``) and undoes afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


class ScaleError(ValueError):
    """A diameter or pixel size that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ScaleChoice:
    """How an image is resampled for a model.

    ``scale``: zoom per spatial axis (1.0: not resampled; 2.0: the network sees the image
    twice as large). ``diameter``: object diameter in input pixels per axis, as given or
    estimated (None when neither). ``source``: ``"none"``, ``"given"``, ``"estimated"`` or
    ``"pixel size"``. ``message``: one line for the user.
    """

    scale: tuple[float, ...]
    diameter: tuple[float, ...] | None = None
    source: str = "none"
    message: str = ""

    @property
    def identity(self) -> bool:
        return all(abs(s - 1.0) < 1e-6 for s in self.scale)


def parse_diameter(value, ndim: int, spatial_shape: Sequence[int] | None = None):
    """``None``, ``"auto"`` or a tuple of ``ndim`` positive finite diameters (pixels).

    Accepts a number, a sequence of 1 or ``ndim`` numbers, or a string (``"23"``, ``"4,23,23"``,
    ``"auto"``). Raises :class:`ScaleError` naming the problem: not a number, <= 0, NaN/inf,
    or larger than the image.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text == "auto":
            return "auto"
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        try:
            value = [float(p) for p in parts]
        except ValueError:
            raise ScaleError(f"diameter must be 'auto' or a number of pixels (or one per axis), "
                             f"got {value!r}") from None
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value]
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ScaleError(f"diameter must be 'auto' or a number of pixels, got {value!r}") from None
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim:
        raise ScaleError(f"diameter takes 1 or {ndim} values (one per spatial axis), got {len(values)}")
    for v in values:
        if not math.isfinite(v) or v <= 0:
            raise ScaleError(f"diameter must be a positive number of pixels, got {v:g}")
    if spatial_shape is not None:
        for v, s in zip(values, spatial_shape, strict=True):
            if v > s:
                raise ScaleError(f"diameter {v:g} px is larger than the image ({tuple(spatial_shape)})")
    return tuple(values)


def resolve_scale(config, spatial_shape: Sequence[int], *, diameter=None, spacing=None,
                  unit: str | None = None,
                  estimate: Callable[[], Sequence[float] | None] | None = None) -> ScaleChoice:
    """The resampling for a model of ``config`` on an image of ``spatial_shape``.

    Parameters
    ----------
    config : ModelConfig
        Its ``training_scale`` says at which object diameter / pixel size it was trained.
    diameter : None, "auto", number or sequence
        Object diameter in the image, in pixels (per spatial axis allowed). ``"auto"``:
        call ``estimate`` for it.
    spacing : sequence of float, optional
        The image's pixel/voxel size per spatial axis, in ``unit``.
    estimate : callable, optional
        Returns the estimated object diameter per spatial axis (pixels), or None when it
        cannot tell; used for ``diameter="auto"``.
    """
    ndim = len(spatial_shape)
    d = parse_diameter(diameter, ndim, spatial_shape)
    trained = (config.training_scale or {}).get("object_diameter")
    source = "given"
    if d == "auto":
        if estimate is None or trained is None:
            return ScaleChoice((1.0,) * ndim, None, "none", "no diameter estimate for this model")
        d = estimate()
        source = "estimated"
        if d is None:
            return ScaleChoice((1.0,) * ndim, None, "none", "no objects found to estimate their size; not resampled")
        d = parse_diameter(list(d), ndim)
    if d is not None:
        if trained is None:
            raise ScaleError(f"model {config.name!r} does not record the object size it was trained at; "
                             "it cannot be given a diameter")
        scale = tuple(float(t) / float(v) for t, v in zip(trained, d, strict=True))
        size = " x ".join(f"{v:.0f}" for v in d) if len(set(d)) > 1 else f"{d[0]:.0f}"
        word = "estimated" if source == "estimated" else "given"
        return ScaleChoice(scale, d, source, f"diameter ~{size} px ({word}); image resampled "
                           + " x ".join(f"{s:.2f}" for s in scale))
    return ScaleChoice((1.0,) * ndim, None, "none", "")
