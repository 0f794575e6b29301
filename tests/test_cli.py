"""The ``skipseg`` command line, run in-process and once through its entry point."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_skipseg.cli import main
from napari_skipseg.io import read_image


@pytest.fixture
def home(tmp_path, monkeypatch):
    """SKIPSEG_HOME with a tiny instance model saved as ``tiny``."""
    import torch

    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.store import save_model
    from napari_skipseg.model.unet import SkipUNet

    home = tmp_path / "home"
    monkeypatch.setenv("SKIPSEG_HOME", str(home))
    torch.manual_seed(0)
    cfg = ModelConfig(
        name="tiny", base_channels=4, depth=2, output="instances", num_classes=3,
        class_names=["background", "interior", "boundary"], tile=[32, 32],
        card={"task": "a tiny test model", "metrics": {"f1@0.5": 0.5}},
    )
    save_model(SkipUNet(cfg), home / "models" / "tiny")
    return home


def _image(shape, dtype=np.uint16, seed=0):
    return np.random.default_rng(seed).integers(0, 200, shape).astype(dtype)


def _error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("skipseg: error:")
    return err[0]


def test_models_lists_user_model(home, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("tiny "))
    assert "user" in line and "2D" in line and "instances" in line and "a tiny test model" in line
    assert main(["models", "-v"]) == 0
    out = capsys.readouterr().out
    assert str(home / "models" / "tiny") in out and "f1@0.5 0.5" in out


def test_segment_tiff(home, tmp_path, capsys):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, _image((37, 45)))
    dst = tmp_path / "out.tif"
    assert main(["segment", str(src), "-o", str(dst), "--model", "tiny", "--device", "cpu"]) == 0
    labels, meta = read_image(dst)
    assert labels.shape == (37, 45) and meta.axes == "YX"
    assert labels.dtype.kind == "u"
    out = capsys.readouterr().out
    assert f"{src} -> {dst}" in out and "tiny" in out and "cpu" in out


def test_segment_keeps_spacing_and_stack_shape(home, tmp_path):
    from napari_skipseg.io import ImageMeta, write_image

    src = tmp_path / "stack.ome.tif"
    write_image(src, _image((3, 20, 24)), ImageMeta("ZYX", (2.0, 0.5, 0.5), "micrometer"))
    dst = tmp_path / "stack_labels.ome.tif"
    code = main(["segment", str(src), "-o", str(dst), "--model", "tiny", "--output-kind", "semantic", "-q"])
    assert code == 0
    labels, meta = read_image(dst)
    assert labels.shape == (3, 20, 24) and meta.axes == "ZYX"
    assert meta.spacing == (2.0, 0.5, 0.5) and meta.unit == "micrometer"


def test_segment_folder(home, tmp_path):
    src = tmp_path / "images"
    src.mkdir()
    shapes = {"a.tif": (20, 30), "b.tiff": (33, 17)}
    for name, shape in shapes.items():
        tifffile.imwrite(src / name, _image(shape))
    (src / "notes.txt").write_text("not an image")
    out = tmp_path / "labels"
    assert main(["segment", str(src), "-o", str(out), "--model", "tiny", "-q"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(shapes)
    for name, shape in shapes.items():
        assert read_image(out / name)[0].shape == shape


def test_segment_rgb_gives_one_label_image(home, tmp_path):
    src = tmp_path / "rgb.tif"
    tifffile.imwrite(src, _image((30, 40, 3), np.uint8), photometric="rgb")
    assert read_image(src)[1].axes == "YXS"
    dst = tmp_path / "rgb_labels.tif"
    assert main(["segment", str(src), "-o", str(dst), "--model", "tiny", "-q"]) == 0
    labels, meta = read_image(dst)
    assert labels.shape == (30, 40) and meta.axes == "YX"


def test_segment_channels_checked_against_model(home, tmp_path, capsys):
    from napari_skipseg.io import ImageMeta, write_image

    src = tmp_path / "cyx.ome.tif"
    write_image(src, _image((2, 24, 28)), ImageMeta("CYX", (1.0, 0.3, 0.3), "micrometer"))
    dst = tmp_path / "cyx_labels.tif"
    # a one-channel model on a two-channel image is a clear error, not a crash
    assert main(["segment", str(src), "-o", str(dst), "--model", "tiny", "-q"]) == 2
    assert "has 2 channels (axes CYX) and model tiny takes one; choose one with --channel N (0-1)" in _error_line(capsys)
    assert not dst.exists()
    # --channel picks one channel: one label image with the image's YX spacing
    assert main(["segment", str(src), "-o", str(dst), "--model", "tiny", "-q", "--channel", "1"]) == 0
    labels, meta = read_image(dst)
    assert labels.shape == (24, 28) and meta.axes == "YX"
    assert meta.spacing == pytest.approx((0.3, 0.3))
    assert main(["segment", str(src), "-o", str(dst), "--model", "tiny", "-q", "--overwrite",
                 "--channel", "2"]) == 2
    assert "--channel 2 is out of range" in _error_line(capsys)


def test_segment_probabilities(home, tmp_path):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, _image((20, 22)))
    dst = tmp_path / "probs.tif"
    assert main(["segment", str(src), "-o", str(dst), "--model", "tiny", "--output", "probabilities", "-q"]) == 0
    probs, meta = read_image(dst)
    assert probs.shape == (3, 20, 22) and meta.axes == "CYX"
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=1e-5)


def test_segment_with_test_time_flips(home, tmp_path):
    from napari_skipseg.inference.engine import predict, run
    from napari_skipseg.model.store import load_model

    src = tmp_path / "in.tif"
    image = _image((20, 22))
    tifffile.imwrite(src, image)
    for flag in ("--flips", "--no-flips"):
        dst = tmp_path / f"probs{flag}.tif"
        assert main(["segment", str(src), "-o", str(dst), "--model", "tiny", "--output", "probabilities",
                     "-q", flag]) == 0
        want = run(predict(load_model("tiny"), image, output="probabilities", device="cpu",
                           flips=flag == "--flips")).probabilities
        np.testing.assert_allclose(read_image(dst)[0], want, atol=1e-5)


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("missing", "no such file or folder"),
        ("not_an_image", "not a readable TIFF"),
        ("unknown_model", "no model named 'nosuchmodel'"),
        ("empty_folder", "folder holds no image files"),
        ("pickle", "pickled checkpoints are not loaded"),
    ],
)
def test_bad_input_exits_2(home, tmp_path, capsys, case, match):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, _image((16, 16)))
    model = "tiny"
    if case == "missing":
        src = tmp_path / "missing.tif"
    elif case == "not_an_image":
        src.write_text("this is plain text, not a TIFF\n" * 10)
    elif case == "unknown_model":
        model = "nosuchmodel"
    elif case == "empty_folder":
        src = tmp_path / "empty"
        src.mkdir()
    elif case == "pickle":
        model = str(tmp_path / "weights.pt")
    code = main(["segment", str(src), "-o", str(tmp_path / "out.tif"), "--model", model, "-q"])
    assert code == 2
    line = _error_line(capsys)
    assert match in line
    assert not (tmp_path / "out.tif").exists()


def test_existing_output_needs_overwrite(home, tmp_path, capsys):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, _image((16, 20)))
    dst = tmp_path / "out.tif"
    dst.write_bytes(b"keep me")
    assert main(["segment", str(src), "-o", str(dst), "--model", "tiny", "-q"]) == 2
    assert "exists; pass --overwrite" in _error_line(capsys)
    assert dst.read_bytes() == b"keep me"
    assert main(["segment", str(src), "-o", str(dst), "--model", "tiny", "-q", "--overwrite"]) == 0
    assert read_image(dst)[0].shape == (16, 20)


def test_bad_option_values_exit_2(home, tmp_path, capsys):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, _image((16, 16)))
    with pytest.raises(SystemExit) as info:  # refused while the options are parsed
        main(["segment", str(src), "-o", str(tmp_path / "o.tif"), "--model", "tiny", "--overlap", "0.9"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [
        "skipseg segment: error: argument --overlap: 0.9 is out of range: use 0 to 0.5 (see skipseg segment -h)"]


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["segment"])
    assert info.value.code == 2


def test_entry_point_subprocess(home, tmp_path):
    exe = Path(sys.executable).with_name("skipseg")
    exe = str(exe) if exe.exists() else shutil.which("skipseg")
    assert exe, "the skipseg entry point is not installed"
    env = {**os.environ, "SKIPSEG_HOME": str(home), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([exe, "models"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert any(ln.startswith("tiny ") for ln in done.stdout.splitlines())
    bad = subprocess.run(
        [exe, "segment", str(tmp_path / "nope.tif"), "-o", str(tmp_path / "o.tif"), "--model", "tiny"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"skipseg: error: {tmp_path / 'nope.tif'}: no such file or folder"]


def test_progress_bar_keeps_the_latest_and_best_validation_score(capsys):
    from napari_skipseg.cli import _progress_driver
    from napari_skipseg.inference.engine import Progress

    def gen():
        yield Progress(1, 4, "step 1", {"loss": 1.0, "val": {"score": 0.7}})
        yield Progress(2, 4, "step 2", {"loss": 0.9})
        yield Progress(3, 4, "step 3", {"loss": 0.8, "val": {"score": 0.5}})
        yield Progress(4, 4, "step 4", {"loss": 0.7})
        return "done"

    assert _progress_driver(gen(), "train") == "done"
    err = capsys.readouterr().err
    assert "val=0.700 (best 0.700)" in err
    # the step after the second check still shows it, with the best so far
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "4/4" in last and "val=0.500 (best 0.700)" in last, last


def test_help_examples_are_valid_commands():
    """Every example under ``skipseg --help`` parses with the real parser (options renamed
    later would otherwise leave the help wrong)."""
    import shlex

    from napari_skipseg.cli import EPILOG, build_parser

    parser = build_parser()
    lines = [ln.strip() for ln in EPILOG.split("Exit codes")[0].splitlines() if ln.strip().startswith("skipseg ")]
    assert len(lines) >= 4
    for line in lines:
        argv = shlex.split(line.split("   ")[0])[1:]
        if argv[0] == "COMMAND":
            continue
        ns = parser.parse_args(argv)
        assert ns.command == argv[0]
