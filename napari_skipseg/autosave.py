"""Autosaves of the labels a user corrects by hand, so that the work survives napari closing
or crashing. No Qt and no napari here: the Fine-tune widget hands a copy of its Labels layer
to :func:`save_autosave` (in a worker thread); a script can do the same.

An autosave is two files in :func:`autosave_dir` (``$SKIPSEG_HOME/autosave``, next to the
user's ``models/`` folder), named ``<layer>.<time_ns>-<hex>``:

- ``.npz``: the labels array, compressed (``labels``; read back without pickles);
- ``.json``: the sidecar: layer name, source image layer and its stable id
  (:func:`source_id_of`), shape, dtype, time, scale, translate, the layer's extra metadata,
  the ``.npz`` file's size and SHA-256, and a digest of the array (an unchanged array is
  not saved again).

Each file is written atomically with the model store's helper (temporary file, flush, fsync,
rename), the data first and the sidecar last: an autosave exists once its sidecar does, and
is listed only while the sidecar and its data file agree. A process killed at any moment so
leaves the autosaves that were complete before and perhaps the new one, never a broken one in
the listing. The newest :data:`KEEP` autosaves of each layer OF EACH SOURCE IMAGE are kept
(:attr:`Autosave.key`: two images' layers of the same name never push each other out); older
ones are deleted (sidecar first) only after a new one is complete, so the newest complete one
never is. Sidecars of format 1 (before source ids) are still listed and read; their key is
the image layer's name they recorded.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import io
import json
import os
import re
import secrets
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

AUTOSAVE_FOLDER = "autosave"
#: autosaves kept per layer
KEEP = 3
#: sidecar format version (2: ``source_id``); :data:`READ_FORMATS` are read
FORMAT = 2
READ_FORMATS = (1, 2)
#: "any source" for the filters of :func:`list_autosaves`
ANY = object()
#: leftovers of interrupted saves (temporary files, a data file whose sidecar never came)
#: are deleted once they are this old (seconds); younger ones may belong to a save in progress
STALE_SECONDS = 600.0
_SLUG = re.compile(r"[^A-Za-z0-9_+-]+")


class AutosaveError(ValueError):
    """An autosave cannot be read back: damaged, or not what its sidecar says."""


@dataclass(frozen=True)
class Autosave:
    """One complete autosave (as listed; reading the array is :func:`load_autosave`)."""

    path: Path  # the .npz data file
    sidecar: Path  # the .json next to it
    layer: str
    source: str | None
    shape: tuple[int, ...]
    dtype: str
    time: str  # ISO 8601, local time
    time_ns: int
    scale: tuple[float, ...] | None
    translate: tuple[float, ...] | None
    size: int
    sha256: str
    digest: str
    metadata: dict = field(default_factory=dict)
    source_id: str | None = None

    @property
    def source_key(self) -> str | None:
        """What the autosave belongs to: the source's stable id, else (format 1, scripts)
        the source's name."""
        return self.source_id if self.source_id is not None else self.source

    @property
    def key(self) -> tuple[str | None, str]:
        """``(source_key, layer)``: autosaves are kept (:data:`KEEP`) and compared per key."""
        return self.source_key, self.layer

    @property
    def clock(self) -> str:
        """When it was saved, ``HH:MM:SS`` local time."""
        return _dt.datetime.fromtimestamp(self.time_ns / 1e9).strftime("%H:%M:%S")


def autosave_dir() -> Path:
    """``$SKIPSEG_HOME/autosave`` (beside the user's ``models/`` folder of the model store)."""
    from .model.store import user_model_dir

    return user_model_dir().parent / AUTOSAVE_FOLDER


def array_digest(labels: np.ndarray) -> str:
    """A digest of the array's shape, dtype and values (to tell whether it changed)."""
    arr = np.ascontiguousarray(labels)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.shape}|{arr.dtype.str}|".encode())
    h.update(memoryview(arr).cast("B") if arr.size else b"")
    return h.hexdigest()


def source_id_of(path: str | os.PathLike | None = None, *, sample: Sequence[str] | None = None,
              data=None, name: str = "") -> str:
    """A stable id of the image that labels belong to, the same in every session.

    Its file (``file:<real path>``) when it came from one; a bundled sample
    (``sample:<plugin>/<name>``); else its data (``data:<digest>`` of shape, dtype and a
    strided sample of at most 4096 values of an in-memory array, with ``name``).
    """
    if path:
        return "file:" + os.path.realpath(os.fspath(path))
    if sample:
        return "sample:" + "/".join(str(s) for s in sample)
    h = hashlib.blake2b(digest_size=8)
    h.update(str(name).encode())
    if data is not None:
        shape = tuple(int(n) for n in getattr(data, "shape", ()))
        h.update(f"|{shape}|{getattr(data, 'dtype', '')}|".encode())
        if isinstance(data, np.ndarray) and data.size:  # a strided view: nothing big is copied
            k = max(1, int(4096 ** (1 / data.ndim)))
            h.update(np.ascontiguousarray(data[tuple(slice(None, None, max(1, n // k)) for n in data.shape)]).tobytes())
    return "data:" + h.hexdigest()


def _slug(name: str) -> str:
    return _SLUG.sub("_", str(name)).strip("_")[:60] or "labels"


def _plain(value):
    """JSON for numpy scalars and arrays (layer metadata may hold them)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)


def _floats(values) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def save_autosave(
    labels,
    layer: str,
    *,
    source: str | None = None,
    source_id: str | None = None,
    scale: Sequence[float] | None = None,
    translate: Sequence[float] | None = None,
    metadata: Mapping | None = None,
    folder: str | os.PathLike | None = None,
    keep: int = KEEP,
    skip_unchanged: bool = True,
) -> Autosave:
    """Autosave ``labels`` (an integer array) of the Labels layer called ``layer``.

    ``source`` names the image layer the labels belong to and ``source_id`` identifies its
    data (:func:`source_id_of`; default: the name); ``scale``, ``translate`` and ``metadata``
    (JSON-able: e.g. the reviewed slices) are kept to restore the layer as it was.
    ``folder`` defaults to :func:`autosave_dir`. Afterwards only the newest ``keep``
    autosaves of this source and ``layer`` (:attr:`Autosave.key`) remain; other sources'
    layers of the same name are not touched. With ``skip_unchanged``, labels equal to the
    newest autosave of the same key are not written again and that autosave is returned.
    """
    from .model.store import _atomic_write, _fsync_dir

    if keep < 1:
        raise ValueError(f"keep must be at least 1 (the newest autosave is never deleted), got {keep}")
    arr = np.asarray(labels)
    if arr.dtype.kind not in "biu":
        raise ValueError(f"labels must be integers or booleans, not {arr.dtype}")
    folder = Path(folder) if folder is not None else autosave_dir()
    folder.mkdir(parents=True, exist_ok=True)
    digest = array_digest(arr)
    key_source = source_id if source_id is not None else (None if source is None else str(source))
    if skip_unchanged:
        newest = newest_autosave(layer, folder, source_id=key_source)
        if newest is not None and newest.digest == digest:
            return newest
    buf = io.BytesIO()
    np.savez_compressed(buf, labels=arr)
    blob = buf.getvalue()
    now_ns = time.time_ns()
    stem = f"{_slug(layer)}.{now_ns}-{secrets.token_hex(3)}"
    data_path, sidecar = folder / f"{stem}.npz", folder / f"{stem}.json"
    meta = {
        "format": FORMAT,
        "layer": str(layer),
        "source": None if source is None else str(source),
        "source_id": None if source_id is None else str(source_id),
        "shape": [int(n) for n in arr.shape],
        "dtype": str(arr.dtype),
        "time": _dt.datetime.fromtimestamp(now_ns / 1e9).astimezone().isoformat(timespec="seconds"),
        "time_ns": now_ns,
        "scale": _floats(scale),
        "translate": _floats(translate),
        "file": data_path.name,
        "size": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
        "digest": digest,
        "metadata": dict(metadata or {}),
    }
    text = json.dumps(meta, indent=1, default=_plain) + "\n"  # fails before anything is written
    _atomic_write(data_path, lambda p: Path(p).write_bytes(blob))
    _fsync_dir(folder)  # the data is in place before the sidecar names it
    _atomic_write(sidecar, lambda p: Path(p).write_text(text))
    _fsync_dir(folder)
    entry = _entry(sidecar, json.loads(text))
    _rotate(folder, entry.key, keep)
    _clean(folder)
    return entry


def _entry(sidecar: Path, meta) -> Autosave | None:
    """The autosave a sidecar describes, or None when the sidecar is not a valid one."""
    try:
        if not isinstance(meta, dict) or meta.get("format") not in READ_FORMATS:
            return None
        shape = tuple(int(n) for n in meta["shape"])
        np.dtype(meta["dtype"])
        scale, translate = meta.get("scale"), meta.get("translate")
        return Autosave(
            path=sidecar.with_suffix(".npz"), sidecar=sidecar, layer=str(meta["layer"]),
            source=None if meta.get("source") is None else str(meta["source"]), shape=shape,
            dtype=str(meta["dtype"]), time=str(meta["time"]), time_ns=int(meta["time_ns"]),
            scale=None if scale is None else tuple(float(v) for v in scale),
            translate=None if translate is None else tuple(float(v) for v in translate),
            size=int(meta["size"]), sha256=str(meta["sha256"]), digest=str(meta["digest"]),
            metadata=dict(meta.get("metadata") or {}),
            source_id=None if meta.get("source_id") is None else str(meta["source_id"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def list_autosaves(layer: str | None = None, folder: str | os.PathLike | None = None, *,
                   source_id=ANY) -> list[Autosave]:
    """The complete autosaves (of ``layer``, or all; of the source ``source_id``, compared
    with :attr:`Autosave.source_key`, or of any), oldest first.

    An autosave is listed only if its sidecar reads as one and its data file exists with the
    size the sidecar says: what an interrupted save leaves behind is not listed. (The
    checksum is checked when loading, :func:`load_autosave`.)
    """
    folder = Path(folder) if folder is not None else autosave_dir()
    try:
        sidecars = [p for p in folder.glob("*.json") if not p.name.startswith(".")]
    except OSError:
        return []
    found = []
    for sidecar in sidecars:
        try:
            meta = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        entry = _entry(sidecar, meta)
        if entry is None or (layer is not None and entry.layer != layer):
            continue
        if source_id is not ANY and entry.source_key != source_id:
            continue
        try:
            if entry.path.stat().st_size != entry.size:
                continue
        except OSError:
            continue
        found.append(entry)
    return sorted(found, key=lambda e: (e.time_ns, e.path.name))


def newest_autosave(layer: str | None = None, folder: str | os.PathLike | None = None, *,
                    source_id=ANY) -> Autosave | None:
    """The newest complete autosave (of ``layer``, or of any layer; of ``source_id``, or of
    any source), or None."""
    entries = list_autosaves(layer, folder, source_id=source_id)
    return entries[-1] if entries else None


def load_autosave(autosave: Autosave | str | os.PathLike) -> tuple[np.ndarray, Autosave]:
    """``(labels, autosave)`` for an autosave (or the path of its ``.npz`` or ``.json``).

    Raises :class:`AutosaveError` when the data file differs from what the sidecar recorded
    (size, SHA-256, shape, dtype) or does not read.
    """
    if isinstance(autosave, Autosave):
        entry = autosave
    else:
        path = Path(autosave)
        sidecar = path.with_suffix(".json")
        try:
            entry = _entry(sidecar, json.loads(sidecar.read_text()))
        except (OSError, ValueError) as err:
            raise AutosaveError(f"{sidecar}: not a readable autosave sidecar ({err})") from err
        if entry is None:
            raise AutosaveError(f"{sidecar}: not an autosave sidecar")
    try:
        blob = entry.path.read_bytes()
    except OSError as err:
        raise AutosaveError(f"{entry.path}: cannot be read ({err.strerror or err})") from err
    if len(blob) != entry.size or hashlib.sha256(blob).hexdigest() != entry.sha256:
        raise AutosaveError(f"{entry.path}: damaged (size or checksum differs from {entry.sidecar.name})")
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as npz:
            labels = npz["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        raise AutosaveError(f"{entry.path}: does not read as labels ({err})") from err
    if tuple(labels.shape) != entry.shape or str(labels.dtype) != entry.dtype:
        raise AutosaveError(f"{entry.path}: holds {labels.dtype} {labels.shape}, its sidecar says "
                            f"{entry.dtype} {entry.shape}")
    return labels, entry


def load_newest(layer: str | None = None, folder: str | os.PathLike | None = None, *,
                source_id=ANY) -> tuple[np.ndarray, Autosave] | None:
    """The newest autosave (of ``layer``; of ``source_id``) that reads back, skipping damaged
    ones; or None."""
    for entry in reversed(list_autosaves(layer, folder, source_id=source_id)):
        try:
            return load_autosave(entry)
        except AutosaveError:
            continue
    return None


def _rotate(folder: Path, key: tuple[str | None, str], keep: int) -> None:
    """Delete all but the newest ``keep`` complete autosaves of ``key`` (source, layer;
    sidecar first, so each leaves the listing in one step)."""
    source, layer = key
    for entry in list_autosaves(layer, folder, source_id=source)[:-keep]:
        with contextlib.suppress(OSError):
            entry.sidecar.unlink()
            entry.path.unlink()


def _clean(folder: Path) -> None:
    """Delete stale leftovers of interrupted saves: temporary files and data files whose
    sidecar never came."""
    now = time.time()
    try:
        paths = list(folder.iterdir())
    except OSError:
        return
    for path in paths:
        name = path.name
        leftover = (name.startswith(".") and name.endswith(".tmp")) or (
            name.endswith(".npz") and not name.startswith(".") and not path.with_suffix(".json").exists())
        if not leftover:
            continue
        with contextlib.suppress(OSError):
            if now - path.stat().st_mtime > STALE_SECONDS:
                path.unlink()
