"""NIfTI: spacing from the header, affine kept and written back unchanged, lazy reading, errors."""

import gzip

import nibabel as nib
import numpy as np
import pytest

from napari_skipseg.io import ImageMeta, ImageReadError, read_image, write_image


def _scan(tmp_path, name="scan.nii.gz", shape=(12, 10, 7), dtype=np.int16):
    """An oblique scan (x, y, z order), like a real acquisition, with sform and qform."""
    data = np.random.default_rng(0).integers(-1000, 2000, shape).astype(dtype)
    theta = np.deg2rad(12)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([0.8, 0.9, 2.5])
    affine[:3, 3] = [-40.0, 12.5, 30.0]
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=4)
    img.header.set_xyzt_units("mm", "sec")
    path = tmp_path / name
    nib.save(img, path)
    return path, data, affine


@pytest.mark.parametrize("name", ["scan.nii", "scan.nii.gz"])
@pytest.mark.parametrize("lazy", [False, True])
def test_read_axes_spacing_affine(tmp_path, name, lazy):
    path, data, affine = _scan(tmp_path, name)
    out, meta = read_image(path, lazy=lazy)
    assert meta.axes == "ZYX" and out.shape == (7, 10, 12)
    assert meta.spacing == pytest.approx((2.5, 0.9, 0.8)) and meta.unit == "millimeter"
    np.testing.assert_array_equal(np.asarray(out), data.transpose(2, 1, 0))
    np.testing.assert_allclose(meta.extra["affine"], affine, atol=1e-5)
    assert meta.extra["nifti"]["sform_code"] == 4 and meta.extra["nifti"]["qform_code"] == 1
    if lazy and name.endswith(".nii"):
        assert type(out).__module__.startswith("dask")


@pytest.mark.parametrize("name", ["labels.nii", "labels.nii.gz"])
def test_labels_written_back_with_the_same_affine(tmp_path, name):
    path, data, affine = _scan(tmp_path)
    image, meta = read_image(path)
    labels = (image > 500).astype(np.uint32) * 7
    dst = write_image(tmp_path / name, labels, meta)
    back = nib.load(dst)
    assert back.shape == data.shape  # x, y, z like the scan: opens aligned in medical viewers
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels.transpose(2, 1, 0))
    assert back.get_data_dtype() == np.uint32
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    src = nib.load(path)
    for get in ("get_sform", "get_qform"):
        a, code_a = getattr(src.header, get)(coded=True)
        b, code_b = getattr(back.header, get)(coded=True)
        assert code_a == code_b
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert back.header.get_xyzt_units()[0] == "mm"
    out, meta2 = read_image(dst)
    assert meta2.spacing == pytest.approx(meta.spacing)


def test_lazy_array_written_slice_by_slice(tmp_path):
    path, data, _ = _scan(tmp_path, "big.nii", shape=(16, 12, 9))
    lazy, meta = read_image(path, lazy=True)
    dst = write_image(tmp_path / "copy.nii", lazy, meta)
    np.testing.assert_array_equal(nib.load(dst).get_fdata(), data)


def test_4d_and_tiff_meta_to_nifti(tmp_path):
    series = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)  # TZYX
    meta = ImageMeta("TZYX", (1.0, 3.0, 0.5, 0.25), "micrometer")
    dst = write_image(tmp_path / "t.nii.gz", series, meta)
    back = nib.load(dst)
    assert back.shape == (5, 4, 3, 2)
    np.testing.assert_allclose(np.diag(back.affine)[:3], (0.25, 0.5, 3.0))
    out, meta2 = read_image(dst)
    assert meta2.axes == "TZYX" and meta2.unit == "micrometer"
    np.testing.assert_array_equal(out, series)


def test_2d_round_trip(tmp_path):
    plane = np.random.default_rng(1).random((9, 11)).astype(np.float32)
    dst = write_image(tmp_path / "p.nii", plane, ImageMeta("YX", (0.3, 0.2), "millimeter"))
    out, meta = read_image(dst)
    assert meta.axes == "YX" and meta.spacing == pytest.approx((0.3, 0.2))
    np.testing.assert_array_equal(out, plane)


@pytest.mark.parametrize("name", ["cut.nii", "cut.nii.gz"])
def test_truncated_file_is_named(tmp_path, name):
    path, _, _ = _scan(tmp_path, name)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(ImageReadError, match="truncated") as info:
        read_image(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(("shape", "problem"), [((20,), "1 dimension"), ((3, 3, 3, 2, 2, 2), "6 dimensions")])
def test_1d_and_6d_are_clear_errors(tmp_path, shape, problem):
    path = tmp_path / "odd.nii"
    nib.save(nib.Nifti1Image(np.zeros(shape, np.float32), np.eye(4)), path)
    with pytest.raises(ImageReadError, match=problem) as info:
        read_image(path)
    assert str(path) in str(info.value)


def test_not_nifti_and_empty(tmp_path):
    bad = tmp_path / "text.nii.gz"
    with gzip.open(bad, "wb") as fh:
        fh.write(b"not a header" * 40)
    with pytest.raises(ImageReadError, match="text.nii.gz"):
        read_image(bad)
    empty = tmp_path / "empty.nii"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(empty)


def test_rgb_to_nifti_is_refused(tmp_path):
    with pytest.raises(ImageReadError, match="RGB"):
        write_image(tmp_path / "rgb.nii", np.zeros((4, 5, 3), np.uint8), ImageMeta("YXS"))
    assert not list(tmp_path.iterdir())


def test_napari_reader_and_writer_keep_the_affine(tmp_path):
    from napari_skipseg._reader import read_layers
    from napari_skipseg._writer import write_labels

    path, data, affine = _scan(tmp_path)
    [(layer_data, kwargs, kind)] = read_layers(str(path))
    assert kind == "image" and kwargs["scale"] == pytest.approx((2.5, 0.9, 0.8))
    labels = (np.asarray(layer_data) > 0).astype(np.uint8)
    [dst] = write_labels(str(tmp_path / "seg.nii.gz"), labels, {"name": "seg", **kwargs})
    back = nib.load(dst)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    assert back.header.get_sform(coded=True)[1] == 4
