"""TIFF / ImageJ / OME-TIFF reading and OME-TIFF writing."""

import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import napari_skipseg.io as io_module
from napari_skipseg.io import (
    ImageMeta,
    ImageReadError,
    default_axes,
    find_reader,
    read_image,
    write_image,
)
from napari_skipseg.io import tiff as tiff_module

rng = np.random.default_rng(0)


def _random(shape, dtype=np.uint16):
    if np.dtype(dtype).kind == "f":
        return rng.random(shape, dtype=dtype)
    return rng.integers(0, 200, shape).astype(dtype)


# --- reading files written by other tools -------------------------------------------


@pytest.mark.parametrize("unit", ["um", "micron", "\\u00B5m"])
def test_imagej_hyperstack_spacing_and_unit(tmp_path, unit):
    path = tmp_path / "hyper.tif"
    data = _random((3, 4, 2, 16, 20))  # TZCYX, ImageJ's order
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.25, 1 / 0.5),  # pixels per unit, X then Y
        metadata={"axes": "TZCYX", "spacing": 2.0, "unit": unit},
    )
    out, meta = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert meta.axes == "TZCYX"
    assert meta.spacing == pytest.approx((1.0, 2.0, 1.0, 0.5, 0.25))
    assert meta.unit == "micrometer"
    assert meta.channel_axis == 2
    assert meta.spatial_spacing == pytest.approx((2.0, 0.5, 0.25))
    assert meta.scale_for_napari() == pytest.approx((1.0, 2.0, 0.5, 0.25))
    assert meta.name == "hyper" and meta.path == str(path)


def test_imagej_zstack_without_unit_is_pixel(tmp_path):
    path = tmp_path / "z.tif"
    tifffile.imwrite(path, _random((5, 8, 9)), imagej=True, metadata={"axes": "ZYX"})
    _, meta = read_image(path)
    assert (meta.axes, meta.spacing, meta.unit) == ("ZYX", (1.0, 1.0, 1.0), "pixel")


def test_ome_tiff_physical_sizes(tmp_path):
    path = tmp_path / "cells.ome.tif"
    data = _random((2, 3, 16, 20))
    tifffile.imwrite(
        path,
        data,
        ome=True,
        metadata={
            "axes": "CZYX",
            "PhysicalSizeX": 120.0,
            "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 130.0,
            "PhysicalSizeYUnit": "nm",
            "PhysicalSizeZ": 400.0,
            "PhysicalSizeZUnit": "nm",
        },
    )
    out, meta = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert meta.axes == "CZYX"
    assert meta.spacing == pytest.approx((1.0, 400.0, 130.0, 120.0))
    assert meta.unit == "nanometer"
    assert meta.name == "cells"


def test_ome_tiff_default_unit_is_micrometer(tmp_path):
    path = tmp_path / "t.ome.tiff"
    tifffile.imwrite(
        path, _random((2, 3, 8, 8)), ome=True, metadata={"axes": "TZYX", "PhysicalSizeX": 0.3}
    )
    _, meta = read_image(path)
    assert meta.axes == "TZYX"
    assert meta.spacing == pytest.approx((1.0, 1.0, 1.0, 0.3))
    assert meta.unit == "micrometer"


@pytest.mark.parametrize("samples", [3, 4])
def test_rgb_uint8(tmp_path, samples):
    path = tmp_path / "photo.tif"
    data = _random((16, 20, samples), np.uint8)
    tifffile.imwrite(path, data, photometric="rgb")
    out, meta = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert meta.axes == "YXS" and meta.rgb
    assert meta.scale_for_napari() == (1.0, 1.0)


def test_uint16_zstack_unknown_axis_becomes_z(tmp_path):
    path = tmp_path / "stack.tif"
    data = _random((7, 16, 20), np.uint16)
    tifffile.imwrite(path, data)  # tifffile reports axes 'QYX'
    out, meta = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert out.dtype == np.uint16
    assert meta.axes == "ZYX" and not meta.rgb and meta.channel_axis is None


def test_page_sequence_becomes_z(tmp_path):
    path = tmp_path / "pages.tif"
    data = _random((5, 8, 9))
    with tifffile.TiffWriter(path) as tif:
        for plane in data:
            tif.write(plane, metadata=None)  # tifffile reports axes 'IYX'
    out, meta = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert meta.axes == "ZYX"


def test_two_unknown_axes_become_tz(tmp_path):
    path = tmp_path / "4d.tif"
    tifffile.imwrite(path, _random((2, 5, 8, 9)))  # 'QQYX'
    assert read_image(path)[1].axes == "TZYX"


@pytest.mark.parametrize("n", [3, 4])
def test_planar_samples_become_channels(tmp_path, n):
    # Planar RGB(A) reads as axes 'SYX'. tifffile (2026.3) still writes a plain
    # (3 or 4, Y, X) array this way by default, with a DeprecationWarning.
    path = tmp_path / "planar.tif"
    data = _random((n, 8, 9), np.float32)
    tifffile.imwrite(path, data, photometric="rgb", planarconfig="separate")
    out, meta = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert meta.axes == "CYX"


def test_float32_2d(tmp_path):
    path = tmp_path / "f.tif"
    data = _random((16, 20), np.float32)
    tifffile.imwrite(path, data)
    out, meta = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert out.dtype == np.float32
    assert (meta.axes, meta.spacing, meta.unit) == ("YX", (1.0, 1.0), "pixel")


@pytest.mark.parametrize(
    ("resolution", "unit", "expected"),
    [((10000, 5000), "CENTIMETER", (2.0, 1.0)), ((25400, 25400), "INCH", (1.0, 1.0))],
)
def test_resolution_tags_give_micrometers(tmp_path, resolution, unit, expected):
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, _random((8, 9)), resolution=resolution, resolutionunit=unit)
    _, meta = read_image(path)
    assert meta.spacing == pytest.approx(expected)  # (Y, X)
    assert meta.unit == "micrometer"


# --- writing ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("axes", "shape", "dtype"),
    [
        ("YX", (16, 20), np.float32),
        ("ZYX", (3, 16, 20), np.uint16),
        ("TZYX", (2, 3, 16, 20), np.uint8),
        ("CZYX", (2, 4, 16, 20), np.uint32),
        ("ZCYX", (4, 2, 16, 20), np.int32),
        ("YXS", (16, 20, 3), np.uint8),
        ("ZYXS", (3, 16, 20, 4), np.uint8),
    ],
)
def test_round_trip(tmp_path, axes, shape, dtype):
    data = _random(shape, dtype)
    spacing = tuple({"Z": 2.0, "Y": 0.5, "X": 0.25}.get(a, 1.0) for a in axes)
    meta = ImageMeta(axes, spacing, unit="micrometer", name="sample")
    path = write_image(tmp_path / "out.ome.tif", data, meta)
    assert path == str(tmp_path / "out.ome.tif")
    out, back = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert out.dtype == data.dtype
    assert back.axes == axes
    assert back.spacing == pytest.approx(spacing)
    assert back.unit == "micrometer"
    assert os.listdir(tmp_path) == ["out.ome.tif"]  # no temporary file left


def test_round_trip_default_meta_and_pixel_unit(tmp_path):
    data = _random((3, 16, 20))
    path = write_image(tmp_path / "plain.tif", data)
    out, meta = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert (meta.axes, meta.spacing, meta.unit, meta.name) == ("ZYX", (1.0,) * 3, "pixel", "plain")


def test_write_bool_as_uint8(tmp_path):
    mask = _random((8, 9)) > 100
    out, _ = read_image(write_image(tmp_path / "mask.tif", mask))
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, mask)


def test_write_int64_labels_narrowed(tmp_path):
    labels = np.arange(72, dtype=np.int64).reshape(8, 9) * 1000
    out, _ = read_image(write_image(tmp_path / "labels.tif", labels))
    assert out.dtype == np.uint32
    np.testing.assert_array_equal(out, labels)
    with pytest.raises(ValueError, match="do not fit"):
        write_image(tmp_path / "big.tif", labels * 2**40)


def test_write_rejects_other_suffix_and_bad_meta(tmp_path):
    with pytest.raises(ValueError, match="OME-TIFF"):
        write_image(tmp_path / "x.png", np.zeros((4, 4)))
    with pytest.raises(ImageReadError, match="x.tif"):
        write_image(tmp_path / "x.tif", np.zeros((4, 4)), ImageMeta("ZYX"))
    assert os.listdir(tmp_path) == []


def test_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "keep.tif"
    original = _random((8, 9))
    write_image(path, original)

    def half_write(fh, *args, **kwargs):
        fh.write(b"II*\0 partial")
        raise OSError("disk full")

    monkeypatch.setattr(tiff_module.tifffile, "imwrite", half_write)
    with pytest.raises(OSError, match="disk full"):
        write_image(path, _random((8, 9)))
    monkeypatch.undo()
    np.testing.assert_array_equal(read_image(path)[0], original)
    assert os.listdir(tmp_path) == ["keep.tif"]


# --- lazy reading -------------------------------------------------------------------


def test_lazy_uncompressed_is_memmap(tmp_path):
    path = tmp_path / "raw.tif"
    data = _random((5, 16, 20))
    tifffile.imwrite(path, data)
    out, meta = read_image(path, lazy=True)
    assert isinstance(out, np.memmap)
    assert meta.axes == "ZYX"
    np.testing.assert_array_equal(out[2], data[2])


def test_lazy_compressed_is_zarr(tmp_path):
    zarr = pytest.importorskip("zarr")
    data = _random((4, 16, 20))
    path = write_image(tmp_path / "z.ome.tif", data, ImageMeta("ZYX", (2.0, 1.0, 1.0)))
    out, meta = read_image(path, lazy=True)
    from napari_skipseg.io.validate import GuardedArray

    assert isinstance(out, GuardedArray) and isinstance(out.wrapped, zarr.Array)  # reads name the file
    assert out.shape == data.shape and meta.spacing == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(out[1:3], data[1:3])


# --- errors -------------------------------------------------------------------------


def _assert_names_file(excinfo, path):
    assert str(excinfo.value).startswith(str(path))


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_truncated_file(tmp_path, compression):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, _random((6, 64, 64)), compression=compression)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ImageReadError, match="truncated or corrupt") as excinfo:
        read_image(path)
    _assert_names_file(excinfo, path)


def test_truncated_ome_tiff(tmp_path):
    path = tmp_path / "cut.ome.tif"
    write_image(path, _random((6, 64, 64)))
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ImageReadError, match="truncated or corrupt") as excinfo:
        read_image(path)
    _assert_names_file(excinfo, path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.tif"
    path.touch()
    with pytest.raises(ImageReadError, match="empty") as excinfo:
        read_image(path)
    _assert_names_file(excinfo, path)


def test_not_a_tiff(tmp_path):
    path = tmp_path / "fake.tif"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageReadError, match="not a readable TIFF") as excinfo:
        read_image(path)
    _assert_names_file(excinfo, path)


def test_missing_file(tmp_path):
    path = tmp_path / "missing.tif"
    with pytest.raises(ImageReadError, match="no such file") as excinfo:
        read_image(path)
    _assert_names_file(excinfo, path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "image.png"
    path.write_bytes(b"\x89PNG")
    with pytest.raises(ImageReadError, match=r"unsupported file type.*\.tif") as excinfo:
        read_image(path)
    _assert_names_file(excinfo, path)


def test_error_is_a_value_error_and_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(ImageReadError("a.tif", "broken")))
    assert isinstance(err, ValueError)
    assert str(err) == "a.tif: broken"


# --- metadata and dispatch ----------------------------------------------------------


def test_find_reader_longest_suffix_any_case():
    assert find_reader("a/B.OME.TIF") is tiff_module.read_tiff
    assert find_reader("b.tiff") is tiff_module.read_tiff
    assert find_reader("c.nii.gz") is io_module.read_nifti
    assert find_reader("d.png") is None


def test_image_meta_properties():
    meta = ImageMeta("TCZYX", (1, 1, 3, 0.5, 0.5), "micrometer")
    assert meta.spatial_axes == (2, 3, 4)
    assert meta.channel_axis == 1
    assert not meta.rgb
    assert meta.spatial_spacing == (3.0, 0.5, 0.5)
    assert meta.scale_for_napari() == (1.0, 3.0, 0.5, 0.5)
    assert ImageMeta("ZYXS").spacing == (1.0,) * 4
    meta.validate((2, 3, 4, 5, 6))


@pytest.mark.parametrize(
    ("axes", "shape", "problem"),
    [
        ("ZYX", (4, 5), "3 axis letters for 2 dimensions"),
        ("QYX", (2, 4, 5), "unknown axis letters 'Q'"),
        ("YYX", (2, 4, 5), "repeated"),
        ("ZTX", (2, 4, 5), "Y and X"),
        ("X", (5,), "expected 2 to 6"),
        ("SYX", (3, 4, 5), "S \\(RGB samples\\) must be the last"),
        ("YXS", (4, 5, 2), "RGB needs 3 or 4"),
    ],
)
def test_validate_errors(axes, shape, problem):
    with pytest.raises(ImageReadError, match=problem) as excinfo:
        ImageMeta(axes, path="x.tif").validate(shape)
    assert str(excinfo.value).startswith("x.tif: ")


def test_validate_spacing():
    with pytest.raises(ImageReadError, match="2 spacing values"):
        ImageMeta("ZYX", (1.0, 1.0)).validate((2, 3, 4))
    with pytest.raises(ImageReadError, match="positive"):
        ImageMeta("YX", (0.0, 1.0)).validate((3, 4))


def test_default_axes():
    assert [default_axes(n) for n in (2, 3, 4, 5)] == ["YX", "ZYX", "TZYX", "TCZYX"]
    assert default_axes(3, rgb=True) == "YXS"
    with pytest.raises(ValueError):
        default_axes(1)


def test_io_and_reader_do_not_import_torch_or_napari():
    code = (
        "import sys, napari_skipseg.io, napari_skipseg._reader, napari_skipseg._writer; "
        "bad = [m for m in ('torch', 'napari', 'qtpy') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
