"""Hostile files for safety tests: pickles that run code when unpickled, damaged files."""

from __future__ import annotations

import pickle
from pathlib import Path


class Payload:
    """Unpickling this calls ``exec``, which creates ``marker``: proof that code ran."""

    def __init__(self, marker: str | Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def evil_checkpoint(path: str | Path, marker: str | Path, kind: str = "torch") -> Path:
    """Write a checkpoint at ``path`` whose unpickling creates ``marker``.

    ``kind``: ``"torch"`` (``torch.save`` zip format, looks like a state dict with one real
    tensor) or ``"pickle"`` (a bare pickle stream).
    """
    import torch

    path = Path(path)
    if kind == "torch":
        torch.save({"encoder.stages.0.conv1.weight": torch.zeros(4, 1, 3, 3), "payload": Payload(marker)}, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump({"encoder.stages.0.conv1.weight": [[0.0]], "payload": Payload(marker)}, fh, protocol=2)
    return path


def unsafe_load(path: str | Path) -> None:
    """Load ``path`` the way a careless program would (to prove the payload works)."""
    import torch

    path = Path(path)
    with open(path, "rb") as fh:
        zipped = fh.read(4) == b"PK\x03\x04"
    if zipped:
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as fh:
            pickle.load(fh)  # noqa: S301 - deliberately unsafe, on a file made by the test


# --- hostile image files: small on disk, lying metadata ---------------------------------------
# Each writer makes a real file with the format's own library, then edits the metadata to lie.


def _set_ome_xml(path: str | Path, edit) -> Path:
    """Rewrite the OME-XML of the OME-TIFF at ``path`` with ``edit(xml) -> xml``."""
    import tifffile

    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        xml = tif.pages[0].description
    tifffile.tiffcomment(path, edit(xml).encode())
    return path


def ome_tiff_claiming(path: str | Path, size_z: int = 10**8, shape=(2, 16, 16), compression=None) -> Path:
    """A few-KB OME-TIFF of ``shape`` (ZYX) whose OME-XML claims ``SizeZ=size_z``."""
    import re

    import numpy as np
    import tifffile

    path = Path(path)
    tifffile.imwrite(path, np.ones(shape, np.uint16), ome=True, compression=compression,
                     metadata={"axes": "ZYX"})
    return _set_ome_xml(path, lambda x: re.sub(r'SizeZ="\d+"', f'SizeZ="{size_z}"', x))


def ome_tiff_with_xml(path: str | Path, edit, shape=(2, 16, 16)) -> Path:
    """A small OME-TIFF whose OME-XML is passed through ``edit``."""
    import numpy as np
    import tifffile

    path = Path(path)
    tifffile.imwrite(path, np.ones(shape, np.uint16), ome=True, metadata={"axes": "ZYX"})
    return _set_ome_xml(path, edit)


def tiff_corrupt_strip(path: str | Path, shape=(4, 64, 64), compression="zlib", page: int = 1) -> Path:
    """A compressed TIFF stack whose ``page``-th strip is overwritten with garbage."""
    import numpy as np
    import tifffile

    path = Path(path)
    data = np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)
    tifffile.imwrite(path, data, compression=compression, rowsperstrip=shape[-2], photometric="minisblack")
    with tifffile.TiffFile(path) as tif:
        offset = tif.pages[page].dataoffsets[0]
        count = tif.pages[page].databytecounts[0]
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(bytes((i * 37 + 11) % 256 for i in range(count)))
    return path


def zarr_claiming(path: str | Path, shape=(10**9, 64, 64), chunks=(1, 64, 64), dtype="uint16",
                  zarr_format: int = 3) -> Path:
    """A zarr array that claims ``shape`` and holds one chunk (a few KB on disk)."""
    import numpy as np
    import zarr

    path = Path(path)
    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                            zarr_format=zarr_format)
    arr[tuple(slice(0, c) for c in chunks)] = np.ones(chunks, dtype)
    return path


def _zarr_meta_file(path: Path) -> Path:
    return path / "zarr.json" if (path / "zarr.json").exists() else path / ".zarray"


def edit_zarr_json(path: str | Path, edit, name: str = "zarr.json") -> Path:
    """Rewrite the JSON document ``path/name`` with ``edit(doc) -> doc`` (doc may be any JSON)."""
    import json

    path = Path(path)
    f = path / name
    doc = json.loads(f.read_text())
    f.write_text(json.dumps(edit(doc)))
    return path


def zarr_zero_chunks(path: str | Path) -> Path:
    """A zarr array (format 3) whose chunk shape says 0."""
    path = zarr_claiming(path, shape=(4, 16, 16), chunks=(1, 16, 16))

    def edit(doc):
        doc["chunk_grid"]["configuration"]["chunk_shape"] = [0, 16, 16]
        return doc

    return edit_zarr_json(path, edit)


def ome_zarr(path: str | Path, shape=(3, 16, 20), version: str = "0.5", attrs=None) -> Path:
    """A small valid OME-Zarr image (one level ``0``); ``attrs``, when given, replaces the
    group's attributes (the whole ``ome`` dict for 0.5, the top-level attributes for 0.4)."""
    import numpy as np
    import zarr

    path = Path(path)
    fmt = 3 if version == "0.5" else 2
    root = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    root.create_array("0", shape=shape, chunks=shape, dtype="uint8", fill_value=0)[...] = np.ones(shape, np.uint8)
    axes = [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"[-len(shape):]]
    ms = {"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [1.0] * len(shape)}]}], "name": "img"}
    if version == "0.5":
        root.attrs["ome"] = attrs if attrs is not None else {"version": "0.5", "multiscales": [ms]}
    else:
        ms["version"] = version
        if attrs is not None:
            root.attrs.put(attrs) if hasattr(root.attrs, "put") else root.attrs.update(attrs)
        else:
            root.attrs["multiscales"] = [ms]
    return path


def set_group_attrs(path: str | Path, attrs) -> Path:
    """Replace a zarr group's attributes with ``attrs`` (any JSON, even not a dict)."""
    import json

    path = Path(path)
    if (path / "zarr.json").exists():
        def edit(doc):
            doc["attributes"] = attrs
            return doc

        return edit_zarr_json(path, edit)
    (path / ".zattrs").write_text(json.dumps(attrs))
    return path


def nifti_gz_claiming(path: str | Path, dims=(2048, 2048, 640), datatype: int = 16) -> Path:
    """A ``.nii.gz`` of a few KB whose header claims ``dims`` (float32 by default)."""
    import gzip

    import nibabel as nib
    import numpy as np

    path = Path(path)
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.float32)
    hdr.set_data_shape((2, 2, 2))
    hdr["vox_offset"] = 352
    block = bytearray(hdr.binaryblock) + b"\0" * 4
    hdr2 = nib.Nifti1Header(bytes(block[:348]))
    hdr2["dim"][0] = len(dims)
    hdr2["dim"][1 : 1 + len(dims)] = dims
    hdr2["datatype"] = datatype
    with gzip.open(path, "wb") as fh:
        fh.write(hdr2.binaryblock + b"\0" * 4)
        fh.write(b"\0" * 40_000_000)  # compresses to ~40 KB
    return path


def nifti_with_header(path: str | Path, shape=(8, 6, 4), **fields) -> Path:
    """A small valid NIfTI-1 file whose header fields are then set to ``fields``
    (e.g. ``quatern_b=float('nan')``, ``pixdim=[...]``, ``srow_x=[...]``)."""
    import nibabel as nib
    import numpy as np

    path = Path(path)
    img = nib.Nifti1Image(np.arange(int(np.prod(shape)), dtype=np.int16).reshape(shape), np.eye(4))
    img.header.set_qform(np.eye(4), 1)
    img.header.set_sform(np.eye(4), 1)
    for key, value in fields.items():
        img.header[key] = value
    # nibabel would recompute the forms from the header on save: write the raw header instead
    data = np.asarray(img.dataobj)
    raw = bytearray(img.header.binaryblock)
    hdr = nib.Nifti1Header(bytes(raw))
    hdr["vox_offset"] = 352
    opener = __import__("gzip").open if str(path).endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)
        fh.write(np.asfortranarray(data).tobytes(order="F"))
    return path


def dicom_series(folder: str | Path, n: int = 3, shape=(8, 10), **tags) -> Path:
    """A small valid DICOM series (``n`` slices) with ``tags`` then set (or deleted when the
    value is ``None``) on every slice, e.g. ``PixelSpacing=["0.5"]``, ``BitsAllocated=24``."""
    import numpy as np
    import pydicom
    from formats_data import write_dicom_series

    folder = Path(folder)
    vol = np.arange(n * shape[0] * shape[1], dtype=np.uint16).reshape((n, *shape))
    for f in write_dicom_series(folder, vol, shuffle=False):
        ds = pydicom.dcmread(f)
        for key, value in tags.items():
            if value is None:
                if key in ds:
                    delattr(ds, key)
            else:
                setattr(ds, key, value)
        ds.save_as(f, enforce_file_format=False)
    return folder
