"""Model store: save/load round trip, user model folder, damaged and mismatched models."""

import json

import numpy as np
import pytest
import torch

from napari_skipseg.model.config import ModelConfig
from napari_skipseg.model.store import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelLoadError,
    list_models,
    load_config,
    load_model,
    save_model,
    user_model_dir,
)
from napari_skipseg.model.unet import SkipUNet


def tiny(dims=2, name="tiny", **kwargs):
    torch.manual_seed(0)
    cfg = ModelConfig(name=name, spatial_dims=dims, base_channels=4, depth=2, **kwargs)
    return SkipUNet(cfg)


def _trained_stats(model):
    """Give batch-norm layers non-default running statistics, so loading them is tested."""
    model.train()
    shape = (2, 1, 16, 16) if model.config.spatial_dims == 2 else (2, 1, 8, 8, 8)
    with torch.no_grad():
        model(torch.randn(shape) * 2 + 1)
    return model.eval()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.mark.parametrize("dims", [2, 3])
def test_save_load_round_trip(tmp_path, dims):
    model = _trained_stats(tiny(dims, card={"task": "testing", "metrics": {"f1": 0.75}}))
    folder = save_model(model, tmp_path / "m")
    for f in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE):
        assert (folder / f).is_file()
    card = (folder / CARD_FILE).read_text()
    assert "# tiny" in card and "testing" in card and "f1: 0.75" in card
    loaded = load_model(folder)
    assert isinstance(loaded, SkipUNet)
    assert not loaded.training
    assert loaded.config == model.config
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.randn((1, 1, 19, 21) if dims == 2 else (1, 1, 7, 10, 9))
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert not torch.equal(a, torch.zeros_like(a))
    torch.testing.assert_close(b, a, atol=2e-2, rtol=1e-2)  # float16 storage
    # running statistics travel too (a fresh network would differ)
    key = "encoder.stages.0.norm1.running_mean"
    torch.testing.assert_close(loaded.state_dict()[key], model.state_dict()[key], atol=1e-3, rtol=1e-3)
    assert not torch.equal(model.state_dict()[key], torch.zeros_like(model.state_dict()[key]))


def test_save_full_precision_is_exact(tmp_path):
    model = _trained_stats(tiny())
    loaded = load_model(save_model(model, tmp_path / "m", half=False))
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_user_models_listed_and_loaded_by_name(home):
    assert user_model_dir() == home / "models"
    save_model(tiny(name="mine"), home / "models" / "mine")
    (home / "models" / "not-a-model").mkdir()  # no files: skipped
    entries = {e.name: e for e in list_models()}
    assert "mine" in entries and "not-a-model" not in entries
    assert entries["mine"].source == "user"
    assert entries["mine"].config.base_channels == 4
    assert load_config("mine").name == "mine"
    assert isinstance(load_model("mine"), SkipUNet)


def test_broken_config_is_skipped_in_listing_but_loading_says_why(home):
    folder = save_model(tiny(name="broken"), home / "models" / "broken")
    (folder / CONFIG_FILE).write_text(json.dumps({"name": "broken", "block": "dense"}))
    assert "broken" not in {e.name for e in list_models()}
    with pytest.raises(ModelLoadError, match="block"):
        load_model(folder)


def test_weights_not_matching_config(tmp_path):
    folder = save_model(tiny(), tmp_path / "m")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    cfg["base_channels"] = 8
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError) as info:
        load_model(folder)
    msg = str(info.value)
    assert "do not match the config" in msg
    assert "shape mismatch" in msg
    # the first few mismatching tensors are named, with both shapes
    assert "decoder.stages.0.block.conv1.weight: file (4, 8, 3, 3) vs config (8, 16, 3, 3)" in msg
    assert msg.endswith("...")  # and there are more


def test_weights_with_missing_tensors(tmp_path):
    folder = save_model(tiny(), tmp_path / "m")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    cfg["depth"] = 3  # one more level than the weights have
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="missing .* tensor"):
        load_model(folder)


def test_truncated_weights(tmp_path):
    folder = save_model(tiny(), tmp_path / "m")
    weights = folder / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="damaged or not a safetensors file"):
        load_model(folder)


def test_pickled_checkpoint_refused(tmp_path):
    ckpt = tmp_path / "model.pt"
    torch.save(tiny().state_dict(), ckpt)
    with pytest.raises(ModelLoadError, match="pickled checkpoints are not loaded"):
        load_model(ckpt)
    with pytest.raises(ModelLoadError, match="pickled"):
        load_model(tmp_path / "missing.pth")


def test_folder_without_weights(tmp_path):
    folder = tmp_path / "half"
    folder.mkdir()
    tiny().config.to_json(folder / CONFIG_FILE)
    with pytest.raises(ModelLoadError, match="not a model folder"):
        load_model(folder)


def test_unknown_name_lists_available(home):
    save_model(tiny(name="alpha"), home / "models" / "alpha")
    save_model(tiny(name="beta"), home / "models" / "beta")
    with pytest.raises(ModelLoadError, match="no model named 'nope'") as info:
        load_model("nope")
    assert "alpha" in str(info.value) and "beta" in str(info.value)


def test_save_is_atomic(tmp_path):
    model = tiny()
    folder = save_model(model, tmp_path / "m")
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, CARD_FILE])
    before = (folder / CONFIG_FILE).read_text()
    # a config that cannot be written as JSON is refused before anything is written
    from napari_skipseg.model.store import ModelSaveError

    model.config.card["bad"] = {1, 2}
    with pytest.raises(ModelSaveError, match="card.bad is a set, not plain JSON"):
        save_model(model, folder)
    assert not list(folder.glob("*.tmp")) and not list(folder.glob(".*.tmp"))
    assert (folder / CONFIG_FILE).read_text() == before  # the old file is untouched
    assert ModelConfig.from_json(folder / CONFIG_FILE).name == "tiny"


def test_load_on_device_and_dtype(tmp_path):
    folder = save_model(tiny(), tmp_path / "m")
    model = load_model(folder, device="cpu")
    assert next(model.parameters()).device.type == "cpu"
    assert model.source_path == folder
    assert np.isfinite(model(torch.zeros(1, 1, 8, 8)).detach().numpy()).all()


def test_card_names_test_time_flips_only_when_on():
    from napari_skipseg.model.store import render_card

    cfg = ModelConfig(name="m", spatial_dims=3, num_classes=2, card={"flips_effect": "Dice 0.80 -> 0.81"})
    assert "flips" not in render_card(cfg)
    cfg.inference = {"flips": True}
    line = next(ln for ln in render_card(cfg).splitlines() if ln.startswith("| inference"))
    assert "8 flipped passes" in line and "Dice 0.80 -> 0.81" in line
