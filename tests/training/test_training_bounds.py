"""Training options are finite and bounded, and a run that diverges stops and stores nothing
(issue 18): ``--lr inf``/``1e30``, ``--time 1e308``, ``--num-classes 1e8``, a recipe asking for a
network of billions of parameters."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import tifffile
import torch

from napari_skipseg.cli import main
from napari_skipseg.model.config import ModelConfig
from napari_skipseg.model.unet import SkipUNet
from napari_skipseg.training.data import Sample
from napari_skipseg.training.finetune import FinetuneOptions
from napari_skipseg.training.loop import TrainConfig, TrainingDiverged, TrainingError, train
from tests.test_cli_finetune import _pair


def _store_files(home):
    return sorted(str(p.relative_to(home)) for p in home.rglob("*"))


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--lr", "inf", "argument --lr: expected a finite number, got 'inf'"),
    ("--lr", "1e30", "argument --lr: 1e+30 is out of range: use above 0 to 1"),
    ("--lr", "nan", "argument --lr: expected a finite number, got 'nan'"),
    ("--lr", "0", "argument --lr: 0 is out of range: use above 0 to 1"),
    ("--time", "1e308", "argument --time: 1e+308 is out of range: use above 0 to 2.592e+06 seconds"),
    ("--steps", "-1", "argument --steps: -1 is out of range: use 0 to 1e+07"),
    ("--num-classes", "100000000", "argument --num-classes: 100000000 is out of range: use 2 to 255"),
    ("--num-classes", "1e8", "argument --num-classes: expected a whole number, got '1e8'"),
    ("--batch-size", "100000", "argument --batch-size: 100000 is out of range: use 1 to 1024"),
])
def test_cli_finetune_refuses_unbounded_options(model_home, tmp_path, capsys, option, value, message):
    a, ma = _pair(tmp_path, "a", 0)
    before = _store_files(model_home)
    with pytest.raises(SystemExit) as exit_:
        main(["finetune", "--model", "tiny", "--images", a, "--masks", ma, "-o", "out", option, value, "-q"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and message in err[0], err
    assert _store_files(model_home) == before


@pytest.mark.parametrize("lr", [float("inf"), 1e30, float("nan"), -1.0, 0.0])
def test_api_finetune_refuses_an_unbounded_learning_rate(model_home, lr):
    import napari_skipseg as ss

    image, labels = np.zeros((2, 32, 32), np.float32), np.zeros((2, 32, 32), np.int32)
    before = _store_files(model_home)
    with pytest.raises(TrainingError, match=r"^lr must be a number above 0 to 1, got"):
        ss.finetune("tiny", image, labels, lr=lr, steps=1, device="cpu")
    assert _store_files(model_home) == before
    for bad in ({"time_budget": 1e308}, {"steps": 10**12}, {"num_classes": 10**8}, {"steps": 2.0},
                {"augment": "yes"}, {"batch_size": 64, "patch": [4096, 4096]}):
        with pytest.raises(TrainingError):
            FinetuneOptions(**bad)


def test_training_stops_when_the_loss_becomes_non_finite():
    """Pixels of 1e38 overflow float32 in the first convolution: the loss is NaN at once, and
    training stops with one line instead of returning NaN weights."""
    torch.manual_seed(0)
    model = SkipUNet(ModelConfig(name="t", base_channels=2, depth=1))
    image = np.full((1, 32, 32), 3e38, np.float32)
    target = np.zeros((32, 32), np.int64)
    target[8:16, 8:16] = 1
    samples = [Sample("huge", image, target)]
    tcfg = TrainConfig(patch=[16, 16], batch_size=1, steps=5, lr=1e-3, warmup=0, val_every=1, augment=False)
    with pytest.raises(TrainingDiverged, match=r"training diverged at step 1: the loss became nan.*nothing was saved"):
        for _ in train(model, samples, samples, tcfg):
            pass


def test_training_stops_when_the_weights_become_non_finite():
    torch.manual_seed(0)
    model = SkipUNet(ModelConfig(name="t", base_channels=2, depth=1))
    rng = np.random.default_rng(0)
    samples = [Sample("s", rng.random((1, 32, 32), np.float32), (rng.random((32, 32)) > 0.5).astype(np.int64))]
    tcfg = TrainConfig(patch=[16, 16], batch_size=1, steps=3, lr=1e-3, warmup=0, val_every=1, augment=False)
    gen = train(model, samples, samples, tcfg)
    next(gen)
    with torch.no_grad():  # batch-norm statistics that overflowed: the loss (batch statistics) stays finite
        model.encoder.stages[0].norm1.running_var[0] = float("inf")
    with pytest.raises(TrainingDiverged, match="encoder.stages.0.norm1.running_var holds NaN or infinite"):
        for _ in gen:
            pass


def _data(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(2):
        img, mask = _pair(tmp_path, f"p{i}", i)
        tifffile.imwrite(root / "images" / f"p{i}.tif", tifffile.imread(img))
        tifffile.imwrite(root / "masks" / f"p{i}.tif", tifffile.imread(mask))
    return root


@pytest.mark.parametrize(("change", "message"), [
    ({"model": {"base_channels": 6000}}, "model: base_channels must be an integer from 1 to 1024, got 6000"),
    ({"model": {"base_channels": 1000, "depth": 5}}, r"model: the network would have \d+ M parameters"),
    ({"training": {"batch_size": 1024, "patch": [4096, 4096]}}, "holds 17179869184 pixels"),
    ({"training": {"lr": 1e30}}, "training: lr must be a number from 0 to 1, got 1e\\+30"),
    ({"training": {"lr": True}}, "training: lr must be a number from 0 to 1, got True"),
    ({"training": {"patch": [32, 32, 32]}}, "patch .* must have 2 sizes"),
    ({"val_fraction": "half"}, "val_fraction must be a number from 0 to 0.9"),
])
def test_cli_train_refuses_a_hostile_recipe_at_once(tmp_path, capsys, change, message):
    recipe = {"model": {"name": "r", "base_channels": 4, "depth": 2, "output": "semantic"},
              "training": {"patch": [32, 32], "batch_size": 2, "steps": 2}, "val_fraction": 0.5}
    for key, value in change.items():
        recipe[key] = {**recipe[key], **value} if isinstance(value, dict) else value
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    t0 = time.perf_counter()
    rc = main(["train", str(_data(tmp_path)), "--recipe", str(path), "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert str(path) in err
    import re

    assert re.search(message, err), err
    assert not (tmp_path / "out").exists() and time.perf_counter() - t0 < 20


def test_cli_train_refuses_unbounded_overrides(tmp_path, capsys):
    for option, value in (("--lr", "inf"), ("--time", "1e308"), ("--steps", "99999999999")):
        with pytest.raises(SystemExit) as exit_:
            main(["train", str(tmp_path), "--recipe", "r.json", "-o", str(tmp_path / "o"), option, value])
        err = capsys.readouterr().err.splitlines()
        assert exit_.value.code == 2 and len(err) == 1 and f"argument {option}: " in err[0], err
