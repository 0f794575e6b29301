"""The command line on bad input and untrusted model files: exit code 2 and one clear line,
no output file, and nothing in a pickle ever runs."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from hostile import evil_checkpoint

from napari_skipseg.cli import main
from napari_skipseg.io import read_image


def make_tiny_model(name="tiny", seed=0):
    """An untrained 2D instance model shaped like the ``model_home`` fixture's ``tiny``."""
    import torch

    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.unet import SkipUNet

    torch.manual_seed(seed)
    cfg = ModelConfig(name=name, num_classes=3, base_channels=4, depth=2, output="instances",
                      class_names=["background", "interior", "boundary"], tile=[64, 64])
    return SkipUNet(cfg).eval()


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("skipseg: error:")
    return err[0]


def _segment(src, dst, *extra):
    return main(["segment", str(src), "-o", str(dst), "--model", "tiny", "-q", "--device", "cpu", *extra])


def _good(tmp_path):
    path = tmp_path / "good.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 1000, (64, 64)).astype(np.uint16))
    return path


def _bad_file(tmp_path, case):
    path = tmp_path / f"{case}.tif"
    rng = np.random.default_rng(1)
    if case == "truncated":
        data = _good(tmp_path).read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif case == "corrupt":
        data = _good(tmp_path).read_bytes()
        path.write_bytes(data[:8] + rng.integers(0, 256, 4000, dtype=np.uint8).tobytes())
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "complex":
        tifffile.imwrite(path, (rng.random((32, 32)) * (1 + 1j)).astype(np.complex64))
    elif case == "one_d":
        tifffile.imwrite(path, np.arange(100, dtype=np.uint16))
    elif case == "seven_d":
        tifffile.imwrite(path, np.zeros((2, 2, 2, 2, 2, 8, 8), np.uint8))
    return path


@pytest.mark.parametrize(
    ("case", "match"),
    [
        ("truncated", "truncated.tif: the image claims (64, 64) uint16 = 8.19 KB, but the file holds"),
        ("corrupt", "corrupt.tif: not a readable TIFF file"),
        ("empty", "empty.tif: the file is empty"),
        ("complex", "complex.tif: pixel type complex64 is not supported"),
        ("one_d", "one_d.tif: axes 'X' for shape (100,): 1 dimensions; expected 2 to 6"),
        ("seven_d", "seven_d.tif: cannot map TIFF axes"),
    ],
)
def test_bad_images_exit_2_with_one_line(model_home, tmp_path, capsys, case, match):
    src = _bad_file(tmp_path, case)
    dst = tmp_path / "out.tif"
    assert _segment(src, dst) == 2
    assert match in _error_line(capsys)
    assert not dst.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def _odd_image(case):
    rng = np.random.default_rng(2)
    image = (rng.random((48, 40)) * 100).astype(np.float32)
    if case == "nan_inf":
        image[10:20, 5:15] = np.nan
        image[0, 0], image[1, 1] = np.inf, -np.inf
    elif case == "all_nan":
        image[:] = np.nan
    elif case == "constant":
        image = np.full((2, 32, 40), 7, np.uint16)
    elif case == "bool":
        image = image > 50
    elif case == "int64":
        image = (image * 1e6).astype(np.int64)
    elif case == "float16":
        image = image.astype(np.float16)
    elif case == "strip":
        image = rng.integers(0, 255, (1, 100_000)).astype(np.uint8)
    elif case == "tiny":
        image = rng.integers(0, 255, (3, 3)).astype(np.uint8)
    return image


@pytest.mark.parametrize("case", ["nan_inf", "all_nan", "constant", "bool", "int64", "float16", "strip", "tiny"])
def test_odd_images_segment(model_home, tmp_path, capsys, case):
    image = _odd_image(case)
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image)
    dst = tmp_path / "out.tif"
    assert _segment(src, dst) == 0, capsys.readouterr().err
    labels, _ = read_image(dst)
    assert labels.shape == image.shape


# --- model files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_cli_never_runs_a_pickle(model_home, tmp_path, capsys, kind):
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker, kind)
    src = _good(tmp_path)
    dst = tmp_path / "out.tif"
    assert main(["segment", str(src), "-o", str(dst), "--model", str(evil), "-q"]) == 2
    assert "pickled checkpoints are not loaded (they can run code)" in _error_line(capsys)
    cfg = tmp_path / "config.json"
    make_tiny_model("tiny").config.to_json(cfg)
    assert main(["import-model", str(evil), "--config", str(cfg), "-o", "evil", "-q"]) == 2
    line = _error_line(capsys)
    assert "refused: the file holds Python objects besides tensors, and loading them could run code" in line
    assert "GLOBAL exec" in line
    assert not (model_home / "models" / "evil").exists()
    assert not dst.exists() and not marker.exists()


def test_import_model_then_segment(model_home, tmp_path, capsys):
    import torch
    model = make_tiny_model("net", seed=5)
    ckpt = tmp_path / "net.pth"
    torch.save({"model_state_dict": model.state_dict(), "epoch": 3}, ckpt)
    cfg = tmp_path / "config.json"
    model.config.to_json(cfg)
    assert main(["import-model", str(ckpt), "--config", str(cfg), "-o", "imported"]) == 0
    out = capsys.readouterr().out
    assert f"-> {model_home / 'models' / 'imported'}" in out and "--model imported" in out
    assert main(["models"]) == 0
    assert any(ln.startswith("imported ") for ln in capsys.readouterr().out.splitlines())
    dst = tmp_path / "labels.tif"
    assert main(["segment", str(_good(tmp_path)), "-o", str(dst), "--model", "imported", "-q"]) == 0
    assert read_image(dst)[0].shape == (64, 64)
    # again: refused without --overwrite
    assert main(["import-model", str(ckpt), "--config", str(cfg), "-o", "imported", "-q"]) == 2
    assert "exists already" in _error_line(capsys)


def test_import_model_mismatch_and_bad_config(model_home, tmp_path, capsys):
    import json

    import torch
    ckpt = tmp_path / "net.pt"
    torch.save(make_tiny_model("net").state_dict(), ckpt)
    cfg = tmp_path / "config.json"
    data = make_tiny_model("net").config.to_dict()
    cfg.write_text(json.dumps({**data, "num_classes": 2, "output": "semantic", "class_names": []}))
    assert main(["import-model", str(ckpt), "--config", str(cfg), "-o", "x", "-q"]) == 2
    line = _error_line(capsys)
    assert "weights do not match the config: the weights predict 3 class(es), the config says num_classes=2" in line
    cfg.write_text("{not json")
    assert main(["import-model", str(ckpt), "--config", str(cfg), "-o", "x", "-q"]) == 2
    assert "not valid JSON" in _error_line(capsys)
    assert main(["import-model", str(ckpt), "--config", str(tmp_path / "nope.json"), "-o", "x", "-q"]) == 2
    assert "nope.json: cannot read the config" in _error_line(capsys)
    truncated = tmp_path / "cut.pt"
    truncated.write_bytes(ckpt.read_bytes()[:300])
    cfg.write_text(json.dumps(data))
    assert main(["import-model", str(truncated), "--config", str(cfg), "-o", "x", "-q"]) == 2
    assert "damaged, truncated or not a PyTorch checkpoint" in _error_line(capsys)
    assert not (model_home / "models" / "x").exists()
