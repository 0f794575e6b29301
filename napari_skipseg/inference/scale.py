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

import numpy as np


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


def per_axis(value, ndim: int, what: str, error: type[Exception] = ValueError,
             kind: str = "a number") -> list[float]:
    """``value`` (a number, or a sequence of 1 or ``ndim`` numbers) as ``ndim`` floats;
    ``error`` naming ``what`` when it is not (not numbers, the wrong count)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = [value]
    try:
        values = [float(v) for v in value]
    except (TypeError, ValueError):
        raise error(f"{what} must be {kind} or one per spatial axis, got {value!r}") from None
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim:
        raise error(f"{what} takes 1 or {ndim} values (one per spatial axis), got {len(values)}")
    return values


def default_diameter(config) -> str | None:
    """The diameter of a run when the user gives none: ``"auto"`` (estimated from the image,
    as Cellpose does) for an instance model that records the object size it was trained at,
    else None (the image is resampled only by pixel size, where both are known). The CLI and
    the Segment widget both use this."""
    trained = (getattr(config, "training_scale", None) or {}).get("object_diameter")
    return "auto" if config.output == "instances" and trained else None


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
    values = per_axis(value, ndim, "diameter", ScaleError, "'auto' or a number of pixels")
    for v in values:
        if not math.isfinite(v) or v <= 0:
            raise ScaleError(f"diameter must be a positive number of pixels, got {v:g}")
    if spatial_shape is not None:
        for v, s in zip(values, spatial_shape, strict=True):
            if v > s:
                raise ScaleError(f"diameter {v:g} px is larger than the image ({tuple(spatial_shape)})")
    return tuple(values)


#: Zooms beyond these are clamped (a sign of a wrong diameter, spacing or estimate).
SCALE_RANGE = (1 / 8, 8.0)

#: Length units understood in ``spacing``/``pixel_size``, in metres.
UNITS = {"m": 1.0, "meter": 1.0, "metre": 1.0, "cm": 1e-2, "mm": 1e-3, "millimeter": 1e-3, "millimetre": 1e-3,
         "um": 1e-6, "µm": 1e-6, "μm": 1e-6, "micron": 1e-6, "microns": 1e-6, "micrometer": 1e-6,
         "micrometre": 1e-6, "micrometers": 1e-6, "micrometres": 1e-6, "nm": 1e-9, "nanometer": 1e-9, "nanometre": 1e-9, "angstrom": 1e-10, "å": 1e-10}


def unit_factor(unit: str | None) -> float | None:
    """Metres per ``unit`` (``"um"``, ``"µm"``, ``"mm"``, ``"nm"``...), or None when it is not
    a length (``"pixel"``, empty, unknown)."""
    if not isinstance(unit, str):
        return None
    return UNITS.get(unit.strip().lower())


def parse_spacing(spacing, ndim: int) -> tuple[float, ...] | None:
    """``None`` or ``ndim`` positive finite pixel sizes; :class:`ScaleError` otherwise."""
    if spacing is None:
        return None
    try:
        values = [float(v) for v in spacing]
    except (TypeError, ValueError):
        raise ScaleError(f"spacing must list {ndim} pixel sizes, got {spacing!r}") from None
    if len(values) != ndim:
        raise ScaleError(f"spacing must list {ndim} pixel sizes (one per spatial axis), got {len(values)}")
    for v in values:
        if not math.isfinite(v) or v <= 0:
            raise ScaleError(f"spacing must be positive pixel sizes, got {v:g}")
    return tuple(values)


def spacing_ratio(config, spacing, unit: str | None) -> tuple[float, ...] | None:
    """Image pixel size over the model's training pixel size per axis (nnU-Net's zoom to
    its target spacing), or None when either is unknown or not a length."""
    ts = config.training_scale or {}
    if spacing is None or "pixel_size" not in ts:
        return None
    f_img, f_model = unit_factor(unit), unit_factor(ts.get("unit"))
    if f_img is None or f_model is None:
        return None
    return tuple(float(s) * f_img / (float(p) * f_model) for s, p in zip(spacing, ts["pixel_size"], strict=True))


def _single(value) -> bool:
    """Whether a diameter was given as one number (not one per axis)."""
    if isinstance(value, str):
        return len([p for p in value.replace("x", ",").split(",") if p.strip()]) == 1
    if isinstance(value, int | float):
        return True
    try:
        return len(value) == 1
    except TypeError:
        return True


def _fmt(values) -> str:
    values = [float(v) for v in values]
    if max(values) - min(values) < 0.5:
        return f"{np.mean(values):.0f}"
    return " x ".join(f"{v:.0f}" for v in values)


def resolve_scale(config, spatial_shape: Sequence[int], *, diameter=None, spacing=None,
                  unit: str | None = None,
                  estimate: Callable[[], Sequence[float] | None] | None = None) -> ScaleChoice:
    """The resampling for a model of ``config`` on an image of ``spatial_shape``.

    The rules, first match wins (``trained``: the model's ``training_scale``):

    1. **A diameter given** (pixels): ``scale = trained diameter / diameter`` per axis. One
       number stands for the last (X) axis; the other axes follow the image's anisotropy
       relative to the model's when both pixel sizes are known, else keep the training
       anisotropy (the same zoom on every axis).
    2. **``"auto"``**: ``estimate()`` gives the diameter per axis, and sets the zoom of every
       axis (to the training median, or only into the training range when the model records
       one: :func:`_auto_scale`). When both pixel sizes are known, the metadata is checked
       against the image: if the estimated zoom is within :data:`AGREE` of the pixel sizes'
       ratio (geometric mean over the axes), the objects are the model's kind at the
       recorded pixel size and the ratio sets the zoom (rule 3: exact, where the estimate is
       noisy); otherwise the estimate does (objects of another size, or wrong metadata).
       Taking only the overall size from the estimate and the ratio between the axes from
       the voxel sizes was measured and scored lower (nuclei3d's validation embryos with Z resampled to 1.0 /
       2.5 um: F1@0.5 0.759 / 0.770 instead of 0.764 / 0.784): the estimate's Z follows a
       Z resampling closely (within 0.91-1.14 of the expected diameter) while its Y and X,
       which such a resampling leaves alone, moved by 0.72-1.31, so tying Z to them adds
       noise. No estimate (no objects, or a model that does not record its training size):
       the pixel-size rule, else not resampled.
    3. **Nothing given, both pixel sizes known** (same kind of unit; um, mm, nm... are
       converted): ``scale = image pixel size / training pixel size`` (nnU-Net's target
       spacing).
    4. Otherwise: not resampled.

    Zooms outside :data:`SCALE_RANGE` (1/8 to 8) are clamped, and the message says so.

    Parameters
    ----------
    config : ModelConfig
        Its ``training_scale`` says at which object diameter / pixel size it was trained.
    spatial_shape : sequence of int
        The image's spatial shape (a given diameter must fit in it).
    diameter : None, "auto", number, sequence or str
        Object diameter in the image, in pixels (per spatial axis allowed). ``"auto"``:
        call ``estimate`` for it.
    spacing : sequence of float, optional
        The image's pixel/voxel size per spatial axis, in ``unit``.
    unit : str, optional
        Unit of ``spacing`` (``"um"``, ``"mm"``...; ``"pixel"`` or None: unknown, spacing
        then only matters when the model has no pixel size either).
    estimate : callable, optional
        Returns the estimated object diameter per spatial axis (pixels), or None when it
        cannot tell; used for ``diameter="auto"``.

    Returns
    -------
    ScaleChoice
        With a one-line ``message`` for the user (empty when nothing was asked or known).

    Raises
    ------
    ScaleError
        A diameter or spacing that cannot be used (not a number, <= 0, NaN, larger than
        the image, wrong count), or a diameter for a model that does not record its size.
    """
    ndim = len(spatial_shape)
    single = diameter is not None and not (isinstance(diameter, str) and diameter.strip().lower() == "auto") \
        and _single(diameter)
    # one number must fit along the largest axis (a thin Z stack may hold objects larger than its depth)
    d = parse_diameter(diameter, ndim, [max(spatial_shape)] * ndim if single else spatial_shape)
    sp = parse_spacing(spacing, ndim)
    ts = config.training_scale or {}
    trained = tuple(float(v) for v in ts["object_diameter"]) if ts.get("object_diameter") else None
    ratio = spacing_ratio(config, sp, unit)

    if d == "auto":
        found = estimate() if (estimate is not None and trained is not None) else None
        if found is not None:
            found = parse_diameter(list(found), ndim)
            scale = _auto_scale(trained, found, _diameter_range(ts, ndim))
            if ratio is not None:
                # the pixel sizes, checked against the image: where the objects measure what
                # they imply, the pixel sizes set the zoom (no estimation noise); where not (other
                # objects, or metadata that is wrong), the objects' measured size does
                implied = tuple(t / r for t, r in zip(trained, ratio, strict=True))
                off = math.prod(e / r for e, r in zip(scale, ratio, strict=True)) ** (1 / ndim)
                if 1 / AGREE <= off <= AGREE:
                    return _choice(ratio, found, "pixel size",
                                   f"diameter ~{_fmt(found)} px (estimated) matches pixel size {_fmt_spacing(sp, unit)} "
                                   f"(model: {_fmt_spacing(ts['pixel_size'], ts.get('unit'))}), which sets the zoom")
                return _choice(scale, found, "estimated",
                               f"diameter ~{_fmt(found)} px (estimated; pixel size {_fmt_spacing(sp, unit)} implies "
                               f"~{_fmt(implied)} px: sized by the estimate)")
            return _choice(scale, found, "estimated", f"diameter ~{_fmt(found)} px (estimated)")
        why = ("no objects found to estimate their size" if trained is not None and estimate is not None
               else f"model {config.name!r} cannot estimate object size (no training size recorded)"
               if trained is None else "no size estimate available")
        if ratio is not None:
            return _choice(ratio, None, "pixel size", f"{why}; pixel size {_fmt_spacing(sp, unit)} vs the "
                           f"model's {_fmt_spacing(ts['pixel_size'], ts.get('unit'))}")
        return ScaleChoice((1.0,) * ndim, None, "none", f"{why}; not resampled")

    if d is not None:
        if trained is None:
            raise ScaleError(f"model {config.name!r} does not record the object size it was trained at; "
                             "it cannot be given a diameter")
        if single and ndim > 1:
            magnitude = trained[-1] / d[-1]
            if ratio is not None:
                scale = tuple(magnitude * r / ratio[-1] for r in ratio)
            else:
                scale = (magnitude,) * ndim
            d = tuple(t / s for t, s in zip(trained, scale, strict=True))
        else:
            scale = tuple(t / v for t, v in zip(trained, d, strict=True))
        return _choice(scale, d, "given", f"diameter {_fmt(d)} px (given)")

    if ratio is not None:
        return _choice(ratio, None, "pixel size", f"pixel size {_fmt_spacing(sp, unit)} vs the model's "
                       f"{_fmt_spacing(ts['pixel_size'], ts.get('unit'))}")
    return ScaleChoice((1.0,) * ndim, None, "none", "")


def _diameter_range(ts: dict, ndim: int) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    r = ts.get("diameter_range")
    if not r or len(r) != 2 or len(r[0]) != ndim or len(r[1]) != ndim:
        return None
    return tuple(float(v) for v in r[0]), tuple(float(v) for v in r[1])


#: ``diameter="auto"`` with both pixel sizes known: the pixel sizes set the zoom when the
#: estimated zoom is within this factor of theirs (geometric mean over the axes; the size
#: estimator's own tolerance, :data:`napari_skipseg.inference.size.CONVERGED`).
AGREE = 1.25


def _auto_scale(trained: tuple[float, ...], found: tuple[float, ...],
                size_range: tuple[tuple[float, ...], tuple[float, ...]] | None) -> tuple[float, ...]:
    """The zoom for an estimated diameter ``found``: to the training median ``trained``, or,
    when the model records the range of sizes it was trained on (``diameter_range``), only
    as far as that range: objects already within it are not resampled, others are brought
    to its nearer end. A model trained on images of many object sizes segments each of them
    as it is, and resampling costs detail (downsampling) or sharpness (upsampling): on
    nuclei2d's validation images, resampled by 0.5-2, F1@0.5 rose by 0.003-0.016 over
    resampling to the median (``benchmarks/bench_scale.py``). Y and X (the last two axes)
    share one zoom, from their geometric mean; Z (3D) has its own."""
    if size_range is None:
        return tuple(t / v for t, v in zip(trained, found, strict=True))
    lo, hi = size_range

    def zoom(v: float, a: float, b: float) -> float:
        return min(max(v, a), b) / v

    nd = len(found)
    yx = math.sqrt(found[-2] * found[-1])
    z_yx = zoom(yx, math.sqrt(lo[-2] * lo[-1]), math.sqrt(hi[-2] * hi[-1]))
    out = [z_yx] * nd
    if nd == 3:
        out[0] = zoom(found[0], lo[0], hi[0])
    return tuple(out)


_SHORT = {1.0: "m", 1e-2: "cm", 1e-3: "mm", 1e-6: "um", 1e-9: "nm", 1e-10: "Å"}


def _fmt_spacing(values, unit) -> str:
    """``1.75 x 0.8 x 0.8 um``: a long unit name (``micrometer``) by its short one."""
    short = unit
    if isinstance(unit, str) and len(unit.strip()) > 2 and unit_factor(unit) is not None:
        short = _SHORT.get(unit_factor(unit), unit)
    return " x ".join(f"{round(float(v), 4):g}" for v in values) + f" {short}"


def _choice(scale, diameter, source: str, what: str) -> ScaleChoice:
    """A :class:`ScaleChoice` with zooms clamped to :data:`SCALE_RANGE` and one line saying so."""
    lo, hi = SCALE_RANGE
    clamped = tuple(min(max(float(s), lo), hi) for s in scale)
    text = "image resampled x" + _fmt_scale(clamped)
    if any(abs(c - s) > 1e-9 for c, s in zip(clamped, scale, strict=True)):
        text = (f"image resampled x{_fmt_scale(clamped)} (x{_fmt_scale(scale)} clamped to "
                f"1/{1 / lo:g}..{hi:g}: check the diameter or pixel size)")
    elif all(abs(c - 1.0) < 0.005 for c in clamped):
        text = "not resampled"
    return ScaleChoice(clamped, diameter, source, f"{what}; {text}")


def _fmt_scale(scale) -> str:
    scale = [float(s) for s in scale]
    if max(scale) - min(scale) < 0.005:
        return f"{scale[0]:.2f}"
    return " x ".join(f"{s:.2f}" for s in scale)
