"""Hostile inputs to the model store (issue 18): names that are paths, broken user models,
weights of other dtypes, a full disk, stale leftovers of killed saves."""

from __future__ import annotations

import errno
import json
import os
import time
import warnings

import numpy as np
import pytest
import torch

from napari_skipseg.cli import main
from napari_skipseg.model.config import ModelConfig, ModelConfigError
from napari_skipseg.model.store import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    BrokenModelWarning,
    ModelLoadError,
    ModelSaveError,
    import_checkpoint,
    list_models,
    load_model,
    reserve_version,
    save_model,
    store_path,
)
from napari_skipseg.model.unet import SkipUNet


def tiny(name="tiny", **kwargs):
    torch.manual_seed(0)
    return SkipUNet(ModelConfig(name=name, **{"base_channels": 2, "depth": 1, **kwargs})).eval()


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("SKIPSEG_HOME", str(home))
    save_model(tiny(), home / "models" / "tiny")
    return home


def _all_files(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def _blobs():
    rng = np.random.default_rng(0)
    image = rng.normal(10, 2, (3, 32, 32)).astype(np.float32)
    labels = np.zeros((3, 32, 32), np.int32)
    labels[:, 8:16, 8:16] = 1
    image[labels > 0] += 50
    return image, labels


# -- S4: a model name is never a path -------------------------------------------------------------


@pytest.mark.parametrize("evil", ["../../evil/x", "ABSOLUTE"])
def test_finetune_of_a_model_named_like_a_path_writes_nothing_outside_the_store(home, tmp_path, evil):
    """A user model whose config.json says ``"name": "../../evil/x"`` (or an absolute path),
    fine-tuned with ``save=True``: nothing is written outside the store."""
    import napari_skipseg as ss

    evil = str(tmp_path / "abs" / "x") if evil == "ABSOLUTE" else evil
    (tmp_path / "abs").mkdir()
    (tmp_path / "evil").mkdir()  # the folders the name points into exist, as /tmp does
    folder = home / "models" / "hostile"
    save_model(tiny("hostile"), folder)
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    cfg["name"] = evil
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    outside_before = _all_files(tmp_path)
    image, labels = _blobs()
    with pytest.raises(ModelLoadError, match=r"config.json: name must be a model name"):
        ss.finetune(str(folder), image, labels, steps=1, val_every=1, patch=[16, 16], batch_size=1, device="cpu")
    assert _all_files(tmp_path) == outside_before
    # a model object whose name was changed to a path after it was built is refused too
    model = load_model("tiny")
    model.config.name = evil
    with pytest.raises(ModelConfigError, match="name must be a model name"):
        ss.finetune(model, image, labels, steps=1, val_every=1, patch=[16, 16], batch_size=1, device="cpu")
    assert _all_files(tmp_path) == outside_before
    # and the store itself never turns such a name into a path
    version = reserve_version(evil)
    assert version.parent == home / "models" and version.name.endswith("x-ft-1")
    assert "/" not in version.name and not version.name.startswith(".")


def test_store_names_are_checked(home):
    root = home / "models"
    assert store_path("nuclei2d-ft-3") == root / "nuclei2d-ft-3"
    for bad in ("../x", "/tmp/x", "a/b", "..", ".hidden", "a\\b", "", "x" * 200):
        with pytest.raises(ModelLoadError, match="not a usable model name"):
            store_path(bad)
    (root.parent / "elsewhere").mkdir()
    os.symlink(root.parent / "elsewhere", root / "linked")  # a name in the store linking out of it
    with pytest.raises(ModelLoadError, match="outside the model store"):
        store_path("linked")
    with pytest.raises(ModelLoadError, match="outside the model store"):
        import_checkpoint(__file__, tiny().config, "linked")
    assert not any((root.parent / "elsewhere").iterdir())


# -- one broken user model breaks nothing else ---------------------------------------------------


@pytest.mark.parametrize("content", [
    b'{"name": "broken", "num_classes": \xff\xfe}',  # invalid UTF-8
    b'{"name": "broken", "num_classes": ' + b"9" * 5000 + b"}",  # beyond Python's int-digit limit
    b"[" * 100_000 + b"]" * 100_000,  # deeper than any parser's recursion
    b'{"name": "broken", "card": "not a dict"}',
    b'{"name": "broken", "spatial_dims": 2.0}',
])
def test_a_broken_user_model_is_skipped_with_a_warning(home, content, capsys):
    broken = home / "models" / "broken"
    save_model(tiny("broken"), broken)
    (broken / CONFIG_FILE).write_bytes(content)
    with pytest.warns(BrokenModelWarning, match=f"skipping the broken model in {broken}"):
        names = [e.name for e in list_models()]
    assert "tiny" in names and "broken" not in names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", BrokenModelWarning)
        assert load_model("tiny").config.name == "tiny"  # others load
        assert main(["models"]) == 0 and "tiny" in capsys.readouterr().out
        with pytest.raises(ModelLoadError, match=f"{broken / CONFIG_FILE}: "):
            load_model(broken)  # the broken one says what is wrong, naming its file
        assert main(["models", "--card", str(broken)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and str(broken / CONFIG_FILE) in err


# -- weights -------------------------------------------------------------------------------------


def test_float8_weights_are_refused_in_one_line(home, tmp_path):
    from safetensors.torch import save_file

    if not hasattr(torch, "float8_e4m3fn"):
        pytest.skip("this torch has no float8")
    folder = home / "models" / "tiny"
    state = {k: (v.to(torch.float8_e4m3fn) if v.is_floating_point() else v) for k, v in tiny().state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    with pytest.raises(ModelLoadError, match=r"stored as F8_E4M3; models hold float16, float32 or bfloat16"):
        load_model(folder)
    save_file(state, str(tmp_path / "w.safetensors"))  # and as a checkpoint to import
    with pytest.raises(ModelLoadError, match=r"stored as float8_e4m3fn"):
        import_checkpoint(tmp_path / "w.safetensors", tiny().config, "imported")
    assert not (home / "models" / "imported").exists()


# -- a full disk ---------------------------------------------------------------------------------


def _disk_full_after(monkeypatch, nbytes: int = 100):
    """Make the weights writer write ``nbytes`` and then fail as a full disk does."""
    from napari_skipseg.model import store

    def full(state, path, name):
        with open(path, "wb") as fh:
            fh.write(b"\0" * nbytes)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(store, "_save_safetensors", full)


def test_disk_full_during_import_overwrite_keeps_the_old_model(home, tmp_path, monkeypatch, capsys):
    ckpt = tmp_path / "w.pt"
    torch.save(tiny().state_dict(), ckpt)
    (tmp_path / "c.json").write_text(json.dumps(tiny().config.to_dict()))
    folder = home / "models" / "tiny"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    _disk_full_after(monkeypatch)
    rc = main(["import-model", str(ckpt), "--config", str(tmp_path / "c.json"), "-o", "tiny", "--overwrite"])
    err = capsys.readouterr().err
    assert rc == 2 and err.splitlines() == [
        f"skipseg: error: {folder}: the model could not be saved (no space left on the device); nothing was "
        "changed there"]
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # the old model, whole
    assert sorted(p.name for p in (home / "models").iterdir()) == ["tiny"]  # no temporary left
    load_model("tiny")


def test_disk_full_while_saving_a_version_leaves_no_model_and_no_temp(home, monkeypatch):
    from napari_skipseg.training.finetune import (
        Annotated,
        FinetuneOptions,
        run_finetune,
        save_version,
    )

    image, labels = _blobs()
    data = [Annotated(image, labels, None, name="a")]
    result = run_finetune("tiny", data, FinetuneOptions(steps=1, val_every=1, patch=[16, 16], batch_size=1,
                                                        tune=False, preprocess="keep"), device="cpu")
    folder = reserve_version("tiny")
    (folder / "labels.npz").write_bytes(b"the user's corrections")  # saved before training
    _disk_full_after(monkeypatch)
    with pytest.raises(ModelSaveError, match="no space left on the device"):
        save_version(result, data, folder, activate=False)
    assert sorted(p.name for p in folder.iterdir()) == ["labels.npz"]  # the corrections stay, nothing else
    assert [e.name for e in list_models() if e.source == "user"] == ["tiny"]


# -- leftovers of killed saves -------------------------------------------------------------------


def test_stale_leftovers_are_cleaned_and_live_ones_kept(home):
    root = home / "models"
    dead = 2**22 + 12345  # beyond pid_max on usual systems: never a live process
    while True:
        try:
            os.kill(dead, 0)
            dead += 1
        except ProcessLookupError:
            break
        except PermissionError:
            dead += 1
    stale_dir = root / f".tiny.tmp-{dead}-0123abcd"
    stale_dir.mkdir()
    stale_file = root / "tiny" / f".config.json.{dead}-abc_12.tmp"
    stale_file.write_text("{")
    live = root / f".tiny.tmp-{os.getpid()}-0123abcd"
    live.mkdir()
    old_live = root / f".other.tmp-{os.getpid()}-fedc4321"
    old_live.mkdir()
    os.utime(old_live, (time.time() - 2 * 3600, time.time() - 2 * 3600))  # a pid since reused
    mine = root / ".my-notes.txt"
    mine.write_text("not ours")
    list_models()
    save_model(tiny(), root / "tiny")
    assert not stale_dir.exists() and not stale_file.exists() and not old_live.exists()
    assert live.exists() and mine.exists()


def test_disk_full_during_cli_finetune_is_one_line_and_leaves_nothing(home, tmp_path, monkeypatch, capsys):
    import tifffile

    from tests.test_cli_finetune import _pair

    a, ma = _pair(tmp_path, "a", 0)
    tifffile.imwrite(ma, (tifffile.imread(ma) > 0).astype(np.uint8))  # the tiny model's two classes
    before = _all_files(home)
    _disk_full_after(monkeypatch)
    rc = main(["finetune", "--model", "tiny", "--images", a, "--masks", ma, "-o", "tuned", "--steps", "1", "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.splitlines() == [
        f"skipseg: error: {home / 'models' / 'tuned'}: the model could not be saved (no space left on the "
        "device); nothing was changed there"]
    assert _all_files(home) == before


def test_a_weights_file_larger_than_its_network_is_not_read(home):
    folder = home / "models" / "tiny"
    with open(folder / WEIGHTS_FILE, "r+b") as fh:  # a sparse 1 GB tail: nothing is allocated
        fh.truncate(2**30)
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match=r"model.safetensors: 1073741824 bytes, more than the network"):
        load_model(folder)
    assert time.perf_counter() - t0 < 5
