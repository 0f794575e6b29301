"""Untrusted model files: pickles never run, checkpoints are imported as tensors only, damaged
or mismatched models give one clear error, and a model folder changes all at once."""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections import Counter

import pytest
import torch
from hostile import evil_checkpoint, unsafe_load

import napari_skipseg
from napari_skipseg.model import store
from napari_skipseg.model.config import ModelConfig
from napari_skipseg.model.store import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    ModelLoadError,
    import_checkpoint,
    list_models,
    load_model,
    read_checkpoint,
    save_model,
)
from napari_skipseg.model.unet import SkipUNet


def tiny(dims=2, name="tiny", seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs = {"base_channels": 4, "depth": 2, **kwargs}
    return SkipUNet(ModelConfig(name=name, spatial_dims=dims, **kwargs)).eval()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].float(), sb[k].float()) for k in sa)


# --- pickles are never executed --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_hostile_pickle_would_run_code(tmp_path, kind):
    """The test payload is real: an ordinary load creates the marker file."""
    marker = tmp_path / "proof"
    unsafe_load(evil_checkpoint(tmp_path / "evil.pt", marker, kind))
    assert marker.exists()


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_python_api_refuses_pickles(tmp_path, home, kind):
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.pt", marker, kind)
    for ref in (evil, str(evil)):
        with pytest.raises(ModelLoadError, match="pickled checkpoints are not loaded"):
            napari_skipseg.load_model(ref)
    with pytest.raises(ModelLoadError, match="pickled checkpoints are not loaded"):
        napari_skipseg.segment(torch.zeros(16, 16).numpy(), model=str(evil), output="semantic")
    # no suffix to go by: recognised by its content
    disguised = evil.rename(tmp_path / "weights")
    with pytest.raises(ModelLoadError, match="pickled checkpoints are not loaded"):
        load_model(disguised)
    # a pickle posing as the weights of a model folder is not a safetensors file
    folder = save_model(tiny(), tmp_path / "m")
    os.replace(disguised, folder / WEIGHTS_FILE)
    with pytest.raises(ModelLoadError, match="damaged or not a safetensors file"):
        load_model(folder)
    # importing reads tensors only, and refuses the rest
    with pytest.raises(ModelLoadError, match="refused: the file holds Python objects besides tensors"):
        import_checkpoint(evil_checkpoint(tmp_path / "evil2.pth", marker, kind), tiny().config, "imported")
    assert not (home / "models" / "imported").exists()
    assert not marker.exists()


def test_other_files_are_not_models(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelLoadError, match="a file, not a model; a model is a folder"):
        load_model(text)
    folder = save_model(tiny(), tmp_path / "m")
    assert isinstance(load_model(folder / CONFIG_FILE), SkipUNet)  # a file inside a model folder


# --- importing checkpoints ---------------------------------------------------------------------


def test_import_checkpoint_round_trip(tmp_path, home):
    model = tiny(seed=3)
    ckpt = tmp_path / "net.pt"
    torch.save({"epoch": 7, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, ckpt)
    cfg_path = tmp_path / "config.json"
    model.config.to_json(cfg_path)
    folder = import_checkpoint(ckpt, cfg_path, "mine")
    assert folder == home / "models" / "mine"
    assert sorted(p.name for p in folder.iterdir()) == sorted([CONFIG_FILE, WEIGHTS_FILE, CARD_FILE])
    loaded = load_model("mine")
    assert loaded.config.name == "mine"
    assert loaded.config.card["source"] == "imported from net.pt"
    assert _same_weights(loaded, model)  # full precision by default
    assert "mine" in {e.name for e in list_models()}
    with pytest.raises(ModelLoadError, match="exists already; pass overwrite=True"):
        import_checkpoint(ckpt, cfg_path, "mine")
    import_checkpoint(ckpt, model.config, "mine", overwrite=True, half=True)
    assert load_model("mine").config.name == "mine"
    # into a folder path; config as a dict
    out = import_checkpoint(ckpt, model.config.to_dict(), tmp_path / "elsewhere" / "net")
    assert _same_weights(load_model(out), model)


def test_import_checkpoint_mismatch_and_damage(tmp_path, home):
    model = tiny()
    ckpt = tmp_path / "net.pt"
    torch.save(model.state_dict(), ckpt)
    wider = ModelConfig(name="w", base_channels=8, depth=2)
    with pytest.raises(ModelLoadError, match=r"weights do not match the config: shape mismatch: .*vs config"):
        import_checkpoint(ckpt, wider, "w")
    deeper = ModelConfig(name="d", base_channels=4, depth=3)
    with pytest.raises(ModelLoadError, match="missing .* tensor"):
        import_checkpoint(ckpt, deeper, "d")
    data = ckpt.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="damaged, truncated or not a PyTorch checkpoint"):
        read_checkpoint(tmp_path / "cut.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="the file is empty"):
        read_checkpoint(tmp_path / "empty.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(ModelLoadError, match="holds a list, not a state dict"):
        read_checkpoint(tmp_path / "list.pt")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "nodict.pt")
    with pytest.raises(ModelLoadError, match="no state dict of tensors found .*epoch, lr"):
        read_checkpoint(tmp_path / "nodict.pt")
    with pytest.raises(ModelLoadError, match="no such file"):
        read_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ModelLoadError, match="not a usable model name"):
        import_checkpoint(ckpt, model.config, "bad name!")
    assert not (home / "models").exists() or not any((home / "models").iterdir())


# --- damaged and mismatched model folders ----------------------------------------------------------


def test_truncated_or_empty_config(tmp_path):
    folder = save_model(tiny(), tmp_path / "m")
    text = (folder / CONFIG_FILE).read_text()
    (folder / CONFIG_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(ModelLoadError, match="config.json: the model config is not valid JSON"):
        load_model(folder)
    (folder / CONFIG_FILE).write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(folder)


@pytest.mark.parametrize("cut", [0, 8, 100, -10])
def test_truncated_weights_at_any_length(tmp_path, cut):
    folder = save_model(tiny(), tmp_path / "m")
    weights = folder / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(ModelLoadError, match="damaged or not a safetensors file"):
        load_model(folder)


def test_non_finite_weights(tmp_path):
    from safetensors.torch import save_file

    from napari_skipseg.model.store import ModelSaveError

    model = tiny()
    with torch.no_grad():
        model.head.weight[0, 0] = float("nan")
    with pytest.raises(ModelSaveError, match="head.weight holds NaN or infinite values"):
        save_model(model, tmp_path / "m")  # never stored
    assert not (tmp_path / "m").exists()
    folder = save_model(tiny(), tmp_path / "m")  # a file damaged afterwards is refused on loading
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    with pytest.raises(ModelLoadError, match=r"1 weight tensor\(s\) hold NaN or infinite values, e.g. head.weight"):
        load_model(folder)


def test_config_of_other_dimensionality(tmp_path):
    folder = save_model(tiny(dims=3), tmp_path / "m")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    cfg["spatial_dims"] = 2
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"the weights are for a 3D network, the config says spatial_dims=2; "
                       r"shape mismatch: .*: file \(4, 8, 3, 3, 3\) vs config \(4, 8, 3, 3\)"):
        load_model(folder)


def test_config_with_other_input_channels(tmp_path):
    folder = save_model(tiny(), tmp_path / "m")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    cfg["in_channels"] = 3
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"the weights take 1 input channel\(s\), the config says in_channels=3; "
                       r"shape mismatch: .*encoder.stages.0.conv1.weight: file \(4, 1, 3, 3\) vs config \(4, 3, 3, 3\)"):
        load_model(folder)


def test_huge_config_refused_before_allocating(tmp_path):
    """A config asking for a network of ~10^13 parameters is refused by the config's bounds
    (and would be checked against the file's header on the meta device), so nothing is
    allocated."""
    folder = save_model(tiny(), tmp_path / "m")
    cfg = json.loads((folder / CONFIG_FILE).read_text())
    cfg["base_channels"] = 100_000
    cfg["depth"] = 6
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="config.json: base_channels must be an integer from 1 to 1024"):
        load_model(folder)
    cfg["base_channels"], cfg["depth"] = 512, 5  # within each bound, too large together
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match=r"would have \d+ M parameters \(at most 200 M\)"):
        load_model(folder)
    cfg["base_channels"], cfg["depth"] = 8, 2  # a fitting size, not these weights
    (folder / CONFIG_FILE).write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="weights do not match the config"):
        load_model(folder)
    assert time.perf_counter() - t0 < 10


# --- a model folder changes all at once ----------------------------------------------------------


def test_resave_replaces_the_folder_and_keeps_other_files(tmp_path):
    folder = save_model(tiny(seed=1), tmp_path / "m", extra_files={"history.json": "[1]"})
    (folder / "notes.txt").write_text("mine")
    (folder / "versions").mkdir()
    (folder / "versions" / "v1.txt").write_text("v1")
    new = tiny(seed=2, base_channels=6)
    save_model(new, folder, half=False, extra_files={"history.json": "[2]"})
    assert _same_weights(load_model(folder), new)
    assert (folder / "history.json").read_text() == "[2]"
    assert (folder / "notes.txt").read_text() == "mine"
    assert (folder / "versions" / "v1.txt").read_text() == "v1"
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]


def test_save_into_existing_plain_folder(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "keep.txt").write_text("keep")
    save_model(tiny(), folder)
    assert (folder / "keep.txt").read_text() == "keep"
    assert isinstance(load_model(folder), SkipUNet)


@pytest.mark.parametrize("where", ["between_renames", "after_swap"])
def test_fallback_swap_recovers_after_a_crash(tmp_path, monkeypatch, where):
    """Without an atomic exchange, a crash between the two renames leaves the old version
    aside; the next load puts it back. A crash after the swap leaves only litter."""
    monkeypatch.setattr(store, "USE_EXCHANGE", False)
    old, new = tiny(seed=1), tiny(seed=2, base_channels=6)
    folder = save_model(old, tmp_path / "models" / "m", half=False)
    real_rename = os.rename
    calls = []

    def crashing_rename(src, dst):
        calls.append((src, dst))
        if (where == "between_renames" and len(calls) == 2) or (where == "after_swap" and len(calls) == 3):
            raise KeyboardInterrupt("simulated crash")
        return real_rename(src, dst)

    monkeypatch.setattr(store.os, "rename", crashing_rename)
    monkeypatch.setattr(store, "_pid_alive", lambda pid: False)  # as if the saver died
    monkeypatch.setattr(store.shutil, "rmtree", lambda *a, **k: None)  # a crash cleans nothing
    with pytest.raises(KeyboardInterrupt):
        save_model(new, folder, half=False)
    monkeypatch.setattr(store.os, "rename", real_rename)
    monkeypatch.undo()
    monkeypatch.setattr(store, "_pid_alive", lambda pid: False)
    expected = old if where == "between_renames" else new
    assert _same_weights(load_model(folder), expected)
    monkeypatch.setenv("SKIPSEG_HOME", str(tmp_path))
    assert [e.name for e in list_models() if e.source == "user"] == ["m"]
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]


KILL_RUNS = 40


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="needs fork and SIGKILL")
@pytest.mark.parametrize("exchange", [True, False], ids=["exchange", "two-renames"])
def test_sigkill_during_save_never_leaves_a_broken_model(tmp_path, monkeypatch, exchange):
    """A child process saves two different versions in turn (different widths and weights)
    into one model folder and is SIGKILLed at a random moment, many times. After each kill
    the store loads, and the model is exactly one of the two versions, with its own extra
    file. (About 5 s per mode.)"""
    monkeypatch.setattr(store, "USE_EXCHANGE", exchange)
    versions = {"A": tiny(seed=1), "B": tiny(seed=2, base_channels=6)}
    folder = save_model(versions["A"], tmp_path / "models" / "m", half=False)
    monkeypatch.setenv("SKIPSEG_HOME", str(tmp_path))
    rng = random.Random(1234)
    seen, interrupted, current = Counter(), 0, "A"
    for _ in range(KILL_RUNS):
        order = "BA" if current == "A" else "AB"
        pid = os.fork()
        if pid == 0:  # child: save the other version, then this one, and so on, until killed
            try:
                k = 0
                while True:
                    save_model(versions[order[k % 2]], folder, half=False, extra_files={"v.txt": order[k % 2]})
                    k += 1
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.0, 0.1))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        interrupted += any(p.name.startswith(".") for p in folder.parent.iterdir())
        model = load_model(folder)  # recovers what the kill left, if anything
        match = [name for name, v in versions.items() if _same_weights(model, v)]
        assert len(match) == 1, "the stored weights are neither version"
        current = match[0]
        if (folder / "v.txt").exists():  # the first version was saved without it
            assert (folder / "v.txt").read_text() == current
        assert [e.name for e in list_models() if e.source == "user"] == ["m"]
        seen[current] += 1
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".")]
    assert interrupted > 0  # some kills really fell in the middle of a save
    assert sum(seen.values()) == KILL_RUNS
    print(f"{KILL_RUNS} kills ({'exchange' if exchange else 'two renames'}): versions found {dict(seen)}, "
          f"{interrupted} left a save half-done")


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32" or not hasattr(os, "fork"), reason="needs fork and SIGKILL")
def test_sigkill_during_autosave_never_leaves_a_broken_one(tmp_path, monkeypatch):
    """The same for labels autosaves: a child process autosaves two different label arrays
    in turn (keeping 2 per layer) and is SIGKILLed at a random moment, many times. After each
    kill the newest listed autosave loads and is exactly one of the two arrays, and every
    listed autosave loads; the next complete save leaves only the 2 kept. (About 3 s.)"""
    import numpy as np

    from napari_skipseg import autosave

    monkeypatch.setenv("SKIPSEG_HOME", str(tmp_path))
    rng = np.random.default_rng(0)
    shape = (4, 128, 128)  # about 40 ms per autosave: kills fall in every part of it
    arrays = {name: ((rng.random(shape) < 0.3) * rng.integers(1, 50, shape)).astype(np.int32) for name in "AB"}
    folder = autosave.autosave_dir()
    autosave.save_autosave(arrays["A"], "corrected", keep=2)
    pick = random.Random(4321)
    seen, interrupted, current = Counter(), 0, "A"

    def leftovers() -> list[str]:
        return [p.name for p in folder.iterdir()
                if p.name.endswith(".tmp") or (p.suffix == ".npz" and not p.with_suffix(".json").exists())]

    for _ in range(KILL_RUNS):
        order = "BA" if current == "A" else "AB"
        before = set(leftovers())
        pid = os.fork()
        if pid == 0:  # child: autosave the other array, then this one, and so on, until killed
            try:
                k = 0
                while True:
                    autosave.save_autosave(arrays[order[k % 2]], "corrected", keep=2, skip_unchanged=False)
                    k += 1
            finally:
                os._exit(1)
        time.sleep(pick.uniform(0.0, 0.1))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        interrupted += bool(set(leftovers()) - before)
        entries = autosave.list_autosaves("corrected")
        # more than the 2 kept only when kills fell between a save's end and its rotation;
        # the next complete save rotates them away (checked at the end)
        assert entries, "no complete autosave left"
        found = []
        for entry in entries:  # every listed autosave is complete
            labels, _ = autosave.load_autosave(entry)
            match = [name for name, a in arrays.items() if np.array_equal(labels, a)]
            assert len(match) == 1, "an autosave holds neither array"
            found.append(match[0])
        labels, newest = autosave.load_newest("corrected")
        assert newest == entries[-1]
        current = found[-1]
        seen[current] += 1
    assert interrupted > 0  # some kills really fell in the middle of a save
    assert sum(seen.values()) == KILL_RUNS
    # the next save tidies up what the kills left once it is old enough (no save is running now)
    monkeypatch.setattr(autosave, "STALE_SECONDS", -1.0)
    autosave.save_autosave(arrays["A"], "corrected", keep=2, skip_unchanged=False)
    entries = autosave.list_autosaves("corrected")
    assert not leftovers() and len(entries) == 2
    assert [np.array_equal(autosave.load_autosave(e)[0], arrays["A"]) for e in entries[-1:]] == [True]
    print(f"{KILL_RUNS} kills during autosaves: newest found {dict(seen)}, {interrupted} left a save half-done")


def test_discard_model_removes_a_version_at_once(tmp_path, monkeypatch):
    """Undoing a save (a cancelled fine-tune): the folder stops being a model in one rename;
    a crash while deleting leaves only a hidden leftover that the next listing removes."""
    monkeypatch.setenv("SKIPSEG_HOME", str(tmp_path))
    root = tmp_path / "models"
    save_model(tiny(), root / "keep")
    folder = save_model(tiny(seed=1), root / "keep-ft-1")
    store.discard_model(folder)
    assert sorted(os.listdir(root)) == ["keep"]
    store.discard_model(folder)  # gone already: nothing to do
    folder = save_model(tiny(seed=1), root / "keep-ft-1")
    monkeypatch.setattr(store.shutil, "rmtree", lambda *a, **k: None)  # killed before deleting
    store.discard_model(folder)
    assert [e.name for e in list_models() if e.source == "user"] == ["keep"]
    monkeypatch.undo()
    monkeypatch.setenv("SKIPSEG_HOME", str(tmp_path))
    monkeypatch.setattr(store, "_pid_alive", lambda pid: False)  # as if that process had died
    assert [e.name for e in list_models() if e.source == "user"] == ["keep"]
    assert sorted(os.listdir(root)) == ["keep"]
