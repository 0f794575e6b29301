"""DICOM series built with pydicom: ordered by position, spacing, affine, NIfTI export, errors."""

import nibabel as nib
import numpy as np
import pytest
from formats_data import volume, write_dicom_series

from napari_skipseg.io import ImageReadError, find_reader, read_image, write_image
from napari_skipseg.io.dicom import read_dicom


@pytest.mark.parametrize("lazy", [False, True])
def test_series_ordered_by_position_with_spacing(tmp_path, lazy):
    vol = volume((6, 20, 24))
    write_dicom_series(tmp_path / "ct", vol, spacing=(2.5, 0.7, 0.6))
    assert find_reader(tmp_path / "ct") is not None
    out, meta = read_image(tmp_path / "ct", lazy=lazy)
    assert meta.axes == "ZYX" and meta.unit == "millimeter"
    assert meta.spacing == pytest.approx((2.5, 0.7, 0.6))
    np.testing.assert_array_equal(np.asarray(out), vol)  # file names are shuffled on purpose
    if lazy:
        assert type(out).__module__.startswith("dask")


def test_rescale_and_oblique_affine(tmp_path):
    vol = volume((4, 8, 10), dtype=np.int16)
    c, s = np.cos(0.3), np.sin(0.3)
    orientation = (c, s, 0, -s, c, 0)
    write_dicom_series(tmp_path / "s", vol, spacing=(3.0, 0.5, 0.4), orientation=orientation,
                       slope=2.0, intercept=-1024.0)
    out, meta = read_image(tmp_path / "s")
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, vol.astype(np.int32) * 2 - 1024)
    aff = np.asarray(meta.extra["affine"])
    # voxel (x=col, y=row, z=slice) -> RAS: the first slice's origin, LPS x/y negated
    np.testing.assert_allclose(aff[:3, 3], [100.0, 80.0, 30.0], atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(aff[:3, :3], axis=0), (0.4, 0.5, 3.0), atol=1e-4)
    np.testing.assert_allclose(aff[:3, 0] / 0.4, [-c, -s, 0], atol=1e-4)


def test_single_slice_file_reads_its_series(tmp_path):
    vol = volume((3, 8, 8))
    paths = write_dicom_series(tmp_path / "d", vol, shuffle=False)
    out, meta = read_image(paths[1])
    np.testing.assert_array_equal(out, vol)


def test_labels_saved_as_nifti_align_with_the_scan(tmp_path):
    vol = volume((5, 12, 14))
    write_dicom_series(tmp_path / "ct", vol, spacing=(2.0, 0.8, 0.8))
    image, meta = read_image(tmp_path / "ct")
    labels = (image > 1500).astype(np.uint8)
    dst = write_image(tmp_path / "seg.nii.gz", labels, meta.without_channels())
    back = nib.load(dst)
    assert back.shape == (14, 12, 5)
    np.testing.assert_allclose(back.affine, meta.extra["affine"], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(back.dataobj), labels.transpose(2, 1, 0))
    tif = write_image(tmp_path / "seg.tif", labels, meta.without_channels())
    assert read_image(tif)[1].spacing == pytest.approx((2.0, 0.8, 0.8))


def test_missing_slice_is_named(tmp_path):
    vol = volume((6, 8, 8))
    paths = write_dicom_series(tmp_path / "gap", vol, spacing=(2.0, 1, 1), shuffle=False)
    (tmp_path / "gap" / paths[3].split("/")[-1]).unlink()
    with pytest.raises(ImageReadError, match=r"1 slice\(s\) missing between positions") as info:
        read_image(tmp_path / "gap")
    assert str(tmp_path / "gap") in str(info.value)


def test_inconsistent_spacing_is_named(tmp_path):
    vol = volume((4, 8, 8))
    positions = [(0, 0, z) for z in (0.0, 2.0, 4.0, 7.0)]
    write_dicom_series(tmp_path / "odd", vol, positions=positions)
    with pytest.raises(ImageReadError, match="inconsistent slice spacing") as info:
        read_image(tmp_path / "odd")
    assert str(tmp_path / "odd") in str(info.value)


def test_duplicate_position_and_mixed_series(tmp_path):
    vol = volume((3, 8, 8))
    write_dicom_series(tmp_path / "dup", vol, positions=[(0, 0, 0), (0, 0, 1), (0, 0, 1)])
    with pytest.raises(ImageReadError, match="same position"):
        read_image(tmp_path / "dup")
    write_dicom_series(tmp_path / "mix", vol, names=["a1.dcm", "a2.dcm", "a3.dcm"])
    write_dicom_series(tmp_path / "mix", vol, names=["b1.dcm", "b2.dcm", "b3.dcm"])
    with pytest.raises(ImageReadError, match="2 DICOM series"):
        read_image(tmp_path / "mix")
    out, _ = read_image(tmp_path / "mix" / "b2.dcm")  # one file picks its series
    assert out.shape == (3, 8, 8)


def test_truncated_slice_is_named(tmp_path):
    vol = volume((3, 16, 16))
    paths = write_dicom_series(tmp_path / "cut", vol, shuffle=False)
    raw = open(paths[1], "rb").read()
    with open(paths[1], "wb") as fh:
        fh.write(raw[:-200])
    with pytest.raises(ImageReadError) as info:
        read_dicom(tmp_path / "cut")
    assert paths[1] in str(info.value)


def test_folder_without_dicom(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("hello")
    assert find_reader(tmp_path / "notes") is None
    with pytest.raises(ImageReadError, match="neither a zarr store nor a DICOM series"):
        read_image(tmp_path / "notes")
    with pytest.raises(ImageReadError, match="no DICOM image files"):
        read_dicom(tmp_path / "notes")
