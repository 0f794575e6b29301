"""Skip-connection explorer, headless: feature capture, skip ablation and gradient flow.

Each job is a generator that yields :class:`~napari_skipseg.inference.engine.Progress`
and returns its result (drive it with :func:`napari_skipseg.inference.engine.run`). Inputs
are normalised exactly as the inference engine does (the model's ``normalization``, with
percentiles taken over the whole image), so the maps show what segmentation sees.

The network always runs on one piece of the image: a 2D slice (for a 2D model; leading
axes such as Z or T are fixed by ``index``) or a 3D block (for a 3D model) around
``center``. :class:`PreparedInput` remembers where that piece lies (``index``, ``origin``),
so results can be placed back over the image (:mod:`.placement`).
"""

from __future__ import annotations

import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..inference.engine import Progress, _channels_last
from ..inference.preprocess import normalize, percentile_range
from .placement import block_around, feature_placement

KINDS = ("encoder", "decoder", "fused")
MAX_SLICE = 2048  # a 2D slice larger than this (per axis) is cut to a block around ``center``


class FeatureError(ValueError):
    """The image, the model and the options do not fit together; the message says how."""


@dataclass
class PreparedInput:
    """The normalised piece of an image the network runs on.

    ``data`` is ``(channels, *spatial)`` float32; ``index`` the position along the image's
    leading axes (empty for none); ``origin`` the first pixel of the piece along the
    spatial axes; ``image_shape`` the image's full spatial shape; ``lo``/``hi`` the
    intensities mapped to 0 and 1.
    """

    data: np.ndarray
    index: tuple[int, ...]
    origin: tuple[int, ...]
    image_shape: tuple[int, ...]
    lo: float = 0.0
    hi: float = 1.0

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[1:])


@dataclass
class SkipRecord:
    """What crosses the skip connection at one level, as numpy arrays.

    ``encoder`` (handed across the skip), ``decoder`` (the upsampled deeper map it is
    concatenated with) and ``fused`` (the decoder stage's output) are float32
    ``(channels, *spatial)``. ``scale`` is the size of one feature pixel in input pixels
    per spatial axis (``2**level`` for a UNet pooling by 2); ``origin`` the input pixel
    where the piece the network saw begins.
    """

    level: int
    scale: tuple[int, ...]
    encoder: np.ndarray
    decoder: np.ndarray
    fused: np.ndarray
    origin: tuple[int, ...] = ()

    def maps(self, kind: str) -> np.ndarray:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        return getattr(self, kind)

    def placement(self, image_scale: Sequence[float] | None = None,
                  image_translate: Sequence[float] | None = None) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Scale and translate (spatial axes) that lay these maps over the image."""
        return feature_placement(self.scale, image_scale, image_translate, self.origin or None)


@dataclass
class FeatureCapture:
    """Result of :func:`capture_features`: one :class:`SkipRecord` per level, the class
    probabilities ``(classes, *spatial)`` and argmax labels of the same pass."""

    records: list[SkipRecord]
    probabilities: np.ndarray
    labels: np.ndarray
    input: PreparedInput
    model_name: str
    device: str
    seconds: float
    class_names: list[str] = field(default_factory=list)
    ablate: dict[int, str] = field(default_factory=dict)


@dataclass
class AblationResult:
    """Output with and without some skips (see :func:`ablate_skips`).

    ``original``/``ablated`` are class labels (argmax, uint8), ``changed`` marks pixels
    whose label differs (uint8 0/1), ``difference`` is how far the class probabilities
    moved (total variation, float32 in [0, 1]) and ``changed_fraction`` the share of
    pixels whose label changed.
    """

    ablate: dict[int, str]
    original: np.ndarray
    ablated: np.ndarray
    changed: np.ndarray
    difference: np.ndarray
    changed_fraction: float
    original_probabilities: np.ndarray
    ablated_probabilities: np.ndarray
    input: PreparedInput
    model_name: str = ""
    seconds: float = 0.0


@dataclass
class GradientFlow:
    """Gradient norm reaching each encoder stage (see :func:`gradient_flow`).

    ``norms_on`` with every skip in place, ``norms_off`` with every skip zeroed; one value
    per stage in ``stages`` (shallowest first, the bottleneck last when known).
    """

    stages: list[str]
    norms_on: np.ndarray
    norms_off: np.ndarray
    class_index: int
    class_name: str
    region_pixels: int
    input: PreparedInput
    seconds: float = 0.0


# -- input ---------------------------------------------------------------------------------
def prepare_input(
    taps,
    image,
    *,
    channel_axis: int | None = None,
    index: int | Sequence[int] | None = None,
    center: Sequence[float] | None = None,
    block: int | Sequence[int] | None = None,
    normalization: dict | None = None,
) -> PreparedInput:
    """Read and normalise the piece of ``image`` the network will see.

    Parameters
    ----------
    taps : SkipUNetTaps or HookedFeatures
        From :func:`napari_skipseg.features.taps.as_taps`.
    image : array-like
        ``(..., [Z,] Y, X)`` numpy/dask/zarr, with a channel axis at ``channel_axis``.
    index : int or sequence of int, optional
        Position along the axes before the model's spatial axes (Z and/or T for a 2D
        model). Default: the middle of each.
    center : sequence of float, optional
        Centre of the block, in pixels along the spatial axes (default: the middle).
    block : int or sequence of int, optional
        Block size along the spatial axes. Default: the whole slice for 2D models (up to
        2048 pixels per axis), the model's tile for 3D models.
    normalization : dict, optional
        Override the model's normalisation (``{"kind": "percentile", "low", "high"}`` or
        ``{"kind": "none"}``).
    """
    d = taps.spatial_dims
    try:
        image, n_channels = _channels_last(image, channel_axis)
    except ValueError as err:
        raise FeatureError(str(err)) from err
    shape = tuple(int(s) for s in (image.shape[:-1] if n_channels else image.shape))
    if len(shape) < d:
        raise FeatureError(
            f"a {d}D model needs an image with at least {d} spatial axes; got shape {tuple(image.shape)}"
            + (" (with a channel axis)" if n_channels else "")
        )
    if min(shape) < 1:
        raise FeatureError(f"the image is empty (shape {tuple(image.shape)})")
    lead, spatial = shape[:-d], shape[-d:]
    if taps.in_channels > 1 and n_channels != taps.in_channels:
        raise FeatureError(f"model {taps.name!r} takes {taps.in_channels} channels; the image has {n_channels or 1}")
    if taps.in_channels == 1 and n_channels not in (0, 1, 3, 4):
        raise FeatureError(f"model {taps.name!r} takes 1 channel; the image has {n_channels}")
    grey = taps.in_channels == 1 and n_channels > 1
    n_read = 3 if grey and n_channels == 4 else n_channels

    if index is None:
        index = tuple(s // 2 for s in lead)
    elif isinstance(index, (int, np.integer)):
        index = (int(index),)
    index = tuple(int(i) for i in index)
    if len(index) != len(lead):
        raise FeatureError(
            f"index {index} must give a position on each of the {len(lead)} axes before the "
            f"{d} spatial axes (image shape {shape})"
        )
    for i, s in zip(index, lead, strict=True):
        if not 0 <= i < s:
            raise FeatureError(f"index {index} is outside the image (leading axes {lead})")

    if block is None:
        block = spatial if d == 2 else taps.default_block
        block = tuple(min(b, MAX_SLICE) for b in block) if d == 2 else tuple(block)
    elif isinstance(block, (int, np.integer)):
        block = (int(block),) * d
    if len(block) != d or min(int(b) for b in block) < 1:
        raise FeatureError(f"block must be {d} positive sizes, got {block!r}")
    if center is None:
        center = tuple((s - 1) / 2 for s in spatial)
    if len(center) != d:
        raise FeatureError(f"center must have {d} coordinates, got {tuple(center)}")
    origin, size = block_around(center, block, spatial)

    norm = dict(normalization if normalization is not None else taps.normalization or {})
    if norm.get("kind", "percentile") == "percentile":
        sample = image[..., :n_read] if n_channels else image
        lo, hi = percentile_range(sample, norm.get("low", 1.0), norm.get("high", 99.8))
    else:
        lo, hi = 0.0, 1.0
    region = tuple(slice(o, o + s) for o, s in zip(origin, size, strict=True))
    data = np.asarray(image[index + region])
    if n_channels:
        data = data[..., :n_read]
        data = data.mean(axis=-1, keepdims=True) if grey else data
        data = np.moveaxis(data, -1, 0)
    else:
        data = data[None]
    return PreparedInput(normalize(data, lo, hi), index, tuple(origin), tuple(spatial), lo, hi)


def _prepared(taps, image, kwargs) -> PreparedInput:
    if isinstance(image, PreparedInput):
        return image
    return prepare_input(taps, image, **kwargs)


def _tensor(taps, prepared: PreparedInput, device: str):
    import torch

    return torch.from_numpy(np.ascontiguousarray(prepared.data)[None]).to(device)


def _labels(probabilities: np.ndarray) -> np.ndarray:
    return np.argmax(probabilities, axis=0).astype(np.uint8)


def _setup(model, device: str):
    from ..inference.device import describe, select_device
    from .taps import as_taps

    try:
        dev = select_device(device)
    except ValueError as err:
        raise FeatureError(str(err)) from err
    taps = as_taps(model)
    taps.module.to(dev).eval()
    return taps, dev, describe(dev)


def _numpy(t) -> np.ndarray:
    return np.ascontiguousarray(t[0].detach().float().cpu().numpy(), dtype=np.float32)


# -- capture -------------------------------------------------------------------------------
def capture_features(
    model,
    image,
    *,
    channel_axis: int | None = None,
    index: int | Sequence[int] | None = None,
    center: Sequence[float] | None = None,
    block: int | Sequence[int] | None = None,
    ablate: dict[int, str] | None = None,
    device: str = "auto",
) -> Generator[Progress, None, FeatureCapture]:
    """Run the network once on a slice or block of ``image`` and keep every skip's maps.

    ``model`` is a SkipUNet, a :class:`~napari_skipseg.features.taps.HookedFeatures`, or a
    stored model's name or folder. ``image`` may also be a :class:`PreparedInput`. The
    other options choose the piece of the image (see :func:`prepare_input`); ``ablate``
    switches skips off (``{level: "zero" | "mean"}``). Yields progress, returns a
    :class:`FeatureCapture`.
    """
    import torch

    from ..inference.device import release

    t0 = time.perf_counter()
    taps, dev, desc = _setup(model, device)
    total = 3 + taps.depth
    yield Progress(0, total, f"{taps.name} on {desc}: reading the image", {"device": desc})
    prepared = _prepared(taps, image, dict(channel_axis=channel_axis, index=index, center=center, block=block))
    yield Progress(1, total, f"running {taps.name} on {'x'.join(map(str, prepared.shape))} pixels")
    try:
        with torch.inference_mode():
            result = taps.run(_tensor(taps, prepared, dev), capture=True, ablate=ablate)
            probs = _numpy(torch.softmax(result.logits.float(), dim=1))
        yield Progress(2, total, "collecting feature maps")
        records = []
        for i, rec in enumerate(result.records):
            records.append(SkipRecord(rec.level, tuple(rec.scale), _numpy(rec.encoder), _numpy(rec.decoder),
                                      _numpy(rec.fused), prepared.origin))
            yield Progress(3 + i, total, f"level {rec.level}")
        del result
    finally:
        release(dev)
    yield Progress(total, total, "done")
    return FeatureCapture(
        records=records,
        probabilities=probs,
        labels=_labels(probs),
        input=prepared,
        model_name=taps.name,
        device=desc,
        seconds=time.perf_counter() - t0,
        class_names=list(taps.class_names),
        ablate=dict(ablate or {}),
    )


def skip_features(model, image, **kwargs) -> list[SkipRecord]:
    """One :class:`SkipRecord` per level (level 0 = full resolution) for ``image``.

    Keyword arguments are those of :func:`capture_features` (``channel_axis``, ``index``,
    ``center``, ``block``, ``ablate``, ``device``).
    """
    from ..inference.engine import run

    return run(capture_features(model, image, **kwargs)).records


# -- ablation ------------------------------------------------------------------------------
def ablate_skips(
    model,
    image,
    ablate: dict[int, str] | int,
    how: str = "zero",
    *,
    device: str = "auto",
    **kwargs,
) -> Generator[Progress, None, AblationResult]:
    """Output of the network with the skips in ``ablate`` switched off, next to the original.

    ``ablate`` is ``{level: "zero" | "mean"}``, or one level (then ``how`` says which).
    ``image`` is an array (other keyword arguments as in :func:`prepare_input`) or a
    :class:`PreparedInput`. Returns an :class:`AblationResult`.
    """
    import torch

    from ..inference.device import release

    t0 = time.perf_counter()
    if isinstance(ablate, (int, np.integer)):
        ablate = {int(ablate): how}
    ablate = {int(k): v for k, v in dict(ablate).items()}
    taps, dev, desc = _setup(model, device)
    yield Progress(0, 3, f"{taps.name} on {desc}: reading the image", {"device": desc})
    prepared = _prepared(taps, image, kwargs)
    x = _tensor(taps, prepared, dev)
    try:
        with torch.inference_mode():
            yield Progress(1, 3, "original output")
            p0 = _numpy(torch.softmax(taps.run(x, capture=False).logits.float(), dim=1))
            yield Progress(2, 3, "output with " + ", ".join(f"level {k} {v}" for k, v in sorted(ablate.items())))
            p1 = _numpy(torch.softmax(taps.run(x, capture=False, ablate=ablate).logits.float(), dim=1))
    finally:
        release(dev)
    a, b = _labels(p0), _labels(p1)
    changed = (a != b).astype(np.uint8)
    difference = (0.5 * np.abs(p0 - p1).sum(axis=0)).astype(np.float32)
    yield Progress(3, 3, "done")
    return AblationResult(
        ablate=ablate, original=a, ablated=b, changed=changed, difference=difference,
        changed_fraction=float(changed.mean()) if changed.size else 0.0,
        original_probabilities=p0, ablated_probabilities=p1, input=prepared,
        model_name=taps.name, seconds=time.perf_counter() - t0,
    )


# -- gradient flow -------------------------------------------------------------------------
def region_mask(region, prepared: PreparedInput) -> np.ndarray:
    """Boolean mask over the prepared piece for ``region``.

    ``region`` is None (everything), a tuple of slices in image pixel coordinates along
    the spatial axes, or a boolean mask shaped like the piece or like the whole image's
    spatial axes.
    """
    shape = prepared.shape
    if region is None:
        return np.ones(shape, bool)
    if isinstance(region, tuple) and all(isinstance(r, slice) for r in region):
        if len(region) != len(shape):
            raise FeatureError(f"region needs one slice per spatial axis ({len(shape)}), got {len(region)}")
        mask = np.zeros(shape, bool)
        local = []
        for sl, o, s in zip(region, prepared.origin, shape, strict=True):
            start = (sl.start if sl.start is not None else 0) - o
            stop = (sl.stop if sl.stop is not None else o + s) - o
            local.append(slice(max(start, 0), max(min(stop, s), 0)))
        mask[tuple(local)] = True
        return mask
    mask = np.asarray(region).astype(bool)
    if mask.shape == shape:
        return mask
    if mask.shape == prepared.image_shape:
        return mask[tuple(slice(o, o + s) for o, s in zip(prepared.origin, shape, strict=True))]
    raise FeatureError(f"region mask shape {mask.shape} fits neither the piece {shape} nor the image {prepared.image_shape}")


def gradient_flow(
    model,
    image,
    *,
    region=None,
    class_index: int | None = None,
    device: str = "auto",
    **kwargs,
) -> Generator[Progress, None, GradientFlow]:
    """Norm of d(sum of ``class_index`` logits over ``region``)/d(encoder stage output), per
    stage, with the skips on and with every skip zeroed.

    With the skips off, gradient reaches a shallow stage only down and up through the
    bottleneck; the gap between the two curves is what the skips carry back. ``region``
    as in :func:`region_mask`; ``class_index`` defaults to 1 (the first foreground class).
    """
    import torch

    from ..inference.device import release

    t0 = time.perf_counter()
    taps, dev, desc = _setup(model, device)
    yield Progress(0, 3, f"{taps.name} on {desc}: reading the image", {"device": desc})
    prepared = _prepared(taps, image, kwargs)
    mask_np = region_mask(region, prepared)
    if not mask_np.any():
        raise FeatureError("the chosen region covers no pixel of the piece the network sees")
    norms = {}
    try:
        for step, (key, ablate) in enumerate((("on", None), ("off", dict.fromkeys(range(taps.depth), "zero")))):
            yield Progress(1 + step, 3, f"gradients with skips {key}")
            with torch.enable_grad():
                x = _tensor(taps, prepared, dev).requires_grad_(True)
                result = taps.run(x, capture=False, ablate=ablate, stages=True)
                ncls = result.logits.shape[1]
                cls = (1 if ncls > 1 else 0) if class_index is None else int(class_index)
                if not 0 <= cls < ncls:
                    raise FeatureError(f"class_index {cls} out of range: the model has {ncls} classes")
                mask = torch.from_numpy(mask_np).to(dev)
                target = result.logits[0, cls][mask].sum()
                grads = torch.autograd.grad(target, result.stages, allow_unused=True)
            norms[key] = np.array(
                [0.0 if g is None else float(g.detach().float().norm().cpu()) for g in grads], dtype=np.float64
            )
            del result, grads, x
    finally:
        release(dev)
    yield Progress(3, 3, "done")
    names = taps.class_names
    return GradientFlow(
        stages=taps.stage_names()[: len(norms["on"])],
        norms_on=norms["on"], norms_off=norms["off"],
        class_index=cls, class_name=names[cls] if cls < len(names) else f"class {cls}",
        region_pixels=int(mask_np.sum()), input=prepared, seconds=time.perf_counter() - t0,
    )
