"""NIfTI-1/2 images (``.nii``, ``.nii.gz``) with spacing, units and the voxel-to-world affine.

NIfTI stores voxels in (x, y, z, t, u) order, x fastest; we show them as ``[T][C]ZYX``
arrays (the same bytes, axes reversed, so nothing is copied). The header's qform and sform
(with their codes) and the affine are kept in ``meta.extra``; :func:`write_nifti` puts them
back unchanged, so a result written next to a scan opens aligned with it in medical viewers
(3D Slicer, ITK-SNAP, FSLeyes).

Needs nibabel (``pip install 'napari-skipseg[formats]'``).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import uuid
import warnings
from contextlib import suppress
from dataclasses import replace
from typing import Any

import numpy as np

from .meta import ImageMeta, ImageReadError, file_stem
from .validate import DEFLATE_RATIO, check_claim, check_image, check_shape, nbytes

SUFFIXES = (".nii.gz", ".nii")
_UNITS = {"mm": "millimeter", "micron": "micrometer", "meter": "meter", "unknown": "pixel"}
_NIFTI_UNITS = {"millimeter": "mm", "micrometer": "micron", "meter": "meter"}
# our axis order for the NIfTI order x, y, z, t, u (u: vector components -> C)
_NIFTI_ORDER = "XYZTC"


def _nib():
    try:
        import nibabel
    except ImportError as err:  # pragma: no cover
        raise ImportError("NIfTI needs nibabel: pip install 'napari-skipseg[formats]'") from err
    return nibabel


def read_nifti(path: str | os.PathLike, lazy: bool = False) -> tuple[Any, ImageMeta]:
    """Read a NIfTI file with its voxel spacing and affine.

    Parameters
    ----------
    path : str or path-like
        A ``.nii`` or ``.nii.gz`` file.
    lazy : bool
        For ``.nii``: a dask array that reads the slices it needs from disk. A ``.nii.gz``
        has no random access (every read would decompress from the start) and is read at
        once; convert it to ``.nii`` or zarr to stream stacks larger than memory.

    Returns
    -------
    data : numpy.ndarray or dask.array.Array
        ``YX``, ``ZYX``, ``TZYX`` or ``TCZYX`` (trailing NIfTI dimensions of length 1 are
        dropped, beyond z).
    meta : ImageMeta
        Spacing of x, y, z from the header's pixdim, unit from its xyzt_units;
        ``extra["affine"]`` (4 x 4, voxel (x, y, z) -> world, RAS) and ``extra["nifti"]``.

    Raises
    ------
    ImageReadError
        If the file is missing, empty, not NIfTI, truncated, or has 1 or more than 5
        dimensions.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ImageReadError(path, "no such file")
    if os.path.getsize(path) == 0:
        raise ImageReadError(path, "the file is empty")
    nib = _nib()
    try:
        img = nib.load(path)
    except Exception as e:  # noqa: BLE001 - nibabel raises many kinds on damaged files
        raise ImageReadError(path, f"not a readable NIfTI file ({e})") from e
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise ImageReadError(path, f"not a NIfTI image ({type(img).__name__})")
    hdr = img.header
    shape = check_shape(path, img.shape, "the NIfTI header")
    keep = len(shape)
    while keep > 3 and shape[keep - 1] == 1:
        keep -= 1
    if keep < 2:
        raise ImageReadError(path, f"{keep} dimension(s) {shape}; images need 2 to 5 (x, y[, z, t, components])")
    if keep > 5:
        raise ImageReadError(path, f"{keep} dimensions {shape}; supported are 2 to 5 (x, y, z, t, components)")
    gz = path.lower().endswith(".gz")
    try:
        dtype = np.dtype(hdr.get_data_dtype())
        scaled = img.dataobj.dtype if hasattr(img.dataobj, "dtype") else dtype
    except Exception as e:  # noqa: BLE001 - an unknown datatype code
        raise ImageReadError(path, f"the NIfTI header's datatype cannot be read ({e})") from e
    _check_size(path, getattr(img.dataobj, "offset", hdr.get_data_offset()), shape, dtype, lazy=lazy and not gz)
    axes = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TCZYX"}[keep]
    order = {2: (1, 0), 3: (2, 1, 0), 4: (3, 2, 1, 0), 5: (3, 4, 2, 1, 0)}[keep]
    zooms, extra = _geometry(path, hdr, keep)
    letters = {"X": zooms[0], "Y": zooms[1], "Z": zooms[2]}
    spacing = tuple(letters.get(a, 1.0) for a in axes)
    xyz_unit = extra["nifti"]["xyzt_units"][0]
    unit = _UNITS.get(xyz_unit, xyz_unit or "pixel")
    meta = ImageMeta(axes, spacing, unit, name=file_stem(path, SUFFIXES), path=path, extra=extra)
    out_shape = tuple(shape[i] for i in order)
    check_image(meta, out_shape, scaled)
    index = (slice(None),) * keep + (0,) * (len(shape) - keep)
    try:
        if lazy and not gz:
            data = _lazy(img, shape, path)[index].transpose(order)
        else:
            data = np.asarray(img.dataobj)[index].transpose(order)
    except (MemoryError, ImageReadError):
        raise
    except Exception as e:  # noqa: BLE001
        raise ImageReadError(path, f"cannot read the NIfTI data, truncated or corrupt? ({e})") from e
    meta.validate(data.shape)
    return data, meta


def _geometry(path: str, hdr: Any, keep: int) -> tuple[list[float], dict]:
    """Voxel sizes (x, y, z, t, ...) and ``extra`` (affine, qform/sform) from the header.

    Repairs rather than refuses, with a warning naming the file, since the voxel data are
    fine: a voxel size that is not a positive finite number becomes 1.0; a qform or sform
    that is not finite (NaN quaternion, offsets, pixdim) or cannot be written back (a
    singular matrix) is dropped (its code set to 0), and the affine falls back to the other
    form, else to the voxel sizes. What is kept is exactly what :func:`write_nifti` writes
    back, so a result never fails to save after the segmentation.
    """
    with np.errstate(all="ignore"):
        raw = [float(z) for z in np.asarray(hdr["pixdim"][1:], dtype=float)]
    zooms = [float(f"{z:.7g}") if math.isfinite(z) and z > 0 else math.nan for z in raw] + [1.0] * 5
    bad = [a for a, z in zip("xyz"[: min(keep, 3)], zooms, strict=False) if not math.isfinite(z)]
    if bad:
        warnings.warn(f"{path}: NIfTI pixdim {raw[:3]} is not positive and finite for {', '.join(bad)}; "
                      "using voxel size 1.0 there", stacklevel=3)
    zooms = [z if math.isfinite(z) else 1.0 for z in zooms]
    forms = {}
    for kind in ("qform", "sform"):
        try:
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                matrix, code = getattr(hdr, f"get_{kind}")(coded=True)
        except Exception:  # noqa: BLE001 - e.g. a quaternion of norm > 1
            matrix, code = None, int(hdr[f"{kind}_code"])
        code = int(code)
        if code and (matrix is None or not _writable(matrix, kind)):
            warnings.warn(f"{path}: the NIfTI {kind} (code {code}) is not a finite, invertible affine; "
                          f"it is dropped", stacklevel=3)
            matrix, code = None, 0
        forms[kind] = (None if matrix is None or not code else np.asarray(matrix, float), code)
    (qform, qcode), (sform, scode) = forms["qform"], forms["sform"]
    if sform is not None:
        affine = sform
    elif qform is not None:
        affine = qform
    else:
        with np.errstate(all="ignore"):
            base = np.asarray(hdr.get_base_affine(), float)
        affine = base if _writable(base, "qform") else np.diag([*zooms[:3], 1.0])
    extra = {
        "affine": affine.tolist(),
        "nifti": {
            "qform": None if qform is None else qform.tolist(), "qform_code": qcode,
            "sform": None if sform is None else sform.tolist(), "sform_code": scode,
            "time_step": zooms[3] if keep >= 4 else None, "xyzt_units": _units(path, hdr),
        },
    }
    return zooms, extra


def _units(path: str, hdr: Any) -> list[str]:
    """The header's space and time units; codes NIfTI does not define read as unknown."""
    try:
        return list(hdr.get_xyzt_units())
    except KeyError:
        warnings.warn(f"{path}: NIfTI xyzt_units {int(hdr['xyzt_units'])} holds unit codes NIfTI does not "
                      "define; units unknown", stacklevel=4)
        return ["unknown", "unknown"]


def _writable(matrix: Any, kind: str) -> bool:
    """Whether `matrix` is a finite 4 x 4 affine that a NIfTI header can take as `kind`."""
    matrix = np.asarray(matrix, dtype=float)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
        return False
    if kind == "sform":
        return abs(float(np.linalg.det(matrix[:3, :3]))) > 0
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _nib().Nifti1Header().set_qform(matrix, 1)
    except Exception:  # noqa: BLE001 - "could not decompose affine"
        return False
    return True


def _check_size(path: str, offset: int, shape: tuple[int, ...], dtype: np.dtype, lazy: bool) -> None:
    """Compare the data size the header promises (from `offset`, where nibabel reads) with
    what the file holds, and the limits."""
    offset = int(offset)
    need = offset + nbytes(shape, dtype)
    if path.lower().endswith(".gz"):
        stored = os.path.getsize(path)
        check_claim(path, shape, dtype, lazy=False, stored=stored, ratio=DEFLATE_RATIO,
                    what="the NIfTI header")
        if need < 2**32:  # gzip's last 4 bytes: uncompressed size mod 2**32
            with open(path, "rb") as fh:
                fh.seek(-4, os.SEEK_END)
                (have,) = struct.unpack("<I", fh.read(4))
            if have < need:
                raise ImageReadError(path, f"truncated or corrupt NIfTI file: the header describes {need} "
                                     f"bytes, the compressed stream ends after {have}")
        return
    have = os.path.getsize(path)
    if have < need:
        raise ImageReadError(path, f"truncated NIfTI file: {have} bytes, the header describes {need}")
    check_claim(path, shape, dtype, lazy=lazy, what="the NIfTI header",
                chunk=(*shape[:2], 1) if lazy else None)


class _Scaled:
    """nibabel's array proxy with the dtype of its scaled values (for dask); a read that
    fails raises :class:`ImageReadError` naming the file."""

    def __init__(self, proxy: Any, shape: tuple[int, ...], path: str) -> None:
        self.proxy = proxy
        self.shape = shape
        self.ndim = len(shape)
        self.path = path
        self.dtype = self[tuple(slice(0, 1) for _ in shape)].dtype

    def __getitem__(self, key: Any) -> np.ndarray:
        try:
            return np.asarray(self.proxy[key], dtype=getattr(self, "dtype", None))
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - the file changed or was truncated since it was opened
            raise ImageReadError(self.path, f"cannot read the NIfTI data, truncated or corrupt? ({e})") from e


def _lazy(img: Any, shape: tuple[int, ...], path: str) -> Any:
    import dask.array as da

    chunks = tuple(s if i < 2 else 1 for i, s in enumerate(shape))
    return da.from_array(_Scaled(img.dataobj, shape, path), chunks=chunks, lock=True, asarray=True)


def write_nifti(path: str | os.PathLike, data: Any, meta: ImageMeta | None = None) -> str:
    """Write an array as NIfTI-1 (``.nii`` or ``.nii.gz``), atomically and slice by slice.

    Parameters
    ----------
    path : str or path-like
        Destination; ``.nii.gz`` is gzip-compressed.
    data : array-like
        numpy, dask or zarr array with axes ``meta.axes`` (from ``TCZYX``; no RGB). A lazy
        array is written one leading-axis slice at a time (never loaded whole), except for
        arrays with both T and C axes.
    meta : ImageMeta, optional
        Axes, spacing and unit. ``extra["nifti"]`` (qform/sform with codes) or
        ``extra["affine"]`` from a NIfTI or DICOM source are written back unchanged when
        their voxel sizes match the spacing (else the directions and origin are kept and the
        voxel sizes follow the spacing). Without them the affine is ``diag(spacing)``.

    Returns
    -------
    str
        The path written.
    """
    nib = _nib()
    path = os.fspath(path)
    if not path.lower().endswith(SUFFIXES):
        raise ValueError(f"{path}: write_nifti writes .nii or .nii.gz files")
    data = data if hasattr(data, "shape") and hasattr(data, "dtype") else np.asarray(data)
    from .meta import default_axes

    meta = replace(meta or ImageMeta(default_axes(len(data.shape))), path=path)
    meta.validate(data.shape)
    if meta.rgb:
        raise ImageReadError(path, "NIfTI output cannot hold RGB samples; write TIFF instead")
    dtype = _nifti_dtype(data)
    # NIfTI's x-fastest order is C order of the axes reversed: [C][T]ZYX
    perm = sorted(range(len(meta.axes)), key=lambda i: "CTZYX".index(meta.axes[i]))
    nshape = [1] * 5
    for a, n in zip(meta.axes, data.shape, strict=True):
        nshape[_NIFTI_ORDER.index(a)] = int(n)
    last = max(i for i, n in enumerate(nshape) if n > 1 or _NIFTI_ORDER[i] in meta.axes)
    nshape = nshape[: max(last + 1, 2)]
    spacing = {a: s for a, s in zip(meta.axes, meta.spacing, strict=True)}
    zooms = [spacing.get(a, 1.0) for a in "XYZ"]
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(dtype)
    hdr.set_data_shape(nshape)
    qform, qcode, sform, scode = _forms(meta, zooms)
    hdr.set_qform(qform, int(qcode))
    hdr.set_sform(sform, int(scode))
    nifti = meta.extra.get("nifti") or {}
    step = nifti.get("time_step") or 1.0
    hdr.set_zooms(tuple((zooms + [step, 1.0])[: len(nshape)]))
    hdr.set_xyzt_units(_NIFTI_UNITS.get(meta.unit, "unknown"), "sec" if "T" in meta.axes else "unknown")
    hdr["vox_offset"] = 352
    hdr["scl_slope"], hdr["scl_inter"] = 1.0, 0.0
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex[:8]}.tmp")
    opener = (lambda p: gzip.open(p, "xb", compresslevel=1)) if path.lower().endswith(".gz") else (lambda p: open(p, "xb"))
    try:
        with opener(tmp) as fh:
            fh.write(hdr.binaryblock)
            fh.write(b"\0" * (352 - len(hdr.binaryblock)))  # no extensions
            if perm == sorted(perm) and data.ndim > 2:
                for i in range(data.shape[0]):
                    fh.write(np.ascontiguousarray(np.asarray(data[i]), dtype=dtype).tobytes())
            else:
                fh.write(np.ascontiguousarray(np.asarray(data).transpose(perm), dtype=dtype).tobytes())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _forms(meta: ImageMeta, zooms: list[float]) -> tuple[np.ndarray, int, np.ndarray, int]:
    """qform and sform (with codes) to write: the source's, adjusted to the spacing if needed."""
    nifti = meta.extra.get("nifti") or {}
    affine = meta.extra.get("affine")
    if affine is None:
        base = np.diag([*zooms, 1.0])
        return base, 1, base, 2
    affine = np.asarray(affine, dtype=float)
    q = np.asarray(nifti["qform"], float) if nifti.get("qform") is not None else affine
    s = np.asarray(nifti["sform"], float) if nifti.get("sform") is not None else affine
    qcode = nifti.get("qform_code", 1 if not nifti else 0)
    scode = nifti.get("sform_code", 2 if not nifti else 0)
    return _fit(q, zooms), qcode, _fit(s, zooms), scode


def _fit(affine: np.ndarray, zooms: list[float]) -> np.ndarray:
    """`affine` with its voxel sizes set to `zooms` (unchanged when they already agree)."""
    current = np.linalg.norm(affine[:3, :3], axis=0)
    if np.allclose(current, zooms, rtol=1e-4, atol=1e-6):
        return affine
    out = affine.copy()
    out[:3, :3] = affine[:3, :3] / np.where(current > 0, current, 1.0) * np.asarray(zooms)
    return out


def _nifti_dtype(data: Any) -> np.dtype:
    dtype = np.dtype(data.dtype)
    if dtype.kind == "b":
        return np.dtype(np.uint8)
    if dtype == np.float16:
        return np.dtype(np.float32)
    if dtype.kind in "iu" and dtype.itemsize == 8:
        return np.dtype(np.int64 if dtype.kind == "i" else np.uint64)  # NIfTI-1 has both
    return dtype

