"""DICOM series: a folder of single-slice files, ordered by position, with spacing.

Slices are sorted along the normal of their ImageOrientationPatient by their
ImagePositionPatient (not by file name or InstanceNumber); the Z spacing is the distance
between neighbouring positions and must be the same all through the series. A gap of about
a whole number of spacings means slices are missing, and is an error naming the folder and
where the gap is. PixelSpacing gives the Y and X spacing (millimetres), and the
RescaleSlope/RescaleIntercept of each slice are applied.

The voxel-to-world affine (NIfTI/RAS convention) is kept in ``meta.extra["affine"]``, so a
segmentation written as NIfTI (:func:`napari_skipseg.io.nifti.write_nifti`) opens aligned
with the scan. Needs pydicom (``pip install 'napari-skipseg[formats]'``).
"""

from __future__ import annotations

import io
import os
import warnings
from typing import Any

import numpy as np

from .meta import ImageMeta, ImageReadError
from .validate import ANY_CODEC_RATIO, check_claim, check_image, numbers

SUFFIXES = (".dcm", ".dicom", ".ima")
#: relative tolerance on slice spacing (positions are stored as decimal strings)
SPACING_RTOL = 0.01


def _pydicom():
    try:
        import pydicom
    except ImportError as err:  # pragma: no cover
        raise ImportError("DICOM needs pydicom: pip install 'napari-skipseg[formats]'") from err
    return pydicom


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether `path` is a DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_folder(path: str | os.PathLike, probe: int = 8) -> bool:
    """Whether the folder `path` holds DICOM files (looks at a few of its files)."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        return False
    try:
        names = sorted(os.listdir(path))
    except OSError:
        return False
    files = [n for n in names if not n.startswith(".") and os.path.isfile(os.path.join(path, n))]
    dcm = [n for n in files if n.lower().endswith(SUFFIXES)]
    return any(is_dicom_file(os.path.join(path, n)) for n in (dcm or files)[:probe])


def read_dicom(path: str | os.PathLike, lazy: bool = False) -> tuple[Any, ImageMeta]:
    """Read a DICOM series: a folder of slices, or the series of one slice file's folder.

    Parameters
    ----------
    path : str or path-like
        A folder of DICOM slice files (non-DICOM files in it are ignored), or one slice
        file: then the series it belongs to is read from its folder.
    lazy : bool
        Return a dask array that reads each slice file when needed.

    Returns
    -------
    data : numpy.ndarray or dask.array.Array
        ``ZYX`` (``YX`` for a single slice); integer pixels, or float32 when the rescale
        slope or intercept is not a whole number.
    meta : ImageMeta
        Spacing in millimetres; ``extra["affine"]`` and ``extra["dicom"]`` (series UID,
        orientation, first position, file names in slice order).

    Raises
    ------
    ImageReadError
        Naming the folder (or file) and the problem: no DICOM files, several series, slices
        of different sizes or orientations, two slices at one position, missing slices,
        inconsistent spacing, truncated or unreadable files, pixel data that cannot be
        decoded.
    """
    pydicom = _pydicom()
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageReadError(path, "no such file or folder")
    only_uid = None
    folder = path
    if os.path.isfile(path):
        ds = _read_header(pydicom, path)
        only_uid = str(getattr(ds, "SeriesInstanceUID", ""))
        folder = os.path.dirname(path) or "."
    headers = []
    for name in sorted(os.listdir(folder)):
        f = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(f) or not is_dicom_file(f):
            continue
        ds = _read_header(pydicom, f)
        if "Rows" not in ds and "Columns" not in ds and "PixelData" not in ds:  # DICOMDIR, reports: no image
            continue
        info = _header(f, ds)
        if only_uid is not None and info["uid"] != only_uid:
            continue
        headers.append((f, info))
    if not headers:
        raise ImageReadError(folder, "no DICOM image files in the folder")
    uids = sorted({info["uid"] for _, info in headers})
    if len(uids) > 1:
        raise ImageReadError(folder, f"the folder holds {len(uids)} DICOM series ({', '.join(uids[:3])}"
                             f"{', ...' if len(uids) > 3 else ''}); open one slice file to read its series")
    first = headers[0][1]
    for key, what in (("shape", "size"), ("pixel", "pixel type (BitsAllocated, PixelRepresentation)"),
                      ("spacing", "PixelSpacing")):
        for f, info in headers:
            if info[key] != first[key]:
                raise ImageReadError(folder, f"slices differ in {what}: {os.path.basename(f)} has {info[key]}, "
                                     f"{os.path.basename(headers[0][0])} {first[key]}")
    rows, cols = first["shape"]
    files, z_spacing, orient, first_pos = _order(folder, headers)
    row_spacing, col_spacing = first["spacing"]  # between rows (Y), between columns (X)
    slopes = {(info["slope"], info["intercept"]) for _, info in headers}
    integral = all(s.is_integer() and i.is_integer() for s, i in slopes)
    affine = _affine(orient, first_pos, (col_spacing, row_spacing, z_spacing))
    extra = {"affine": affine.tolist(),
             "dicom": {"series_uid": uids[0], "orientation": orient.tolist(), "first_position": first_pos.tolist(),
                       "files": [os.path.basename(f) for f in files],
                       "modality": first["modality"]}}
    bits, signed = first["pixel"]
    raw = np.dtype(f"{'i' if signed else 'u'}{max(bits // 8, 1)}")
    if not integral:
        dtype = np.dtype(np.float32)
    elif slopes == {(1.0, 0.0)}:
        dtype = raw
    else:
        dtype = np.dtype(np.int32)
    name = os.path.basename(os.path.abspath(folder))
    if len(files) == 1:
        meta = ImageMeta("YX", (row_spacing, col_spacing), "millimeter", name=name, path=folder, extra=extra)
    else:
        meta = ImageMeta("ZYX", (z_spacing, row_spacing, col_spacing), "millimeter", name=name, path=folder,
                         extra=extra)
    shape = (rows, cols)
    full = shape if len(files) == 1 else (len(files), *shape)
    check_image(meta, full, dtype)
    compressed = any(info["compressed"] for _, info in headers)
    check_claim(folder, full, raw, lazy=lazy, stored=sum(os.path.getsize(f) for f in files),
                ratio=ANY_CODEC_RATIO if compressed else 1.0, what="the DICOM headers", chunk=shape)
    if lazy:
        import dask.array as da
        from dask import delayed

        slices = [da.from_delayed(delayed(_read_pixels)(f, dtype, shape), shape, dtype=dtype) for f in files]
        data = slices[0] if len(files) == 1 else da.stack(slices)
    else:
        data = np.empty((len(files), *shape), dtype)
        for i, f in enumerate(files):
            data[i] = _read_pixels(f, dtype, shape)
        data = data[0] if len(files) == 1 else data
    meta.validate(data.shape)
    return data, meta


#: BitsAllocated values we read (1: bit-packed, read as uint8 by pydicom).
BITS = (1, 8, 16, 32)


def _header(f: str, ds: Any) -> dict[str, Any]:
    """What the reader uses from one slice's header, checked; :class:`ImageReadError` naming
    the file when a tag is missing, malformed or unsupported."""

    def tag(name: str, default: Any = None) -> Any:
        try:
            value = getattr(ds, name, None)
        except Exception as e:  # noqa: BLE001 - pydicom converts values lazily and may fail here
            raise ImageReadError(f, f"DICOM tag {name} cannot be read ({e})") from e
        return default if value is None or value == "" else value

    def whole(name: str, default: Any = None, low: int = 0) -> int:
        value = tag(name, default)
        if value is None:
            raise ImageReadError(f, f"DICOM tag {name} is missing; it is needed to read the image")
        try:
            n = int(value)
            if n != float(value) or n < low:
                raise ValueError
        except (TypeError, ValueError, OverflowError):
            raise ImageReadError(f, f"DICOM tag {name} is {value!r}; expected a whole number >= {low}") from None
        return n

    def vector(name: str, n: int) -> np.ndarray | None:
        value = tag(name)
        return None if value is None else np.asarray(numbers(f, _seq(value), f"DICOM {name}", n=n))

    rows, cols = whole("Rows", low=1), whole("Columns", low=1)
    bits = whole("BitsAllocated", 16)
    if bits not in BITS:
        raise ImageReadError(f, f"DICOM BitsAllocated {bits} is not supported; expected one of {BITS}")
    representation = whole("PixelRepresentation", 0)
    if representation not in (0, 1):
        raise ImageReadError(f, f"DICOM PixelRepresentation {representation} must be 0 (unsigned) or 1 (signed)")
    samples = whole("SamplesPerPixel", 1, low=1)
    if samples != 1:
        raise ImageReadError(f, f"DICOM SamplesPerPixel {samples}: colour images are not supported")
    if whole("NumberOfFrames", 1) > 1:
        raise ImageReadError(f, "multi-frame DICOM files are not supported; one slice per file expected")
    spacing = tag("PixelSpacing")
    spacing = (1.0, 1.0) if spacing is None else tuple(
        numbers(f, _seq(spacing), "DICOM PixelSpacing", n=2, positive=True))
    (slope,) = numbers(f, [tag("RescaleSlope", 1) or 1], "DICOM RescaleSlope")
    (intercept,) = numbers(f, [tag("RescaleIntercept", 0)], "DICOM RescaleIntercept")
    thickness = tag("SliceThickness")
    thickness = 1.0 if thickness is None else numbers(f, [thickness], "DICOM SliceThickness")[0]
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    try:
        compressed = bool(syntax is not None and syntax.is_compressed)
    except (ValueError, AttributeError):  # not a transfer syntax we know: its pixels may be anything
        compressed = True
    return {
        "uid": str(tag("SeriesInstanceUID", "")), "shape": (rows, cols), "pixel": (bits, representation == 1),
        "spacing": spacing, "slope": slope, "intercept": intercept,
        "thickness": thickness if thickness > 0 else 1.0,
        "orientation": vector("ImageOrientationPatient", 6), "position": vector("ImagePositionPatient", 3),
        "modality": str(tag("Modality", "")),
        "compressed": compressed,
    }


def _seq(value: Any) -> list:
    """A DICOM multi-value as a list (a single value gives a list of one)."""
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        return [value]
    return list(value)


class _CappedFile(io.FileIO):
    """A file whose reads never ask for more than what is left in it.

    pydicom reads an element by its stated length; a garbled length (up to 4 GB) would make
    it allocate that much before finding the file shorter."""

    def __init__(self, path: str) -> None:
        super().__init__(path, "rb")
        self._size = os.fstat(self.fileno()).st_size

    def read(self, size: int | None = -1) -> bytes:
        if size is not None and size > 0:
            size = min(size, max(self._size - self.tell(), 0))
        return super().read(size)


def _read_header(pydicom: Any, f: str) -> Any:
    try:
        with _CappedFile(f) as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom's value warnings: we check what we use ourselves
            return pydicom.dcmread(fh, stop_before_pixels=True)
    except Exception as e:  # noqa: BLE001 - pydicom raises many kinds on damaged files
        raise ImageReadError(f, f"not a readable DICOM file, truncated or corrupt? ({e})") from e


def _read_pixels(f: str, dtype: np.dtype, shape: tuple[int, int]) -> np.ndarray:
    """The rescaled pixels of one slice file."""
    pydicom = _pydicom()
    try:
        with _CappedFile(f) as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(fh)
            pixels = ds.pixel_array
    except Exception as e:  # noqa: BLE001 - truncated PixelData, missing codecs, ...
        raise ImageReadError(f, f"cannot read the DICOM pixel data, truncated or compressed with a codec "
                             f"that is not installed? ({e})") from e
    if pixels.shape != shape:
        raise ImageReadError(f, f"pixel data of shape {pixels.shape}; the header says {shape}")
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
    if (slope, intercept) == (1.0, 0.0):
        return pixels.astype(dtype, copy=False)
    return (pixels.astype(np.float64) * slope + intercept).astype(dtype)


def _order(folder: str, headers: list) -> tuple[list[str], float, np.ndarray, np.ndarray]:
    """Files sorted by position along the slice normal; the slice spacing; orientation."""
    orient = headers[0][1]["orientation"]
    positions = [info["position"] for _, info in headers]
    if orient is None or any(p is None for p in positions):
        if len(headers) > 1:
            raise ImageReadError(folder, "slices lack ImagePositionPatient/ImageOrientationPatient; "
                                 "cannot order them or find the slice spacing")
        orient = np.array([1.0, 0, 0, 0, 1.0, 0])
        positions = [np.zeros(3)]
    normal = np.cross(orient[:3], orient[3:])
    if not np.linalg.norm(normal) > 1e-6:
        raise ImageReadError(folder, f"ImageOrientationPatient {orient.tolist()} does not give two directions")
    for f, info in headers:
        o = info["orientation"]
        if o is not None and not np.allclose(o, orient, atol=1e-4):
            raise ImageReadError(folder, f"slices differ in orientation ({os.path.basename(f)}); "
                                 "not one volume")
    dist = np.asarray([float(np.dot(p, normal)) for p in positions])
    order = np.argsort(dist, kind="stable")
    files = [headers[i][0] for i in order]
    dist = dist[order]
    first = positions[order[0]]
    if len(files) == 1:
        return files, headers[0][1]["thickness"], orient, first
    gaps = np.diff(dist)
    if np.any(gaps < 1e-6):
        i = int(np.argmin(gaps))
        raise ImageReadError(folder, f"two slices at the same position {dist[i]:.4g} mm "
                             f"({os.path.basename(files[i])}, {os.path.basename(files[i + 1])})")
    step = float(np.median(gaps))
    bad = np.abs(gaps - step) > SPACING_RTOL * step
    if bad.any():
        i = int(np.argmax(bad))
        ratio = gaps[i] / step
        if ratio > 1.5 and abs(ratio - round(ratio)) < 0.1:
            missing = int(round(ratio)) - 1
            raise ImageReadError(folder, f"{missing} slice(s) missing between positions {dist[i]:.4g} and "
                                 f"{dist[i + 1]:.4g} mm ({os.path.basename(files[i])}, "
                                 f"{os.path.basename(files[i + 1])}); slice spacing is {step:.4g} mm")
        raise ImageReadError(folder, f"inconsistent slice spacing: {gaps[i]:.4g} mm between "
                             f"{os.path.basename(files[i])} and {os.path.basename(files[i + 1])}, "
                             f"{step:.4g} mm elsewhere")
    return files, float((dist[-1] - dist[0]) / (len(files) - 1)), orient, first


def _affine(orient: np.ndarray, first: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Voxel (x = column, y = row, z = slice) -> world, RAS (DICOM is LPS: x, y negated)."""
    row_dir, col_dir = orient[:3], orient[3:]
    normal = np.cross(row_dir, col_dir)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing[0]
    lps[:3, 1] = col_dir * spacing[1]
    lps[:3, 2] = normal * spacing[2]
    lps[:3, 3] = first
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
