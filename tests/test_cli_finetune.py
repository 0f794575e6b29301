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


@pytest.mark.parametrize("moment", ["training", "writing", "saved"])
def test_ctrl_c_leaves_the_store_unchanged(model_home, tmp_path, capsys, monkeypatch, moment, request):
    """A real SIGINT (Ctrl-C) during training, while the new version's weights are written,
    or just after the version is complete: exit code 130, one line, the store as it was
    (no new version, the active model unchanged, even with --activate)."""
    import os
    import signal

    # Ctrl-C as in a terminal, also where the test run itself ignores SIGINT (nohup, `&`)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))

    import napari_skipseg.training.finetune as finetune_mod
    from napari_skipseg.model import store

    a, ma = _pair(tmp_path, "a", 0)
    models = model_home / "models"
    before = sorted(str(p.relative_to(model_home)) for p in model_home.rglob("*"))

    def ctrl_c():
        os.kill(os.getpid(), signal.SIGINT)

    if moment == "training":
        real = finetune_mod.finetune

        def finetune(*args, **kwargs):
            inner = real(*args, **kwargs)
            n = 0
            while True:
                if n == 4:
                    ctrl_c()
                try:
                    event = next(inner)
                except StopIteration as done:
                    return done.value
                n += 1
                yield event

        monkeypatch.setattr(finetune_mod, "finetune", finetune)
    elif moment == "writing":
        real_write = store._write_synced

        def write(target, writer):
            if store.WEIGHTS_FILE in target.name:  # the file or its temporary name
                ctrl_c()
            return real_write(target, writer)

        monkeypatch.setattr(store, "_write_synced", write)
    else:
        real_save = store.save_model

        def save_model(*args, **kwargs):
            out = real_save(*args, **kwargs)
            assert store.is_model_dir(out)
            ctrl_c()
            return out

        monkeypatch.setattr(store, "save_model", save_model)
    capsys.readouterr()
    rc = main(["finetune", "--model", "tiny", "--images", a, "--masks", ma, "-o", "tuned", "--steps", "6",
               "--activate", "-q"])
    captured = capsys.readouterr()
    assert rc == 130, captured.err
    assert captured.err.splitlines() == ["skipseg: interrupted; no model version was written"]
    assert not (models / "tuned").exists() and active_model() is None
    assert sorted(str(p.relative_to(model_home)) for p in model_home.rglob("*")) == before
    # the Ctrl-C handler is back: a later Ctrl-C interrupts as usual
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    monkeypatch.undo()
    monkeypatch.setenv("SKIPSEG_HOME", str(model_home))
    assert main(["finetune", "--model", "tiny", "--images", a, "--masks", ma, "-o", "tuned", "--steps", "2",
                 "-q"]) == 0
    assert is_model_dir(models / "tuned")
