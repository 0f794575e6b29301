"""``skipseg study``: a tiny run end to end, and bad input as one line with exit code 2."""

from __future__ import annotations

import json

import pytest

from napari_skipseg.cli import main
from tests.test_study import _disc_folder

TINY = ["--steps", "2", "--seeds", "1", "--depths", "1", "--blocks", "plain", "--base-channels", "2",
        "--patch", "16", "--crop", "32", "--batch-size", "2", "--train-images", "3", "--val-images", "2", "-q"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_study_writes_results_and_figures(tmp_path, capsys):
    data = _disc_folder(tmp_path / "discs", n=5)
    out = tmp_path / "study"
    assert main(["study", str(data), "-o", str(out), "--figures", str(tmp_path / "fig"), *TINY]) == 0
    printed = capsys.readouterr().out
    assert "| plain, depth 1, with skips |" in printed and "| plain, depth 1, without skips |" in printed
    result = json.loads((out / "study.json").read_text())
    assert [(r["skips"], len(r["loss"])) for r in result["runs"]] == [(True, 2), (False, 2)]
    assert sorted(p.name for p in (tmp_path / "fig").iterdir()) == [
        "skip_study_early_gradients.png", "skip_study_flow.png", "skip_study_init_gradients.png",
        "skip_study_loss.png", "skip_study_score.png"]


def test_study_semantic_scores_dice(tmp_path, capsys):
    data = _disc_folder(tmp_path / "discs", n=5)
    out = tmp_path / "study"
    assert main(["study", str(data), "-o", str(out), *TINY, "--output-kind", "semantic"]) == 0
    assert "held-out Dice" in capsys.readouterr().out
    runs = json.loads((out / "study.json").read_text())["runs"]
    assert all("mean_dice" in r["metrics"] and 0 <= r["score"] <= 1 for r in runs)


@pytest.mark.parametrize(("case", "match"), [
    ("no_folder", "needs 'images' and 'masks' subfolders"),
    ("patch_off_grid", "patch 20 must be a multiple of 16"),
    ("patch_over_crop", "patch 64 is larger than crop 32"),
    ("one_image", "needs at least 2 image/mask pairs"),
    ("no_device", "cuda"),
    ("unknown_model", "nosuchmodel"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, monkeypatch, case, match):
    monkeypatch.setenv("SKIPSEG_HOME", str(tmp_path / "home"))
    data = _disc_folder(tmp_path / "discs", n=1 if case == "one_image" else 3)
    args = ["study", str(data), "-o", str(tmp_path / "out"), *TINY]
    if case == "no_folder":
        args[1] = str(tmp_path / "missing")
    elif case == "patch_off_grid":
        args += ["--patch", "20", "--depths", "4", "--crop", "64"]
    elif case == "patch_over_crop":
        args += ["--patch", "64"]
    elif case == "no_device":
        pytest.importorskip("torch")
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        args += ["--device", "cuda"]
    elif case == "unknown_model":
        args += ["--explorer-model", "nosuchmodel"]
    assert main(args) == 2
    line = _error_line(capsys)
    assert line.startswith("skipseg: error:") and match in line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("bad", [["--steps", "0"], ["--seeds", "21"], ["--depths", "7"], ["--lr", "0"],
                                 ["--blocks", "dense"], ["--norms", "layer"]])
def test_bad_numbers_and_choices_exit_2(tmp_path, capsys, bad):
    with pytest.raises(SystemExit) as stop:
        main(["study", str(tmp_path), "-o", str(tmp_path / "out"), *bad])
    assert stop.value.code == 2
    assert _error_line(capsys).startswith("skipseg study: error: argument")


def test_existing_study_is_kept_without_overwrite(tmp_path, capsys):
    data = _disc_folder(tmp_path / "discs", n=3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "study.json").write_text("mine")
    assert main(["study", str(data), "-o", str(out), *TINY]) == 2
    assert "exists (give --overwrite" in _error_line(capsys)
    assert (out / "study.json").read_text() == "mine"
