"""``skipseg evaluate`` and napari_skipseg.evaluate: metrics on hand-made cases, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_skipseg.cli import main
from napari_skipseg.evaluate import EvaluationError, pair_files, score_image


def test_score_instances_by_hand():
    truth = np.zeros((20, 20), np.uint16)
    truth[2:6, 2:6] = 1  # found exactly
    truth[10:14, 10:14] = 2  # missed
    pred = np.zeros_like(truth)
    pred[2:6, 2:6] = 7
    pred[15:18, 1:4] = 9  # false positive
    m, counts = score_image(truth, pred, "instances", 3)
    assert (counts.tp, counts.fp, counts.fn) == (1, 1, 1)
    assert m["f1@0.5"] == pytest.approx(0.5) and m["mean_matched_iou"] == pytest.approx(1.0)
    assert m["pixel_error"] == pytest.approx((16 + 9) / 400)
    assert m["dice_foreground"] == pytest.approx(2 * 16 / (32 + 25))


def test_binary_mask_for_an_instance_model_counts_its_components():
    truth = np.zeros((10, 10), np.uint8)
    truth[1:3, 1:3] = 1
    truth[6:9, 6:9] = 1
    pred = np.zeros((10, 10), np.uint32)
    pred[1:3, 1:3] = 1
    pred[6:9, 6:9] = 2
    m, counts = score_image(truth, pred, "instances", 3)
    assert counts.tp == 2 and m["f1@0.5"] == 1.0


def test_score_semantic_by_hand():
    truth = np.array([[0, 1, 1, 2], [0, 1, 2, 2]])
    pred = np.array([[0, 1, 2, 2], [1, 1, 2, 2]])
    m, counts = score_image(truth, pred, "semantic", 3)
    assert counts is None
    assert m["dice_1"] == pytest.approx(2 * 2 / (3 + 3))
    assert m["dice_2"] == pytest.approx(2 * 3 / (3 + 4))
    assert m["pixel_error"] == pytest.approx(2 / 8)
    with pytest.raises(EvaluationError, match="class 2 but the model has 2 classes"):
        score_image(truth, pred, "semantic", 2)


def test_pair_files_errors(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    tifffile.imwrite(tmp_path / "img" / "a.tif", np.zeros((8, 8), np.uint8))
    with pytest.raises(EvaluationError, match="no mask for 1 image"):
        pair_files(tmp_path / "img", tmp_path / "msk")
    with pytest.raises(EvaluationError, match="no such file"):
        pair_files(tmp_path / "nope", tmp_path / "msk")
    with pytest.raises(EvaluationError, match="two files or two folders"):
        pair_files(tmp_path / "img" / "a.tif", tmp_path / "msk")


@pytest.fixture
def data(tmp_path, model_home):
    """Three images; masks are what the bundled nuclei2d model itself predicts (so it must
    score 1.0), except the last, whose mask is emptied."""
    from napari_skipseg import segment
    from napari_skipseg._sample_data import synthetic_nuclei

    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(3):
        image, _ = synthetic_nuclei((96, 112), seed=i)
        tifffile.imwrite(tmp_path / "images" / f"im{i}.tif", image)
        labels = segment(image, model="nuclei2d", output="instances")
        if i == 2:
            labels[:] = 0
        tifffile.imwrite(tmp_path / "masks" / f"im{i}.tif", labels.astype(np.uint16))
    return tmp_path


def test_cli_evaluate_folder(data, capsys):
    out_json = data / "scores.json"
    code = main(["evaluate", "--model", "nuclei2d", str(data / "images"), str(data / "masks"),
                 "--json", str(out_json)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "im0.tif" in printed and "overall (3 images, model nuclei2d, instances)" in printed
    result = json.loads(out_json.read_text())
    per = {r["name"]: r for r in result["images"]}
    assert per["im0.tif"]["f1@0.5"] == 1.0 and per["im0.tif"]["pixel_error"] == 0.0
    assert per["im1.tif"]["f1@0.5"] == 1.0 and per["im1.tif"]["mean_matched_iou"] == 1.0
    # the emptied mask: every prediction is a false positive
    empty = per["im2.tif"]
    assert empty["f1@0.5"] == 0.0 and empty["precision"] == 0.0 and empty["pixel_error"] > 0
    over = result["overall"]
    assert over["false_negatives"] == 0 and over["false_positives"] > 0 and over["true_positives"] > 5
    tp, fp = over["true_positives"], over["false_positives"]
    assert over["f1@0.5"] == pytest.approx(2 * tp / (2 * tp + fp))
    assert over["pixel_error"] == pytest.approx(np.mean([r["pixel_error"] for r in result["images"]]))


def test_cli_evaluate_bad_input(data, capsys):
    tifffile.imwrite(data / "masks" / "im0.tif", np.zeros((10, 10), np.uint16))
    code = main(["evaluate", "--model", "tiny", str(data / "images" / "im0.tif"), str(data / "masks" / "im0.tif")])
    err = capsys.readouterr().err
    assert code == 2 and "mask shape (10, 10) differs" in err and len(err.strip().splitlines()) == 1
    code = main(["evaluate", "--model", "tiny", "--split", "validation", str(data / "images"), str(data / "masks")])
    assert code == 2 and "no recorded validation split" in capsys.readouterr().err


def test_cli_tune_postprocess_finds_and_saves_better_thresholds(data, tmp_path, capsys):
    """--tune searches the watershed thresholds; --save writes them and the F1 they give into
    the model folder; evaluating the saved model gives exactly the printed F1. Masks made by
    nuclei2d with its own thresholds, evaluated with deliberately bad ones, must come back."""
    import re

    from napari_skipseg.model.store import load_model, save_model

    folder = tmp_path / "n2d"
    model = load_model("nuclei2d")
    good = dict(model.config.postprocess)
    model.config.postprocess = {**good, "seed": 0.3, "mask": 0.3, "min_size": 200}  # drops small nuclei
    save_model(model, folder)
    (folder / "notes.txt").write_text("kept")
    images, masks = str(data / "images" / "im0.tif"), str(data / "masks" / "im0.tif")
    assert main(["evaluate", "--model", "nuclei2d", "--save", images, masks]) == 2
    assert "use it with --tune" in capsys.readouterr().err
    assert main(["evaluate", "--model", "nuclei2d", "--tune", "--save", images, masks]) == 2
    assert "give its path" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(folder), "--tune", "--save", "--json", str(tmp_path / "before.json"),
                 images, masks]) == 0
    out = capsys.readouterr().out
    before = json.loads((tmp_path / "before.json").read_text())["overall"]["f1@0.5"]
    tuned = float(re.search(r"-> ([0-9.]+)", out).group(1))
    assert tuned > before and "saved the tuned post-processing" in out
    saved = load_model(folder)
    assert saved.config.postprocess != model.config.postprocess
    assert saved.config.card["metrics"]["f1@0.5"] == pytest.approx(tuned, abs=1e-4)
    assert "postprocess_tuning" in saved.config.card and "post-processing" in (folder / "card.md").read_text()
    assert (folder / "notes.txt").read_text() == "kept"  # the folder's other files stay
    assert main(["evaluate", "--model", str(folder), "--json", str(tmp_path / "after.json"), images, masks]) == 0
    after = json.loads((tmp_path / "after.json").read_text())["overall"]["f1@0.5"]
    assert after == pytest.approx(tuned, abs=1e-9)
    # thresholds tuned with (or without) test-time flips keep that setting as the model's default
    now = load_model(folder).config.inference.get("flips", False)
    assert main(["evaluate", "--model", str(folder), "--tune", "--save", "--no-flips" if now else "--flips",
                 images, masks]) == 0
    again = load_model(folder).config
    assert again.inference["flips"] is (not now)
    assert ("with test-time flips" in again.card["postprocess_tuning"]) is (not now)


def test_cli_evaluate_two_class_model_reports_isbi_pixel_error(tmp_path, model_home, capsys):
    """The bundled em2d model (membrane vs cell interior): masks are its own prediction, the
    second with a block flipped; ``pixel_error_isbi`` is checked against precision and recall
    computed here from its probabilities, per image and pooled over both."""
    from napari_skipseg import segment

    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    probs = {}
    for i in range(2):
        image = (rng.random((96, 128)) * 255).astype(np.uint8)
        tifffile.imwrite(tmp_path / "images" / f"s{i}.tif", image)
        foreground = segment(image, model="em2d", output="probabilities")[1]
        mask = (foreground > 0.5).astype(np.uint8)  # what the model predicts
        if i == 1:
            mask[10:40, 20:70] = 1 - mask[10:40, 20:70]
        tifffile.imwrite(tmp_path / "masks" / f"s{i}.tif", mask)
        probs[f"s{i}.tif"] = (foreground, mask > 0)
    out_json = tmp_path / "scores.json"
    assert main(["evaluate", "--model", "em2d", str(tmp_path / "images"), str(tmp_path / "masks"),
                 "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "pixel_error_isbi" in printed.splitlines()[0] and "pixel_error_isbi 0." in printed
    result = json.loads(out_json.read_text())
    per = {r["name"]: r for r in result["images"]}

    def best_f(pairs):
        best = 0.0
        for th in np.arange(11) / 10:
            tp = sum(np.sum((p > th) & t) for p, t in pairs)
            precision = tp / max(sum(np.sum(p > th) for p, _ in pairs), 1)
            recall = tp / sum(np.sum(t) for _, t in pairs)
            if precision + recall:
                best = max(best, 2 * precision * recall / (precision + recall))
        return best

    assert per["s0.tif"]["pixel_error"] == 0.0 and per["s0.tif"]["pixel_error_isbi"] == 0.0
    assert per["s1.tif"]["pixel_error"] > 0.05
    assert per["s1.tif"]["pixel_error_isbi"] == pytest.approx(1 - best_f([probs["s1.tif"]]))
    pooled = result["overall"]["pixel_error_isbi"]
    assert pooled == pytest.approx(1 - best_f(list(probs.values())))
    assert 0 < pooled < per["s1.tif"]["pixel_error_isbi"]
