"""Fine-tuning on corrected labels (core, no Qt): reviewed-only samples, the guard, versions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_skipseg.inference.preprocess import InputTransform, stain_channel
from napari_skipseg.model.store import (
    active_model,
    is_model_dir,
    list_versions,
    load_model,
    on_active_changed,
    reserve_version,
    set_active_model,
)
from napari_skipseg.training.data import IGNORE
from napari_skipseg.training.finetune import (
    CLASS_BALANCE_NEW,
    Annotated,
    FinetuneOptions,
    adapt_model,
    build_samples,
    finetune,
    load_labels,
    run_finetune,
    save_version,
)
from tests.conftest import make_tiny_model


def _blobs(shape=(64, 64), n=6, seed=0):
    """Grey image with bright discs and their instance labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    image = rng.normal(10, 2, shape).astype(np.float32)
    labels = np.zeros(shape, np.int32)
    for i in range(1, n + 1):
        cy, cx = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(16, 40)
        labels[disc & (labels == 0)] = i
        image[disc] += 60
    return image, labels


def _stack(n=4, shape=(48, 48)):
    pairs = [_blobs(shape, seed=s) for s in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


# -- samples --------------------------------------------------------------------------------------


def test_only_reviewed_slices_are_used():
    cfg = make_tiny_model().config
    image, labels = _stack(5)
    train, val, split = build_samples([Annotated(image, labels, [0, 2, 3], name="s")], cfg)
    names = sorted(s.name for s in train + val)
    assert names == ["s[0]", "s[2]", "s[3]"]
    assert len(val) == 1 and split["kind"] == "units"
    # deterministic
    _, val2, _ = build_samples([Annotated(image, labels, [0, 2, 3], name="s")], cfg)
    assert [v.name for v in val2] == [v.name for v in val]


def test_label_zero_in_a_reviewed_slice_is_background():
    cfg = make_tiny_model(output="semantic").config
    image, labels = _stack(1)
    labels = (labels[0] > 0).astype(np.uint8)
    train, val, split = build_samples([Annotated(image[0], labels, None, name="a")], cfg)
    assert split["kind"] == "band"
    assert (train[0].target == 0).sum() > 0 and (train[0].target != IGNORE).all()
    assert train[0].target.shape[-1] + val[0].target.shape[-1] == labels.shape[-1]


def test_no_reviewed_slice_is_an_error():
    cfg = make_tiny_model().config
    image, labels = _stack(3)
    with pytest.raises(ValueError, match="reviewed"):
        build_samples([Annotated(image, labels, [], name="s")], cfg)


def test_3d_unreviewed_planes_are_ignored_not_background():
    cfg = make_tiny_model("t3", spatial_dims=3, output="semantic").config
    image, labels = _stack(12, (32, 32))
    labels = (labels > 0).astype(np.uint8)
    train, val, _ = build_samples([Annotated(image, labels, [4, 5, 6], name="v")], cfg, context=2)
    t = train[0].target
    assert t.shape[0] == 7  # planes 2..8: the reviewed run and 2 planes of context on each side
    assert (t[:2] == IGNORE).all() and (t[-2:] == IGNORE).all()
    assert (t[2:5] != IGNORE).all() and (t[2:5] == 0).any()
    assert val[0].target.shape[0] == 3 and (val[0].target != IGNORE).all()


def test_labels_out_of_range_name_the_fix():
    cfg = make_tiny_model(output="semantic").config
    image, labels = _blobs()
    with pytest.raises(ValueError, match="num_classes"):
        build_samples([Annotated(image, labels, None)], cfg)


# -- preprocessing --------------------------------------------------------------------------------


def test_invert_auto_turns_bright_field_over_only():
    image, labels = _blobs()
    bright_field = image.max() - image  # dark objects on a bright background
    t = InputTransform(bright_field, 0, {"invert": "auto"})
    assert t.invert
    x = t(bright_field)[0]
    assert x[labels > 0].mean() > x[labels == 0].mean()
    assert not InputTransform(image, 0, {"invert": "auto"}).invert


def test_haematoxylin_channel_makes_stained_nuclei_bright():
    from skimage.color import combine_stains, rgb_from_hed

    _, labels = _blobs()
    hed = np.zeros((*labels.shape, 3))
    hed[..., 0] = 0.01 + 0.1 * (labels > 0)
    hed[..., 1] = 0.05
    rgb = (combine_stains(hed, rgb_from_hed) * 255).astype(np.uint8)
    h = stain_channel(rgb)
    assert h[labels > 0].mean() > 2 * h[labels == 0].mean()


def test_engine_and_training_prepare_the_same_input():
    from napari_skipseg.inference.engine import predict, run
    from napari_skipseg.training.data import prepare_image
    from napari_skipseg.training.loop import predict_probabilities

    model = make_tiny_model()
    model.config.normalization = {"kind": "percentile", "low": 1.0, "high": 99.8, "invert": "auto",
                                  "stain": "hematoxylin"}
    image, _ = _blobs((64, 64))
    rgb = np.stack([255 - image.clip(0, 255)] * 3, axis=-1).astype(np.uint8)
    x = prepare_image(rgb, 1, 2, model.config.normalization)
    seg = run(predict(model, rgb, channel_axis=-1, output="probabilities", device="cpu", tile=64, overlap=0))
    np.testing.assert_allclose(seg.probabilities, predict_probabilities(model, x), atol=1e-4)


# -- fine-tuning ----------------------------------------------------------------------------------


def test_head_reinitialised_for_a_new_class_count():
    base = make_tiny_model()
    new = adapt_model(base, num_classes=2, class_names=["background", "membrane"])
    assert new.config.num_classes == 2 and new.config.output == "semantic"
    assert tuple(new.head.weight.shape[:1]) == (2,)
    b, n = base.state_dict(), new.state_dict()
    assert all(np.array_equal(b[k].numpy(), n[k].numpy()) for k in b if not k.startswith("head."))
    assert base.config.num_classes == 3  # the starting model is untouched


def test_finetune_2d_saves_a_version_with_labels(model_home):
    image, labels = _stack(4)
    before_bytes = labels.tobytes()
    data = [Annotated(image, labels, [0, 1, 3], name="cells")]
    events = []
    result = run_finetune("tiny", data, FinetuneOptions(steps=4, val_every=2, patch=[32, 32], batch_size=2),
                          device="cpu", callback=events.append)
    assert labels.tobytes() == before_bytes  # the user's labels are never modified
    assert any("loss" in e.info for e in events) and any("val" in e.info for e in events)
    assert set(result.before) >= {"f1@0.5"} and "f1@0.5" in result.after
    folder = save_version(result, data)
    assert folder.name == "tiny-ft-1" and is_model_dir(folder)
    (name, saved, reviewed), = load_labels(folder)
    assert name == "cells" and reviewed == [0, 1, 3]
    assert saved.tobytes() == before_bytes
    card = json.loads((folder / "config.json").read_text())["card"]
    assert card["parent"].endswith("tiny") and "created" in card and "metrics_before" in card
    assert "accepted" in card and (folder / "history.json").is_file() and (folder / "card.md").is_file()
    model = load_model("tiny-ft-1")
    assert model.config.name == "tiny-ft-1"


def test_versions_are_never_overwritten(model_home):
    image, labels = _stack(2)
    data = [Annotated(image, labels, None, name="a")]
    opts = FinetuneOptions(steps=1, val_every=1, patch=[32, 32], batch_size=1, tune=False)
    first = save_version(run_finetune("tiny", data, opts, device="cpu"), data)
    weights = (first / "model.safetensors").read_bytes()
    second = save_version(run_finetune("tiny", data, opts, device="cpu"), data)
    assert (first.name, second.name) == ("tiny-ft-1", "tiny-ft-2")
    assert (first / "model.safetensors").read_bytes() == weights
    # a version of a version counts on from the same base
    third = save_version(run_finetune("tiny-ft-2", data, opts, device="cpu"), data)
    assert third.name == "tiny-ft-3"
    assert [e.name for e in list_versions("tiny-ft-1")] == ["tiny", "tiny-ft-1", "tiny-ft-2", "tiny-ft-3"]
    with pytest.raises(FileExistsError):
        save_version(run_finetune("tiny", data, opts, device="cpu"), data, first)
    assert reserve_version("tiny").name == "tiny-ft-4"


def test_guard_keeps_the_old_model_when_not_better(model_home):
    image, labels = _stack(3)
    data = [Annotated(image, labels, None, name="a")]
    set_active_model("tiny")
    # no training step and no tuning: the new model is the old one, so it is not better
    result = run_finetune("tiny", data, FinetuneOptions(steps=0, tune=False), device="cpu")
    assert not result.accepted and "not better" in result.message
    folder = save_version(result, data)
    assert active_model() == "tiny"  # not made active
    assert json.loads((folder / "config.json").read_text())["card"]["accepted"] is False


def test_better_model_becomes_active(model_home):
    seen = []

    class Listener:
        def changed(self, name):
            seen.append(name)

    listener = Listener()
    on_active_changed(listener.changed)
    image, labels = _stack(4, (64, 64))
    labels = (labels > 0).astype(np.uint8)
    data = [Annotated(image, labels, None, name="a")]
    opts = FinetuneOptions(steps=40, lr=1e-2, val_every=10, patch=[48, 48], batch_size=4, train="all")
    result = run_finetune(_semantic_tiny(model_home), data, opts, device="cpu")
    assert result.accepted, result.message
    folder = save_version(result, data)
    assert active_model() == folder.name and seen[-1] == folder.name
    assert json.loads((model_home / "active.json").read_text())["model"] == folder.name


def _semantic_tiny(home):
    from napari_skipseg.model.store import save_model

    save_model(make_tiny_model("sem", output="semantic", seed=1), home / "models" / "sem")
    return "sem"


def test_finetune_3d_model(model_home):
    image, labels = _stack(10, (32, 32))
    labels = (labels > 0).astype(np.uint8)
    data = [Annotated(image, labels, [3, 4, 5, 6], name="vol")]
    result = run_finetune("tiny3d", data, FinetuneOptions(steps=3, val_every=3, patch=[8, 32, 32], batch_size=1),
                          device="cpu")
    folder = save_version(result, data)
    model = load_model(folder)
    assert model.config.spatial_dims == 3 and "dice_1" in result.after


def test_new_head_trains_and_loads(model_home):
    image, labels = _stack(2)
    membrane = (labels > 0).astype(np.uint8)
    data = [Annotated(image, membrane, None, name="em")]
    result = run_finetune("tiny", data, FinetuneOptions(steps=3, val_every=3, patch=[32, 32], batch_size=2,
                                                        num_classes=2, class_names=["background", "membrane"]),
                          device="cpu")
    assert result.accepted and result.model.config.num_classes == 2
    folder = save_version(result, data)
    assert load_model(folder).config.class_names == ["background", "membrane"]


def test_new_head_trains_every_weight_and_tunes_threshold_only_on_whole_slices(model_home):
    """A new head: train="auto" trains all weights at the higher rate; the decision threshold
    is tuned on held-out whole slices (3+ reviewed), not on a band of the training images."""
    image, labels = _stack(4)
    membrane = (labels > 0).astype(np.uint8)
    opts = FinetuneOptions(steps=3, val_every=3, patch=[32, 32], batch_size=2, num_classes=2,
                           class_names=["background", "membrane"])
    stack = [Annotated(image, membrane, None, name="stack")]
    whole = run_finetune("tiny", stack, opts, device="cpu")
    assert whole.split["kind"] == "units" and "threshold" in whole.after
    assert whole.options["train"] == "all" and whole.options["lr"] == 3e-3
    assert whole.options["class_balance"] == CLASS_BALANCE_NEW > 0  # rare classes weigh more
    assert f"class weights frequency^-{CLASS_BALANCE_NEW:g}" in save_version(whole, stack).joinpath("card.md").read_text()
    band = run_finetune("tiny", [Annotated(image[0], membrane[0], None, name="one")], opts, device="cpu")
    assert band.split["kind"] == "band" and "threshold" not in band.after
    same_head = run_finetune("tiny", [Annotated(image, labels, None, name="stack")],
                             FinetuneOptions(steps=2, val_every=2, patch=[32, 32], batch_size=2), device="cpu")
    assert same_head.options["train"] == "decoder+last" and same_head.options["lr"] == 3e-4
    assert same_head.options["class_balance"] == 0
    with pytest.raises(ValueError, match="class_balance"):
        FinetuneOptions(class_balance=-1)


def test_stop_keeps_the_best_so_far(model_home):
    image, labels = _stack(3)
    data = [Annotated(image, labels, None, name="a")]
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] > 3

    gen = finetune("tiny", data, FinetuneOptions(steps=1000, val_every=1, patch=[32, 32], batch_size=1),
                   device="cpu", should_stop=should_stop)
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            result = stop.value
            break
    assert result.stopped and result.steps <= 3
    vals = [h["val"]["score"] for h in result.history if "val" in h]
    best = max(range(len(vals)), key=lambda i: vals[i])
    kept = [h for h in result.history if "val" in h][best]["step"]
    if result.best_step == 0:  # training (3 steps) did not beat the starting weights, re-tuned: they are kept
        assert "starting weights" in result.message and result.retuned["score"] >= vals[best] - 1e-9
    else:
        assert result.best_step == kept


def test_public_api_finetune(model_home):
    import napari_skipseg as ss

    image, labels = _stack(3)
    result = ss.finetune("tiny", image, labels, [0, 2], steps=2, val_every=2, patch=[32, 32], batch_size=1,
                         device="cpu")
    assert result.path is not None and result.path.name == "tiny-ft-1"
    assert load_labels(result.path)[0][2] == [0, 2]


@pytest.mark.gpu
def test_gpu_memory_is_released_when_the_job_ends(model_home):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    image, labels = _stack(3)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    result = run_finetune("tiny", [Annotated(image, labels, None)], FinetuneOptions(steps=3, val_every=3,
                          patch=[32, 32], batch_size=2), device="cuda")
    torch.cuda.synchronize()
    assert next(result.model.parameters()).device.type == "cpu"
    assert torch.cuda.memory_allocated() <= before + 1024
    assert torch.cuda.memory_reserved() == 0 or torch.cuda.memory_reserved() < 64 * 2**20


def test_input_handling_is_described_in_words():
    from napari_skipseg.training.finetune import describe_input

    assert describe_input({"kind": "percentile", "low": 1.0, "high": 99.8, "stain": "hematoxylin"}) == (
        "haematoxylin channel (colour deconvolution), percentiles 1-99.8")
    assert describe_input({"invert": "auto"}) == "inverted where the background is bright, percentiles 1-99.8"
    assert describe_input({"kind": "none", "invert": True}) == "inverted, no intensity scaling"


def test_a_new_head_fine_tune_repeats_exactly_with_the_same_seed(model_home):
    """The new head is initialised from the options' seed, not from whatever state torch's
    global random generator is in: the same run twice gives the same weights."""
    import torch

    image, labels = _stack(2)
    data = [Annotated(image, (labels > 0).astype(np.uint8), None, name="em")]

    def weights(seed):
        torch.manual_seed(1000 + seed * 7)  # disturb the global generator differently each time
        torch.rand(5)
        opts = FinetuneOptions(steps=3, val_every=3, patch=[32, 32], batch_size=2, num_classes=2, seed=seed,
                               class_names=["background", "membrane"])
        return run_finetune("tiny", data, opts, device="cpu").model.state_dict()

    a, b, c = weights(0), weights(0), weights(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if k.startswith("head."))
    adapted = [adapt_model(make_tiny_model("tiny"), 2, new_head=True, seed=s).state_dict()["head.weight"]
               for s in (0, 0, 1)]
    assert torch.equal(adapted[0], adapted[1]) and not torch.equal(adapted[0], adapted[2])


# -- what a gain comes from, and versions compared on the same data --------------------------------


def _trained_semantic(home):
    """``sem`` fine-tuned 40 steps on four reviewed slices (one held out): a model that segments."""
    image, labels = _stack(4, (64, 64))
    data = [Annotated(image, (labels > 0).astype(np.uint8), None, name="a")]
    opts = FinetuneOptions(steps=40, lr=1e-2, val_every=10, patch=[48, 48], batch_size=4, train="all")
    return run_finetune(_semantic_tiny(home), data, opts, device="cpu"), data


def test_gain_of_re_tuning_and_of_training_are_told_apart(model_home):
    from napari_skipseg.model.store import render_card, save_model

    trained, data = _trained_semantic(model_home)
    before, retuned, after = (trained.before["score"], trained.retuned["score"], trained.after["score"])
    assert trained.accepted and after > before
    # training did the work here: re-tuning the untrained weights' threshold gains less
    assert after - retuned > 0.05, trained.message
    assert f"re-tuning the post-processing {retuned - before:+.3f} (starting weights: {retuned:.3f})" in trained.message
    assert f"training {after - retuned:+.3f}" in trained.message
    # training's part split again: the batch-norm statistics it gathered, on the starting weights, and the weights
    stats = trained.restats["score"]
    assert f"(batch-norm statistics {stats - retuned:+.3f}, weights {after - stats:+.3f})" in trained.message
    card = json.loads((save_version(trained, data) / "config.json").read_text())["card"]
    assert card["gain"]["of which batch-norm statistics"] + card["gain"]["of which weights"] == pytest.approx(
        card["gain"]["training"], abs=2e-4)
    # the same trained weights with their decision threshold pushed off (logit - 1): re-tuning
    # alone wins it back, and training (none) adds nothing, which the result says
    shifted = trained.model
    with __import__("torch").no_grad():
        shifted.head.bias[1] -= 1.0
    shifted.config.name = "shifted"
    save_model(shifted, model_home / "models" / "shifted")
    again = run_finetune("shifted", data, FinetuneOptions(steps=0, preprocess="keep"), device="cpu")
    assert again.retuned["score"] > again.before["score"] + 0.05
    assert again.after == again.retuned and again.best_step == 0 and again.restats == {}  # nothing trained
    assert "training +0.000" in again.message and "starting weights" in again.message
    folder = save_version(again, data)
    card = json.loads((folder / "config.json").read_text())["card"]
    assert card["gain"]["training"] == 0.0
    assert card["gain"]["re-tuning"] == pytest.approx(again.retuned["score"] - again.before["score"], abs=1e-4)
    assert card["metrics_retuned"]["mean_dice"] == pytest.approx(again.retuned["mean_dice"], abs=1e-4)
    text = render_card(load_model(folder.name).config)
    assert "re-tuning +" in text and "training +0.0000" in text


def test_a_fine_tuned_card_claims_nothing_of_its_parent(model_home):
    from napari_skipseg.model.store import render_card, save_model

    parent = make_tiny_model("bundled")
    parent.config.card.update({
        "postprocess_tuning": "tuned on 81 images of the validation split",
        "flips_effect": "validation F1@0.5 0.90 with them, 0.89 without",
        "hardware": "cpu (1 threads, float32), x86_64", "speed": "2.3 s per 512 x 512 slice",
        "metrics": {"f1@0.5": 0.9007}, "data": "nuclei2d: 541 images (460 train, 81 validation)",
    })
    save_model(parent, model_home / "models" / "bundled")
    image, labels = _stack(2)
    data = [Annotated(image, labels, None, name="mine")]
    result = run_finetune("bundled", data, FinetuneOptions(steps=2, val_every=1, patch=[32, 32], batch_size=1),
                          device="cpu")
    card = json.loads((save_version(result, data) / "config.json").read_text())["card"]
    assert "81" not in card["postprocess_tuning"]
    assert card["postprocess_tuning"].startswith("watershed thresholds re-tuned on the held-out part of the corrected")
    assert card["flips_effect"] == "measured on bundled: validation F1@0.5 0.90 with them, 0.89 without"
    assert card["speed"] == "measured on bundled: 2.3 s per 512 x 512 slice"
    assert card["hardware"].startswith("fine-tuned on cpu")
    assert "81" not in card["data"] and "mine" in card["data"]
    assert card["metrics_on"].startswith("the held-out part of the corrected labels (")
    assert "f1@0.5" in card["metrics"] and card["metrics"]["f1@0.5"] == round(result.after["f1@0.5"], 4)
    text = render_card(load_model("bundled-ft-1").config)
    assert "## Metrics on the held-out part of the corrected labels" in text and "Validation metrics" not in text
    # a version of that version: still says whose measurement it is
    result = run_finetune("bundled-ft-1", data, FinetuneOptions(steps=1, val_every=1, patch=[32, 32], batch_size=1,
                                                               tune=False), device="cpu")
    card = json.loads((save_version(result, data) / "config.json").read_text())["card"]
    assert card["flips_effect"] == "measured on bundled: validation F1@0.5 0.90 with them, 0.89 without"
    # not re-tuned: the thresholds are the parent's, and the card says whose
    assert card["postprocess_tuning"].startswith("not re-tuned; as in bundled-ft-1: watershed thresholds re-tuned")


def test_every_version_is_scored_on_the_same_held_out_data(model_home):
    from napari_skipseg.inference.engine import run
    from napari_skipseg.training.finetune import score_versions, version_scores

    trained, data = _trained_semantic(model_home)
    save_version(trained, data)  # sem-ft-1: segments; sem does not
    # a version with other classes (a new head) cannot be scored on these labels
    image, labels = _stack(3, (64, 64))
    classes = np.clip(labels, 0, 2).astype(np.uint8)
    save_version(run_finetune("sem", [Annotated(image, classes, None, name="c")],
                              FinetuneOptions(steps=1, patch=[32, 32], batch_size=1, num_classes=3, new_head=True),
                              device="cpu"), [Annotated(image, classes, None, name="c")])  # sem-ft-2
    # the newest comparison is sem-ft-1's (a new head compares with nothing): sem and sem-ft-1 on a
    on, table = version_scores(list_versions("sem"))
    assert on == "a: held out 1 of 4 reviewed slices: a[2]"
    assert table["sem"][0] == "mean_dice" and table["sem-ft-1"] == ("mean_dice", round(trained.after["mean_dice"], 4))
    assert table["sem-ft-2"] is None
    # no comparison at all: each model's own card metrics, and no "on" (they are not comparable)
    assert version_scores(list_versions("sem")[:1]) == ("", {"sem": None})
    # a fine-tune of sem-ft-1 on other images scores every version on its held-out data
    other = [Annotated(image, (labels > 0).astype(np.uint8), [0, 1, 2], name="other")]
    result = run_finetune("sem-ft-1", other, FinetuneOptions(steps=2, val_every=1, patch=[32, 32], batch_size=1),
                          device="cpu")
    folder = save_version(result, other)
    compared = json.loads((folder / "config.json").read_text())["card"]["compared"]
    assert compared["on"].startswith("other: held out 1 of 3 reviewed slices")
    assert set(compared["scores"]) == {"sem", "sem-ft-1", "sem-ft-2", "sem-ft-3"}
    assert compared["scores"]["sem-ft-2"] == {"skipped": "predicts other classes"}
    direct = run(score_versions(["sem"], other))
    assert compared["scores"]["sem"] == direct["scores"]["sem"] and direct["on"] == compared["on"]
    assert compared["scores"]["sem-ft-1"]["mean_dice"] == round(result.before["mean_dice"], 4)
    assert compared["scores"]["sem-ft-3"]["mean_dice"] == round(result.after["mean_dice"], 4)
    assert compared["scores"]["sem-ft-1"]["mean_dice"] > compared["scores"]["sem"]["mean_dice"] + 0.05
    on, table = version_scores(list_versions("sem"))
    assert on == compared["on"]
    assert table == {"sem": ("mean_dice", compared["scores"]["sem"]["mean_dice"]),
                     "sem-ft-1": ("mean_dice", compared["scores"]["sem-ft-1"]["mean_dice"]),
                     "sem-ft-2": None, "sem-ft-3": ("mean_dice", compared["scores"]["sem-ft-3"]["mean_dice"])}


def test_weights_that_learnt_nothing_are_not_kept(model_home):
    """Trained at a learning rate of 1e-9 the weights stay put and only the batch-norm
    statistics move: the version keeps the starting weights (with those statistics when they
    help), and says so."""
    import torch

    from napari_skipseg.training.finetune import NORM_BUFFERS

    image, labels = _stack(2, (64, 64))
    data = [Annotated(image, (labels > 0).astype(np.uint8), None, name="a")]  # a band held out: no threshold
    start = load_model(_semantic_tiny(model_home))
    result = run_finetune("sem", data, FinetuneOptions(steps=10, lr=1e-9, val_every=5, patch=[48, 48],
                                                       batch_size=4, train="all"), device="cpu")
    kept, trained_stats = result.model.state_dict(), result.restats
    for key, value in start.state_dict().items():
        if not key.endswith(NORM_BUFFERS):
            assert torch.equal(kept[key], value), key
    assert trained_stats, "10 steps were trained: the statistics' part is measured"
    if trained_stats["score"] > result.retuned["score"]:
        assert "the starting weights with the new batch-norm statistics are kept" in result.message
        assert result.after == trained_stats
    else:
        assert "the starting weights are kept" in result.message and result.best_step == 0
        assert all(torch.equal(kept[k], v) for k, v in start.state_dict().items())
    assert "weights +0.000" in result.message
