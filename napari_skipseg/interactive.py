"""What segmenting interactively needs besides the engine (no Qt, no napari import).

A progressive run (results shown as they come) and live mode (the slice in view segmented
as the user moves through the stack) both work on the engine's *units* (a slice, or a block
of a volume; see :func:`napari_skipseg.inference.engine.unit_list`). The engine works in its
own axis order (leading axes, then spatial); the layers show the source's order. This module
maps points and regions between the two (:func:`to_file_where`, :func:`to_engine_point`),
keeps the units computed in live mode (:class:`UnitCache`, least recently used first out) and
shows them as one array without holding the stack in memory (:class:`CachedLabels`), and
takes the labels of a live run (:class:`UnitSink`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


def to_file_where(order: Sequence[int], where: tuple) -> tuple:
    """An index into the engine's output (``(*lead, *block)``, engine order) as an index
    into the result in the source's axis order; ``order`` as in
    :class:`~napari_skipseg.inference.axes.Arranged` (for each engine axis, its position in
    the source's axes). ``order=None`` (axes unknown): ``where`` as it is."""
    if order is None:
        return tuple(where)
    out: list = [None] * len(order)
    for i, pos in enumerate(order):
        out[pos] = where[i]
    return tuple(out)


def to_engine_point(order: Sequence[int] | None, point: Sequence[int]) -> tuple[int, ...]:
    """A point of the result in the source's axis order as a point in engine order."""
    if order is None:
        return tuple(int(p) for p in point)
    return tuple(int(point[pos]) for pos in order)


def result_point(source_axes: str, data_point: Sequence[float], shape: Sequence[int]) -> tuple[int, ...]:
    """The pixel of the result (the source without its C and S axes) under ``data_point``,
    a point in the source layer's data coordinates (without the RGB axis), clipped to
    ``shape`` (the result's shape)."""
    plain = source_axes.replace("S", "")
    if len(plain) != len(data_point):  # axes unknown: take the point as it is
        coords = list(data_point)
    else:
        coords = [p for a, p in zip(plain, data_point, strict=True) if a != "C"]
    coords = coords[-len(shape):] if len(coords) >= len(shape) else [0] * (len(shape) - len(coords)) + coords
    return tuple(int(min(max(round(float(p)), 0), n - 1)) for p, n in zip(coords, shape, strict=True))


def intersects(where: tuple, point: Sequence[int], displayed: Sequence[int]) -> bool:
    """Whether the region ``where`` (ints and slices, source order) is part of the view:
    it contains ``point`` along every axis not in ``displayed``."""
    for axis, (w, p) in enumerate(zip(where, point, strict=True)):
        if axis in displayed:
            continue
        if isinstance(w, slice):
            if not (w.start or 0) <= p < w.stop:
                return False
        elif int(w) != int(p):
            return False
    return True


def units_at(units: list, point: Sequence[int], spatial_dims: int) -> list[int]:
    """Indices of the units (see :func:`~napari_skipseg.inference.engine.unit_list`) that
    make the view at ``point`` (engine order): for a 2D run the units of that slice, for a
    3D run the blocks of that volume that hold the point's Z."""
    n_lead = len(point) - spatial_dims
    lead = tuple(int(v) for v in point[:n_lead])
    z = int(point[n_lead]) if spatial_dims == 3 else None
    out = []
    for i, (u_lead, block) in enumerate(units):
        if tuple(u_lead) != lead:
            continue
        if z is not None and not block[0].start <= z < block[0].stop:
            continue
        out.append(i)
    return out


class UnitSink:
    """``labels_out`` for a run of a few units: keeps each block written, nothing else.

    Looks like an array of the whole result's ``shape`` to the engine; :attr:`blocks` holds
    ``(where, labels)`` per block written, in order.
    """

    def __init__(self, shape: Sequence[int], dtype) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.blocks: list[tuple[tuple, np.ndarray]] = []

    def __setitem__(self, where, value) -> None:
        self.blocks.append((tuple(where), np.asarray(value)))


class UnitCache:
    """The labels of units computed in live mode, least recently used dropped first.

    ``key`` names what the labels were computed from (image, model, options); setting a
    different key empties the cache (:meth:`use`). Entries are ``unit index -> (where,
    labels)`` with ``where`` in the source's axis order.
    """

    def __init__(self, max_units: int = 64) -> None:
        self.max_units = int(max_units)
        self.key = None
        self.entries: OrderedDict[int, tuple[tuple, np.ndarray]] = OrderedDict()

    def use(self, key) -> bool:
        """Work for ``key`` from now on; True when that emptied the cache (a new key)."""
        if key == self.key:
            return False
        self.key = key
        self.entries.clear()
        return True

    def clear(self) -> None:
        self.entries.clear()

    def has(self, indices: Sequence[int]) -> bool:
        """Whether all of ``indices`` are cached."""
        return all(i in self.entries for i in indices)

    def touch(self, indices: Sequence[int]) -> None:
        """Mark ``indices`` as just used (they are dropped last)."""
        for i in indices:
            if i in self.entries:
                self.entries.move_to_end(i)

    def put(self, index: int, where: tuple, labels: np.ndarray) -> None:
        self.entries[index] = (where, labels)
        self.entries.move_to_end(index)
        while len(self.entries) > self.max_units:
            self.entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self.entries)


class CachedLabels:
    """A read-only array of ``shape`` showing the units of a :class:`UnitCache` (zeros
    elsewhere), for a napari Labels layer: memory is that of the cached units, not of the
    stack. Indexing takes ints and slices (steps of 1 or None) per axis."""

    def __init__(self, cache: UnitCache, shape: Sequence[int], dtype) -> None:
        self.cache = cache
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None):
        out = self[tuple(slice(None) for _ in self.shape)]
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        key = key + (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim:
            raise IndexError(f"too many indices for an array of {self.ndim} dimensions")
        box, squeeze, steps = [], [], []
        for axis, (k, n) in enumerate(zip(key, self.shape, strict=True)):
            if isinstance(k, slice):
                start, stop, step = k.indices(n)
                if step != 1:  # rare (napari asks for strided views only when zoomed out a lot)
                    steps.append((axis, step))
                box.append((start, max(stop, start)))
            else:
                i = int(k)
                i = i + n if i < 0 else i
                if not 0 <= i < n:
                    raise IndexError(f"index {k} is out of bounds for axis {axis} of size {n}")
                box.append((i, i + 1))
                squeeze.append(axis)
        out = np.zeros([b - a for a, b in box], self.dtype)
        for where, labels in self.cache.entries.values():
            dst, src = [], []
            for (a, b), w, n in zip(box, where, self.shape, strict=True):
                lo, hi = (w.start or 0, n if w.stop is None else w.stop) if isinstance(w, slice) else (int(w), int(w) + 1)
                s, e = max(a, lo), min(b, hi)
                if s >= e:
                    break
                dst.append(slice(s - a, e - a))
                src.append(slice(s - lo, e - lo))
            else:
                block = labels.reshape([sl.stop - sl.start if isinstance(sl, slice) else 1 for sl in
                                        _full(where, self.shape)])
                out[tuple(dst)] = block[tuple(src)]
        for axis, step in steps:
            out = out[(slice(None),) * axis + (slice(None, None, step),)]
        return out.reshape([s for i, s in enumerate(out.shape) if i not in squeeze])


def _full(where: tuple, shape: Sequence[int]) -> list[slice]:
    """``where`` with every entry a slice with start and stop."""
    out = []
    for w, n in zip(where, shape, strict=True):
        if isinstance(w, slice):
            out.append(slice(w.start or 0, n if w.stop is None else w.stop))
        else:
            out.append(slice(int(w), int(w) + 1))
    return out


def same_labels(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two label images are the same segmentation up to the numbering of their
    objects: background (0) where the other has background, and a one-to-one pairing of
    ids. (A progressive or live run numbers objects in the order it finds them.)"""
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    if a.shape != b.shape or not np.array_equal(a == 0, b == 0):
        return False
    pairs = np.unique(np.stack([a, b]), axis=1)
    return len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]


class ChoiceMemo:
    """Values worked out once per image array and settings, e.g. the resampling of a run
    with ``diameter="auto"`` (the estimate runs the network twice on a crop): a Segment run
    after live mode, or a second run with the same settings, reuses it.

    An entry holds a weak reference to the array it was made for: it is used only while
    that very array (the layer's data) is alive, and never for another array that happens
    to be equal. Arrays that cannot be weakly referenced are not remembered.
    """

    def __init__(self, size: int = 8) -> None:
        self.size = int(size)
        self.entries: OrderedDict = OrderedDict()  # key -> (weakref to the array, value)

    def get(self, data, key, compute):
        """The value for ``data`` and ``key`` (hashable): remembered, or ``compute()``."""
        import weakref

        full = (id(data), key)
        hit = self.entries.get(full)
        if hit is not None and hit[0]() is data:
            self.entries.move_to_end(full)
            return hit[1]
        value = compute()
        try:
            ref = weakref.ref(data)
        except TypeError:
            return value
        self.entries[full] = (ref, value)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return value


#: Resampling choices (``ScaleChoice``) of Segment runs and live mode in this process.
SCALES = ChoiceMemo()


def model_stamp(model_ref) -> int | None:
    """When the files of the model folder ``model_ref`` last changed (None: not a folder):
    a model saved again under the same name is another model."""
    import os

    try:
        return max(os.stat(os.path.join(model_ref, f)).st_mtime_ns for f in os.listdir(model_ref))
    except (OSError, ValueError, TypeError):
        return None


def remembered_scale(model, model_ref, layer_data, data, *, channel_axis, mode: str, device: str, settings: tuple,
                     size: dict):
    """The resampling of a run (:func:`~napari_skipseg.inference.engine.resolve_run_scale`
    of ``data``, the engine's view of the layer's ``layer_data``, with the object-size
    options ``size``), worked out once per layer array, model and ``settings`` (axes,
    channel: what else changes ``data``) in this process (:data:`SCALES`)."""
    from .inference.engine import resolve_run_scale

    key = (str(model_ref), model_stamp(model_ref), mode, str(device), settings,
           tuple(sorted((k, repr(v)) for k, v in size.items())))
    return SCALES.get(layer_data, key, lambda: resolve_run_scale(model, data, channel_axis=channel_axis, mode=mode,
                                                                   device=device, **size))
