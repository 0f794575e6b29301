"""Plain zarr arrays and OME-Zarr (OME-NGFF 0.4 and 0.5) images, pyramids and labels.

Reading is lazy: the pixels stay on disk in a :class:`zarr.Array` and are read chunk by
chunk when indexed. Writing streams the full-resolution level into zarr chunk by chunk; when
it is complete, the lower levels of a pyramid are made from it (:func:`pyramid_shapes`: halved
in Y and X while a plane is over :data:`PYRAMID_MIN` pixels; labels by taking every second
pixel, images by 2 x 2 means) and the OME-NGFF metadata (``multiscales``, ``image-label``
with the class names as label ``properties``) is written by the ome-zarr package's writer
(``ome_zarr.writer``): NGFF 0.5 in zarr format 3 for new images, and for labels written next
to an image the image's own NGFF version and zarr format.

A folder is written under a temporary name and renamed into place when complete, so a
reader never meets a half-written store at the final path. The temporary name names its
writer (host and process): what a killed write leaves is removed by the next write into the
same folder (:func:`clean_stale_temporaries`). Every store written here carries the
:data:`MARKER` attribute, so that the napari writer replaces only stores it wrote.
"""

from __future__ import annotations

import os
import re
import shutil
import uuid
import warnings
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import replace
from typing import Any

import numpy as np

from .meta import ImageMeta, ImageReadError, default_axes, file_stem
from .validate import ANY_CODEC_RATIO, GuardedArray, check_claim, check_image, numbers

#: NGFF axis names -> our axis letters.
_NAMES = {"t": "T", "c": "C", "z": "Z", "y": "Y", "x": "X"}
_TYPES = {"T": "time", "C": "channel", "Z": "space", "Y": "space", "X": "space"}
_UNITS = {  # NGFF (UDUNITS-2) unit names are ours; a few short spellings too
    "um": "micrometer", "µm": "micrometer", "micron": "micrometer", "nm": "nanometer",
    "mm": "millimeter", "cm": "centimeter", "m": "meter",
}  # fmt: skip
_MARKERS = ("zarr.json", ".zgroup", ".zarray")


def is_zarr(path: str | os.PathLike) -> bool:
    """Whether `path` is a zarr store folder (by its ``.zarr`` name or its metadata files)."""
    path = os.fspath(path).rstrip("/\\")
    if not os.path.isdir(path):
        return False
    return path.lower().endswith(".zarr") or any(
        os.path.exists(os.path.join(path, m)) for m in _MARKERS
    )


def _zarr():
    try:
        import zarr
    except ImportError as err:  # pragma: no cover - zarr is a dependency of [formats]
        raise ImportError("reading zarr needs zarr: pip install 'napari-skipseg[formats]'") from err
    return zarr


def _ome_attrs(attrs: Any) -> tuple[dict | None, str | None]:
    """The OME attributes dict and NGFF version of a group's attributes, if any."""
    if not isinstance(attrs, dict):
        return None, None
    if isinstance(attrs.get("ome"), dict):  # NGFF 0.5
        ome = attrs["ome"]
        return ome, str(ome.get("version", "0.5"))
    if "multiscales" in attrs or "labels" in attrs or "image-label" in attrs:  # NGFF <= 0.4
        ms = attrs.get("multiscales")
        first = ms[0] if isinstance(ms, list) and ms and isinstance(ms[0], dict) else {}
        return attrs, str(first.get("version", "0.4"))
    return None, None


def read_zarr(path: str | os.PathLike, lazy: bool = False) -> tuple[Any, ImageMeta]:
    """Read a zarr array, or the full-resolution level of an OME-Zarr image.

    Parameters
    ----------
    path : str or path-like
        A zarr store folder: an OME-Zarr image (group with ``multiscales``), or a plain
        array (axes from the ``skipseg`` or xarray ``_ARRAY_DIMENSIONS`` attributes,
        else from the number of dimensions).
    lazy : bool
        Return the array on disk (pixels read on access; a
        :class:`~napari_skipseg.io.validate.GuardedArray` around the :class:`zarr.Array`,
        so a damaged chunk raises :class:`ImageReadError` naming the store) instead of numpy.

    Returns
    -------
    data : GuardedArray or numpy.ndarray
    meta : ImageMeta
        For OME-Zarr, ``meta.extra["ome_zarr"]`` holds the NGFF ``version``, the
        ``levels`` (dataset paths, full resolution first), the level-0 ``translation`` and
        the ``labels`` found next to the image.

    Raises
    ------
    ImageReadError
        If the store cannot be opened, holds no image, its metadata are malformed (every
        attribute read is checked: multiscales, datasets, axes, coordinateTransformations,
        labels, ``skipseg``), its axes are not 2 to 5 of ``t, c, z, y, x`` with y and x
        last, a chunk shape is not positive, an axis has length 0, or it claims more bytes
        than the read limits (:mod:`napari_skipseg.io.validate`).
    """
    path = os.fspath(path).rstrip("/\\")
    if not os.path.exists(path):
        raise ImageReadError(path, "no such file or folder")
    zarr = _zarr()
    try:
        node = zarr.open(path, mode="r")
        attrs = dict(node.attrs)
    except Exception as e:  # noqa: BLE001 - zarr raises many kinds on damaged stores
        raise ImageReadError(path, f"not a readable zarr store ({e!r})") from e
    name = file_stem(path, (".ome.zarr", ".zarr"))
    if isinstance(node, zarr.Array):
        _check_array(node, path, "")
        data, meta = node, _plain_meta(node, attrs, path, name)
        folder = path
    else:
        ome, version = _ome_attrs(attrs)
        if ome is None or not ome.get("multiscales"):
            try:
                arrays = sorted(k for k, _ in node.arrays())
            except Exception:  # noqa: BLE001 - a damaged member
                arrays = []
            hint = f"; it holds arrays {arrays}: open one of them" if arrays else ""
            raise ImageReadError(path, f"zarr group without OME-NGFF multiscales metadata{hint}")
        data, meta = _ome_image(node, ome, version, path, name)
        folder = os.path.join(path, meta.extra["ome_zarr"]["levels"][0])
    check_image(meta, data.shape, data.dtype)
    stored = None if lazy else _stored_bytes(folder)
    check_claim(path, data.shape, data.dtype, lazy=lazy, chunk=data.chunks,
                stored=None if stored is None else max(stored, _FILL_FLOOR // ANY_CODEC_RATIO),
                ratio=ANY_CODEC_RATIO, what="the zarr metadata")
    return (GuardedArray(data, path) if lazy else _load(data, path)), meta


#: An eager read may allocate this much fill value without any chunk stored.
_FILL_FLOOR = 256 << 20
_ZARR_META = {"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"}


def _stored_bytes(folder: str, most: int = 200_000) -> int | None:
    """Bytes of the chunk files under an array's folder (``None`` past `most` files)."""
    total, seen = 0, 0
    for root, _, names in os.walk(folder):
        for n in names:
            if n in _ZARR_META:
                continue
            seen += 1
            if seen > most:
                return None
            with suppress(OSError):
                total += os.path.getsize(os.path.join(root, n))
    return total


def _check_array(array: Any, path: str, where: str) -> None:
    """A zarr array's shape and chunk shape are usable (positive chunks, same length)."""
    where = f"zarr array {where!r}" if where else "zarr array"
    try:
        shape, chunks = tuple(array.shape), tuple(array.chunks)
    except Exception as e:  # noqa: BLE001 - an unsupported chunk grid, ...
        raise ImageReadError(path, f"{where}: unreadable chunk layout ({e!r})") from e
    if len(chunks) != len(shape) or not all(isinstance(c, int) and c >= 1 for c in chunks):
        raise ImageReadError(path, f"{where}: chunk shape {chunks} for shape {shape}; chunks "
                             "must be positive whole numbers, one per axis")


def read_levels(path: str | os.PathLike) -> list[Any]:
    """Every resolution level of an OME-Zarr image as lazy arrays, largest first."""
    data, meta = read_zarr(path, lazy=True)
    info = meta.extra.get("ome_zarr")
    if not info:
        return [data]
    group = _zarr().open_group(os.fspath(path), mode="r")
    return [GuardedArray(group[p], os.fspath(path)) for p in info["levels"]]


def _load(data: Any, path: str) -> np.ndarray:
    try:
        return np.asarray(data[...])
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - a truncated or missing chunk
        raise ImageReadError(path, f"cannot read the zarr data, truncated or corrupt? ({e!r})") from e


def _plain_meta(array: Any, attrs: dict, path: str, name: str) -> ImageMeta:
    ndim = array.ndim
    stored = attrs.get("skipseg") or {}
    if not isinstance(stored, dict):
        raise ImageReadError(path, f"zarr attribute 'skipseg' is {stored!r}, not a dict of axes, spacing, unit")
    axes = stored.get("axes")
    if axes is not None and not isinstance(axes, str):
        raise ImageReadError(path, f"zarr attribute skipseg.axes is {axes!r}, not a string like 'ZYX'")
    if not axes:
        dims = attrs.get("_ARRAY_DIMENSIONS") or getattr(array.metadata, "dimension_names", None)
        if isinstance(dims, list | tuple) and all(isinstance(d, str) and d.lower() in _NAMES for d in dims):
            axes = "".join(_NAMES[d.lower()] for d in dims)
    if not axes:
        if not 2 <= ndim <= 5:
            raise ImageReadError(path, f"zarr array of {ndim} dimension(s) {array.shape}; "
                                 "expected 2 to 5 (YX, ZYX, TZYX, TCZYX)")
        axes = default_axes(ndim)
    spacing = stored.get("spacing") or ()
    if spacing:
        spacing = numbers(path, spacing, "zarr attribute skipseg.spacing", positive=True)
    unit = stored.get("unit", "pixel")
    if not isinstance(unit, str):
        raise ImageReadError(path, f"zarr attribute skipseg.unit is {unit!r}, not a unit name")
    return ImageMeta(axes, spacing, unit, name=name, path=path)


def _dict(path: str, value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise ImageReadError(path, f"OME-Zarr {what} is {_short(value)}, not an object")
    return value


def _list(path: str, value: Any, what: str, empty: bool = False) -> list:
    if not isinstance(value, list) or (not value and not empty):
        raise ImageReadError(path, f"OME-Zarr {what} is {_short(value)}, not a{'' if empty else ' non-empty'} list")
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _dataset_path(path: str, value: Any, i: int) -> str:
    if not isinstance(value, str) or not value or value.startswith(("/", "\\")) or any(
        part in ("", ".", "..") for part in value.replace("\\", "/").split("/")
    ):
        raise ImageReadError(path, f"OME-Zarr datasets[{i}].path is {_short(value)}, not a relative path in "
                             "the store")
    return value


def _ome_image(group: Any, ome: dict, version: str, path: str, name: str) -> tuple[Any, ImageMeta]:
    zarr = _zarr()
    ms = _dict(path, _list(path, ome["multiscales"], "multiscales")[0], "multiscales[0]")
    datasets = _list(path, ms.get("datasets"), "multiscales[0].datasets")
    datasets = [_dict(path, d, f"datasets[{i}]") for i, d in enumerate(datasets)]
    paths = [_dataset_path(path, d.get("path"), i) for i, d in enumerate(datasets)]
    levels = []
    for p in paths:
        try:
            level = group[p]
        except KeyError as e:
            raise ImageReadError(path, f"OME-Zarr dataset {p!r} is missing from the store") from e
        except Exception as e:  # noqa: BLE001 - damaged metadata of the level
            raise ImageReadError(path, f"OME-Zarr dataset {p!r} cannot be opened ({e!r})") from e
        if not isinstance(level, zarr.Array):
            raise ImageReadError(path, f"OME-Zarr dataset {p!r} is a group, not an array")
        _check_array(level, path, p)
        levels.append(level)
    raw_axes = ms.get("axes")
    if not raw_axes:  # NGFF <= 0.3: no axes; assume the default order
        first = levels[0]
        raw_axes = list(default_axes(first.ndim).lower()) if 2 <= first.ndim <= 5 else ["?"]
    raw_axes = _list(path, raw_axes, "multiscales[0].axes")
    axes, unit = "", "pixel"
    for a in raw_axes:
        a_name = a.get("name") if isinstance(a, dict) else a
        if not isinstance(a_name, str):
            raise ImageReadError(path, f"OME-Zarr axis {_short(a)} has no name")
        letter = _NAMES.get(a_name.lower())
        if letter is None and isinstance(a, dict):
            letter = {"time": "T", "channel": "C"}.get(str(a.get("type", "")))
        if letter is None:
            raise ImageReadError(path, f"OME-Zarr axis {a_name!r} is not one of t, c, z, y, x")
        axes += letter
        a_unit = a.get("unit") if isinstance(a, dict) else None
        if a_unit and letter in "ZYX" and unit == "pixel":
            if not isinstance(a_unit, str):
                raise ImageReadError(path, f"OME-Zarr axis {a_name!r} has unit {_short(a_unit)}, not a name")
            unit = _UNITS.get(a_unit, a_unit)
    for p, level in zip(paths, levels, strict=True):
        if level.ndim != len(axes):
            raise ImageReadError(path, f"OME-Zarr dataset {p!r} has {level.ndim} dimensions; the axes "
                                 f"{axes!r} name {len(axes)}")
    scale = _transform(path, datasets[0], "scale", len(axes))
    outer = _transform(path, ms, "scale", len(axes))
    spacing = tuple(float(s) * float(o) for s, o in zip(scale, outer, strict=True))
    spacing = tuple(s if a in "ZYX" else 1.0 for a, s in zip(axes, spacing, strict=True))
    translation = _transform(path, datasets[0], "translation", len(axes), default=0.0)
    labels = _label_names(group, path)
    ms_name = ms.get("name", "")
    extra = {"ome_zarr": {"version": version, "levels": paths,
                          "translation": [float(t) for t in translation], "labels": labels,
                          "name": ms_name if isinstance(ms_name, str) else ""}}
    return levels[0], ImageMeta(axes, spacing, unit, name=name, path=path, extra=extra)


def _label_names(group: Any, path: str) -> list[str]:
    """Names in the ``labels`` group's list that are label images present in the store.

    Entries that are not plain names, or name nothing there, are left out with a warning
    (the image itself is fine)."""
    try:
        if "labels" not in group:
            return []
        lab_ome, _ = _ome_attrs(dict(group["labels"].attrs))
    except Exception:  # noqa: BLE001 - a damaged labels group does not spoil the image
        warnings.warn(f"{path}: the labels group cannot be read; labels left out", stacklevel=3)
        return []
    names = (lab_ome or {}).get("labels", [])
    if not isinstance(names, list):
        warnings.warn(f"{path}: OME-Zarr labels is {_short(names)}, not a list; labels left out", stacklevel=3)
        return []
    good = []
    for n in names:
        ok = isinstance(n, str) and n and "/" not in n and "\\" not in n and not n.startswith(".")
        if ok and os.path.isdir(os.path.join(path, "labels", n)):
            good.append(n)
        else:
            warnings.warn(f"{path}: OME-Zarr label {_short(n)} is not a label image in the store; left out",
                          stacklevel=3)
    return good


def _transform(path: str, node: dict, kind: str, n: int, default: float = 1.0) -> list[float]:
    transforms = node.get("coordinateTransformations") or []
    for i, t in enumerate(_list(path, transforms, "coordinateTransformations", empty=True)):
        t = _dict(path, t, f"coordinateTransformations[{i}]")
        if t.get("type") == kind and kind in t:
            values = numbers(path, t[kind], f"OME-Zarr {kind}", positive=kind == "scale")
            if len(values) == n:
                return values
    return [default] * n


# --- writing ------------------------------------------------------------------------------


def _ngff_axes(meta: ImageMeta) -> list[dict]:
    out = []
    for a in meta.axes:
        entry = {"name": a.lower(), "type": _TYPES[a]}
        if a in "ZYX" and meta.unit not in ("pixel", ""):
            entry["unit"] = meta.unit
        out.append(entry)
    return out


def _multiscales(meta: ImageMeta, paths: Sequence[str], factors: Sequence[Sequence[int]], name: str,
                 version: str) -> dict:
    datasets = []
    for p, f in zip(paths, factors, strict=True):
        scale = [s * k for s, k in zip(meta.spacing, f, strict=True)]
        # pixel centres of a level downsampled by k sit (k - 1) / 2 pixels in
        translation = [(k - 1) / 2 * s for s, k in zip(meta.spacing, f, strict=True)]
        ct: list[dict] = [{"type": "scale", "scale": scale}]
        if any(translation):
            ct.append({"type": "translation", "translation": translation})
        datasets.append({"path": p, "coordinateTransformations": ct})
    ms = {"axes": _ngff_axes(meta), "datasets": datasets, "name": name}
    if version != "0.5":
        ms["version"] = version
    return ms


def _check_meta(meta: ImageMeta, shape: tuple[int, ...], path: str) -> ImageMeta:
    meta = replace(meta, path=path)
    meta.validate(shape)
    if meta.rgb:
        raise ImageReadError(path, "OME-Zarr has no RGB sample axis; move the samples to a C axis")
    return meta


#: attribute our stores carry (on the root group, and on a ``labels/<name>`` group): the
#: napari writer replaces only a store that has it (see :func:`written_by_us`)
MARKER = "napari_skipseg"
#: a temporary store whose writer cannot be seen alive (another host, a name without a
#: writer) is deleted once this old (seconds); one whose writer died here, at once
STALE_TMP_SECONDS = 24 * 3600.0
#: ``.<final name>.<8 hex>[.<host id>-<pid>].tmp[.old]``: what :func:`temporary_name` and
#: :func:`_swap_in` make (the older names had no writer part)
_TMP = re.compile(r"^\.(?P<final>.+)\.[0-9a-f]{8}(?:\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+))?\.tmp(?P<old>\.old)?$")


def _host_id() -> str:
    import hashlib
    import socket

    return hashlib.blake2s(socket.gethostname().encode(), digest_size=4).hexdigest()


def temporary_name(path: str | os.PathLike) -> str:
    """A fresh temporary path next to `path` that names its writer (host and process), so
    that :func:`clean_stale_temporaries` can tell when it is left over."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path).rstrip("/\\")))
    return os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.{_host_id()}-{os.getpid()}.tmp")


def _writer_alive(host: str | None, pid: str | None) -> bool | None:
    """True/False for a writer on this host; None when it cannot be told."""
    if host is None or pid is None or host != _host_id():
        return None
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


def _looks_like_ours(path: str) -> bool:
    """A folder holding a zarr store, the big NIfTI path's ``result.zarr``, or nothing."""
    try:
        names = set(os.listdir(path))
    except OSError:
        return False
    return not names or bool(names & {*_MARKERS, "result.zarr"})


def clean_stale_temporaries(folder: str | os.PathLike, max_age: float = STALE_TMP_SECONDS) -> list[str]:
    """Delete the temporary stores that interrupted writes (a crash, ``kill -9``) left in
    `folder`; returns what was deleted or put back.

    Only folders named as :func:`temporary_name` names them and holding a zarr store (or
    nothing) are touched, and only when their writer is dead (same host) or they are older
    than `max_age`. A store that was being replaced (``*.tmp.old``) whose final path is
    missing is moved back there instead: the write did not finish, the old result stays.
    """
    import time

    folder = os.fspath(folder)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    done = []
    now = time.time()
    for name in names:
        m = _TMP.match(name)
        path = os.path.join(folder, name)
        if m is None or os.path.islink(path) or not os.path.isdir(path) or not _looks_like_ours(path):
            continue
        alive = _writer_alive(m["host"], m["pid"])
        try:
            old = now - os.stat(path).st_mtime > max_age
        except OSError:
            continue
        if alive or (alive is None and not old):
            continue
        final = os.path.join(folder, m["final"])
        try:
            if m["old"] and not os.path.lexists(final):
                os.replace(path, final)
            else:
                shutil.rmtree(path)
        except OSError:
            continue
        done.append(path)
    return done


def written_by_us(path: str | os.PathLike) -> bool:
    """Whether the zarr store at `path` carries our :data:`MARKER` (we wrote it)."""
    path = os.fspath(path).rstrip("/\\")
    if not os.path.isdir(path) or os.path.islink(path):
        return False
    try:
        node = _zarr().open(path, mode="r")
        return isinstance(dict(node.attrs).get(MARKER), dict)
    except Exception:  # noqa: BLE001 - not a zarr store at all: not ours
        return False


def _fresh_target(path: str, overwrite: bool) -> str:
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path}: exists; pass overwrite=True to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    clean_stale_temporaries(folder)
    return temporary_name(path)


def _swap_in(tmp: str, path: str) -> None:
    """Move the complete store `tmp` to `path`, replacing an old store there."""
    old = None
    if os.path.lexists(path):
        old = f"{tmp}.old"
        os.replace(path, old)
    os.replace(tmp, path)
    if old:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.unlink(old)


class ZarrTarget:
    """An OME-Zarr store being written: ``array`` takes pixels; :meth:`commit` publishes it.

    Made by :func:`create_ome_zarr` and :func:`create_labels`. Until :meth:`commit`, the
    data live under a temporary name next to the destination; :meth:`abort` removes them.
    Usable as a context manager (commit on success, abort on error).
    """

    def __init__(self, array: Any, tmp: str, path: str, on_commit=None, on_finish=None) -> None:
        self.array = array
        self.tmp = tmp
        self.path = path
        self._on_commit = on_commit
        self._on_finish = on_finish  # pyramid levels and NGFF metadata, before the store is published
        self.done = False

    def commit(self) -> str:
        if not self.done:
            if self._on_finish is not None:
                try:
                    self._on_finish()
                except BaseException:
                    self.abort()
                    raise
            _swap_in(self.tmp, self.path)
            if self._on_commit is not None:
                self._on_commit()
            self.done = True
        return self.path

    def abort(self) -> None:
        if not self.done:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.done = True

    def __enter__(self) -> ZarrTarget:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.commit()
        else:
            self.abort()


def default_chunks(shape: Sequence[int], axes: str, block: Sequence[int] | None = None) -> tuple[int, ...]:
    """One chunk per YX plane (or per ZYX `block`), at most 1024 x 1024 pixels in YX."""
    nd = len(block) if block else 2
    chunks = [1] * (len(shape) - nd)
    spatial = block or [min(s, 1024) for s in shape[-2:]]
    chunks += [min(int(b), int(s)) for b, s in zip(spatial, shape[-nd:], strict=True)]
    return tuple(max(c, 1) for c in chunks)


def create_ome_zarr(path: str | os.PathLike, shape: Sequence[int], dtype: Any, meta: ImageMeta | None = None,
                    *, chunks: Sequence[int] | None = None, overwrite: bool = False,
                    label: bool = False, class_names: Sequence[str] | None = None) -> ZarrTarget:
    """Start writing a new OME-Zarr image (NGFF 0.5, zarr format 3); on commit the lower
    levels of its pyramid are made from the full resolution written into ``target.array``.

    Parameters
    ----------
    path : str or path-like
        The store folder to create (conventionally ending in ``.zarr``).
    shape, dtype
        Of the full-resolution array.
    meta : ImageMeta, optional
        Axes, spacing and unit (default from the number of dimensions).
    chunks : sequence of int, optional
        Chunk shape (default: :func:`default_chunks`).
    overwrite : bool
        Replace an existing store at `path` on commit.
    label : bool
        Mark the image as a label image (``image-label`` metadata).
    class_names : sequence of str, optional
        Labels whose values are class ids: the name of each (NGFF label ``properties``).

    Returns
    -------
    ZarrTarget
        Write into ``target.array``, then ``target.commit()``.
    """
    zarr = _zarr()
    path = os.fspath(path).rstrip("/\\")
    shape = tuple(int(s) for s in shape)
    meta = _check_meta(meta or ImageMeta(default_axes(len(shape))), shape, path)
    tmp = _fresh_target(path, overwrite)
    root = zarr.open_group(tmp, mode="w", zarr_format=3)
    root.attrs.update({MARKER: {"label": bool(label)}})
    array = root.create_array("0", shape=shape, dtype=np.dtype(dtype), fill_value=0,
                              chunks=tuple(chunks or default_chunks(shape, meta.axes)),
                              dimension_names=[a.lower() for a in meta.axes])
    name = meta.name or file_stem(path, (".ome.zarr", ".zarr"))

    def finish() -> None:
        _finish_ome(root, array, meta, name, "0.5", label=bool(label), class_names=class_names)

    return ZarrTarget(array, tmp, path, on_finish=finish)


def create_labels(image_path: str | os.PathLike, name: str, shape: Sequence[int], dtype: Any,
                  meta: ImageMeta | None = None, *, chunks: Sequence[int] | None = None,
                  overwrite: bool = False, class_names: Sequence[str] | None = None) -> ZarrTarget:
    """Start writing a label image into ``labels/<name>`` of the OME-Zarr image at `image_path`.

    The labels use the image's NGFF version and zarr format, and on commit their pyramid is
    made, `name` is added to the ``labels`` list (OME-Zarr viewers show them over the image)
    and ``class_names`` (labels whose values are class ids) become the label ``properties``.
    """
    zarr = _zarr()
    image_path = os.fspath(image_path).rstrip("/\\")
    _, image_meta = read_zarr(image_path, lazy=True)
    version = (image_meta.extra.get("ome_zarr") or {}).get("version")
    if version is None:
        raise ImageReadError(image_path, "labels can only be written next to an OME-Zarr image")
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"{name!r} is not a usable label name")
    shape = tuple(int(s) for s in shape)
    meta = _check_meta(meta or image_meta.without_channels(), shape, f"{image_path}/labels/{name}")
    group = zarr.open_group(image_path, mode="r+")
    fmt = group.metadata.zarr_format
    labels = group.require_group("labels")
    dest = os.path.join(image_path, "labels", name)
    if os.path.exists(dest) and not overwrite:
        raise FileExistsError(f"{dest}: exists; pass overwrite=True to replace it")
    clean_stale_temporaries(os.path.join(image_path, "labels"))
    tmp_name = os.path.basename(temporary_name(dest))
    sub = labels.create_group(tmp_name)
    sub.attrs.update({MARKER: {"label": True}})
    kwargs = {"dimension_names": [a.lower() for a in meta.axes]} if fmt == 3 else {}
    array = sub.create_array("0", shape=shape, dtype=np.dtype(dtype), fill_value=0,
                             chunks=tuple(chunks or default_chunks(shape, meta.axes)), **kwargs)

    def finish() -> None:
        _finish_ome(sub, array, meta, name, version, label=True, class_names=class_names)

    def register() -> None:
        from ome_zarr.writer import add_metadata, get_metadata

        grp = zarr.open_group(os.path.join(image_path, "labels"), mode="r+")
        listed = get_metadata(grp).get("labels", [])
        add_metadata(grp, {"labels": sorted(set(listed) | {name})}, fmt=_ngff_format(version))

    return ZarrTarget(array, os.path.join(image_path, "labels", tmp_name), dest, on_commit=register,
                      on_finish=finish)


# -- pyramids and NGFF metadata (ome-zarr's writer) ----------------------------------------------

#: a pyramid level is added while the previous one is larger than this in Y or X
PYRAMID_MIN = 1024


def pyramid_shapes(shape: Sequence[int], axes: str) -> list[tuple[int, ...]]:
    """The shape of each pyramid level: the full resolution, then halved in Y and X (rounded
    up) while the last level is larger than :data:`PYRAMID_MIN` in Y or X. Only images whose
    last two axes are Y and X get lower levels."""
    shapes = [tuple(int(s) for s in shape)]
    if axes[-2:] != "YX":
        return shapes
    while max(shapes[-1][-2:]) > PYRAMID_MIN:
        *lead, y, x = shapes[-1]
        shapes.append((*lead, (y + 1) // 2, (x + 1) // 2))
    return shapes


def _halve(block: np.ndarray, label: bool) -> np.ndarray:
    """``block`` halved in its last two axes: every second pixel for labels (no new values),
    2 x 2 means for images (an odd last row or column is averaged with itself)."""
    if label:
        return block[..., ::2, ::2]
    pad = [(0, 0)] * (block.ndim - 2) + [(0, block.shape[-2] % 2), (0, block.shape[-1] % 2)]
    b = np.pad(block, pad, mode="edge").astype(np.float64)
    mean = b.reshape(*b.shape[:-2], b.shape[-2] // 2, 2, b.shape[-1] // 2, 2).mean(axis=(-3, -1))
    dtype = block.dtype
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.clip(np.rint(mean), info.min, info.max).astype(dtype)
    if dtype.kind == "b":
        return mean >= 0.5
    return mean.astype(dtype)


def _ngff_format(version: str):
    from ome_zarr.format import FormatV04, FormatV05

    return FormatV05() if version == "0.5" else FormatV04()


def _finish_ome(group: Any, full: Any, meta: ImageMeta, name: str, version: str, *, label: bool,
                class_names: Sequence[str] | None) -> None:
    """Write the lower pyramid levels of ``group`` from its level ``0`` (``full``), one
    leading-axis chunk row at a time, then its NGFF metadata with ome-zarr's writer."""
    from ome_zarr.writer import add_metadata, write_multiscales_metadata

    shapes = pyramid_shapes(full.shape, meta.axes)
    previous = full
    fmt3 = group.metadata.zarr_format == 3
    for k, shape in enumerate(shapes[1:], start=1):
        chunks = tuple(min(c, s) for c, s in zip(full.chunks, shape, strict=True))
        kwargs = {"dimension_names": [a.lower() for a in meta.axes]} if fmt3 else {}
        level = group.create_array(str(k), shape=shape, dtype=full.dtype, fill_value=0, chunks=chunks, **kwargs)
        if len(shape) <= 2:
            level[...] = _halve(np.asarray(previous[...]), label)
        else:
            step = previous.chunks[0]
            for i in range(0, shape[0], step):
                level[i:i + step] = _halve(np.asarray(previous[i:i + step]), label)
        previous = level
    factors = [[1] * (len(full.shape) - 2) + [2 ** k, 2 ** k] if k else [1] * len(full.shape)
               for k in range(len(shapes))]
    datasets = _multiscales(meta, [str(k) for k in range(len(shapes))], factors, name, version)["datasets"]
    fmt = _ngff_format(version)
    write_multiscales_metadata(group, datasets, fmt=fmt, axes=_ngff_axes(meta), name=name)
    if label:
        image_label: dict[str, Any] = {"version": version}
        if class_names:
            image_label["properties"] = [{"label-value": i, "class": str(n)} for i, n in enumerate(class_names)]
        add_metadata(group, {"image-label": image_label}, fmt=fmt)


def write_ome_zarr(path: str | os.PathLike, data: Any, meta: ImageMeta | None = None, *,
                   chunks: Sequence[int] | None = None, overwrite: bool = True,
                   label: bool | None = None, class_names: Sequence[str] | None = None) -> str:
    """Write an array (numpy, dask or zarr) as an OME-Zarr image (with a pyramid when its
    planes are large, :func:`pyramid_shapes`).

    The array is copied one chunk row at a time, so a lazy array is never loaded whole.
    Integer arrays of unsigned type are marked as label images unless `label` says otherwise.
    """
    data = data if hasattr(data, "shape") and hasattr(data, "dtype") else np.asarray(data)
    if data.dtype == bool:
        data = np.asarray(data).astype(np.uint8)
    if label is None:
        label = np.dtype(data.dtype).kind == "u" and np.dtype(data.dtype).itemsize >= 4
    target = create_ome_zarr(path, data.shape, data.dtype, meta, chunks=chunks, overwrite=overwrite,
                             label=label, class_names=class_names)
    with target:
        copy_blocks(data, target.array)
    return target.path


def write_labels_next_to(image_path: str | os.PathLike, name: str, data: Any, meta: ImageMeta | None = None,
                         *, overwrite: bool = False, class_names: Sequence[str] | None = None) -> str:
    """Write `data` as ``labels/<name>`` of an OME-Zarr image; returns the labels path."""
    data = data if hasattr(data, "shape") and hasattr(data, "dtype") else np.asarray(data)
    target = create_labels(image_path, name, data.shape, data.dtype, meta, overwrite=overwrite,
                           class_names=class_names)
    with target:
        copy_blocks(data, target.array)
    return target.path


def copy_blocks(src: Any, dst: Any) -> None:
    """Copy `src` into `dst` (same shape) one leading-axis chunk row at a time."""
    if src.ndim == 0 or src.shape[0] == 0:
        return
    step = (getattr(dst, "chunks", None) or (1,))[0]
    if src.ndim <= 2 or src.size <= 16_000_000:
        dst[...] = np.asarray(src[...])
        return
    for i in range(0, src.shape[0], step):
        dst[i : i + step] = np.asarray(src[i : i + step])

