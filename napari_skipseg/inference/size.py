"""Estimate how large the objects of an image are, for ``diameter="auto"``.

The estimate is of the same quantity a model's ``training_scale.object_diameter`` records:
the median per-axis equivalent-ellipsoid diameter of the objects
(:func:`napari_skipseg.training.object_size.object_diameters`), in the image's own pixels.

How (Cellpose 1's two passes, with a model-free first guess):

1. **Sample.** A crop (where a strided preview varies most) of one slice/volume (the middle one of any leading axes, then
   the quarter points if the middle holds too few objects), at most :data:`SAMPLE` pixels a
   side, read alone (never the whole stack). Its intensities are normalised with the whole
   image's range, as :func:`~napari_skipseg.inference.engine.predict` would.
2. **First pass, at scale 1.** The network's foreground (1 - background probability > 0.5).
   Its distance transform peaks at the objects' centres at about their radius, also where
   objects touch and the network merges them, and also where it over-splits large objects
   (the foreground still covers them). Twice the median peak radius, scaled by the training
   anisotropy (3D), is the first guess. (Semantic models: the median size of the
   foreground's connected components, at whichever of x1/2, x1, x2 makes them measure
   closest to the training size.)
3. **Second pass, at the guessed training scale.** The sample is resized so its objects
   should have the training size, segmented again (instance models: instances; semantic
   models: connected components of the foreground), and the objects not cut by the crop's
   border are measured; their median, mapped back to input pixels, is the estimate. At the
   training scale the network separates objects well, so this measures real objects. When
   the second pass finds nothing, the first guess is returned.
4. **Check (instance models).** Objects that measure smaller than the training size by more
   than :data:`CONVERGED` at the zoom chosen to give them that size fell apart there (the
   network read enlarged noise or texture as objects: images unlike its training data); the
   objects of the first pass, at scale 1, are measured instead (:func:`_broke_up`).

Semantic models: em2d's objects are its cells (interiors between membranes), which this
measures as for instances. hippocampus3d's is one structure per volume: the estimate is that
structure's size (the median over the foreground's connected components). For such a model
the pixel size (MRI headers know it) is the better guide; see
:func:`napari_skipseg.inference.scale.resolve_scale`.
"""

from __future__ import annotations

import math

import numpy as np

#: Largest crop side read per spatial axis for the estimate (2D, 3D), in working pixels.
SAMPLE = {2: 512, 3: 128}
#: Zoom limits (as in :mod:`napari_skipseg.inference.scale`).
ZOOM_RANGE = (1 / 8, 8.0)
#: Passes of the network per sample: at scale 1, then at the zoom its foreground suggests
#: (more passes chase the first guess's bias: it measures inner radii, which run smaller
#: than equivalent diameters for packed or elongated objects; the last pass measures objects).
MAX_PASSES = 2
#: A pass whose suggested zoom is within this factor of its own is the last.
CONVERGED = 1.25
#: Stop looking at more slices once this many objects were measured.
ENOUGH_OBJECTS = 12
#: Checks at half the estimate's zoom (objects that were pieces join up): at most this many.
ZOOM_OUTS = 3
#: Largest crop side read for such a check (2D, 3D), in input pixels.
ZOOM_OUT_READ = {2: 2048, 3: 256}
#: The check's crop holds this many estimated object diameters across.
ZOOM_OUT_OBJECTS = 8
#: Dimensionalities the check runs for. In 3D it was measured and not kept: nuclei3d's
#: validation embryos zoomed 0.75 / 1 / 1.5, auto F1@0.5 0.776 / 0.785 / 0.762 with it, 0.773 /
#: 0.795 / 0.766 without (halving a 3D volume leaves nuclei of 7-8 voxels, where the network
#: merges neighbours).
ZOOM_OUT_DIMS = (2,)


def estimate_diameter(model, image, channel_axis: int | None = None, device: str = "cpu",
                      mode: str = "auto") -> tuple[float, ...] | None:
    """The median object diameter of ``image`` in input pixels per spatial axis, or None.

    Parameters
    ----------
    model : SkipUNet
        A loaded network; its ``config.training_scale.object_diameter`` is the size it
        segments best (without it, objects are measured at scale 1 only).
    image : array-like
        What :func:`~napari_skipseg.inference.engine.predict` takes: numpy, dask or zarr,
        ``(..., [Z,] Y, X)`` with an optional channel axis.
    channel_axis : int, optional
        The image's channel axis.
    device, mode : str
        As for :func:`~napari_skipseg.inference.engine.predict`.

    Returns
    -------
    tuple of float or None
        One diameter per spatial axis (pixels of ``image``; Y and X in the training objects'
        ratio, so that they get the same zoom); None when no object is found.
    """
    from .engine import _channels_last, image_intensity_range

    cfg = model.config
    nd = cfg.spatial_dims
    trained = (cfg.training_scale or {}).get("object_diameter")
    trained = tuple(float(v) for v in trained) if trained else None
    lo_hi = image_intensity_range(cfg, image, channel_axis=channel_axis)
    img, n_channels = _channels_last(image, channel_axis)
    shape = tuple(img.shape[:-1]) if n_channels else tuple(img.shape)
    if len(shape) < nd:
        return None
    lead, spatial = shape[:-nd], shape[-nd:]
    rows: list[np.ndarray] = []
    guesses: list[tuple[float, ...]] = []
    first = None  # (slice index, sample) of the first sample with objects
    for idx in _lead_indices(lead):
        sample = _read(img, idx, spatial, SAMPLE[nd], n_channels)
        found = _estimate_sample(model, sample, n_channels, trained, lo_hi, device, mode)
        if found is None:
            continue
        first = first or (idx, sample)
        objects, guess = found
        guesses.append(guess)
        if objects is not None:
            rows.append(objects)
        if sum(len(r) for r in rows) >= ENOUGH_OBJECTS:
            break
    if rows and sum(len(r) for r in rows):
        est = _in_plane_zoom_shared(np.median(_in_plane_zoom_shared(np.concatenate(rows), trained), axis=0), trained)
    elif guesses:
        est = _in_plane_zoom_shared(np.median(np.array(guesses), axis=0), trained)
    else:
        return None
    if trained is not None and cfg.output == "instances" and nd in ZOOM_OUT_DIMS:
        est = _zoom_out_check(model, img, first, spatial, n_channels, trained, lo_hi, device, mode, est)
    return est


def _zoom_out_check(model, img, first, spatial, n_channels, trained, lo_hi, device, mode, est):
    """``est``, or the size the objects measure when the image is shrunk further, when that is
    larger.

    A network sees whole objects over a range of sizes around its training size (it was
    trained with zooms of about 0.5-2): shrunk to half the training size, whole objects still
    measure what they measured. Objects far larger than anything it was trained on it cuts
    into pieces of about its training size, whatever their real size, and both passes of the
    estimate can be fooled by that (a first guess from holey foreground, then pieces that
    measure the training size at the zoom it suggested): nuclei2d images enlarged x3-x4
    (nuclei of 70-160 px) were estimated at 25-55 px. Pieces do not keep their size when the
    image shrinks: they join into the objects they are part of. So the sample is segmented
    again at half the estimate's zoom (a larger crop of the image, so that enough objects are
    in it); when the objects then measure more than :data:`CONVERGED` x the estimate, that is
    the new estimate and the check is repeated, at most :data:`ZOOM_OUTS` times. The crop is
    the first sample where that holds :data:`ZOOM_OUT_OBJECTS` objects across, else a larger
    one of the same slice (at most :data:`ZOOM_OUT_READ` a side)."""
    if first is None:
        return est
    idx, sample = first
    nd = len(trained)
    for _ in range(ZOOM_OUTS):
        zoom = tuple(0.5 * t / e for t, e in zip(trained, est, strict=True))
        if min(zoom) < ZOOM_RANGE[0] or max(zoom) >= 1.0:  # never enlarge here: that is the second pass's job
            break
        side = min(max(spatial), int(SAMPLE[nd] / min(zoom)), ZOOM_OUT_READ[nd],
                   max(SAMPLE[nd], int(ZOOM_OUT_OBJECTS * max(est))))
        if side > min(sample.shape[:nd]) and side > SAMPLE[nd]:
            sample = _read(img, idx, spatial, side, n_channels)
        seg, real = _segment_zoomed(model, sample, zoom, n_channels, lo_hi, device, mode, "instances", side=side)
        objects = _measure(model.config, _objects(model.config, seg))
        if len(objects) < 3:
            break
        found = _in_plane_zoom_shared(np.median(_in_plane_zoom_shared(objects / np.asarray(real)[None, :], trained),
                                                axis=0), trained)
        if _geo(found) <= CONVERGED * _geo(est):
            break
        est = found
    return est


def _geo(values) -> float:
    """Geometric mean over the axes (sizes under 1e-6 count as 1e-6)."""
    return math.exp(float(np.mean(np.log(np.maximum(np.asarray(values, dtype=float), 1e-6)))))


def _in_plane_zoom_shared(values: np.ndarray, trained: tuple[float, ...] | None):
    """Y and X (the last two axes) keep their geometric mean but take the training
    objects' Y/X ratio, so that the zoom (training / estimate) is the same along Y and X.
    Objects lie at every angle in a plane and pixels are square there: a Y/X difference in
    a sample is noise (a few elongated objects), not a reason to stretch the image; and an
    anatomy that is longer along X (hippocampus3d) keeps that shape. Z keeps its own
    value. Rows of objects in, rows out; one row in, a tuple out."""
    v = np.asarray(values, dtype=float)
    ratio = 1.0 if trained is None else math.sqrt(trained[-2] / trained[-1])
    yx = np.sqrt(v[..., -2] * v[..., -1])
    out = v.copy()
    out[..., -2], out[..., -1] = yx * ratio, yx / ratio
    return tuple(float(x) for x in out) if out.ndim == 1 else out


def _lead_indices(lead: tuple[int, ...]) -> list[tuple[int, ...]]:
    """The middle of the leading axes, then their quarter points (distinct, in order)."""
    if not lead:
        return [()]
    out: list[tuple[int, ...]] = []
    for frac in (0.5, 0.25, 0.75):
        idx = tuple(min(n - 1, int(n * frac)) for n in lead)
        if idx not in out:
            out.append(idx)
    return out


def _read(img, idx: tuple[int, ...], spatial: tuple[int, ...], side: int, n_channels: int) -> np.ndarray:
    """A crop of at most ``side`` per spatial axis of slice ``idx``, as numpy: where a
    strided preview of the slice varies most (objects, not empty background)."""
    starts = [0] * len(spatial)
    if any(s > side for s in spatial):
        step = tuple(max(1, -(-s // 128)) for s in spatial)
        key = tuple(idx) + tuple(slice(None, None, st) for st in step) + ((slice(None),) if n_channels else ())
        preview = np.asarray(img[key], dtype=np.float32)
        if n_channels:
            preview = preview.mean(axis=-1)
        win = tuple(max(1, min(p, side // st)) for p, st in zip(preview.shape, step, strict=True))
        best, best_std = (0,) * len(spatial), -1.0
        grids = [range(0, max(1, p - w) + 1, max(1, w // 2)) for p, w in zip(preview.shape, win, strict=True)]
        for start in np.ndindex(*(len(g) for g in grids)):
            origin = tuple(g[i] for g, i in zip(grids, start, strict=True))
            part = preview[tuple(slice(o, o + w) for o, w in zip(origin, win, strict=True))]
            sd = float(part.std())
            if sd > best_std:
                best, best_std = origin, sd
        starts = [min(max(0, o * st), max(0, s - side)) for o, st, s in zip(best, step, spatial, strict=True)]
    crop = tuple(slice(o, o + min(s, side)) for o, s in zip(starts, spatial, strict=True))
    key = tuple(idx) + crop + ((slice(None),) if n_channels else ())
    return np.asarray(img[key])


def _segment(model, sample, n_channels, lo_hi, device, mode, output):
    from .engine import predict, run

    seg = run(predict(model, sample, channel_axis=-1 if n_channels else None, output=output,
                      keep_probabilities=True, device=device, mode=mode, flips=False,
                      intensity_range=lo_hi, backend="torch"))
    return seg


def _objects(cfg, seg) -> np.ndarray:
    """Objects of a segmentation: instances, or the foreground's connected components."""
    if seg.output == "instances":
        return np.asarray(seg.labels)
    from scipy import ndimage

    return ndimage.label(np.asarray(seg.labels) > 0)[0]


def _measure(cfg, labels: np.ndarray) -> np.ndarray:
    from ..training.object_size import object_diameters

    min_size = max(4, int((cfg.postprocess or {}).get("min_size", 4)))
    inner = object_diameters(labels, min_size=min_size, exclude_border=True)
    return inner if len(inner) >= 3 else object_diameters(labels, min_size=min_size)


def first_guess(foreground: np.ndarray, anisotropy: tuple[float, ...] | None = None,
                min_size: int = 4) -> tuple[float, ...] | None:
    """Object diameter per axis from a foreground mask, or None when it holds no object.

    The distance transform of the mask (measured with ``anisotropy``, the objects' expected
    relative extent per axis, so that such objects look round) has, at each object's
    centre, a value ``r`` (the object's inner radius) that no point within about ``r``
    exceeds; touching objects keep their own centres. Twice the median of these centre
    values (one per plateau), weighted by ``r ** ndim`` (the object's area or volume, so
    that specks do not outvote objects), is the guess. Connected parts smaller than
    ``min_size`` pixels and centres under 1.5 px are ignored. (Holes are not filled: the
    gaps between packed objects are holes too.)
    """
    from scipy import ndimage

    fg = np.asarray(foreground, dtype=bool)
    nd = fg.ndim
    lab, n = ndimage.label(fg)
    if n == 0:
        return None
    small = np.bincount(lab.ravel()) < max(1, min_size)
    small[0] = True
    fg = ~small[lab]
    if not fg.any():
        return None
    aniso = np.ones(nd) if anisotropy is None else np.asarray(anisotropy, dtype=float)
    geo = float(np.exp(np.mean(np.log(aniso))))
    sampling = geo / aniso  # an object of shape `anisotropy` becomes round
    edt = ndimage.distance_transform_edt(np.pad(fg, 1), sampling=sampling)[(slice(1, -1),) * nd]
    # objects under 3 px across are below what the models resolve (thin strands, specks)
    cand = (edt == ndimage.maximum_filter(edt, size=3)) & (edt >= 1.5)
    # keep a candidate only if nothing within about its own radius is higher
    keep = np.zeros_like(cand)
    radii = sorted({int(round(1.5**k)) for k in range(40) if 1.5**k <= max(edt.max(), 1.0)})
    values = edt[cand]
    where = np.nonzero(cand)
    prev = 1
    for k in radii:
        # candidates whose radius is in [prev, next) are tested with a window of half-width k
        window = np.maximum(1, np.round(k * 0.8 / sampling)).astype(int)
        upper = ndimage.maximum_filter(edt, size=tuple(2 * w + 1 for w in window))
        sel = (values >= prev) & ((values < k * 1.5) if k != radii[-1] else True)
        hits = sel & (values >= upper[where] - 1e-6)
        keep[tuple(w[hits] for w in where)] = True
        prev = k * 1.5
    if not keep.any():
        keep = cand
    if not keep.any():
        return None
    # one centre per plateau (a disc's centre can be a few pixels of equal value)
    groups, n_groups = ndimage.label(keep, structure=np.ones((3,) * nd, dtype=bool))
    centres = ndimage.maximum(edt, groups, index=np.arange(1, n_groups + 1))
    # weighted by area/volume (r ** nd): specks and fragments next to large objects do not
    # outvote them; a disc of radius R peaks at about R + 0.5 (the first pixel outside)
    radius = max(_weighted_median(centres, centres**nd) - 0.5, 0.5)
    return tuple(float(2.0 * radius * a / geo) for a in aniso)


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


def _estimate_sample(model, sample, n_channels, trained, lo_hi, device, mode):
    """``(objects measured at the last pass or None, first guess)`` for one sample, in
    input pixels; None when the sample has no foreground."""
    cfg = model.config
    nd = cfg.spatial_dims
    output = "instances" if cfg.output == "instances" else "semantic"
    min_size = max(4, int((cfg.postprocess or {}).get("min_size", 4)))
    zoom = (1.0,) * nd
    first = None
    if output == "semantic" and trained is not None:
        zoom = _semantic_start(model, sample, n_channels, trained, lo_hi, device, mode)
    at_one = None  # instance models: the first pass's (scale 1) segmentation
    for _ in range(MAX_PASSES):
        seg, real = _segment_zoomed(model, sample, zoom, n_channels, lo_hi, device, mode, output)
        if at_one is None and output == "instances":
            at_one = seg
        if output == "semantic":
            # regions between membranes, or one anatomical structure: their connected
            # components are measured directly (no boundary class to over-split them, and
            # a structure's inner radius says little about its length)
            comps = _measure(cfg, _objects(cfg, seg))
            g = tuple(np.median(comps, axis=0)) if len(comps) else None
        else:
            fg = 1.0 - np.asarray(seg.probabilities[0]) > 0.5
            g = first_guess(fg, trained, min_size)
        if g is None:
            if first is None:
                return None
            break
        guess = tuple(v / z for v, z in zip(g, real, strict=True))  # input pixels
        first = first or guess
        if trained is None:
            break
        target = tuple(min(max(t / v, ZOOM_RANGE[0]), ZOOM_RANGE[1]) for t, v in zip(trained, guess, strict=True))
        if all(abs(math.log(t / z)) < math.log(CONVERGED) for t, z in zip(target, real, strict=True)):
            break  # the network saw its objects at about the training size
        zoom = target
    objects = _measure(cfg, _objects(cfg, seg))
    if len(objects) and at_one is not None and at_one is not seg and _broke_up(objects, trained):
        # enlarged past what the network knows, the objects fell apart: measure them as they are
        objects, real = _measure(cfg, _objects(cfg, at_one)), (1.0,) * nd
    if not len(objects):
        return None, first
    return objects / np.asarray(real)[None, :], first


def _broke_up(objects: np.ndarray, trained: tuple[float, ...]) -> bool:
    """Whether ``objects`` (a later pass's, in its working pixels) measure smaller than the
    training size by more than :data:`CONVERGED` (geometric means over the axes).

    That pass's zoom was chosen so that the objects would have the training size there. On
    images like the training data they do, or measure larger (the first guess reads inner
    radii, which run small); on images the network does not know (low signal, texture) the
    enlarged texture is read as objects and every object breaks into pieces, which measure
    smaller than the training size (mouse-embryo slices for nuclei2d: 4-8 px measured for
    13 px nuclei after a x2-3 zoom: 9-16 px in working pixels for 20 px ones). Such a pass is
    not trusted: the objects of the first pass, at scale 1, are measured instead.
    """
    return _geo(np.median(objects, axis=0)) < _geo(trained) / CONVERGED


def _semantic_start(model, sample, n_channels, trained, lo_hi, device, mode) -> tuple[float, ...]:
    """The zoom, of x1/2, x1 and x2, at which a semantic model's regions measure closest to
    the training size (in working pixels). Regions enlarged past what the network knows
    fall apart into pieces (texture read as membranes), which measure small at any zoom
    above the right one; at the right one they measure the training size."""
    cfg = model.config
    nd = cfg.spatial_dims
    geo_t = _geo(trained)
    best, best_err = (1.0,) * nd, math.inf
    for z in (0.5, 1.0, 2.0):
        seg, real = _segment_zoomed(model, sample, (z,) * nd, n_channels, lo_hi, device, mode, "semantic")
        comps = _measure(cfg, _objects(cfg, seg))
        if not len(comps):
            continue
        err = abs(math.log(_geo(np.median(comps, axis=0)) / geo_t))
        if err < best_err:
            best, best_err = tuple(real), err
    return best


def _segment_zoomed(model, sample, zoom, n_channels, lo_hi, device, mode, output, side: int | None = None):
    """Segment ``sample`` resized by ``zoom`` (a centred crop of it, so that the resized
    sample stays within :data:`SAMPLE` a side, or ``side`` before resizing when given);
    returns the segmentation and the zoom actually applied (sizes are whole pixels)."""
    nd = len(zoom)
    if all(abs(z - 1.0) < 1e-6 for z in zoom):
        return _segment(model, sample, n_channels, lo_hi, device, mode, output), zoom
    spatial = sample.shape[:nd]
    side = SAMPLE[nd] if side is None else int(side * min(zoom))
    sizes = [min(s, max(8, int(side / z))) for s, z in zip(spatial, zoom, strict=True)]
    crop = tuple(slice((s - n) // 2, (s - n) // 2 + n) for s, n in zip(spatial, sizes, strict=True))
    part = sample[crop]
    out_shape = tuple(max(8, int(round(n * z))) for n, z in zip(sizes, zoom, strict=True))
    real = tuple(o / n for o, n in zip(out_shape, sizes, strict=True))
    resized = _resize(part, out_shape, n_channels)
    return _segment(model, resized, n_channels, lo_hi, device, mode, output), real


def _resize(part: np.ndarray, out_shape: tuple[int, ...], n_channels: int) -> np.ndarray:
    from skimage.transform import resize

    dtype = part.dtype
    full = out_shape + ((part.shape[-1],) if n_channels else ())
    down = any(o < s for o, s in zip(out_shape, part.shape, strict=False))
    out = resize(part.astype(np.float32), full, order=1, preserve_range=True, anti_aliasing=down)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        out = np.clip(np.rint(out), info.min, info.max).astype(dtype)
    return out


__all__ = ["estimate_diameter", "first_guess", "SAMPLE"]
