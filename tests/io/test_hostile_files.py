"""Regression tests for the hostile files a review found (issue 18): each was a memory bomb,
a traceback, or a failure after the segmentation on the code before; each is now refused at
read time with one line naming the file (or, for NIfTI geometry, repaired with a warning).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc
import warnings
from pathlib import Path

import hostile as H
import numpy as np
import pytest
import zarr

from napari_skipseg.io import ImageMeta, ImageReadError, read_image, write_image
from napari_skipseg.io.validate import GuardedArray, check_claim, max_bytes, max_eager_bytes, unwrap

ROOT = Path(__file__).resolve().parents[2]


def refused(path, lazy, match=None, most=64 << 20):
    """Read `path`; assert ImageReadError naming it, one line, and allocations under `most`."""
    tracemalloc.start()
    try:
        with pytest.raises(ImageReadError, match=match) as info:
            data, _ = read_image(path, lazy=lazy)
            np.asarray(data[...])  # a lazy array fails where its pixels are pulled
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    text = str(info.value)
    assert text.startswith(str(path)), text
    assert "\n" not in text
    assert peak < most, f"{peak / 2**20:.0f} MiB allocated before refusing"
    return text


# --- memory bombs: sizes claimed by metadata ---------------------------------------------------


@pytest.mark.parametrize("lazy", [False, True])
def test_ome_tiff_claiming_1e8_planes_is_refused_before_allocating(tmp_path, lazy):
    path = H.ome_tiff_claiming(tmp_path / "bomb.ome.tif", size_z=10**8)
    assert path.stat().st_size < 10_000
    text = refused(path, lazy, match="OME-XML claims")
    assert "51.2 GB" in text


def test_ome_tiff_tiffdata_pointing_past_the_pages_is_refused(tmp_path):
    path = H.ome_tiff_with_xml(tmp_path / "td.ome.tif",
                               lambda x: x.replace('<TiffData IFD="0" PlaneCount="2"', '<TiffData IFD="100000000" PlaneCount="2"'))
    assert 'IFD="100000000"' in __import__("tifffile").TiffFile(path).pages[0].description
    refused(path, False, match="points at page")


@pytest.mark.parametrize("lazy", [False, True])
def test_compressed_ome_tiff_claim_bounded_by_deflate_ratio(tmp_path, lazy):
    path = H.ome_tiff_claiming(tmp_path / "z.ome.tif", size_z=100_000, compression="zlib")
    refused(path, lazy, match="1100:1 compression")


@pytest.mark.parametrize("lazy", [False, True])
def test_zarr_claiming_1e9_by_64_by_64_is_refused(tmp_path, lazy):
    path = H.zarr_claiming(tmp_path / "bomb.zarr", shape=(10**9, 64, 64))
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size < 10_000
    refused(path, lazy, match="SKIPSEG_MAX_BYTES" if lazy else "truncated or corrupt")


def test_sparse_zarr_read_eagerly_is_bounded_by_its_chunks(tmp_path, monkeypatch):
    """Under the lazy limit, an eager read of a store with almost no chunks is refused (it would
    be all fill value), while the lazy read is fine."""
    path = H.zarr_claiming(tmp_path / "sparse.zarr", shape=(4000, 256, 256), chunks=(1, 256, 256))
    refused(path, False, match="truncated or corrupt")
    data, meta = read_image(path, lazy=True)
    assert data.shape == (4000, 256, 256) and meta.axes == "ZYX"
    assert np.asarray(data[0]).sum() == 256 * 256


@pytest.mark.parametrize("lazy", [False, True])
def test_nii_gz_of_49_kb_claiming_5_gb_is_refused(tmp_path, lazy):
    path = H.nifti_gz_claiming(tmp_path / "bomb.nii.gz", dims=(1024, 1024, 1296))  # 5.4 GB of float32
    assert path.stat().st_size < 100_000
    text = refused(path, lazy, match="1100:1 compression")
    assert "5.44 GB" in text


def test_limits_come_from_the_environment(tmp_path, monkeypatch):
    data = np.zeros((8, 64, 64), np.uint16)  # 64 KiB
    path = write_image(tmp_path / "ok.tif", data, ImageMeta("ZYX"), compression=None)
    monkeypatch.setenv("SKIPSEG_MAX_EAGER_BYTES", "10000")
    refused(path, False, match="SKIPSEG_MAX_EAGER_BYTES")
    assert read_image(path, lazy=True)[0].shape == data.shape  # the lazy limit is separate
    monkeypatch.setenv("SKIPSEG_MAX_BYTES", "10000")
    refused(path, True, match="SKIPSEG_MAX_BYTES")
    assert max_eager_bytes() <= max_bytes() == 10000
    monkeypatch.setenv("SKIPSEG_MAX_BYTES", "lots")
    with pytest.raises(ValueError, match="SKIPSEG_MAX_BYTES='lots'"):
        max_bytes()


def test_check_claim_reads_huge_shapes_without_overflow():
    with pytest.raises(ImageReadError, match="more than the lazy read limit"):
        check_claim("x", (2**40, 2**40, 2**40), np.float64, lazy=True)
    with pytest.raises(ImageReadError, match="negative size"):
        check_claim("x", (-1, 4), np.uint8, lazy=True)
    with pytest.raises(ImageReadError, match="chunks of"):
        check_claim("x", (4, 64), np.uint8, lazy=True, chunk=(2**40, 64))


# --- OME-Zarr attributes -----------------------------------------------------------------------

AXES = ["z", "y", "x"]
BAD_ATTRS = {
    "multiscales-str": ({"multiscales": "x"}, "multiscales is 'x'"),
    "multiscales-of-int": ({"multiscales": [1]}, r"multiscales\[0\] is 1"),
    "datasets-none": ({"multiscales": [{"axes": AXES, "datasets": [None]}]}, r"datasets\[0\] is None"),
    "datasets-missing": ({"multiscales": [{"axes": AXES}]}, "datasets is None"),
    "dataset-path-int": ({"multiscales": [{"axes": AXES, "datasets": [{"path": 7}]}]}, "path is 7"),
    "dataset-path-escapes": ({"multiscales": [{"axes": AXES, "datasets": [{"path": "../../x"}]}]}, "relative path"),
    "dataset-is-a-group": ({"multiscales": [{"axes": AXES, "datasets": [{"path": "labels"}]}]}, "missing|group"),
    "transforms-str": ({"multiscales": [{"axes": AXES, "datasets": [{"path": "0", "coordinateTransformations": "s"}]}]},
                       "coordinateTransformations is 's'"),
    "scale-text": ({"multiscales": [{"axes": AXES, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": ["a", 1, 1]}]}]}]}, "not a list of numbers"),
    "scale-zero": ({"multiscales": [{"axes": AXES, "datasets": [{"path": "0", "coordinateTransformations": [
        {"type": "scale", "scale": [0, 1, 1]}]}]}]}, "must be positive"),
    "axes-int": ({"multiscales": [{"axes": [1, 2, 3], "datasets": [{"path": "0"}]}]}, "axis 1 has no name"),
    "axes-nameless": ({"multiscales": [{"axes": [{}, {}, {}], "datasets": [{"path": "0"}]}]}, "has no name"),
    "axes-two-for-3d": ({"multiscales": [{"axes": ["y", "x"], "datasets": [{"path": "0"}]}]}, "3 dimensions"),
    "axis-unit-list": ({"multiscales": [{"axes": [{"name": "z", "unit": [1]}, "y", "x"], "datasets": [{"path": "0"}]}]},
                       "unit"),
}


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("case", sorted(BAD_ATTRS))
def test_malformed_ome_zarr_attributes_are_one_error(tmp_path, case, version):
    attrs, match = BAD_ATTRS[case]
    path = H.ome_zarr(tmp_path / "img.zarr", version=version)
    H.set_group_attrs(path, {"ome": {"version": "0.5", **attrs}} if version == "0.5" else attrs)
    for lazy in (False, True):
        refused(path, lazy, match=match)


def test_malformed_labels_are_left_out_with_a_warning(tmp_path):
    path = H.ome_zarr(tmp_path / "img.zarr")
    group = zarr.open_group(str(path), mode="r+")
    labels = group.create_group("labels")
    labels.create_group("cells").create_array("0", shape=(3, 16, 20), dtype="uint8")
    for bad in ("abc", ["cells", "../../../etc", 5, "absent"]):
        labels.attrs["ome"] = {"version": "0.5", "labels": bad}
        with pytest.warns(UserWarning, match="left out"):
            _, meta = read_image(path, lazy=True)
        assert meta.extra["ome_zarr"]["labels"] == ([] if bad == "abc" else ["cells"])


@pytest.mark.parametrize("attr, match", [
    ("ZYX", "'skipseg' is 'ZYX', not a dict"),
    ({"axes": ["Z", "Y", "X"]}, "skipseg.axes"),
    ({"axes": "ZYX", "spacing": ["x", 1, 1]}, "skipseg.spacing"),
    ({"axes": "ZYX", "spacing": [float("nan"), 1, 1]}, "not finite"),
    ({"axes": "ZYX", "unit": 3}, "skipseg.unit"),
    ({"axes": "ZQX"}, "unknown axis letters"),
])
def test_malformed_skipseg_attribute_is_one_error(tmp_path, attr, match):
    path = H.zarr_claiming(tmp_path / "s.zarr", shape=(4, 8, 8), chunks=(1, 8, 8))
    zarr.open_array(str(path), mode="r+").attrs["skipseg"] = attr
    refused(path, False, match=match)


@pytest.mark.parametrize("lazy", [False, True])
def test_zero_chunk_shape_is_one_error(tmp_path, lazy):
    path = H.zarr_zero_chunks(tmp_path / "z.zarr")
    refused(path, lazy, match=r"chunk shape \(0, 16, 16\)")


@pytest.mark.parametrize("lazy", [False, True])
def test_zero_size_zarr_is_one_error(tmp_path, lazy):
    path = H.zarr_claiming(tmp_path / "e.zarr", shape=(0, 64), chunks=(1, 64))
    refused(path, lazy, match="holds no pixels")


def test_damaged_zarr_chunk_fails_where_pulled_naming_the_store(tmp_path):
    path = H.zarr_claiming(tmp_path / "c.zarr", shape=(2, 64, 64), chunks=(1, 64, 64))
    chunk = next(p for p in (path / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"\x01" * 17)
    data, _ = read_image(path, lazy=True)
    assert isinstance(data, GuardedArray) and isinstance(unwrap(data), zarr.Array)
    np.testing.assert_array_equal(np.asarray(data[1]), 0)  # the other plane is fine
    with pytest.raises(ImageReadError, match="cannot read the pixel data") as info:
        data[0]
    assert str(info.value).startswith(str(path))


# --- TIFF: a corrupt strip on the lazy path ----------------------------------------------------


def test_corrupt_strip_of_compressed_tiff_lazy_read_is_one_error(tmp_path):
    path = H.tiff_corrupt_strip(tmp_path / "c.tif")
    refused(path, False, match="truncated or corrupt")
    data, meta = read_image(path, lazy=True)  # the header is fine: nothing is decoded yet
    assert data.shape == (4, 64, 64) and meta.axes == "ZYX"
    assert np.asarray(data[0]).shape == (64, 64)  # strips before the damage read
    with pytest.raises(ImageReadError, match="cannot read the pixel data") as info:
        np.asarray(data[1])
    assert str(info.value).startswith(str(path))


def test_cli_segment_corrupt_tiff_exits_2_with_one_line(tmp_path):
    path = H.tiff_corrupt_strip(tmp_path / "corrupt.tif", shape=(3, 96, 96))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SKIPSEG_THREADS": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "napari_skipseg.cli", "segment", str(path), "-o", str(tmp_path / "out.tif"),
                        "--model", "nuclei2d", "-q"], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2, p.stderr[-2000:]
    assert len(lines) == 1 and str(path) in lines[0] and "corrupt" in lines[0], p.stderr[-2000:]
    assert not (tmp_path / "out.tif").exists()


# --- DICOM tags ---------------------------------------------------------------------------------


@pytest.mark.parametrize("tags, match", [
    ({"PixelSpacing": ["0.5"]}, r"PixelSpacing has 1 value\(s\)"),
    ({"PixelSpacing": ["0.5", "0", "1"]}, "PixelSpacing has 3"),
    ({"PixelSpacing": ["0.5", "-1"]}, "must be positive"),
    ({"BitsAllocated": 24}, "BitsAllocated 24 is not supported"),
    ({"Columns": None}, "Columns is missing"),
    ({"Rows": 0}, "Rows is 0"),
    ({"SamplesPerPixel": 3}, "SamplesPerPixel 3"),
    ({"RescaleSlope": "NaN"}, "RescaleSlope .* is not finite"),
    ({"ImagePositionPatient": ["1", "2"]}, "ImagePositionPatient has 2"),
    ({"PixelRepresentation": 2}, "PixelRepresentation 2"),
])
def test_dicom_header_problems_are_one_error(tmp_path, tags, match):
    from pydicom import config

    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        folder = H.dicom_series(tmp_path / "s", **tags)
    finally:
        config.settings.writing_validation_mode = old
    for lazy in (False, True):
        text = refused(folder, lazy, match=match)
        assert text.startswith(str(folder))


def test_dicom_slices_of_different_pixel_types_are_one_error(tmp_path):
    import pydicom

    folder = H.dicom_series(tmp_path / "s")
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(first)
    ds.PixelRepresentation = 1
    ds.save_as(first)
    refused(folder, False, match="slices differ in pixel type")


def test_dicom_garbled_element_length_does_not_allocate_it(tmp_path):
    path = H.write_case({"format": "dicom", "n": 1, "shape": (1, 1), "tags": [], "which": "all",
                         "corrupt": ("garble", 0.1796875, 2, 0)}, tmp_path)
    tracemalloc.start()
    try:
        try:
            read_image(path)
        except ImageReadError:
            pass
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB"


# --- NIfTI geometry ------------------------------------------------------------------------------


@pytest.mark.parametrize("fields, problem", [
    ({"quatern_b": float("nan")}, "qform"),
    ({"quatern_b": 2.0}, "qform"),
    ({"qoffset_x": float("inf")}, "qform"),
    ({"srow_x": [float("inf"), 0, 0, 0]}, "sform"),
    ({"srow_x": [0, 0, 0, 0], "srow_y": [0, 0, 0, 0], "srow_z": [0, 0, 0, 0]}, "sform"),
    ({"pixdim": [1, float("nan"), 1, 1, 1, 1, 1, 1]}, "pixdim"),
])
def test_nifti_bad_geometry_is_repaired_at_read_so_the_result_saves(tmp_path, fields, problem):
    path = H.nifti_with_header(tmp_path / "scan.nii.gz", shape=(16, 12, 4), **fields)
    with pytest.warns(UserWarning, match=problem) as record:
        data, meta = read_image(path, lazy=True)
    assert all(str(path) in str(w.message) for w in record)
    assert np.isfinite(meta.spacing).all() and np.isfinite(meta.extra["affine"]).all()
    assert data.shape == (4, 12, 16)
    # what used to fail after the whole segmentation: writing the result with the scan's metadata
    labels = (np.asarray(data) > 3).astype(np.uint8)
    out = write_image(tmp_path / "labels.nii.gz", labels, meta.without_channels())
    back, meta2 = read_image(out)
    np.testing.assert_array_equal(back, labels)
    assert meta2.spacing == pytest.approx(meta.spacing)


def test_nifti_wrong_dims_are_one_error(tmp_path):
    path = H.nifti_with_header(tmp_path / "d.nii", shape=(8, 6, 4), dim=[9, 8, 6, 4, 1, 1, 1, 1])
    refused(path, False)


def test_guarded_array_is_an_array_like():
    arr = zarr.create_array(store={}, shape=(3, 4), chunks=(1, 4), dtype="uint8")
    arr[...] = 7
    g = GuardedArray(arr, "x.zarr")
    assert g.shape == (3, 4) and g.ndim == 2 and g.dtype == np.uint8 and g.size == 12 and len(g) == 3
    assert g.chunks == (1, 4)
    np.testing.assert_array_equal(np.asarray(g), 7)
    assert np.asarray(g, dtype=float).dtype == float
    with pytest.raises(IndexError):
        g[5]  # the caller's mistake stays an IndexError


def test_reader_keeps_a_guarded_zarr_on_disk(tmp_path):
    from napari_skipseg._reader import read_layers

    path = H.ome_zarr(tmp_path / "img.zarr")
    [(data, kwargs, kind)] = read_layers(str(path))
    assert kind == "image" and isinstance(data, GuardedArray)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        json.dumps(kwargs["metadata"]["skipseg"]["extra"])


# --- found by the fuzzers ------------------------------------------------------------------------


def test_tiff_strip_running_past_the_end_is_refused_before_reading_it(tmp_path):
    """StripByteCounts of 20 MB in an 890-byte file: tifffile allocated the 20 MB to read it."""
    path = H.write_case({"format": "tiff", "shape": (1, 1), "dtype": "uint8", "kind": "ome", "compression": "zlib",
                         "xml": [], "imagej": [], "tags": [(279, 20812414)], "corrupt": None}, tmp_path)
    for lazy in (False, True):
        refused(path, lazy, match="runs past the end of the file", most=4 << 20)


def test_nifti_unit_codes_nifti_does_not_define_read_as_unknown(tmp_path):
    path = H.nifti_with_header(tmp_path / "u.nii", xyzt_units=208)
    with pytest.warns(UserWarning, match="units unknown"):
        data, meta = read_image(path)
    assert meta.unit == "pixel" and data.shape == (4, 6, 8)


def test_error_messages_are_one_line_whatever_the_library_says():
    err = ImageReadError("a.nii", "Expected 578 bytes, got 261\n - could the file be damaged?")
    assert str(err) == "a.nii: Expected 578 bytes, got 261 - could the file be damaged?"


def test_cli_dicom_with_an_invalid_transfer_syntax_is_one_line(tmp_path):
    """pydicom's own value warnings used to come before the error line (found by bench_fuzz)."""
    folder = H.write_case({"format": "dicom", "n": 2, "shape": (4, 4), "tags": [("TransferSyntaxUID", "-0")],
                           "which": "first", "corrupt": None}, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SKIPSEG_THREADS": "1", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "napari_skipseg.cli", "segment", str(folder), "-o", str(tmp_path / "o.tif")],
                       capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert p.returncode == 2 and len(lines) == 1 and str(folder) in lines[0], p.stderr[-2000:]
