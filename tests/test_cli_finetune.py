"""``skipseg finetune``: the same loop headless; its output works with ``skipseg segment``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_skipseg.cli import main
from napari_skipseg.model.store import active_model, is_model_dir


def _pair(tmp_path, name, seed, shape=(48, 48)):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(20, 3, shape)
    labels = np.zeros(shape, np.uint16)
    for i in range(1, 6):
        cy, cx = rng.integers(8, shape[0] - 8, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 25
        labels[disc & (labels == 0)] = i
        image[disc] += 80
    img_path, mask_path = tmp_path / f"{name}.tif", tmp_path / f"{name}_mask.tif"
    tifffile.imwrite(img_path, image.clip(0, 255).astype(np.uint8))
    tifffile.imwrite(mask_path, labels)
    return str(img_path), str(mask_path)


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_finetune_then_segment_with_the_output(model_home, tmp_path, capsys):
    a, ma = _pair(tmp_path, "a", 0)
    b, mb = _pair(tmp_path, "b", 1)
    out = tmp_path / "tuned"
    rc = main(["finetune", "--model", "tiny", "--images", a, b, "--masks", ma, mb, "-o", str(out),
               "--steps", "3", "--train", "all", "-q"])
    assert rc == 0
    assert is_model_dir(out) and (out / "labels.npz").is_file()
    card = json.loads((out / "config.json").read_text())["card"]
    assert card["parent"].endswith("tiny") and "metrics_before" in card
    assert active_model() is None  # headless runs do not change the active model unless asked
    assert "held-out score" in capsys.readouterr().out
    seg = tmp_path / "seg.tif"
    assert main(["segment", a, "-o", str(seg), "--model", str(out), "-q"]) == 0
    assert tifffile.imread(seg).shape == (48, 48)
    # never overwritten
    rc = main(["finetune", "--model", "tiny", "--images", a, "--masks", ma, "-o", str(out), "--steps", "1", "-q"])
    assert rc == 2 and "never overwritten" in capsys.readouterr().err


def test_finetune_by_name_with_a_time_budget_and_a_new_head(model_home, tmp_path, capsys):
    a, ma = _pair(tmp_path, "a", 0)
    binary = tmp_path / "binary.tif"
    tifffile.imwrite(binary, (tifffile.imread(ma) > 0).astype(np.uint8))
    rc = main(["finetune", "--model", "tiny", "--images", a, "--masks", str(binary), "-o", "membranes", "--time", "5",
               "--num-classes", "2", "--class-names", "background", "membrane", "-q"])
    assert rc == 0, capsys.readouterr().err
    folder = model_home / "models" / "membranes"
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["num_classes"] == 2 and cfg["output"] == "semantic" and cfg["name"] == "membranes"
    capsys.readouterr()
    assert main(["models"]) == 0 and "membranes" in capsys.readouterr().out


def test_bad_input_is_one_clear_line(model_home, tmp_path, capsys):
    a, ma = _pair(tmp_path, "a", 0)
    assert main(["finetune", "--model", "tiny", "--images", a, a, "--masks", ma, "-o", str(tmp_path / "x")]) == 2
    assert "one mask per image" in capsys.readouterr().err
    bad = tmp_path / "bad_mask.tif"
    tifffile.imwrite(bad, np.zeros((10, 10), np.uint16))
    assert main(["finetune", "--model", "tiny", "--images", a, "--masks", str(bad), "-o", str(tmp_path / "y")]) == 2
    assert "differ in shape" in capsys.readouterr().err
    assert main(["finetune", "--model", "nope", "--images", a, "--masks", ma, "-o", str(tmp_path / "z")]) == 2
