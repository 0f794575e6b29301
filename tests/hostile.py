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


# --- fuzzing: hypothesis strategies of hostile files, one per reader --------------------------
# A strategy draws a *case*: a small dict that says how to build a real file and how to spoil
# it. ``write_case(case, folder)`` makes the file and returns its path. Tests (a few dozen
# examples per format) and benchmarks/bench_fuzz.py (thousands) share them.

FORMATS = ("tiff", "zarr", "nifti", "dicom")


def hostile_numbers():
    """Numbers a header should never hold, and a few it may."""
    from hypothesis import strategies as st

    return st.one_of(
        st.sampled_from([0, -1, 1, 2, 3, 255, 65535, 2**31 - 1, 2**31, 2**32 + 1, 2**53, 10**9, 10**12]),
        st.integers(-(2**40), 2**40),
        st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, -0.5, 1e-30, 1e30, 0.5]),
        st.floats(allow_nan=True, allow_infinity=True, width=32),
    )


def hostile_json():
    """Any JSON value, leaning to the shapes OME-Zarr metadata take (lists, dicts, names)."""
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(), st.booleans(), hostile_numbers().filter(lambda v: v == v and abs(v) != float("inf")),
        st.sampled_from(["", "0", "x", "y", "z", "t", "c", "../..", "/", "0/..", "micrometer", "space",
                         "scale", "translation", "\u00b5m", "zz" * 40]),
        st.text(max_size=8),
    )
    return st.recursive(scalars, lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(
            st.sampled_from(["name", "type", "unit", "path", "scale", "translation", "axes", "datasets",
                             "coordinateTransformations", "version", "labels", "spacing"]), inner, max_size=4)),
        max_leaves=8)


def _strategies():
    from hypothesis import strategies as st

    numbers = hostile_numbers()
    finite = numbers.filter(lambda v: v == v and abs(v) != float("inf"))
    text_values = st.one_of(numbers.map(str), st.sampled_from(["", "abc", "1e400", "-0", "1 2", "NaN", "0x10"]))
    corruption = st.one_of(
        st.just(None),
        st.tuples(st.just("truncate"), st.floats(0.0, 0.999)),
        st.tuples(st.just("garble"), st.floats(0.0, 0.999), st.integers(1, 4096), st.integers(0, 2**32 - 1)),
    )
    shape2or3 = st.one_of(st.tuples(st.integers(1, 24), st.integers(1, 24)),
                          st.tuples(st.integers(1, 4), st.integers(1, 24), st.integers(1, 24)))
    tiff = st.fixed_dictionaries({
        "format": st.just("tiff"),
        "shape": shape2or3,
        "dtype": st.sampled_from(["uint8", "uint16", "float32", "int32"]),
        "kind": st.sampled_from(["ome", "imagej", "plain"]),
        "compression": st.sampled_from([None, "zlib"]),
        "xml": st.lists(st.tuples(
            st.sampled_from(["SizeX", "SizeY", "SizeZ", "SizeC", "SizeT", "Type", "PhysicalSizeX", "PhysicalSizeZ",
                             "DimensionOrder", "IFD", "PlaneCount", "FirstZ", "PhysicalSizeXUnit"]),
            st.one_of(text_values, st.sampled_from(["uint8", "double", "bit", "complex", "XYZCT", "XYCZT", "Q"]))),
            max_size=3),
        "imagej": st.lists(st.tuples(st.sampled_from(["images", "slices", "frames", "channels", "spacing", "unit"]),
                                     text_values), max_size=2),
        "tags": st.lists(st.tuples(st.sampled_from([256, 257, 258, 277, 278, 279, 273, 259, 284, 339]),
                                   st.integers(0, 2**32 - 1)), max_size=2),
        "corrupt": corruption,
    })
    zarr = st.fixed_dictionaries({
        "format": st.just("zarr"),
        "shape": shape2or3,
        "version": st.sampled_from(["0.4", "0.5", "plain2", "plain3"]),
        "labels": st.booleans(),
        "attrs": st.lists(st.tuples(st.sampled_from([
            "multiscales", "multiscales.0", "multiscales.0.axes", "multiscales.0.axes.0", "multiscales.0.axes.0.name",
            "multiscales.0.axes.0.unit", "multiscales.0.datasets", "multiscales.0.datasets.0",
            "multiscales.0.datasets.0.path", "multiscales.0.datasets.0.coordinateTransformations",
            "multiscales.0.datasets.0.coordinateTransformations.0.scale", "multiscales.0.coordinateTransformations",
            "multiscales.0.version", "labels", "skipseg", "skipseg.axes", "skipseg.spacing", "skipseg.unit",
            "_ARRAY_DIMENSIONS", ""]), hostile_json()), max_size=2),
        "array": st.lists(st.tuples(
            st.sampled_from(["shape", "chunks", "dtype", "fill_value", "dimension_names"]),
            st.one_of(hostile_json(), st.lists(finite, min_size=1, max_size=4))), max_size=1),
        "chunk": st.one_of(st.just(None), st.sampled_from(["delete", "empty", "garble", "truncate"])),
    })
    nifti = st.fixed_dictionaries({
        "format": st.just("nifti"),
        "shape": st.one_of(shape2or3, st.tuples(st.integers(1, 8), st.integers(1, 8), st.integers(1, 3),
                                                st.integers(1, 3))),
        "gz": st.booleans(),
        "fields": st.lists(st.tuples(st.sampled_from([
            "dim", "pixdim", "datatype", "bitpix", "vox_offset", "scl_slope", "scl_inter", "qform_code", "sform_code",
            "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "srow_x", "srow_y", "xyzt_units", "sizeof_hdr",
            "magic", "dim_info"]),
            st.one_of(numbers, st.lists(numbers, min_size=8, max_size=8), st.sampled_from([b"n+1\0", b"ni1\0", b"xx"])),
        ), max_size=3),
        "corrupt": corruption,
    })
    dicom = st.fixed_dictionaries({
        "format": st.just("dicom"),
        "n": st.integers(1, 3),
        "shape": st.tuples(st.integers(1, 12), st.integers(1, 12)),
        "tags": st.lists(st.tuples(
            st.sampled_from(["Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
                             "SamplesPerPixel", "PixelSpacing", "SliceThickness", "ImagePositionPatient",
                             "ImageOrientationPatient", "RescaleSlope", "RescaleIntercept", "NumberOfFrames",
                             "PhotometricInterpretation", "PixelData", "TransferSyntaxUID", "SeriesInstanceUID"]),
            st.one_of(st.none(), numbers, text_values, st.lists(st.one_of(numbers, text_values), max_size=7))),
            max_size=3),
        "which": st.sampled_from(["all", "first", "last"]),
        "corrupt": corruption,
    })
    return {"tiff": tiff, "zarr": zarr, "nifti": nifti, "dicom": dicom}


def case_strategy(fmt: str):
    """The hypothesis strategy of hostile cases for reader `fmt` (one of :data:`FORMATS`)."""
    return _strategies()[fmt]


def _spoil_bytes(path: Path, corrupt) -> None:
    """Truncate a file, or overwrite a run of its bytes with noise."""
    import random

    if corrupt is None or not path.is_file():
        return
    blob = bytearray(path.read_bytes())
    at = int(corrupt[1] * len(blob))
    if corrupt[0] == "truncate":
        path.write_bytes(bytes(blob[:at]))
        return
    rnd = random.Random(corrupt[3])
    for i in range(at, min(at + corrupt[2], len(blob))):
        blob[i] = rnd.randrange(256)
    path.write_bytes(bytes(blob))


def write_case(case: dict, folder: str | Path) -> Path:
    """Write the hostile file a strategy drew (see :func:`case_strategy`) into `folder`."""
    import warnings

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"tiff": _write_tiff, "zarr": _write_zarr, "nifti": _write_nifti, "dicom": _write_dicom}[
            case["format"]](case, folder)


def _pixels(shape, dtype):
    import numpy as np

    return (np.arange(int(np.prod(shape))) % 200).reshape(shape).astype(dtype)


def _write_tiff(case: dict, folder: Path) -> Path:
    import re

    import tifffile

    kind, shape = case["kind"], case["shape"]
    path = folder / ("img.ome.tif" if kind == "ome" else "img.tif")
    data = _pixels(shape, case["dtype"])
    if kind == "ome":
        tifffile.imwrite(path, data, ome=True, compression=case["compression"],
                         metadata={"axes": "ZYX"[-len(shape):], "PhysicalSizeX": 0.5})
    elif kind == "imagej":
        tifffile.imwrite(path, data if case["dtype"] != "int32" else data.astype("uint16"), imagej=True,
                         compression=case["compression"], metadata={"spacing": 2.0, "unit": "um"})
    else:
        tifffile.imwrite(path, data, compression=case["compression"], photometric="minisblack")
    if kind == "ome" and case["xml"]:
        def edit(xml):
            for name, value in case["xml"]:
                value = str(value).replace('"', "").replace("<", "").replace("&", "")
                if re.search(rf'\b{name}="', xml):
                    xml = re.sub(rf'\b{name}="[^"]*"', f'{name}="{value}"', xml, count=1)
                else:
                    xml = xml.replace("<TiffData ", f'<TiffData {name}="{value}" ', 1)
            return xml

        _set_ome_xml(path, edit)
    if kind == "imagej" and case["imagej"]:
        with tifffile.TiffFile(path) as tif:
            text = tif.pages[0].description
        for key, value in case["imagej"]:
            line = f"{key}={value}".replace("\n", " ")
            text = re.sub(rf"^{key}=.*$", line, text, flags=re.M) if f"\n{key}=" in text else text + line + "\n"
        tifffile.tiffcomment(path, text.encode("ascii", "replace"))
    for code, value in case["tags"]:
        _patch_tag(path, code, value)
    _spoil_bytes(path, case["corrupt"])
    return path


def _patch_tag(path: Path, code: int, value: int) -> None:
    """Overwrite the first value of TIFF tag `code` of the first page in place."""
    import struct

    import tifffile

    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags.get(code)
        if tag is None:
            return
        offset, dtype, byteorder = tag.valueoffset, tag.dtype, tif.byteorder
    fmt = {3: "H", 4: "I", 16: "Q", 8: "h", 9: "i"}.get(int(dtype))
    if fmt is None:
        return
    bits = struct.calcsize(fmt) * 8
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(struct.pack(byteorder + fmt, value % (1 << bits) if fmt.isupper() else
                             (value % (1 << bits)) - (1 << (bits - 1))))


def _set_path(doc, dotted: str, value):
    """``doc`` with the item at the dotted path (``"multiscales.0.axes"``) set to `value`."""
    if not dotted:
        return value
    keys = dotted.split(".")
    node = doc
    for k in keys[:-1]:
        if isinstance(node, list) and k.isdigit() and int(k) < len(node):
            node = node[int(k)]
        elif isinstance(node, dict) and k in node:
            node = node[k]
        else:
            return doc  # the path is gone (an earlier edit replaced it)
    last = keys[-1]
    if isinstance(node, list) and last.isdigit() and int(last) < len(node):
        node[int(last)] = value
    elif isinstance(node, dict):
        node[last] = value
    return doc


def _write_zarr(case: dict, folder: Path) -> Path:
    import json

    import numpy as np
    import zarr

    path = folder / "img.zarr"
    version, shape = case["version"], tuple(case["shape"])
    if version.startswith("plain"):
        fmt = int(version[-1])
        arr = zarr.create_array(str(path), shape=shape, chunks=(1, *shape[1:]), dtype="uint16", fill_value=0,
                                zarr_format=fmt)
        arr[...] = _pixels(shape, "uint16")
        arr.attrs["skipseg"] = {"axes": "ZYX"[-len(shape):], "spacing": [1.0] * len(shape), "unit": "micrometer"}
        array_dir = path
    else:
        ome_zarr(path, shape=shape, version=version)
        array_dir = path / "0"
        if case["labels"]:
            root = zarr.open_group(str(path), mode="r+")
            lab = root.create_group("labels")
            sub = lab.create_group("cells")
            sub.create_array("0", shape=shape, chunks=shape, dtype="uint8", fill_value=0)
            if version == "0.5":
                lab.attrs["ome"] = {"version": "0.5", "labels": ["cells"]}
                sub.attrs["ome"] = {"version": "0.5", "multiscales": root.attrs["ome"]["multiscales"],
                                    "image-label": {}}
            else:
                lab.attrs["labels"] = ["cells"]
                sub.attrs.update({"multiscales": root.attrs["multiscales"], "image-label": {}})
    # attributes of the group (OME) or of the array (plain)
    meta_file = path / "zarr.json" if (path / "zarr.json").exists() else None
    if case["attrs"]:
        if meta_file is not None:
            doc = json.loads(meta_file.read_text())
            attrs = doc.get("attributes", {})
            for dotted, value in case["attrs"]:
                if version == "0.5" and dotted and not dotted.startswith(("skipseg", "_ARRAY")):
                    dotted = "ome." + dotted
                attrs = _set_path(attrs, dotted, value)
            doc["attributes"] = attrs
            meta_file.write_text(json.dumps(doc))
        else:
            f = path / ".zattrs"
            attrs = json.loads(f.read_text()) if f.exists() else {}
            for dotted, value in case["attrs"]:
                attrs = _set_path(attrs, dotted, value)
            f.write_text(json.dumps(attrs))
    for key, value in case["array"]:
        v3 = (array_dir / "zarr.json").exists()
        f = array_dir / ("zarr.json" if v3 else ".zarray")
        doc = json.loads(f.read_text())
        if v3:
            where = {"shape": ("shape",), "chunks": ("chunk_grid", "configuration", "chunk_shape"),
                     "dtype": ("data_type",), "fill_value": ("fill_value",),
                     "dimension_names": ("dimension_names",)}[key]
        else:
            where = {"shape": ("shape",), "chunks": ("chunks",), "dtype": ("dtype",), "fill_value": ("fill_value",),
                     "dimension_names": ("dimension_separator",)}[key]
        node = doc
        for k in where[:-1]:
            node = node.setdefault(k, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node[where[-1]] = value
        f.write_text(json.dumps(doc))
    if case["chunk"]:
        chunks = sorted(p for p in array_dir.rglob("*") if p.is_file() and not p.name.startswith((".", "zarr.json")))
        if chunks:
            c = chunks[0]
            if case["chunk"] == "delete":
                c.unlink()
            elif case["chunk"] == "empty":
                c.write_bytes(b"")
            elif case["chunk"] == "truncate":
                c.write_bytes(c.read_bytes()[: max(len(c.read_bytes()) // 2, 1)])
            else:
                c.write_bytes(bytes(np.random.default_rng(0).integers(0, 256, max(c.stat().st_size, 8),
                                                                      dtype=np.uint8)))
    return path


def _write_nifti(case: dict, folder: Path) -> Path:
    import gzip

    import nibabel as nib
    import numpy as np

    path = folder / ("img.nii.gz" if case["gz"] else "img.nii")
    shape = tuple(case["shape"])[::-1]  # NIfTI order: x fastest
    data = _pixels(shape, "int16")
    img = nib.Nifti1Image(data, np.diag([0.5, 0.5, 2.0, 1.0]))
    img.header.set_qform(img.affine, 1)
    img.header.set_sform(img.affine, 1)
    img.header["vox_offset"] = 352
    hdr = img.header
    for field, value in case["fields"]:
        try:
            current = hdr[field]
            if isinstance(value, bytes) or current.dtype.kind == "S":
                hdr[field] = value if isinstance(value, bytes) else str(value).encode()[:4]
            elif current.shape and not isinstance(value, list):
                arr = np.array(current)
                arr[min(1, arr.size - 1)] = value
                hdr[field] = arr
            elif isinstance(value, list) and current.shape:
                hdr[field] = np.asarray(value[: current.size], dtype=float).astype(current.dtype)
            else:
                hdr[field] = np.asarray(value, dtype=float).astype(current.dtype)
        except (ValueError, TypeError, OverflowError):
            continue
    if "vox_offset" not in dict(case["fields"]):
        hdr["vox_offset"] = 352
    opener = gzip.open if case["gz"] else open
    with opener(path, "wb") as fh:
        fh.write(hdr.binaryblock + b"\0" * 4)
        fh.write(np.asfortranarray(data).tobytes(order="F"))
    _spoil_bytes(path, case["corrupt"])
    return path


def _write_dicom(case: dict, folder: Path) -> Path:
    import numpy as np
    import pydicom
    from formats_data import write_dicom_series
    from pydicom import config

    series = folder / "series"
    vol = _pixels((case["n"], *case["shape"]), "uint16")
    files = write_dicom_series(series, vol, shuffle=False)
    targets = {"all": files, "first": files[:1], "last": files[-1:]}[case["which"]]
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        for f in targets:
            ds = pydicom.dcmread(f)
            for key, value in case["tags"]:
                try:
                    if key == "TransferSyntaxUID":
                        ds.file_meta.TransferSyntaxUID = str(value) if value is not None else "1.2.840.10008.1.2.4.50"
                    elif key == "PixelData":
                        raw = ds.PixelData
                        ds.PixelData = raw[: int(abs(value)) % (len(raw) + 1)] if isinstance(value, int | float) \
                            and value == value and abs(value) != float("inf") else raw + b"\0" * 3
                    elif value is None:
                        if key in ds:
                            delattr(ds, key)
                    elif isinstance(value, float) and not np.isfinite(value) or isinstance(value, list):
                        setattr(ds, key, [str(v) for v in value] if isinstance(value, list) else str(value))
                    else:
                        setattr(ds, key, value)
                except (ValueError, TypeError, OverflowError, AttributeError, KeyError):
                    continue
            try:
                ds.save_as(f, enforce_file_format=False)
            except (ValueError, TypeError, OverflowError, OSError, struct_error()):
                continue
    finally:
        config.settings.writing_validation_mode = old
    for f in targets[:1]:
        _spoil_bytes(Path(f), case["corrupt"])
    return series


def struct_error():
    import struct

    return struct.error
