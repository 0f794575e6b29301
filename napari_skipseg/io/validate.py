"""One validating layer for what every reader takes from a file's metadata.

A header can claim anything: an OME-TIFF of 9 KB whose OME-XML claims 10^8 planes, a zarr
array of 8 KB claiming 10^9 x 64 x 64 voxels, a ``.nii.gz`` of 49 KB claiming 5 GB. Every
reader therefore checks the claim *before* it allocates anything:

1. against the bytes actually stored (:func:`check_claim`'s ``stored`` and ``ratio``: an
   uncompressed file must hold every byte it claims, a deflate stream cannot expand more
   than about 1032:1, ...);
2. against a limit: :func:`max_bytes` (``SKIPSEG_MAX_BYTES``, default 64 GiB) for a lazy
   read, which only maps the file, and :func:`max_eager_bytes`
   (``SKIPSEG_MAX_EAGER_BYTES``, default the smaller of 16 GiB and half the machine's
   memory) for a read into memory, and for one chunk of a lazy array (reading any pixel
   decodes a whole chunk).

The axes, shape, dtype, spacing and unit then go through :func:`check_image`; numbers read
from metadata through :func:`numbers`. Everything raises :class:`ImageReadError` naming
the file and the problem, so a front end prints one line.

Lazy arrays read pixels long after the reader returned; :class:`GuardedArray` wraps such an
array so that a chunk that cannot be decoded (a corrupt strip of a compressed TIFF, a
damaged zarr chunk) raises :class:`ImageReadError` naming the file where the data is pulled.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from .meta import ImageMeta, ImageReadError

#: Default limit of a lazy read (bytes the array claims).
DEFAULT_MAX_BYTES = 64 << 30
#: Upper bound of the default limit of a read into memory.
DEFAULT_MAX_EAGER_BYTES = 16 << 30
#: deflate (zlib, gzip) expands at most about 1032:1; with headers, a little less.
DEFLATE_RATIO = 1100
#: A generous bound for codecs without a small theoretical one (zstd, lzma, blosc, JPEG 2000):
#: a blank 2048 x 2048 uint16 plane in zstd is a few hundred bytes.
ANY_CODEC_RATIO = 200_000
#: Pixel kinds a reader may return: bool, integers, floats.
PIXEL_KINDS = "biuf"


def _env_bytes(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        n = int(float(value))
    except ValueError:
        raise ValueError(f"{name}={value!r}: expected a number of bytes, e.g. 68719476736") from None
    if n <= 0:
        raise ValueError(f"{name}={value!r}: must be a positive number of bytes")
    return n


def _memory() -> int:
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 2 * DEFAULT_MAX_EAGER_BYTES


def max_bytes() -> int:
    """Largest array a lazy read accepts: ``SKIPSEG_MAX_BYTES`` or 64 GiB."""
    return _env_bytes("SKIPSEG_MAX_BYTES", DEFAULT_MAX_BYTES)


def max_eager_bytes() -> int:
    """Largest array read into memory (and largest chunk of a lazy one):
    ``SKIPSEG_MAX_EAGER_BYTES``, else the smaller of 16 GiB and half the memory, and never
    more than :func:`max_bytes`."""
    default = min(DEFAULT_MAX_EAGER_BYTES, _memory() // 2)
    return min(_env_bytes("SKIPSEG_MAX_EAGER_BYTES", default), max_bytes())


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} EB"  # pragma: no cover


def nbytes(shape: Sequence[int], dtype: Any) -> int:
    """Bytes an array of `shape` and `dtype` takes (Python ints: no overflow)."""
    n = np.dtype(dtype).itemsize
    for s in shape:
        n *= int(s)
    return n


def check_shape(path: object, shape: Sequence[Any], what: str = "the image") -> tuple[int, ...]:
    """`shape` as a tuple of non-negative ints, or :class:`ImageReadError`."""
    try:
        out = tuple(int(s) for s in shape)
        if any(not float(s).is_integer() for s in shape):
            raise ValueError
    except (TypeError, ValueError, OverflowError):
        raise ImageReadError(path, f"{what} has a shape that is not whole numbers: {shape!r}") from None
    if any(s < 0 for s in out):
        raise ImageReadError(path, f"{what} has a negative size in its shape {out}")
    return out


def check_claim(path: object, shape: Sequence[Any], dtype: Any, *, lazy: bool, stored: int | None = None,
                ratio: float = 1.0, what: str = "the image", chunk: Sequence[int] | None = None,
                claim: str | None = None) -> int:
    """Refuse an array whose claimed size the file cannot back, before allocating it.

    Parameters
    ----------
    path : path-like
        The file (named in the error).
    shape, dtype
        What the metadata claims.
    lazy : bool
        Whether the pixels stay on disk (limit :func:`max_bytes`) or are read into memory
        (limit :func:`max_eager_bytes`).
    stored : int, optional
        Bytes of pixel data actually present (file size, sum of strip or chunk sizes).
    ratio : float
        Largest plausible ratio of decoded to stored bytes (1 for uncompressed data,
        :data:`DEFLATE_RATIO` for zlib/gzip, ...).
    what : str
        What claims the size, for the message (e.g. ``"the OME-XML"``).
    chunk : sequence of int, optional
        Shape of the unit a lazy read decodes at once (zarr chunk, TIFF page); it must
        fit :func:`max_eager_bytes`.
    claim : str, optional
        Words for the claim in the message (default: the shape and dtype).

    Returns
    -------
    int
        The claimed number of bytes.

    Raises
    ------
    ImageReadError
        If the claim exceeds what is stored times `ratio`, or the limit.
    """
    shape = check_shape(path, shape, what)
    try:
        dtype = np.dtype(dtype)
    except TypeError as e:
        raise ImageReadError(path, f"{what} claims an unknown pixel type {dtype!r}") from e
    claimed = nbytes(shape, dtype)
    desc = f"{claim} {_size(claimed)}" if claim else f"{shape} {dtype} = {_size(claimed)}"
    if stored is not None and claimed > max(int(stored), 0) * ratio:
        how = "" if ratio == 1 else f" (even at {ratio:g}:1 compression)"
        raise ImageReadError(path, f"{what} claims {desc}, but the file holds "
                             f"{_size(stored)} of pixel data{how}: the file is truncated or corrupt, or its metadata wrong")
    limit, env = (max_bytes(), "SKIPSEG_MAX_BYTES") if lazy else (max_eager_bytes(), "SKIPSEG_MAX_EAGER_BYTES")
    if claimed > limit:
        raise ImageReadError(path, f"{what} claims {desc}, more than the "
                             f"{'lazy ' if lazy else ''}read limit of {_size(limit)} (raise {env} to "
                             "read it anyway)")
    if chunk is not None:
        piece = nbytes(check_shape(path, chunk, what), dtype)
        if piece > max_eager_bytes():
            raise ImageReadError(path, f"{what} claims chunks of {tuple(chunk)} = {_size(piece)}; reading one "
                                 f"pixel would load a whole chunk, more than the limit of "
                                 f"{_size(max_eager_bytes())} (SKIPSEG_MAX_EAGER_BYTES)")
    return claimed


def numbers(path: object, values: Any, what: str, n: int | None = None, positive: bool = False) -> list[float]:
    """`values` (from metadata) as a list of finite floats, or :class:`ImageReadError`.

    Parameters
    ----------
    values : any
        A list of numbers (or number strings) as read from the file.
    what : str
        Its name in the file, for the message (e.g. ``"PixelSpacing"``).
    n : int, optional
        The number of values required.
    positive : bool
        Require every value > 0.
    """
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | np.ndarray):
        try:
            values = list(values)
        except TypeError:
            raise ImageReadError(path, f"{what} is {values!r}, not a list of numbers") from None
    try:
        out = [float(v) for v in values]
    except (TypeError, ValueError, OverflowError):
        raise ImageReadError(path, f"{what} is {list(values)!r}, not a list of numbers") from None
    if n is not None and len(out) != n:
        raise ImageReadError(path, f"{what} has {len(out)} value(s) {out}; expected {n}")
    if not all(math.isfinite(v) for v in out):
        raise ImageReadError(path, f"{what} {out} is not finite")
    if positive and not all(v > 0 for v in out):
        raise ImageReadError(path, f"{what} {out} must be positive")
    return out


def check_image(meta: ImageMeta, shape: Sequence[int], dtype: Any) -> None:
    """Check what a reader is about to return: axes and spacing fit `shape`
    (:meth:`ImageMeta.validate`), no axis of length 0, a pixel type we can segment, a
    unit that is a short word.

    Raises
    ------
    ImageReadError
        Naming ``meta.path`` and the problem.
    """
    shape = check_shape(meta.path, shape)
    meta.validate(shape)
    if 0 in shape:
        raise ImageReadError(meta.path, f"the image holds no pixels: shape {shape} (axes {meta.axes}) has an "
                             "axis of length 0")
    try:
        kind = np.dtype(dtype).kind
    except TypeError as e:
        raise ImageReadError(meta.path, f"unknown pixel type {dtype!r}") from e
    if kind not in PIXEL_KINDS:
        raise ImageReadError(meta.path, f"pixel type {np.dtype(dtype)} is not supported; images hold "
                             "booleans, integers or floats")
    unit = meta.unit
    if not isinstance(unit, str) or not unit or len(unit) > 40 or not unit.isprintable():
        raise ImageReadError(meta.path, f"spatial unit {unit!r} is not a unit name")


class GuardedArray:
    """A lazy array (zarr) whose reads raise :class:`ImageReadError` naming the file.

    Indexing it reads from the wrapped array; any failure there (a chunk that cannot be
    decoded, a file truncated since it was opened) becomes one error naming `path`. Other
    attributes (``shape``, ``dtype``, ``chunks``, ``attrs``, ...) are the wrapped array's.
    """

    def __init__(self, array: Any, path: str) -> None:
        self.wrapped = array
        self.path = path

    def __getitem__(self, key: Any) -> Any:
        try:
            return self.wrapped[key]
        except (ImageReadError, MemoryError, KeyboardInterrupt):
            raise
        except IndexError:  # the caller's index, not the file
            raise
        except Exception as e:  # noqa: BLE001 - codecs and stores raise many kinds
            raise ImageReadError(self.path, f"cannot read the pixel data, truncated or corrupt? ({e!r})") from e

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = np.asarray(self[...])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getattr__(self, name: str) -> Any:
        if name in ("wrapped", "path"):  # not set yet (unpickling)
            raise AttributeError(name)
        return getattr(self.wrapped, name)

    def __len__(self) -> int:
        return int(self.shape[0])

    def __repr__(self) -> str:
        return f"GuardedArray({self.wrapped!r}, path={self.path!r})"

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.wrapped.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.wrapped.dtype)

    @property
    def ndim(self) -> int:
        return len(self.wrapped.shape)

    @property
    def size(self) -> int:
        return math.prod(self.wrapped.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


def unwrap(array: Any) -> Any:
    """The array inside a :class:`GuardedArray` (else `array` itself)."""
    return array.wrapped if isinstance(array, GuardedArray) else array
