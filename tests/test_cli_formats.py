"""``skipseg segment`` with OME-Zarr, NIfTI and DICOM inputs and outputs (streamed to zarr)."""

import nibabel as nib
import numpy as np
import pytest
from formats_data import volume, write_dicom_series

from napari_skipseg.cli import main
from napari_skipseg.inference.engine import predict, run
from napari_skipseg.io import ImageMeta, read_image, write_image
from napari_skipseg.model.store import load_model

COMMON = ["--model", "tiny", "--device", "cpu", "-q"]


def test_zarr_in_zarr_out_streams_and_equals_in_memory(model_home, tmp_path):
    stack = volume((5, 40, 36))
    src = write_image(tmp_path / "big.zarr", stack, ImageMeta("ZYX", (2.0, 0.4, 0.4), "micrometer"),
                      chunks=(1, 40, 36))
    assert main(["segment", src, "-o", str(tmp_path / "out.zarr"), *COMMON, "--kind", "semantic"]) == 0
    out, meta = read_image(tmp_path / "out.zarr", lazy=True)
    assert out.chunks == (1, 40, 36) and meta.spacing == (2.0, 0.4, 0.4) and meta.unit == "micrometer"
    ref = run(predict(load_model("tiny"), stack, output="semantic", device="cpu"))
    np.testing.assert_array_equal(out[:], ref.labels)


def test_labels_into_the_input_ome_zarr(model_home, tmp_path, capsys):
    src = write_image(tmp_path / "img.zarr", volume((3, 32, 32)), ImageMeta("ZYX", (1.0, 0.5, 0.5)))
    assert main(["segment", src, "-o", src, *COMMON, "--kind", "semantic", "--labels-name", "nuclei"]) == 0
    _, meta = read_image(src, lazy=True)
    assert meta.extra["ome_zarr"]["labels"] == ["nuclei"]
    assert read_image(tmp_path / "img.zarr" / "labels" / "nuclei")[0].shape == (3, 32, 32)
    assert main(["segment", src, "-o", src, *COMMON, "--kind", "semantic", "--labels-name", "nuclei"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("out_name", ["seg.nii.gz", "seg.nii"])
def test_nifti_in_nifti_out_keeps_the_affine(model_home, tmp_path, out_name):
    data = volume((20, 24, 4)).astype(np.int16)  # x, y, z
    affine = np.array([[0.0, -0.9, 0, 50], [0.8, 0, 0, -20], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    src = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), src)
    dst = tmp_path / out_name
    assert main(["segment", str(src), "-o", str(dst), *COMMON]) == 0
    seg = nib.load(dst)
    assert seg.shape == data.shape
    np.testing.assert_allclose(seg.affine, nib.load(src).affine, atol=1e-5)


def test_dicom_folder_in_nifti_and_tiff_out(model_home, tmp_path):
    vol = volume((4, 24, 20))
    write_dicom_series(tmp_path / "ct", vol, spacing=(2.5, 0.7, 0.6))
    assert main(["segment", str(tmp_path / "ct"), "-o", str(tmp_path / "seg.nii.gz"), *COMMON]) == 0
    seg = nib.load(tmp_path / "seg.nii.gz")
    assert seg.shape == (20, 24, 4)
    np.testing.assert_allclose(np.linalg.norm(seg.affine[:3, :3], axis=0), (0.6, 0.7, 2.5), atol=1e-5)
    assert main(["segment", str(tmp_path / "ct"), "-o", str(tmp_path / "seg.tif"), *COMMON]) == 0
    labels, meta = read_image(tmp_path / "seg.tif")
    assert labels.shape == (4, 24, 20) and meta.spacing == pytest.approx((2.5, 0.7, 0.6))
    # a folder holding the series: one output per series, DICOM -> NIfTI by default
    assert main(["segment", str(tmp_path / "ct"), str(tmp_path / "seg.nii.gz"), "-o", str(tmp_path / "outs"),
                 *COMMON]) == 0
    assert sorted(p.name for p in (tmp_path / "outs").iterdir()) == ["ct.nii.gz", "seg.nii.gz"]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        ("missing_slice", "slice(s) missing"),
        ("unknown", "unsupported file type"),
        ("bad_output", "unknown output format"),
    ],
)
def test_bad_inputs_exit_2_naming_the_file(model_home, tmp_path, capsys, make, match):
    src = tmp_path / "ct"
    out = tmp_path / "seg.nii.gz"
    if make == "missing_slice":
        paths = write_dicom_series(src, volume((5, 8, 8)), shuffle=False)
        __import__("os").unlink(paths[2])
    elif make == "unknown":
        src = tmp_path / "scan.mha"
        src.write_text("ObjectType = Image")
    else:
        write_dicom_series(src, volume((3, 8, 8)))
        out = tmp_path / "seg.png"
    assert main(["segment", str(src), "-o", str(out), *COMMON]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0] and (str(src) in err[0] or str(out) in err[0])
