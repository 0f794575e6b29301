"""``skipseg segment`` honours the file's axes: T is never Z, channels are never averaged,
the result keeps the file's axis order; the default model and output follow the image and
the model; bad combinations are one line and exit code 2."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_skipseg import segment
from napari_skipseg.cli import main
from napari_skipseg.io import ImageMeta, read_image, write_image


def _model(name, spatial_dims, output="instances", **extra):
    """A tiny untrained model that normalises nothing (so a frame segmented alone gives
    what it gives inside a stack, up to float rounding of batched tiles) and finds objects
    in noise."""
    import torch

    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.unet import SkipUNet

    torch.manual_seed(0)
    inst = output == "instances"
    cfg = ModelConfig(
        name=name, spatial_dims=spatial_dims, num_classes=3 if inst else 2, base_channels=4, depth=2,
        output=output, class_names=["background", "interior", "boundary"] if inst else ["background", "object"],
        tile=[32, 32] if spatial_dims == 2 else [8, 32, 32], normalization={"kind": "none"},
        postprocess={"seed": 0.465 if spatial_dims == 2 else 0.349, "mask": 0.5, "min_size": 2,
                     "min_seed_size": 1} if inst else {},
        card={"task": f"tiny {spatial_dims}D test model"}, **extra,
    )
    return SkipUNet(cfg).eval()


@pytest.fixture
def models(tmp_path, monkeypatch):
    """SKIPSEG_HOME with t2 (2D instances), t3 (3D instances), t3d (3D, object size known)."""
    from napari_skipseg.model.store import save_model

    home = tmp_path / "home"
    monkeypatch.setenv("SKIPSEG_HOME", str(home))
    out = {"t2": _model("t2", 2), "t3": _model("t3", 3),
           "t3d": _model("t3d", 3, training_scale={"object_diameter": [4.0, 8.0, 8.0]})}
    for name, m in out.items():
        save_model(m, home / "models" / name)
    return out


def _noise(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("skipseg: error:")
    return err[0]


def _run(*args):
    return main(["segment", *map(str, args), "--no-flips", "-q"])


def test_tzyx_with_a_3d_model_runs_frame_by_frame(models, tmp_path, capsys):
    stack = _noise((3, 8, 32, 32))
    src, dst, probs = tmp_path / "tzyx.tif", tmp_path / "labels.tif", tmp_path / "probs.tif"
    tifffile.imwrite(src, stack, imagej=True, metadata={"axes": "TZYX"})
    assert main(["segment", str(src), "-o", str(dst), "--model", "t3", "--no-flips"]) == 0
    assert "frame by frame over T (3 frames)" in capsys.readouterr().out
    labels, meta = read_image(dst)
    assert meta.axes == "TZYX" and labels.shape == stack.shape
    ids = [set(np.unique(labels[t])) - {0} for t in range(3)]
    assert all(ids) and not (ids[0] & ids[1]) and not (ids[1] & ids[2])  # unique across frames
    # each frame is the ZYX volume it is alone (T never mixed into Z)
    assert _run(src, "-o", probs, "--model", "t3", "--output", "probabilities") == 0
    p, pmeta = read_image(probs)
    assert pmeta.axes == "CTZYX"
    for t in range(3):
        alone = segment(stack[t], models["t3"], output="probabilities", flips=False)
        np.testing.assert_allclose(p[:, t], alone, atol=1e-3)


def test_z_before_t_comes_back_in_the_files_order(models, tmp_path):
    stack = _noise((6, 2, 32, 32), seed=1)  # ZTYX, as OME's XYTZC order gives
    src, dst = tmp_path / "ztyx.ome.tif", tmp_path / "probs.tif"
    write_image(src, stack, ImageMeta("ZTYX", (2.0, 1.0, 0.5, 0.5), "micrometer"))
    assert _run(src, "-o", dst, "--model", "t3", "--output", "probabilities") == 0
    p, meta = read_image(dst)
    assert meta.axes == "CZTYX" and p.shape == (3, 6, 2, 32, 32)
    assert meta.spacing[1:] == pytest.approx((2.0, 1.0, 0.5, 0.5))
    for t in range(2):
        alone = segment(stack[:, t], models["t3"], output="probabilities", flips=False)
        np.testing.assert_allclose(p[:, :, t], alone, atol=1e-3)
    assert _run(src, "-o", tmp_path / "labels.tif", "--model", "t3") == 0
    labels, lmeta = read_image(tmp_path / "labels.tif")
    assert lmeta.axes == "ZTYX" and labels.shape == stack.shape


@pytest.mark.parametrize("axes, shape", [("TZYX", (2, 3, 32, 32)), ("TYX", (3, 32, 32))])
def test_time_lapses_with_a_2d_model(models, tmp_path, axes, shape):
    stack = _noise(shape, seed=2)
    src, dst = tmp_path / "in.tif", tmp_path / "probs.tif"
    tifffile.imwrite(src, stack, imagej=True, metadata={"axes": axes})
    assert _run(src, "-o", dst, "--model", "t2", "--output", "probabilities") == 0
    p, meta = read_image(dst)
    assert meta.axes == "C" + axes and p.shape == (3, *shape)
    flat_in, flat_p = stack.reshape(-1, 32, 32), p.reshape(3, -1, 32, 32)
    for i in range(flat_in.shape[0]):  # every YX slice on its own
        np.testing.assert_allclose(flat_p[:, i], segment(flat_in[i], models["t2"], output="probabilities",
                                                         flips=False), atol=1e-3)


def test_tyx_with_a_3d_model_is_refused(models, tmp_path, capsys):
    src, dst = tmp_path / "tyx.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, _noise((5, 32, 32)), imagej=True, metadata={"axes": "TYX"})
    assert _run(src, "-o", dst, "--model", "t3") == 2
    line = _error_line(capsys)
    assert "needs a Z axis" in line and "axes TYX" in line and "T is time, not depth" in line
    assert not dst.exists()


def test_several_channels_need_channel(models, tmp_path, capsys):
    stack = _noise((2, 4, 4, 32, 32), seed=3)  # TZCYX, 4 channels
    src, dst = tmp_path / "tzcyx.tif", tmp_path / "probs.tif"
    tifffile.imwrite(src, stack, imagej=True, metadata={"axes": "TZCYX"})
    assert _run(src, "-o", dst, "--model", "t3") == 2
    line = _error_line(capsys)
    assert "has 4 channels (axes TZCYX)" in line and "--channel N (0-3)" in line
    assert not dst.exists()
    assert _run(src, "-o", dst, "--model", "t3", "--channel", "2", "--output", "probabilities") == 0
    p, meta = read_image(dst)
    assert meta.axes == "CTZYX" and p.shape == (3, 2, 4, 32, 32)
    for t in range(2):  # channel 2 alone, frame by frame: nothing averaged
        np.testing.assert_allclose(p[:, t], segment(stack[t, :, 2], models["t3"], output="probabilities",
                                                    flips=False), atol=1e-3)
    assert _run(src, "-o", dst, "--model", "t3", "--channel", "4", "--overwrite") == 2
    assert "--channel 4 is out of range" in _error_line(capsys)


def test_rgb_keeps_its_grey_conversion(models, tmp_path):
    rgb = (np.random.default_rng(4).random((32, 32, 3)) * 255).astype(np.uint8)
    src, dst = tmp_path / "rgb.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, rgb, photometric="rgb")
    assert _run(src, "-o", dst, "--model", "t2") == 0
    assert read_image(dst)[0].shape == (32, 32)


def test_3d_model_on_a_2d_image_is_one_line(tmp_path, capsys):
    from skimage import data

    src, dst = tmp_path / "coins.tif", tmp_path / "x.tif"
    tifffile.imwrite(src, data.coins()[:48, :48])
    assert _run(src, "-o", dst, "--model", "hippocampus3d") == 2
    line = _error_line(capsys)
    assert "hippocampus3d" in line and "needs a Z axis" in line and "axes YX" in line
    assert _run(src, "-o", dst, "--model", "hippocampus3d", "--mode", "2d") == 2
    assert "is a 3D model; it cannot run in --mode 2d" in _error_line(capsys)
    assert not dst.exists()


def test_output_defaults_to_what_the_model_predicts(tmp_path, capsys):
    from skimage import data

    src, dst = tmp_path / "coins.tif", tmp_path / "x.tif"
    tifffile.imwrite(src, data.coins()[:48, :48])
    assert _run(src, "-o", dst, "--model", "em2d") == 0
    labels, _ = read_image(dst)
    assert labels.dtype == np.uint8 and set(np.unique(labels)) <= {0, 1}
    assert _run(src, "-o", tmp_path / "y.tif", "--model", "em2d", "--output", "instances") == 2
    line = _error_line(capsys)
    assert "em2d predicts semantic classes" in line and "--output semantic" in line


def test_default_model_for_a_nifti_mri_volume(tmp_path, capsys):
    vol = (np.random.default_rng(5).random((16, 20, 16)) * 100).astype(np.float32)
    src, dst = tmp_path / "brain.nii.gz", tmp_path / "seg.nii.gz"
    write_image(src, vol, ImageMeta("ZYX", (1.0, 1.0, 1.0), "millimeter"))
    assert main(["segment", str(src), "-o", str(dst), "--no-flips"]) == 0
    captured = capsys.readouterr()
    assert "model hippocampus3d: NIfTI volume with 1 mm voxels, like its training data" in captured.err
    assert "(hippocampus3d," in captured.out
    labels, meta = read_image(dst)
    assert labels.shape == vol.shape and labels.dtype == np.uint8  # semantic, the model's output


@pytest.mark.parametrize("value, words", [
    ("0", "positive"), ("nan", "positive"), ("-3", "positive"), ("500", "larger than the image"),
    ("abc", "'auto' or a number"), ("4,5", "1 or 3 values"),
])
def test_bad_diameter_is_one_line(models, tmp_path, capsys, value, words):
    src, dst = tmp_path / "zyx.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, _noise((8, 32, 32)), imagej=True, metadata={"axes": "ZYX"})
    assert _run(src, "-o", dst, "--model", "t3d", f"--diameter={value}") == 2
    assert words in _error_line(capsys)
    assert not dst.exists()


def test_diameter_needs_a_model_that_knows_its_object_size(models, tmp_path, capsys):
    src, dst = tmp_path / "zyx.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, _noise((8, 32, 32)), imagej=True, metadata={"axes": "ZYX"})
    assert _run(src, "-o", dst, "--model", "t3", "--diameter", "6") == 2
    assert "does not record the object size" in _error_line(capsys)
    assert _run(src, "-o", dst, "--model", "t3", "--spacing", "1,0") == 2
    assert "--spacing takes 1 or 3 positive numbers" in _error_line(capsys)


def test_diameter_resamples_and_the_result_keeps_the_image_shape(models, tmp_path, capsys):
    src, dst = tmp_path / "zyx.tif", tmp_path / "out.tif"
    tifffile.imwrite(src, _noise((8, 32, 32)), imagej=True, metadata={"axes": "ZYX"})
    assert main(["segment", str(src), "-o", str(dst), "--model", "t3d", "--no-flips", "--diameter", "4,16,16"]) == 0
    assert "diameter 4 x 16 x 16 px (given); image resampled x1.00 x 0.50 x 0.50" in capsys.readouterr().err
    assert read_image(dst)[0].shape == (8, 32, 32)


def test_link_gives_an_object_its_id_in_the_next_frame(models, tmp_path, capsys):
    frame = _noise((32, 32), seed=6)
    src = tmp_path / "tyx.tif"
    tifffile.imwrite(src, np.stack([frame, frame, frame]), imagej=True, metadata={"axes": "TYX"})
    assert _run(src, "-o", tmp_path / "plain.tif", "--model", "t2") == 0
    assert _run(src, "-o", tmp_path / "linked.tif", "--model", "t2", "--link") == 0
    plain, _ = read_image(tmp_path / "plain.tif")
    linked, meta = read_image(tmp_path / "linked.tif")
    assert meta.axes == "TYX" and plain.max() > 3
    assert not (set(np.unique(plain[0])) - {0}) & set(np.unique(plain[1]))  # unlinked: new ids
    np.testing.assert_array_equal(linked[0], linked[1])  # the same objects keep their ids
    np.testing.assert_array_equal(linked[1], linked[2])
    np.testing.assert_array_equal(linked[0] > 0, plain[0] > 0)
    # --link on an image without time is one line
    still = tmp_path / "yx.tif"
    tifffile.imwrite(still, frame)
    assert _run(still, "-o", tmp_path / "x.tif", "--model", "t2", "--link") == 2
    assert "no T axis" in _error_line(capsys)
