"""What each axis of an image is, and the order the engine takes it in.

The engine (:func:`~napari_skipseg.inference.engine.predict`) treats every axis before the
spatial ones as independent slices and reads channels from ``channel_axis``. This module
brings an image whose axes are named (``meta.axes``: T, C, Z, Y, X, S) into that order,
``(lead..., [Z,] Y, X [, C])``, for a model of a given dimensionality, and brings the result
back into the image's own axis order:

- T is never depth: a time-lapse is segmented frame by frame (a 3D model gets each frame's
  ZYX volume, a 2D model each YX slice); a 3D model on an image without Z is refused.
- Several channels (C) are never averaged for a single-channel model: one must be chosen
  (:class:`ChannelChoiceNeeded` otherwise). RGB(A) samples (S, or a TIFF's planar RGB,
  ``meta.extra["rgb_planar"]``) are turned to grey by the engine as before.

:func:`link_frames` gives an object the same id in consecutive frames (overlap matching).
No Qt, napari or torch here.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ..io.meta import ImageMeta


class AxesError(ValueError):
    """The image's axes and the model (or the options) do not fit; the message says how."""


class ChannelChoiceNeeded(AxesError):
    """Several channels and a single-channel model: one channel must be chosen.

    ``n_channels``: how many there are; ``axes``: the image's axes.
    """

    def __init__(self, n_channels: int, axes: str, model: str = "") -> None:
        self.n_channels = n_channels
        self.axes = axes
        self.model = model
        who = f"model {model!r}" if model else "the model"
        super().__init__(f"the image has {n_channels} channels (axes {axes}) and {who} takes one; "
                         f"choose a channel (0-{n_channels - 1})")


@dataclass
class Arranged:
    """An image brought into the engine's axis order.

    Attributes
    ----------
    image : array-like
        ``(lead..., [Z,] Y, X [, C or S])``: numpy when the input was, else lazy (dask).
    meta : ImageMeta
        Axes, spacing and unit of ``image`` (C or S last; not validated as a file's axes).
    channel_axis : int or None
        ``-1`` when ``image`` keeps channels (RGB samples, or a multi-channel model), else None.
    spatial_dims : int
        2 or 3: the axes the network sees at once (the last ones, before channels).
    file_axes : str
        The source's axes without C and S: the axes of the result in the source's order.
    order : tuple of int
        For each axis of the result in engine order, its position in ``file_axes``.
    channel : int or None
        The channel taken from the C axis, if one was.
    """

    image: Any
    meta: ImageMeta
    channel_axis: int | None
    spatial_dims: int
    file_axes: str
    order: tuple[int, ...]
    channel: int | None = None

    @property
    def axes(self) -> str:
        """The result's axes in engine order (no channels), e.g. ``"TZYX"``."""
        return "".join(self.file_axes[i] for i in self.order)

    @property
    def lead_axes(self) -> str:
        """The axes processed slice by slice (frame by frame for T)."""
        return self.axes[: -self.spatial_dims]

    @property
    def spatial_spacing(self) -> tuple[float, ...]:
        """Pixel/voxel size along the network's spatial axes, in ``meta.unit``."""
        res = self.meta.without_channels()
        return tuple(res.spacing[-self.spatial_dims:])

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        shape = tuple(int(s) for s in self.image.shape)
        if self.channel_axis is not None:
            shape = shape[:-1]
        return shape[-self.spatial_dims:]

    @property
    def identity(self) -> bool:
        """Whether the result's axes are already in the source's order."""
        return self.order == tuple(range(len(self.order)))

    def to_file_order(self, result, leading: int = 0):
        """``result`` (engine order, with ``leading`` extra axes in front, e.g. 1 for
        probabilities) transposed into the source's axis order."""
        if result is None or self.identity:
            return result
        back = tuple(int(i) for i in np.argsort(self.order))
        perm = tuple(range(leading)) + tuple(leading + i for i in back)
        return _transpose(result, perm)

    def describe(self) -> str:
        """A few words on how the image is processed, e.g. ``"frame by frame over T (5 frames)"``."""
        words = []
        if "T" in self.lead_axes:
            n = int(self.image.shape[self.axes.index("T")])
            words.append(f"frame by frame over T ({n} frames)")
        if "Z" in self.lead_axes:
            words.append("slice by slice over Z")
        if self.channel is not None:
            words.append(f"channel {self.channel}")
        return ", ".join(words)


def arrange(image, meta: ImageMeta, *, spatial_dims: int | None = None, in_channels: int = 1,
            channel: int | None = None, model_name: str = "") -> Arranged:
    """Bring ``image`` (axes ``meta.axes``) into the engine's order for a model.

    Parameters
    ----------
    image : array-like
        numpy, dask, zarr or a memory map; read lazily where it is not numpy.
    meta : ImageMeta
        Its axes (``TCZYXS`` letters, Y and X last before S), spacing and unit.
    spatial_dims : int, optional
        2 or 3, the model's (or the mode's) dimensionality. None: 3 when the image has Z.
    in_channels : int
        Channels the model takes.
    channel : int, optional
        Take this channel of the C axis.
    model_name : str
        For messages.

    Raises
    ------
    AxesError
        A 3D model on an image without Z (time is not depth), a channel that is not there,
        a channel count the model cannot take; :class:`ChannelChoiceNeeded` when several
        channels meet a single-channel model and no ``channel`` was given.
    """
    axes = meta.axes
    shape = tuple(int(s) for s in image.shape)
    if len(axes) != len(shape):
        raise AxesError(f"axes {axes!r} do not fit an image of shape {shape}")
    d = spatial_dims if spatial_dims is not None else (3 if "Z" in axes else 2)
    if d not in (2, 3):
        raise AxesError(f"spatial dimensions must be 2 or 3, got {d}")
    who = f"model {model_name!r}" if model_name else "the model"
    if d == 3 and "Z" not in axes:
        why = "T is time, not depth; " if "T" in axes else ""
        raise AxesError(f"{who} is 3D and needs a Z axis; the image has axes {axes} "
                        f"({why}use a 2D model, which runs on each YX slice)")
    c = axes.find("C")
    spacing = list(meta.spacing)
    channel_axis = None
    if channel is not None:
        if c < 0:
            raise AxesError(f"channel {channel} asked for, but the image has no channel axis (axes {axes})")
        n = shape[c]
        if not 0 <= channel < n:
            raise AxesError(f"channel {channel} is out of range: the image has {n} channels (0-{n - 1})")
        image, axes, shape = _take(image, channel, c), axes[:c] + axes[c + 1:], shape[:c] + shape[c + 1:]
        del spacing[c]
    elif c >= 0:
        n = shape[c]
        if n == 1:
            image, axes, shape = _take(image, 0, c), axes[:c] + axes[c + 1:], shape[:c] + shape[c + 1:]
            del spacing[c]
        elif in_channels == 1 and n in (3, 4) and meta.extra.get("rgb_planar"):
            pass  # an RGB(A) image stored plane by plane: the engine turns it grey, as RGB
        elif in_channels == 1:
            raise ChannelChoiceNeeded(n, axes, model_name)
        elif n != in_channels:
            raise AxesError(f"{who} takes {in_channels} channels; the image has {n} (axes {axes})")
    spatial_letters = "ZYX"[-d:]
    keep = [i for i, a in enumerate(axes) if a not in "CS"]
    lead = [i for i in keep if axes[i] not in spatial_letters]
    spatial = [axes.index(a) for a in spatial_letters]
    chan = [i for i, a in enumerate(axes) if a in "CS"]
    perm = lead + spatial + chan
    if chan:
        channel_axis = -1
    if perm != list(range(len(axes))):
        image = _transpose(image, tuple(perm))
    file_axes = "".join(axes[i] for i in keep)
    order = tuple(keep.index(i) for i in lead + spatial)
    new_meta = replace(meta, axes="".join(axes[i] for i in perm), spacing=tuple(spacing[i] for i in perm),
                       extra=dict(meta.extra))
    return Arranged(image, new_meta, channel_axis, d, file_axes, order, channel)


def guess_axes(shape: Sequence[int], rgb: bool = False) -> tuple[str, bool]:
    """Axes for an array nobody named: ``(axes, guessed)``.

    2 axes: YX; 3: ZYX; 4: TZYX; 5: TZCYX (S appended for RGB). ``guessed`` is True except
    for 2 axes: a 3-axis array may as well be TYX or CYX, which only its owner can say.
    """
    n = len(shape) - (1 if rgb else 0)
    guesses = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TZCYX"}
    if n not in guesses:
        raise AxesError(f"cannot tell the axes of a {len(shape)}-dimensional image; name them (TCZYX)")
    return guesses[n] + ("S" if rgb else ""), n != 2


def parse_axes(text: str, shape: Sequence[int], rgb: bool = False) -> str:
    """Axes typed by a user (``"tzyx"``, ``"T Z Y X"``) checked against ``shape``; S is
    appended for an RGB image when not typed. Raises :class:`AxesError` saying what is wrong."""
    axes = "".join(ch for ch in str(text).upper() if not ch.isspace() and ch not in ",-")
    if rgb and not axes.endswith("S"):
        axes += "S"
    try:
        ImageMeta(axes).validate(tuple(shape))
    except ValueError as err:
        problem = getattr(err, "problem", str(err))
        raise AxesError(f"axes {text!r}: {problem}") from None
    return axes


def link_frames(labels, t_axis: int = 0, min_iou: float = 0.25) -> int:
    """Give an object the id it had in the previous frame, in place; returns the objects kept.

    Frames are the slices of ``labels`` along ``t_axis`` (numpy or a writable zarr array; one
    frame is in memory at a time). Objects of consecutive frames are paired one to one by the
    largest total overlap (intersection over union, Hungarian matching on the IoU matrix);
    pairs below ``min_iou`` are not linked. An object without a partner gets a new id, so ids
    stay unique across frames. Returns the number of distinct ids after linking.
    """
    from scipy.optimize import linear_sum_assignment

    n = int(labels.shape[t_axis])

    def key(t: int) -> tuple:
        return (slice(None),) * t_axis + (t,)

    prev = None
    next_id = 0
    for t in range(n):
        cur = np.asarray(labels[key(t)])
        ids = np.unique(cur)
        ids = ids[ids > 0]
        new = np.zeros(int(cur.max()) + 1 if cur.size else 1, dtype=np.int64)
        assigned: dict[int, int] = {}
        if prev is not None and ids.size and prev.any():
            p_ids, p_area = np.unique(prev[prev > 0], return_counts=True)
            c_area = dict(zip(*np.unique(cur[cur > 0], return_counts=True), strict=True))
            both = (prev > 0) & (cur > 0)
            pairs, inter = np.unique(np.stack([prev[both], cur[both]]), axis=1, return_counts=True)
            if pairs.size:
                pi = {int(v): i for i, v in enumerate(p_ids)}
                ci = {int(v): i for i, v in enumerate(ids)}
                iou = np.zeros((len(p_ids), len(ids)))
                for (a, b), k in zip(pairs.T, inter, strict=True):
                    iou[pi[int(a)], ci[int(b)]] = k / (p_area[pi[int(a)]] + c_area[int(b)] - k)
                rows, cols = linear_sum_assignment(iou, maximize=True)
                for r, col in zip(rows, cols, strict=True):
                    if iou[r, col] >= min_iou:
                        assigned[int(ids[col])] = int(p_ids[r])
        for i in ids:
            if int(i) in assigned:
                new[i] = assigned[int(i)]
            else:
                next_id += 1
                new[i] = next_id
        if assigned:
            next_id = max(next_id, max(assigned.values()))
        relabelled = new[cur].astype(cur.dtype, copy=False)
        labels[key(t)] = relabelled
        prev = relabelled
    return next_id


def size_options(predict_fn, *, diameter=None, spacing=None, unit: str | None = None,
                 explicit: bool = False) -> dict:
    """The object-size keyword arguments (``diameter``, ``spacing``, ``unit``) that
    ``predict_fn`` takes, leaving out those that are None.

    An engine without resampling takes none of them: then an ``explicit`` (user-given)
    diameter raises :class:`AxesError`, anything else is dropped.
    """
    wanted = {k: v for k, v in (("diameter", diameter), ("spacing", spacing), ("unit", unit)) if v is not None}
    params = inspect.signature(predict_fn).parameters
    if explicit and "diameter" in wanted and "diameter" not in params:
        raise AxesError("this engine cannot resample images yet, so a diameter cannot be used")
    return {k: v for k, v in wanted.items() if k in params}


def _take(image, index: int, axis: int):
    key = (slice(None),) * axis + (index,)
    if type(image) is np.ndarray or hasattr(image, "compute"):  # numpy, or dask already
        return image[key]
    return _lazy(image)[key]


def _transpose(image, perm: tuple[int, ...]):
    if isinstance(image, np.ndarray):
        return np.transpose(image, perm)
    if hasattr(image, "compute"):
        return image.transpose(perm)
    return _lazy(image).transpose(perm)


def _lazy(image):
    """A zarr array or memory map as dask, chunked like its storage where it has chunks."""
    try:
        import dask.array as da
    except ImportError:  # pragma: no cover - dask comes with the package
        return np.asarray(image)
    chunks = getattr(image, "chunks", None)
    chunks = chunks if isinstance(chunks, tuple) and len(chunks) == len(image.shape) else "auto"
    return da.from_array(image, chunks=chunks)
