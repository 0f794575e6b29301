"""Read TIFF, ImageJ hyperstacks and OME-TIFF with their voxel spacing; write OME-TIFF."""

from __future__ import annotations

import logging
import os
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import replace
from typing import Any

import numpy as np
import tifffile

from .meta import AXES, ImageMeta, ImageReadError, default_axes, file_stem
from .validate import (
    ANY_CODEC_RATIO,
    DEFLATE_RATIO,
    GuardedArray,
    check_claim,
    check_image,
    nbytes,
    numbers,
)

SUFFIXES = (".ome.tiff", ".ome.tif", ".tiff", ".tif")

# Unit spellings met in OME-XML and ImageJ metadata -> our unit names.
_UNIT_NAMES = {
    "µm": "micrometer", "μm": "micrometer", "um": "micrometer", "\\u00b5m": "micrometer",
    "micron": "micrometer", "microns": "micrometer", "nm": "nanometer", "mm": "millimeter",
    "cm": "centimeter", "m": "meter", "in": "inch", "px": "pixel", "pixels": "pixel",
    "": "pixel",
}  # fmt: skip
# Our unit names -> OME UnitsLength symbols.
_OME_UNITS = {
    "micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "centimeter": "cm",
    "meter": "m", "inch": "in", "pixel": "pixel",
}  # fmt: skip
# Micrometres per TIFF ResolutionUnit (INCH, CENTIMETER, and tifffile's MILLIMETER, MICROMETER).
_UM_PER_RESUNIT = {2: 25400.0, 3: 10000.0, 4: 1000.0, 5: 1.0}
# tifffile log messages that mean pages or shape metadata were lost: the file is damaged.
_DAMAGE_SIGNS = (
    "invalid page offset",
    "invalid offset to page",
    "corrupted tag list",
    "failed to reshape",
    "corrupted file",
)
# OME pixel types; wider integers are narrowed to these on writing when the values fit.
_NARROW = (np.uint8, np.uint16, np.uint32, np.int32)


def read_tiff(path: str | os.PathLike, lazy: bool = False) -> tuple[Any, ImageMeta]:
    """Read the first image series of a TIFF, ImageJ or OME-TIFF file.

    Parameters
    ----------
    path : str or path-like
        The file.
    lazy : bool
        Return a memory-mapped array (uncompressed files) or a zarr array (needs
        zarr) that reads pixels on access. Without zarr a compressed file is read
        at once.

    Returns
    -------
    data : numpy.ndarray or zarr.Array
        The pixels, axes as in `meta`.
    meta : ImageMeta
        Axes, spacing and unit from OME metadata, else ImageJ metadata and the
        resolution tags; 1.0 and ``"pixel"`` when the file has none.

    Raises
    ------
    ImageReadError
        If the file is missing, empty, not a TIFF, truncated or corrupt, or its
        axes cannot be mapped to ``TCZYXS``.
    """
    path = os.fspath(path)
    if os.path.isfile(path) and os.path.getsize(path) == 0:
        raise ImageReadError(path, "the file is empty")
    try:
        with _damage_log() as damage, tifffile.TiffFile(path) as tif:
            if tif.is_ome:  # tifffile sizes its plane list by the OME-XML: check it first
                _check_ome_xml(tif, path)
            if not tif.series:
                raise ImageReadError(path, "the TIFF file holds no images")
            series = tif.series[0]
            axes = _map_axes(series.axes, series.shape, path)
            spacing, unit = _spacing(tif, series.keyframe, axes, path)
            meta = ImageMeta(axes, spacing, unit, name=file_stem(path, SUFFIXES), path=path)
            if "S" in series.axes and "S" not in axes and int(series.keyframe.photometric) == 2:
                meta.extra["rgb_planar"] = True  # RGB stored plane by plane: its C axis is colour
            check_image(meta, series.shape, series.dtype)
            stored, ratio = _stored(path, series)
            bits = int(getattr(series.keyframe, "bitspersample", 8) or 8)
            if 0 < bits < 8:  # packed pixels (e.g. bool as 1 bit): a byte holds 8 / bits of them
                ratio *= 8 / bits
            check_claim(path, series.shape, series.dtype, lazy=lazy, stored=stored, ratio=ratio,
                        chunk=series.keyframe.shape)
            data = _lazy(path, series) if lazy else series.asarray()
            if damage:  # pages lost: tifffile would return part of the image
                raise ImageReadError(path, f"truncated or corrupt TIFF file ({damage[0]})")
    except (ImageReadError, MemoryError):
        raise
    except FileNotFoundError as e:
        raise ImageReadError(path, "no such file") from e
    except tifffile.TiffFileError as e:
        raise ImageReadError(path, f"not a readable TIFF file ({e})") from e
    except RecursionError as e:
        raise ImageReadError(path, "not a readable TIFF file (its structure nests without end)") from e
    except Exception as e:  # tifffile and its codecs raise many kinds on damaged data
        raise ImageReadError(
            path, f"cannot read the TIFF file, truncated or corrupt? ({e!r})"
        ) from e
    meta.validate(data.shape)
    return data, meta


# Largest plausible decoded:stored ratio per TIFF Compression tag value.
_RATIOS = {1: 1.0, 32773: 130.0, 8: DEFLATE_RATIO, 32946: DEFLATE_RATIO, 5: 5000.0}
# OME pixel types -> numpy (bit is stored as bytes by tifffile).
_OME_TYPES = {
    "int8": "i1", "int16": "i2", "int32": "i4", "uint8": "u1", "uint16": "u2", "uint32": "u4",
    "float": "f4", "double": "f8", "complex": "c8", "double-complex": "c16", "bit": "u1",
}  # fmt: skip


def _ratio(compression: Any) -> float:
    return _RATIOS.get(int(compression), ANY_CODEC_RATIO)


def _stored(path: str, series: tifffile.TiffPageSeries) -> tuple[int, float]:
    """Bytes of pixel data the file holds for `series`, and the largest plausible ratio."""
    if series.dataoffset is not None:  # contiguous, uncompressed: the bytes after the offset
        return max(os.path.getsize(path) - int(series.dataoffset), 0), 1.0
    stored = 0
    for page in series.pages:
        if page is None:
            continue
        size = page.parent.filehandle.size
        for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False):
            if int(offset) + int(count) > size:  # tifffile would allocate `count` bytes to read it
                raise ImageReadError(path, f"a strip or tile of {int(count)} bytes at offset {int(offset)} runs "
                                     f"past the end of the file ({size} bytes): truncated or corrupt")
            stored += int(count)
    return stored, _ratio(series.keyframe.compression)


def _whole(path: str, element: ET.Element, name: str, default: int, low: int = 0) -> int:
    value = element.get(name)
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise ImageReadError(path, f"OME-XML {name}={value!r} is not a whole number") from None
    if n < low:
        raise ImageReadError(path, f"OME-XML {name}={n} must be at least {low}")
    return n


def _check_ome_xml(tif: tifffile.TiffFile, path: str) -> None:
    """Check the sizes the OME-XML claims against the file before tifffile believes them.

    Every image's SizeX x SizeY x SizeZ x SizeC x SizeT x pixel size must be backed by the
    bytes of this file (and of the other files of a multi-file dataset that are present),
    and every plane a TiffData element points at must exist among the file's pages.
    """
    xml = tif.pages.first.description
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return  # tifffile ignores OME-XML it cannot parse
    folder = os.path.dirname(os.path.abspath(path))
    files = {os.path.abspath(path)}
    for uuid_el in root.iterfind(".//{*}UUID"):
        name = uuid_el.get("FileName")
        if name and os.path.isfile(os.path.join(folder, os.path.basename(name))):
            files.add(os.path.join(folder, os.path.basename(name)))
    stored = sum(os.path.getsize(f) for f in files)
    n_pages = len(tif.pages) if len(files) == 1 else None
    claimed = 0
    for pixels in root.iterfind(".//{*}Pixels"):
        sizes = [_whole(path, pixels, f"Size{a}", 1, low=1) for a in "XYZCT"]
        kind = pixels.get("Type", "uint8")
        if kind not in _OME_TYPES:
            raise ImageReadError(path, f"OME-XML pixel Type={kind!r} is not an OME pixel type")
        claimed += nbytes(sizes, _OME_TYPES[kind])
        planes = sizes[2] * sizes[3] * sizes[4]
        for td in pixels.iterfind("{*}TiffData"):
            first = _whole(path, td, "IFD", 0)
            count = _whole(path, td, "PlaneCount", _whole(path, td, "NumPlanes", 1))
            for a, size in zip("ZCT", sizes[2:], strict=True):
                if _whole(path, td, f"First{a}", 0) >= size:
                    raise ImageReadError(path, f"OME-XML TiffData First{a} is beyond Size{a}={size}")
            if count > planes:
                raise ImageReadError(path, f"OME-XML TiffData claims {count} planes; the image has {planes}")
            if n_pages is not None and first + count > n_pages:
                raise ImageReadError(path, f"OME-XML points at page {first + count - 1}; the file has "
                                     f"{n_pages} pages: truncated, or the metadata is wrong")
    check_claim(path, (claimed,), np.uint8, lazy=True, stored=stored,
                ratio=_ratio(tif.pages.first.compression), what="the OME-XML",
                claim="images of")


def write_tiff(
    path: str | os.PathLike,
    data: Any,
    meta: ImageMeta | None = None,
    compression: str | None = "zlib",
) -> str:
    """Write an array as OME-TIFF with its axes and physical voxel size, atomically.

    The file is written next to `path` under a temporary name, flushed to disk and
    then renamed, so `path` never holds a half-written image. Axes of length 1
    (other than Y and X) are dropped when the file is read back.

    Parameters
    ----------
    path : str or path-like
        Destination ending in ``.tif``, ``.tiff``, ``.ome.tif`` or ``.ome.tiff``.
    data : array-like
        The pixels; bool is stored as uint8, 64-bit integers as the narrowest of
        uint8/uint16/uint32/int32 that holds the values, float16 as float32.
    meta : ImageMeta, optional
        Axes, spacing, unit and name. Default: axes from `data.ndim`
        (``YX``, ``ZYX``, ``TZYX``, ``TCZYX``), spacing 1.0, unit ``"pixel"``.
    compression : str or None
        tifffile compression, e.g. ``"zlib"`` (default) or ``None``.

    Returns
    -------
    str
        The path written.

    Raises
    ------
    ValueError
        If `path` is not a TIFF name, `meta` does not fit `data`
        (:class:`ImageReadError`), or the values do not fit an OME pixel type.
    """
    path = os.fspath(path)
    if not path.lower().endswith(SUFFIXES):
        raise ValueError(f"{path}: write_image writes OME-TIFF; use one of {', '.join(SUFFIXES)}")
    data = _ome_dtype(np.asarray(data), path)
    meta = replace(meta or ImageMeta(default_axes(data.ndim)), path=path)
    meta.validate(data.shape)
    metadata: dict[str, Any] = {"axes": meta.axes, "Name": meta.name or file_stem(path, SUFFIXES)}
    unit = _OME_UNITS.get(meta.unit, meta.unit)
    for axis, size in zip(meta.axes, meta.spacing, strict=True):
        if axis in "ZYX":
            metadata[f"PhysicalSize{axis}"] = size
            metadata[f"PhysicalSize{axis}Unit"] = unit
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as fh:
            tifffile.imwrite(
                fh,
                data,
                ome=True,
                photometric="rgb" if meta.rgb else "minisblack",
                compression=compression,
                metadata=metadata,
            )
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


@contextmanager
def _damage_log() -> Iterator[list[str]]:
    """Collect tifffile's log messages, from this thread, that report a damaged file."""
    found: list[str] = []
    thread = threading.get_ident()

    class Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if record.thread == thread and any(s in message for s in _DAMAGE_SIGNS):
                found.append(message)

    handler = Handler(logging.ERROR)
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield found
    finally:
        logger.removeHandler(handler)


def _map_axes(tf_axes: str, shape: tuple[int, ...], path: str) -> str:
    """Map tifffile's axis codes to ``TCZYXS``.

    S stays S only as the last axis with 3 or 4 samples; elsewhere (planar
    samples) it becomes C. Other codes (Q unknown, I image sequence, E, A, ...)
    take the free letters Z, then T, then C, and those keep ``TCZ`` order.
    """
    axes = list(tf_axes)
    for i, a in enumerate(axes):
        if a == "S" and not (i == len(axes) - 1 and shape[i] in (3, 4)):
            axes[i] = "C" if "C" not in axes else "?"
        elif a not in AXES:
            axes[i] = "?"
    unknown = [i for i, a in enumerate(axes) if a == "?"]
    free = [a for a in "ZTC" if a not in axes][: len(unknown)]
    if len(free) < len(unknown):
        raise ImageReadError(path, f"cannot map TIFF axes {tf_axes!r} {shape} to {AXES!r}")
    for i, a in zip(unknown, sorted(free, key="TCZ".index), strict=True):
        axes[i] = a
    return "".join(axes)


def _spacing(tif: tifffile.TiffFile, page: Any, axes: str, path: str) -> tuple[tuple[float, ...], str]:
    """Spacing per axis and unit, from OME-XML, else ImageJ metadata and resolution tags."""
    if tif.is_ome:
        sizes, unit = _ome_sizes(tif.ome_metadata or "", path)
    else:
        xres, yres = page.resolution
        sizes = {"X": 1 / xres if xres > 0 else 1.0, "Y": 1 / yres if yres > 0 else 1.0}
        ij = tif.imagej_metadata or {}
        factor = _UM_PER_RESUNIT.get(int(page.resolutionunit))
        if ij.get("unit"):  # ImageJ's calibration: pixels per unit, ResolutionUnit NONE
            unit = _unit_name(ij["unit"])
        elif factor:
            sizes = {k: v * factor for k, v in sizes.items()}
            unit = "micrometer"
        else:
            unit = "pixel"
        if ij.get("spacing"):
            (sizes["Z"],) = numbers(path, [ij["spacing"]], "ImageJ spacing", positive=True)
    spacing = tuple(float(sizes.get(a, 1.0)) if a in "ZYX" else 1.0 for a in axes)
    return spacing, unit


def _ome_sizes(xml: str, path: str) -> tuple[dict[str, float], str]:
    """PhysicalSizeX/Y/Z and their unit from the first image in OME-XML."""
    try:
        pixels = ET.fromstring(xml).find(".//{*}Image/{*}Pixels")
    except ET.ParseError:
        pixels = None
    if pixels is None:
        return {}, "pixel"
    sizes = {
        a: numbers(path, [pixels.get(f"PhysicalSize{a}")], f"OME-XML PhysicalSize{a}", positive=True)[0]
        for a in "XYZ"
        if pixels.get(f"PhysicalSize{a}")
    }
    units = [pixels.get(f"PhysicalSize{a}Unit") for a in "XYZ" if a in sizes]
    # OME's default unit is the micrometre; units differing per axis are not converted.
    unit = _unit_name(next((u for u in units if u), "µm")) if sizes else "pixel"
    return sizes, unit


def _unit_name(unit: str) -> str:
    unit = str(unit).strip()
    return _UNIT_NAMES.get(unit.lower(), unit)


def _lazy(path: str, series: tifffile.TiffPageSeries) -> Any:
    """A memory map for contiguous uncompressed data, else a zarr array, else numpy."""
    if series.dataoffset is not None:
        return tifffile.memmap(path, series=0, mode="r")
    try:
        import zarr
    except ImportError:
        return series.asarray()
    return GuardedArray(zarr.open(series.aszarr(level=0), mode="r"), path)


def _ome_dtype(data: np.ndarray, path: str) -> np.ndarray:
    """Cast `data` to a pixel type OME-TIFF can hold."""
    if data.dtype == bool:
        return data.astype(np.uint8)
    if data.dtype == np.float16:
        return data.astype(np.float32)
    if data.dtype.kind in "iu" and data.dtype.itemsize == 8:
        lo, hi = (int(data.min()), int(data.max())) if data.size else (0, 0)
        for dtype in _NARROW:
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                return data.astype(dtype)
        raise ValueError(f"{path}: values {lo}..{hi} do not fit a 32-bit OME pixel type")
    return data

