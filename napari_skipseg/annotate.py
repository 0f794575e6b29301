"""Correct a segmentation with a click: add, delete, merge, split, re-segment a box.

Headless (no Qt, no napari): the *Correct* widget, the tests and
``benchmarks/bench_annotate.py`` call the same functions.

``labels`` is an integer array (``(y, x)``, ``(z, y, x)``, or a stack of either) changed in
place; ``probs`` is what ``segment(..., output="probabilities")`` returns for the same
image, ``(classes, *labels.shape)`` (None where there are none); points are ``(y, x)`` or
``(z, y, x)``, one coordinate per axis of ``labels`` (pixel indices); ``spacing`` (add and
split) is the pixel size along the spatial axes (a layer's scale, e.g. ``(1.75, 0.8, 0.8)``
um), in which distances and diameters are then measured.

Every tool has two forms: ``add_object(...)`` changes ``labels`` in place, and
``plan_add(...)`` returns the :class:`Edit` (indices and new values) without touching it,
so that a viewer can apply it through its own undoable API (napari's
``Labels.data_setitem``). New objects are drawn from the model's probabilities with the
engine's own post-processing (:func:`napari_skipseg.inference.postprocess.instance_labels`
for a box, the same seeded watershed over the interior probability for a click).

Review helpers: :func:`uncertainty` (normalised entropy of the probabilities),
:func:`uncertain_regions` (slices/tiles, least certain first) and :func:`object_table`
(area, mean intensity, certainty per object).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .inference.postprocess import DEFAULT_INSTANCE_PARAMS, instance_labels, instances_nd

__all__ = [
    "Edit", "add_object", "box_segment", "delete_object", "merge_objects", "object_table", "plan_add",
    "plan_box", "plan_delete", "plan_merge", "plan_split", "relabel", "split_object", "uncertain_regions",
    "uncertainty",
]

#: Object diameter (pixels) assumed when the labels hold no object to measure.
DEFAULT_DIAMETER = 20.0


class AnnotateError(ValueError):
    """A tool cannot do what was asked (the message says why, in one line)."""


@dataclass
class Edit:
    """A change to a labels array: ``labels[indices] = values``.

    ``label`` is the object the tool made or kept (0: none); ``message`` says what was done
    (or why nothing was)."""

    indices: tuple[np.ndarray, ...]
    values: np.ndarray
    label: int = 0
    message: str = ""
    removed: list[int] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return self.indices[0].size == 0 if self.indices else True

    def apply(self, labels: np.ndarray) -> None:
        """Write the change into ``labels`` (in place)."""
        if not self.empty:
            labels[self.indices] = self.values


def _nothing(ndim: int, message: str, label: int = 0) -> Edit:
    return Edit(tuple(np.zeros(0, np.intp) for _ in range(ndim)), np.zeros(0, np.uint32), label, message)


# -- geometry -------------------------------------------------------------------------------
def _point(labels: np.ndarray, point) -> tuple[int, ...]:
    p = tuple(int(round(float(v))) for v in np.ravel(point))
    if len(p) != labels.ndim:
        raise AnnotateError(f"point {tuple(np.ravel(point))} has {len(p)} coordinates; the labels have "
                            f"{labels.ndim} axes {tuple(labels.shape)}")
    if any(not 0 <= v < n for v, n in zip(p, labels.shape, strict=True)):
        raise AnnotateError(f"point {p} lies outside the labels (shape {tuple(labels.shape)})")
    return p


def _window(shape, point, radius: float, spatial_dims: int, spacing=None) -> tuple[slice, ...]:
    """Slices around ``point``: ``radius`` (in the units of ``spacing``, default pixels) on
    the spatial axes, the point's own index on the leading (slice) axes."""
    lead = len(shape) - spatial_dims
    sp = np.ones(len(shape)) if spacing is None else spacing
    out = [slice(point[i], point[i] + 1) for i in range(lead)]
    for i in range(lead, len(shape)):
        r = int(np.ceil(radius / sp[i]))
        out.append(slice(max(0, point[i] - r), min(shape[i], point[i] + r + 1)))
    return tuple(out)


def _local(point, window) -> tuple[int, ...]:
    return tuple(p - s.start for p, s in zip(point, window, strict=True))


def _box_around(mask: np.ndarray, points) -> tuple[slice, ...]:
    """The smallest window holding ``mask``'s True pixels and ``points``, one pixel wider on
    each side (within the array), so that edges and distances in it are those of the whole."""
    where = np.nonzero(mask)
    box = []
    for i, w in enumerate(where):
        ends = [int(c[i]) for c in points] + ([int(w.min()), int(w.max())] if w.size else [])
        box.append(slice(max(min(ends) - 1, 0), min(max(ends) + 2, mask.shape[i])))
    return tuple(box)


def _indices(mask: np.ndarray, window) -> tuple[np.ndarray, ...]:
    """Indices into the full array of the True pixels of ``mask`` (a crop at ``window``)."""
    return tuple(ix + s.start for ix, s in zip(np.nonzero(mask), window, strict=True))


def _bbox(mask_indices: tuple[np.ndarray, ...], shape, margin: int = 1) -> tuple[slice, ...]:
    return tuple(slice(max(0, int(ix.min()) - margin), min(n, int(ix.max()) + margin + 1))
                 for ix, n in zip(mask_indices, shape, strict=True))


def typical_diameter(labels: np.ndarray, spatial_dims: int | None = None, spacing=None) -> float:
    """Median equivalent diameter of the objects in ``labels`` (for a stack, of the objects'
    areas per slice), in pixels, or in the units of ``spacing`` (the size of a pixel along
    each axis) where given; :data:`DEFAULT_DIAMETER` pixels when there are none."""
    spatial_dims = spatial_dims or min(labels.ndim, 3)
    sp = _spacing(labels, spatial_dims, spacing)
    flat = np.asarray(labels).ravel()
    if flat.dtype.kind != "u" or flat.dtype.itemsize > 4:  # bincount takes these without a copy
        flat = flat.astype(np.int64)
    counts = np.bincount(flat)[1:]
    counts = counts[counts > 0]
    if counts.size == 0:
        return DEFAULT_DIAMETER * float(np.min(sp[labels.ndim - spatial_dims:]))
    size = float(np.median(counts)) * float(np.prod(sp[labels.ndim - spatial_dims:]))
    if spatial_dims == 3:
        return float((6 * size / np.pi) ** (1 / 3))
    return float(np.sqrt(4 * size / np.pi))


def _spacing(labels: np.ndarray, spatial_dims: int, spacing) -> np.ndarray:
    """The size of a pixel along every axis of ``labels`` (1 on leading slice axes) from
    ``spacing`` (one value per spatial axis, or per axis; None: 1 everywhere)."""
    out = np.ones(labels.ndim)
    if spacing is None:
        return out
    sp = np.asarray(spacing, dtype=float).ravel()
    sd = min(spatial_dims, labels.ndim)
    if sp.size == labels.ndim:
        sp = sp[labels.ndim - sd:]
    if sp.size != sd or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise AnnotateError(f"spacing {tuple(np.ravel(spacing))} must be {sd} positive numbers "
                            f"(one per spatial axis of the labels {tuple(labels.shape)})")
    out[labels.ndim - sd:] = sp
    return out


def _new_id(labels: np.ndarray) -> int:
    top = int(labels.max()) if labels.size else 0
    if labels.dtype.kind in "iu" and top + 1 > np.iinfo(labels.dtype).max:
        raise AnnotateError(f"no free label id left in a {labels.dtype} labels array")
    return top + 1


def _maps(probs, window) -> tuple[np.ndarray, np.ndarray]:
    """Interior and foreground probabilities in ``window``: an instance model's (background,
    interior, boundary) classes give interior = p1 and foreground = p1 + p2; a semantic
    model's give foreground = 1 - p(background) for both."""
    p = np.asarray(probs[(slice(None), *window)], dtype=np.float32)
    if p.shape[0] == 3:
        return p[1], p[1] + p[2]
    fg = 1.0 - p[0] if p.shape[0] > 1 else p[0]
    return fg, fg


def _spatial(labels: np.ndarray, probs, spatial_dims: int | None) -> int:
    if spatial_dims:
        return int(spatial_dims)
    return 3 if labels.ndim >= 3 else 2


def _check_probs(labels: np.ndarray, probs) -> None:
    if probs is not None and tuple(probs.shape[1:]) != tuple(labels.shape):
        raise AnnotateError(f"probabilities {tuple(probs.shape)} do not fit the labels {tuple(labels.shape)} "
                            "(expected (classes, *labels.shape))")


# -- tools ----------------------------------------------------------------------------------
def plan_add(labels: np.ndarray, probs, point, *, image=None, params: dict | None = None,
             diameter: float | None = None, spatial_dims: int | None = None, spacing=None) -> Edit:
    """A new object at ``point`` (see :func:`add_object`), as an :class:`Edit`."""
    from scipy import ndimage as ndi

    pt = _point(labels, point)
    _check_probs(labels, probs)
    sd = _spatial(labels, probs, spatial_dims)
    sp = _spacing(labels, sd, spacing)
    if labels[pt]:
        return _nothing(labels.ndim, f"object {int(labels[pt])} is already there", int(labels[pt]))
    diameter = diameter or typical_diameter(labels, sd, sp)
    unit = float(np.min(sp[labels.ndim - sd:]))  # one pixel, in the units of the spacing
    win = _window(labels.shape, pt, max(16 * unit, 2 * diameter), sd, sp)
    free = np.asarray(labels[win]) == 0
    local = _local(pt, win)
    p = {**DEFAULT_INSTANCE_PARAMS, **(params or {})}
    region = None
    interior = fg = None
    here = 0.0
    if probs is not None:
        interior, fg = _maps(probs, win)
        here = float(fg[local])
    if image is not None and here < float(p["mask"]):
        # the model saw little here: the object the image shows around the click
        region = _grow_from_image(image, win, local, free, diameter, sd, sp, fg, float(p["mask"]))
    if region is None and probs is not None and here >= 0.01:
        # the model saw something here: bounded by its foreground
        t = min(float(p["mask"]), 0.5 * here)
        # the click's part of the foreground, on the box around it
        part = _component((fg > t) & free, local)
        box = _box_around(part, [local])
        part, inner, at = part[box], interior[box], _local(local, box)
        markers, n = ndi.label((inner > p["seed"]) & part)
        # seeds within a quarter of a typical diameter of the click are the click's object's own
        near = _disc(markers.shape, at, 0.25 * diameter, sd, sp)
        mine = np.isin(markers, np.unique(markers[near & (markers > 0)])) & (markers > 0)
        click = mine.astype(markers.dtype)
        click[at] = 1
        others = np.where((markers > 0) & ~mine, markers + 1, 0)
        ws = _flood(-100 * inner, np.maximum(click, others), part, 1, sp)  # interior first, distance on ties
        grown = _cells(_component(ws == 1, at), [at], inner, diameter, sd, sp) == 1
        region = np.zeros(free.shape, bool)
        region[box] = grown
    if region is None or not region.any():  # nothing to go on: a disc of the usual size
        region = _disc(free.shape, local, diameter / 2, sd, sp) & free
    region = _component(region, local)
    new = _new_id(labels)
    idx = _indices(region, win)
    return Edit(idx, np.full(idx[0].size, new, labels.dtype), new, f"added object {new} ({idx[0].size} px)")


def add_object(labels: np.ndarray, probs, point, **options) -> int:
    """Draw a new object at ``point``; return its id (the existing one when the click is on
    an object, which is then left as it is).

    Where the model's foreground probability at the click is at least the mask threshold,
    the object is seeded from the click and grown by a watershed over the interior
    probability, bounded by the foreground above the mask threshold and by the other objects
    and seeds around it. Where the model saw little (foreground below the mask threshold)
    and ``image`` is given, the object is what the image shows around the click: the
    connected pixels above half the height of the brightest point near the click over the
    local background (darker than half the depth for dark objects; which way round is
    learnt from the model's foreground or the labels around), within one typical diameter;
    where the image shows no contrast there, the model's faint foreground (above half its
    value at the click) is used, and without either a disc of the objects' typical size.
    Only unlabelled pixels are taken.

    ``options``: ``image``, ``params`` (watershed thresholds, as the model's
    ``postprocess``), ``diameter`` (typical object diameter, default: measured on
    ``labels``), ``spatial_dims`` (2 for a stack of 2D slices; default 3 for 3D labels),
    ``spacing`` (the size of a pixel along each spatial axis, e.g. ``(1.75, 0.8, 0.8)`` um
    for z, y, x: distances and ``diameter`` are then physical; default 1).
    """
    edit = plan_add(labels, probs, point, **options)
    edit.apply(labels)
    return edit.label


def _cells(region: np.ndarray, clicks: list, interior, diameter: float, spatial_dims: int,
           spacing=None) -> np.ndarray:
    """``region`` cut into cells by a watershed from the clicks (ids 1, 2, ...) and from the
    other object centres it holds (higher ids): maxima of the distance to its edge that stand
    out of it by ``h`` (a neck between touching objects; ``h`` = 1.5 px or 0.15 of a typical
    radius) and lie farther than 3/4 of a typical radius from every click. Distances are
    physical (``spacing``) so that an anisotropic volume is cut as its objects are shaped."""
    from scipy import ndimage as ndi
    from skimage.morphology import h_maxima

    # on the box around the region and the clicks only (a window around a click is mostly
    # not the object: 20-50x fewer voxels in 3D)
    box = _box_around(region, clicks)
    if any(b.stop - b.start < n for b, n in zip(box, region.shape, strict=True)):
        out = np.zeros(region.shape, np.int32)
        out[box] = _cells(region[box], [_local(c, box) for c in clicks], None if interior is None else interior[box],
                          diameter, spatial_dims, spacing)
        return out
    sp = np.ones(region.ndim) if spacing is None else np.asarray(spacing, float)
    markers = np.zeros(region.shape, np.int32)
    for i, c in enumerate(clicks, 1):
        markers[tuple(c)] = i
    lead = region.ndim - spatial_dims
    unit = float(np.min(sp[lead:]))
    r = max(diameter / 2.0, 2.0 * unit)
    if region.sum() > 4:
        dist = ndi.distance_transform_edt(region, sampling=sp)
        h = max(1.5 * unit, 0.15 * r)
        tops, n = ndi.label(h_maxima(dist, h) > 0)
        for j, p in enumerate(ndi.maximum_position(dist, tops, range(1, n + 1)) if n else []):
            near = min(np.hypot.reduce(np.subtract(p[lead:], c[lead:], dtype=float) * sp[lead:]) for c in clicks)
            if near > 0.75 * r:
                markers[tuple(int(v) for v in p)] = len(clicks) + 1 + j
    # flat where the model is sure (interior in steps of 0.1): there the cells grow from
    # their markers in order of the physical distance to the nearest marker; they meet
    # where the interior dips (the model's boundaries between touching objects)
    elevation = None if interior is None else -np.round(interior * 10).astype(np.float32)
    return _flood(elevation, markers, region, len(clicks), sp)


def _nearest(markers: np.ndarray, region: np.ndarray, sp) -> tuple[np.ndarray, np.ndarray]:
    """``(cells, ramp)``: every pixel of ``region`` to its nearest marker (physical distance;
    a part cut off from its marker inside the region is flooded from the parts around it),
    and the distance to the nearest marker scaled to [0, 0.9]."""
    from scipy import ndimage as ndi
    from skimage.measure import label as sk_label
    from skimage.segmentation import watershed

    to_marker, nearest = ndi.distance_transform_edt(markers == 0, sampling=sp, return_indices=True)
    ramp = (0.9 * to_marker / max(float(to_marker.max()), 1e-6)).astype(np.float32)
    cells = np.where(region, markers[tuple(nearest)], 0)
    comp = sk_label(cells, background=0, connectivity=1)  # connected parts of one label each
    own = np.isin(comp, np.unique(comp[markers > 0]))
    return watershed(ramp, markers=np.where(own, cells, 0), mask=region), ramp


def _flood(elevation, markers: np.ndarray, region: np.ndarray, n_clicks: int, sp) -> np.ndarray:
    """Watershed of ``elevation`` from ``markers`` inside ``region`` (ties broken by the
    physical distance to the nearest marker); markers 1..``n_clicks`` are the user's.

    A click where the model saw a boundary (low interior: high elevation) is flooded last
    and may keep only itself: where a click's cell is under a quarter of its share by
    distance, the model's boundaries disagree with the clicks, and the distance decides."""
    from skimage.segmentation import watershed

    voronoi, ramp = _nearest(markers, region, sp)
    if elevation is None:
        return voronoi
    cells = watershed(elevation + ramp, markers=markers, mask=region)
    n = int(max(markers.max(), n_clicks)) + 1
    got, share = np.bincount(cells.ravel(), minlength=n), np.bincount(voronoi.ravel(), minlength=n)
    if any(got[i] < 0.25 * share[i] for i in range(1, n_clicks + 1)):
        return voronoi
    return cells


def _disc(shape, centre, radius: float, spatial_dims: int, spacing=None) -> np.ndarray:
    """Pixels within ``radius`` (in the units of ``spacing``, default pixels) of ``centre`` on
    the spatial axes."""
    sp = np.ones(len(shape)) if spacing is None else spacing
    lead = len(shape) - spatial_dims
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    d2 = sum(((g - c) * s) ** 2 for g, c, s in list(zip(grids, centre, sp, strict=True))[lead:])
    unit = float(np.min(np.asarray(sp)[lead:]))
    return np.broadcast_to(d2 <= max(radius, unit) ** 2, shape).copy()


def _component(mask: np.ndarray, local) -> np.ndarray:
    from scipy import ndimage as ndi

    if not mask[local]:
        mask = mask.copy()
        mask[local] = True
    comp, _ = ndi.label(mask)
    return comp == comp[local]


def _grow_from_image(image, win, local, free, diameter: float, spatial_dims: int, spacing=None,
                     fg=None, mask: float = 0.5) -> np.ndarray | None:
    """The object the image shows at ``local``, or None where it shows none.

    Objects are bright on a dark background, or the other way round: learnt from the
    model's foreground ``fg`` in the window (or the labelled pixels) against the rest; where
    neither says, from which end of the neighbourhood's intensities the click lies nearer.
    On the image smoothed over half a pixel, the object's peak is the brightest (darkest)
    point within a fifth of a typical diameter of the click and the background the median
    of the neighbourhood outside the model's foreground; the object is the connected
    region above half the height of the peak over the background (half-max), within one
    typical diameter of the click and outside the model's foreground (above ``mask``: the
    ground of the objects around). None where the peak stands less than three noise levels
    (median absolute deviation of the background) above the background."""
    from scipy import ndimage as ndi

    img = np.asarray(image[win], dtype=np.float32)
    if img.ndim == free.ndim + 1:  # RGB / channels last
        img = img.mean(axis=-1)
    if img.shape != free.shape:
        return None
    sp = np.ones(free.ndim) if spacing is None else np.asarray(spacing, float)
    lead = free.ndim - spatial_dims
    unit = float(np.min(sp[lead:]))
    sigma = [0.0] * lead + [0.5 * unit / s for s in sp[lead:]]
    img = ndi.gaussian_filter(img, sigma) if min(img.shape[lead:]) > 2 else img
    others = (fg >= mask) if fg is not None else np.zeros(free.shape, bool)  # the model's objects' ground
    near = _disc(free.shape, local, diameter, spatial_dims, sp)
    obj = (fg > 0.5) if fg is not None else ~free
    back = ((fg < 0.1) if fg is not None else free) & near
    diff = float(np.median(img[obj]) - np.median(img[back])) if obj.sum() >= 5 and back.sum() >= 5 else 0.0
    if abs(diff) > 0.1 * float(np.ptp(img)):  # the objects around stand out of the background
        bright = diff > 0
    else:  # nothing to learn from: the click's side of the neighbourhood
        v = float(img[local])
        lo, hi = np.percentile(img[near], [10, 90])
        bright = abs(v - lo) >= abs(v - hi)
    s = img if bright else -img
    peak_zone = _disc(free.shape, local, max(2 * unit, 0.2 * diameter), spatial_dims, sp) & free
    if not peak_zone.any():
        return None
    zone = np.where(peak_zone, s, -np.inf)
    q = np.unravel_index(int(np.argmax(zone)), s.shape)
    if back.sum() < 5:
        back = near & free & ~peak_zone
    if back.sum() < 5:
        return None
    b = float(np.median(s[back]))
    noise = 1.4826 * float(np.median(np.abs(s[back] - b)))
    top = float(s[q])
    if top - b <= max(3 * noise, 1e-6 * max(abs(top), abs(b), 1.0)):
        return None
    region = (s > b + 0.5 * (top - b)) & free & near & ~others
    if not region[q]:
        return None
    region = _component(region, q)
    box = _box_around(region, [])
    region[box] = ndi.binary_fill_holes(region[box]) & free[box]
    return region if region[local] else None


def plan_delete(labels: np.ndarray, point) -> Edit:
    """Remove the object under ``point`` (see :func:`delete_object`), as an :class:`Edit`."""
    pt = _point(labels, point)
    obj = int(labels[pt])
    if not obj:
        return _nothing(labels.ndim, "no object there")
    idx = np.nonzero(labels == obj)
    e = Edit(idx, np.zeros(idx[0].size, labels.dtype), 0, f"deleted object {obj}")
    e.removed = [obj]
    return e


def delete_object(labels: np.ndarray, point) -> int:
    """Set the object under ``point`` to 0; return its id (0: there was none)."""
    edit = plan_delete(labels, point)
    edit.apply(labels)
    return edit.removed[0] if edit.removed else 0


def plan_merge(labels: np.ndarray, point_a, point_b) -> Edit:
    """Give the object under ``point_b`` the id of the one under ``point_a``, as an :class:`Edit`."""
    a, b = _point(labels, point_a), _point(labels, point_b)
    ia, ib = int(labels[a]), int(labels[b])
    if not ia or not ib:
        return _nothing(labels.ndim, "click two objects to merge (one click was on the background)")
    if ia == ib:
        return _nothing(labels.ndim, f"both clicks are on object {ia}", ia)
    idx = np.nonzero(labels == ib)
    e = Edit(idx, np.full(idx[0].size, ia, labels.dtype), ia, f"merged object {ib} into {ia}")
    e.removed = [ib]
    return e


def merge_objects(labels: np.ndarray, point_a, point_b) -> int:
    """Merge the object under ``point_b`` into the one under ``point_a``; return the kept id
    (0 when a click was on the background)."""
    edit = plan_merge(labels, point_a, point_b)
    edit.apply(labels)
    return edit.label


def plan_split(labels: np.ndarray, probs, point_a, point_b, *, diameter: float | None = None,
               spatial_dims: int | None = None, spacing=None) -> Edit:
    """Split the object under both points in two (see :func:`split_object`), as an :class:`Edit`."""
    a, b = _point(labels, point_a), _point(labels, point_b)
    _check_probs(labels, probs)
    obj = int(labels[a])
    if not obj or int(labels[b]) != obj:
        raise AnnotateError("click twice inside the same object to split it "
                            f"(the clicks are on {'background' if not obj else f'object {obj}'} and "
                            f"{'background' if not labels[b] else f'object {int(labels[b])}'})")
    if a == b:
        raise AnnotateError("click two different points of the object to split it")
    where = np.nonzero(labels == obj)
    box = _bbox(where, labels.shape)
    mask = np.asarray(labels[box]) == obj
    interior = _maps(probs, box)[0] if probs is not None else None
    sd = _spatial(labels, probs, spatial_dims)
    sp = _spacing(labels, sd, spacing)
    diameter = diameter or typical_diameter(labels, sd, sp)
    cells = _cells(mask, [_local(a, box), _local(b, box)], interior, diameter, sd, sp)
    new = _new_id(labels)
    idx = _indices(mask & (cells != 1), box)
    return Edit(idx, np.full(idx[0].size, new, labels.dtype), new, f"split object {obj}: new object {new}")


def split_object(labels: np.ndarray, probs, point_a, point_b, **options) -> int:
    """Split the object under ``point_a`` and ``point_b`` by a watershed seeded at the two
    points, inside the object only, over the interior probability (where ``probs`` are
    given; without, the parts grow equally fast from the two points). An object holding more
    than two (maxima of the distance to its edge, behind a neck; ``diameter``, default:
    measured on ``labels``, sets the scale) is cut around those other centres too, so that
    ``point_a``'s part is one object. Where a click lies on the model's boundary (its part
    would be under a quarter of its share), each pixel goes to the nearer click instead.
    ``spacing`` (the size of a pixel along each spatial axis, e.g. the layer's scale): the
    distances, centres and ``diameter`` are physical, so that anisotropic voxels are cut as
    the objects are shaped (default 1: pixel steps).
    The part of ``point_a`` keeps the id; the rest, with ``point_b``, gets a new id, which is
    returned."""
    edit = plan_split(labels, probs, point_a, point_b, **options)
    edit.apply(labels)
    return edit.label


def plan_box(labels: np.ndarray, probs, corner_a, corner_b, *, params: dict | None = None,
             spatial_dims: int | None = None) -> Edit:
    """Re-segment only inside the box between two corners (inclusive), as an :class:`Edit`
    (see :func:`box_segment`)."""
    if probs is None:
        raise AnnotateError("the box re-segments from the model's probabilities: run Segment first")
    _check_probs(labels, probs)
    a, b = (_point(labels, np.clip(np.ravel(c)[: labels.ndim], 0, np.asarray(labels.shape) - 1)
                   if np.size(c) == labels.ndim else c) for c in (corner_a, corner_b))
    box = tuple(slice(min(i, j), max(i, j) + 1) for i, j in zip(a, b, strict=True))
    sd = min(_spatial(labels, probs, spatial_dims), labels.ndim)
    old = np.asarray(labels[box])
    sub = np.asarray(probs[(slice(None), *box)], dtype=np.float32)
    # the box's leading (slice) axes are units of their own, as in the engine
    fresh = instances_nd(sub, params, sd)
    out = np.zeros_like(old)
    counts = np.bincount(labels.ravel().astype(np.int64)) if labels.size else np.zeros(1, np.int64)
    inside = np.bincount(old.ravel().astype(np.int64), minlength=counts.size)
    crossing = (counts > inside[: counts.size]) & (inside[: counts.size] > 0)  # objects that leave the box
    crossing[0] = False
    border = np.zeros(old.shape, bool)
    for ax in range(old.ndim - sd, old.ndim):
        if old.shape[ax] > 1:
            border[(slice(None),) * ax + (0,)] = True
            border[(slice(None),) * ax + (-1,)] = True
    taken: set[int] = set()
    nxt = _new_id(labels)
    for k in range(1, int(fresh.max()) + 1 if fresh.size else 1):
        where = fresh == k
        if not where.any():
            continue
        keep = 0
        if (where & border).any():  # continues an object cut by the box's edge?
            under = old[where & border]
            under = under[crossing[under.astype(np.int64)]] if under.size else under
            if under.size:
                cand = int(np.bincount(under.astype(np.int64)).argmax())
                if cand not in taken:
                    keep = cand
                    taken.add(cand)
        if not keep:
            keep, nxt = nxt, nxt + 1
        out[where] = keep
    changed = out != old
    idx = _indices(changed, box)
    n = len(np.unique(out[out > 0]))
    return Edit(idx, out[changed].astype(labels.dtype), 0, f"box re-segmented: {n} objects")


def box_segment(labels: np.ndarray, probs, corner_a, corner_b, **options) -> int:
    """Re-segment only inside the box from ``corner_a`` to ``corner_b`` (inclusive, clipped to
    the labels; for a stack, the corners' leading indices give the slices): the box's labels are replaced by
    the instances the engine's post-processing finds in the cached probabilities there
    (``params``: the thresholds). A new object touching the box's edge over an object that
    goes on outside keeps that object's id; the rest get new ids. Returns the number of
    pixels changed."""
    edit = plan_box(labels, probs, corner_a, corner_b, **options)
    edit.apply(labels)
    return 0 if edit.empty else int(edit.indices[0].size)


# -- live thresholds --------------------------------------------------------------------------
def relabel(probs, params: dict | None = None, spatial_dims: int | None = None) -> np.ndarray:
    """Instance labels from cached probabilities with other thresholds (``seed``, ``mask``,
    ``min_size``): the engine's post-processing, unit by unit (each slice of a stack for a 2D
    model), without running the network again."""
    probs = np.asarray(probs)
    if probs.shape[0] != 3:
        raise AnnotateError(f"thresholds need an instance model's probabilities (3 classes), not {probs.shape[0]}")
    sd = spatial_dims or probs.ndim - 1
    if sd == probs.ndim - 1:
        return instance_labels(probs, params)
    return instances_nd(probs, params, sd)


# -- review -----------------------------------------------------------------------------------
def uncertainty(probs) -> np.ndarray:
    """Normalised entropy of the class probabilities, ``-sum p log p / log C`` (0 = sure, 1 =
    every class equally likely), shaped like the labels, float32."""
    p = np.clip(np.asarray(probs, dtype=np.float32), 1e-6, 1.0)
    c = p.shape[0]
    if c < 2:
        q = p[0]
        h = -(q * np.log(q) + (1 - q) * np.log(np.clip(1 - q, 1e-6, 1.0))) / np.log(2.0)
        return h.astype(np.float32)
    h = np.zeros(p.shape[1:], np.float32)
    for q in p:  # one class at a time: no (classes, *shape) temporaries
        h -= q * np.log(q)
    h /= np.float32(np.log(c))
    return np.clip(h, 0.0, 1.0, out=h)


@dataclass(frozen=True)
class Region:
    """A slice/tile to review: ``lead`` (index on the leading axes), ``window`` (slices on
    the last two axes), ``score`` (mean uncertainty)."""

    lead: tuple[int, ...]
    window: tuple[slice, slice]
    score: float

    @property
    def key(self) -> tuple:
        return (*self.lead, self.window[0].start, self.window[1].start)

    @property
    def centre(self) -> tuple[float, ...]:
        return (*map(float, self.lead), *((s.start + s.stop - 1) / 2 for s in self.window))


def uncertain_regions(unc: np.ndarray, tile: int = 256, skip=(), skip_lead=()) -> list[Region]:
    """Tiles of ``tile`` x ``tile`` pixels of every slice (index of the leading axes) of an
    uncertainty map, least certain first (highest mean uncertainty). ``skip``: keys
    (:attr:`Region.key`) of tiles already reviewed; ``skip_lead``: first-axis indices of
    reviewed slices."""
    unc = np.asarray(unc, dtype=np.float32)
    ny, nx = unc.shape[-2:]
    ys, xs = np.arange(0, ny, tile), np.arange(0, nx, tile)
    sums = np.add.reduceat(np.add.reduceat(unc, ys, axis=-2), xs, axis=-1)
    hy = np.minimum(ys + tile, ny) - ys
    hx = np.minimum(xs + tile, nx) - xs
    means = sums / (hy[:, None] * hx[None, :])
    skip, skip_lead = set(skip), {int(i) for i in skip_lead}
    out = []
    for idx in np.ndindex(*unc.shape[:-2]):
        if idx and idx[0] in skip_lead:
            continue
        for i, y in enumerate(ys):
            for j, x in enumerate(xs):
                r = Region(tuple(int(v) for v in idx), (slice(int(y), int(y + hy[i])), slice(int(x), int(x + hx[j]))),
                           float(means[(*idx, i, j)]))
                if r.key not in skip:
                    out.append(r)
    out.sort(key=lambda r: -r.score)
    return out


def object_table(labels: np.ndarray, image=None, unc: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """One row per object: ``label``, ``area`` (pixels), ``mean_intensity`` (of ``image``,
    channels averaged; NaN without one), ``certainty`` (1 - mean :func:`uncertainty` over the
    object; NaN without one) and ``centroid`` (``(n, ndim)``, pixel coordinates)."""
    lab = np.asarray(labels).ravel().astype(np.int64)
    counts = np.bincount(lab)
    ids = np.flatnonzero(counts)
    ids = ids[ids > 0]
    area = counts[ids]
    n = lab.max() + 1 if lab.size else 1

    def mean_of(values) -> np.ndarray:
        return np.bincount(lab, weights=np.asarray(values, np.float64).ravel(), minlength=n)[ids] / area

    intensity = np.full(ids.size, np.nan)
    if image is not None:
        img = np.asarray(image)
        if img.ndim == labels.ndim + 1:
            img = img.mean(axis=-1)
        if img.shape == labels.shape:
            intensity = mean_of(img)
    certainty = np.full(ids.size, np.nan) if unc is None else 1.0 - mean_of(unc)
    cent = np.zeros((ids.size, labels.ndim))
    if ids.size:
        for ax in range(labels.ndim):
            shape = [1] * labels.ndim
            shape[ax] = labels.shape[ax]
            coord = np.broadcast_to(np.arange(labels.shape[ax]).reshape(shape), labels.shape)
            cent[:, ax] = mean_of(coord)
    return {"label": ids.astype(np.int64), "area": area.astype(np.int64), "mean_intensity": intensity,
            "certainty": certainty, "centroid": cent}


def save_thresholds(model: str, params: dict, *, activate: bool = True):
    """Save ``model`` (a stored model's name or folder) as a new version ``<base>-ft-<N>``
    whose instance thresholds (``seed``, ``mask``, ``min_size``, ``min_seed_size``) are
    ``params``; the weights are the same. The card says where the thresholds came from and
    that the parent's validation metrics were measured with other ones. Returns the folder.
    """
    import datetime as _dt
    import os

    from .model.store import load_model, reserve_version, save_model, set_active_model

    net = load_model(model)
    cfg = net.config
    if cfg.output != "instances":
        raise AnnotateError(f"model {cfg.name!r} is semantic: it has no instance thresholds")
    keys = ("seed", "mask", "min_size", "min_seed_size")
    old = {k: cfg.postprocess[k] for k in keys if k in cfg.postprocess}
    new = {**cfg.postprocess, **{k: (int(params[k]) if "size" in k else round(float(params[k]), 4))
                                 for k in keys if k in params}}
    folder = reserve_version(cfg.name)
    parent = cfg.name
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    cfg.name = folder.name
    cfg.postprocess = new
    card = dict(cfg.card)
    metrics = card.pop("metrics", None)
    if metrics:
        card["metrics_before"] = metrics
    card.update({
        "parent": parent,
        "created": now,
        "postprocess_tuning": (f"set by hand in the Correct widget on {now}: "
                               + ", ".join(f"{k} {new[k]}" for k in keys if k in new)
                               + f" (were {', '.join(f'{k} {v}' for k, v in old.items())} in {parent}); "
                               "weights unchanged"),
        "notes": (f"Thresholds of {parent} changed by hand; its validation metrics (metrics_before) were "
                  "measured with its own thresholds and do not hold for these."),
    })
    cfg.card = card
    try:
        save_model(net, folder)
    except BaseException:
        try:
            os.rmdir(folder)  # the reserved folder, still empty
        except OSError:
            pass
        raise
    if activate:
        set_active_model(folder.name)
    return folder
