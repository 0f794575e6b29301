"""Training data, loss, the training loop and training from a folder with a recipe."""

import json

import numpy as np
import pytest
import tifffile
import torch

from napari_skipseg._sample_data import synthetic_nuclei
from napari_skipseg.inference.engine import Progress, run
from napari_skipseg.model.config import ModelConfig
from napari_skipseg.model.store import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, load_model
from napari_skipseg.model.unet import SkipUNet
from napari_skipseg.training.data import (
    IGNORE,
    PatchSampler,
    Sample,
    instance_target,
    load_pairs,
    make_target,
    prepare_image,
    split_names,
)
from napari_skipseg.training.loop import (
    TrainConfig,
    WeightAverage,
    class_weights,
    loss_fn,
    predict_probabilities,
    score,
    score_seeds,
    train,
    training_extras,
)
from napari_skipseg.training.recipe import load_recipe, train_from_folder

# --- targets ------------------------------------------------------------------------------------


def test_instance_target_marks_boundaries():
    labels = np.zeros((8, 10), np.uint16)
    labels[1:7, 1:5] = 1
    labels[1:7, 5:9] = 2  # touches object 1 along a vertical line
    target = instance_target(labels)
    assert target.dtype == np.int64
    expected = np.zeros_like(target)
    for lab in (1, 2):
        obj = labels == lab
        expected[obj] = 2
        inner = np.zeros_like(obj)
        inner[1:-1, 1:-1] = obj[:-2, 1:-1] & obj[2:, 1:-1] & obj[1:-1, :-2] & obj[1:-1, 2:] & obj[1:-1, 1:-1]
        expected[inner] = 1
    np.testing.assert_array_equal(target, expected)
    # the contact line is boundary on both sides: the two objects stay apart
    assert (target[1:7, 4] == 2).all() and (target[1:7, 5] == 2).all()
    assert (target[3, 2:4] == 1).all() and (target[labels == 0] == 0).all()


def test_make_target_semantic():
    mask = np.array([[0, 1], [2, 1]])
    np.testing.assert_array_equal(make_target(mask, "semantic", 3), mask)
    with pytest.raises(ValueError, match="class 2 but the model has 2 classes"):
        make_target(mask, "semantic", 2)


def test_prepare_image():
    rgb = np.zeros((10, 12, 3), np.uint8)
    rgb[..., 0] = np.arange(12) * 20
    out = prepare_image(rgb, 1, 2, {"low": 0.0, "high": 100.0})
    assert out.shape == (1, 10, 12) and out.dtype == np.float32
    assert out.min() == pytest.approx(0) and out.max() == pytest.approx(1)
    with pytest.raises(ValueError, match="expected a 2D image"):
        prepare_image(np.zeros((3, 10, 12)), 1, 2, {})


# --- split --------------------------------------------------------------------------------------


def test_split_names_deterministic_and_disjoint():
    names = [f"img_{i:03d}.tif" for i in range(200)]
    train_a, val_a = split_names(names, 0.15)
    train_b, val_b = split_names(list(reversed(names)), 0.15)
    assert (train_a, val_a) == (train_b, val_b)  # order of the input does not matter
    assert not set(train_a) & set(val_a)
    assert sorted(train_a + val_a) == sorted(names)
    assert 0.07 < len(val_a) / len(names) < 0.25
    # adding files never moves an existing file between train and validation
    train_c, val_c = split_names(names + ["new_1.tif", "new_2.tif"], 0.15)
    assert set(val_a) <= set(val_c) and set(train_a) <= set(train_c)
    # another seed gives another split
    assert split_names(names, 0.15, seed="other")[1] != val_a


def test_split_names_small_sets():
    train_names, val = split_names(["a.tif", "b.tif"], 0.0)
    assert len(val) == 1 and len(train_names) == 1  # validation is never empty with 2+ images
    assert split_names(["only.tif"], 0.5) in ((["only.tif"], []), ([], ["only.tif"]))


# --- patches ------------------------------------------------------------------------------------


def _ramp_sample(shape, name="ramp"):
    size = int(np.prod(shape))
    target = np.arange(size, dtype=np.int64).reshape(shape) % 7  # values 0..6
    image = (np.arange(size, dtype=np.float32) / size).reshape(shape)[None]
    return Sample(name, image, target)


def test_patch_sampler_shapes():
    samples = [_ramp_sample((40, 50)), _ramp_sample((20, 64))]
    sampler = PatchSampler(samples, (16, 24), np.random.default_rng(0))
    x, y = sampler.batch(5)
    assert x.shape == (5, 1, 16, 24) and x.dtype == np.float32
    assert y.shape == (5, 16, 24) and y.dtype == np.int64
    assert (y != IGNORE).all()  # large enough images: no padding


def test_patch_sampler_crops_a_window():
    sample = _ramp_sample((30, 40))
    sampler = PatchSampler([sample], (8, 12), np.random.default_rng(1), augment=False)
    for _ in range(20):
        img, tgt = sampler.draw()
        # the image encodes position: find the window and check image and target agree with it
        flat = int(round(img[0, 0, 0] * sample.image[0].size))
        y0, x0 = divmod(flat, 40)
        np.testing.assert_array_equal(img, sample.image[:, y0 : y0 + 8, x0 : x0 + 12])
        np.testing.assert_array_equal(tgt, sample.target[y0 : y0 + 8, x0 : x0 + 12])


@pytest.mark.parametrize("augment", [False, True])
def test_patch_sampler_pads_small_images(augment):
    sample = _ramp_sample((10, 13))
    sampler = PatchSampler([sample], (16, 16), np.random.default_rng(2), augment=augment)
    for _ in range(10):
        img, tgt = sampler.draw()
        assert img.shape == (1, 16, 16) and tgt.shape == (16, 16)
        assert (tgt == IGNORE).sum() == 16 * 16 - 10 * 13
        assert sorted(tgt[tgt != IGNORE].ravel()) == sorted(sample.target.ravel())
        if not augment:
            np.testing.assert_array_equal(img[:, :10, :13], sample.image)
            assert (img[:, 10:] == 0).all() and (img[:, :, 13:] == 0).all()
            assert (tgt[10:] == IGNORE).all() and (tgt[:, 13:] == IGNORE).all()


def test_patch_sampler_3d_and_padding():
    sample = _ramp_sample((4, 20, 20))
    sampler = PatchSampler([sample], (8, 16, 16), np.random.default_rng(3))
    x, y = sampler.batch(2)
    assert x.shape == (2, 1, 8, 16, 16) and y.shape == (2, 8, 16, 16)
    assert ((y == IGNORE).sum(axis=(1, 2, 3)) == 4 * 16 * 16).all()


def test_augmentation_moves_image_and_target_together():
    """Flips and turns apply to both: the image keeps following the target."""
    shape = (24, 24)
    target = np.zeros(shape, np.int64)
    target[3:9, 2:20] = 1  # an off-centre bar
    image = target[None].astype(np.float32)
    sampler = PatchSampler([Sample("bar", image, target)], shape, np.random.default_rng(4), augment=True)
    seen = set()
    for _ in range(30):
        img, tgt = sampler.draw()
        seen.add(tgt.tobytes())
        inside, outside = img[0][tgt == 1], img[0][tgt == 0]
        assert inside.mean() > outside.mean() + 0.5
    assert len(seen) > 2  # the augmentation really turns and flips


def test_elastic_deformation_moves_image_and_target_together():
    """Deformed patches: the same smooth warp for image and target, labels stay labels
    (IGNORE included), the shapes change a little, never a lot."""
    rng = np.random.default_rng(5)
    shape = (96, 96)
    target = np.zeros(shape, np.int64)
    for y0, x0 in rng.integers(8, 80, (12, 2)):
        target[y0 : y0 + 10, x0 : x0 + 10] = 1
    target[:, :6] = IGNORE
    image = (target == 1)[None].astype(np.float32)
    sampler = PatchSampler([Sample("blobs", image, target)], shape, np.random.default_rng(6), augment=False,
                           elastic=1.0)
    changed = 0
    for _ in range(10):
        img, tgt = sampler._deform(image.copy(), target.copy())
        assert img.shape == image.shape and tgt.shape == target.shape and img.dtype == np.float32
        assert set(np.unique(tgt)) <= {IGNORE, 0, 1}
        assert (img[0][tgt == 1] > 0.5).mean() > 0.9  # the image follows the target
        assert (img[0][tgt == 0] < 0.5).mean() > 0.9
        moved = (tgt != target).mean()
        assert moved < 0.15  # a few pixels of displacement, not a scramble
        changed += moved > 0
    assert changed >= 8


def test_elastic_3d_anisotropic_keeps_planes():
    """With thick planes (anisotropic), the warp stays within each plane."""
    planes = np.arange(8, dtype=np.float32)[:, None, None] * np.ones((8, 32, 32), np.float32)
    target = np.broadcast_to((np.arange(8) % 2)[:, None, None], (8, 32, 32)).astype(np.int64)
    sampler = PatchSampler([Sample("p", planes[None], target)], (8, 32, 32), np.random.default_rng(7),
                           elastic=1.0, anisotropic=True)
    img, tgt = sampler._deform(planes[None].copy(), target.copy())
    np.testing.assert_allclose(img[0], planes, atol=1e-5)
    assert (tgt == target).all()


def test_elastic_share_is_checked():
    with pytest.raises(ValueError, match="elastic"):
        PatchSampler([_ramp_sample((16, 16))], (8, 8), np.random.default_rng(0), elastic=2.0)


def test_no_samples():
    with pytest.raises(ValueError, match="no training samples"):
        PatchSampler([], (8, 8), np.random.default_rng(0))


# --- loss ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dice_weight", [0.0, 1.0])
def test_loss_ignores_ignored_pixels(dice_weight):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8), generator=g)
    target[:, :, 5:] = IGNORE
    loss = loss_fn(logits, target, dice_weight)
    assert torch.isfinite(loss)
    loss.backward()
    assert logits.grad[..., 5:].abs().max() == 0  # no gradient from ignored pixels
    assert logits.grad[..., :5].abs().max() > 0
    # what the network says at ignored pixels does not change the loss
    changed = logits.detach().clone()
    changed[..., 5:] = torch.randn(2, 3, 8, 3, generator=g) * 10
    torch.testing.assert_close(loss_fn(changed, target, dice_weight), loss.detach())
    # and ignoring is not the same as calling them background
    as_background = target.clone()
    as_background[as_background == IGNORE] = 0
    assert not torch.isclose(loss_fn(logits.detach(), as_background, dice_weight), loss.detach())


def test_loss_is_lower_for_right_answers():
    target = torch.randint(0, 2, (1, 6, 6), generator=torch.Generator().manual_seed(1))
    good = torch.nn.functional.one_hot(target, 2).movedim(-1, 1).float() * 8 - 4
    assert loss_fn(good, target) < loss_fn(-good, target)
    assert loss_fn(good, target) < 0.05


def test_class_weights_balance_rare_classes():
    target = np.zeros((10, 10), np.int64)
    target[:2] = 1  # 20 % class 1, 80 % class 0
    target[9, :5] = IGNORE  # not counted
    samples = [Sample("a", np.zeros((1, 10, 10), np.float32), target)]
    assert class_weights(samples, 2, 0.0) is None
    freq = np.array([75, 20]) / 95
    for balance in (0.5, 1.0):
        w = class_weights(samples, 2, balance)
        np.testing.assert_allclose(w[1] / w[0], (freq[0] / freq[1]) ** balance, rtol=1e-6)
        np.testing.assert_allclose((freq * w).sum(), 1.0, rtol=1e-6)  # the loss keeps its size
    w = class_weights(samples, 3, 1.0)  # class 2 absent: the largest weight of the others
    assert w[2] == w[1] > w[0]
    # weighted cross-entropy: missing the rare class costs more than missing the common one
    t = torch.from_numpy(target[None])
    wt = torch.from_numpy(class_weights(samples, 2, 1.0))
    all_zero = torch.zeros(1, 2, 10, 10)
    all_zero[:, 0] = 4
    all_one = all_zero.flip(1)
    plain = loss_fn(all_zero, t, 0.0), loss_fn(all_one, t, 0.0)
    weighted = loss_fn(all_zero, t, 0.0, wt), loss_fn(all_one, t, 0.0, wt)
    assert plain[0] < plain[1] and weighted[0] > plain[0]
    assert weighted[0] / weighted[1] > plain[0] / plain[1]


# --- the loop -----------------------------------------------------------------------------------


def _nuclei_samples(n, output="semantic", shape=(64, 64)):
    samples = []
    for seed in range(n):
        image, labels = synthetic_nuclei(shape, radius=6, seed=seed)
        mask = labels if output == "instances" else (labels > 0).astype(np.uint8)
        target = make_target(mask, output, 3 if output == "instances" else 2)
        samples.append(
            Sample(f"s{seed}", prepare_image(image, 1, 2, {}), target, labels if output == "instances" else None)
        )
    return samples


def _tiny(output="semantic"):
    torch.manual_seed(0)
    return SkipUNet(
        ModelConfig(name="tiny", base_channels=4, depth=2, output=output,
                    num_classes=3 if output == "instances" else 2)
    )


def test_training_reduces_loss_and_keeps_best_weights():
    samples = _nuclei_samples(3)
    model = _tiny()
    tcfg = TrainConfig(patch=[32, 32], batch_size=4, steps=12, lr=3e-2, warmup=2, val_every=4)
    events = []
    result = run(train(model, samples[:2], samples[2:], tcfg), callback=events.append)
    assert all(isinstance(e, Progress) for e in events)
    assert [e.done for e in events] == list(range(1, 13))
    assert events[-1].total == 12
    losses = [h["loss"] for h in result.history if "loss" in h]
    assert len(losses) == 12
    assert losses[-1] < 0.8 * losses[0]  # running mean of all steps well below the first
    vals = [(h["step"], h["val"]["score"]) for h in result.history if "val" in h]
    assert [s for s, _ in vals] == [4, 8, 12]
    best_step, best_score = max(vals, key=lambda v: v[1])
    assert result.best_step == best_step
    assert result.best_score == pytest.approx(best_score)
    assert result.metrics["score"] == pytest.approx(best_score)
    assert {"mean_dice", "pixel_error", "dice_1"} <= set(result.metrics)
    assert result.model is model and not model.training
    # the weights handed back are the ones that scored best
    again = score(model.config, [predict_probabilities(model, s.image) for s in samples[2:]], samples[2:])
    assert again["score"] == pytest.approx(best_score, abs=1e-6)


def test_training_returns_best_not_last_weights():
    """Validation images whose labels are inverted get worse as the model learns the
    training images, so the best weights are early ones, and those come back."""
    samples = _nuclei_samples(3)
    inverted = [Sample(s.name, s.image, 1 - s.target) for s in samples[2:]]
    model = _tiny()
    tcfg = TrainConfig(patch=[32, 32], batch_size=4, steps=12, lr=3e-2, warmup=2, val_every=2)
    result = run(train(model, samples[:2], inverted, tcfg))
    vals = {h["step"]: h["val"]["score"] for h in result.history if "val" in h}
    assert result.best_step < 12
    assert vals[12] < result.best_score == max(vals.values())
    again = score(model.config, [predict_probabilities(model, s.image) for s in inverted], inverted)
    assert again["score"] == pytest.approx(result.best_score, abs=1e-6)


def test_weight_average_follows_the_formula():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(model, 0.9)
    w0 = model[0].weight.detach().clone()
    expect = w0.clone()
    for step in range(5):
        with torch.no_grad():
            model[0].weight.add_(1.0)
        avg.update(model, step)
        d = min(0.9, (1 + step) / (10 + step))
        expect = d * expect + (1 - d) * model[0].weight.detach()
    state = avg.state(model)
    torch.testing.assert_close(state["0.weight"], expect)
    assert state["1.num_batches_tracked"].dtype == torch.int64  # integer buffers are taken as they are
    assert not torch.equal(state["0.weight"], model[0].weight)  # the live weights are not touched
    with pytest.raises(ValueError, match="ema"):
        WeightAverage(model, 1.0)


def test_training_with_a_weight_average_keeps_the_averaged_weights():
    samples = _nuclei_samples(3)
    model = _tiny()
    tcfg = TrainConfig(patch=[32, 32], batch_size=4, steps=8, lr=3e-2, warmup=2, val_every=4, ema=0.9)
    result = run(train(model, samples[:2], samples[2:], tcfg))
    # the validation scores are those of the averaged weights, and those come back
    again = score(model.config, [predict_probabilities(model, s.image) for s in samples[2:]], samples[2:])
    assert again["score"] == pytest.approx(result.best_score, abs=1e-6)
    # one check at the last step: the same seeded run without the average ends on the live
    # weights of that trajectory (the average does not change training), so the kept weights
    # differ from them only because they are the average
    once = {"patch": [32, 32], "batch_size": 4, "steps": 8, "lr": 3e-2, "warmup": 2, "val_every": 8}
    averaged, plain = _tiny(), _tiny()
    a = run(train(averaged, samples[:2], samples[2:], TrainConfig(**once, ema=0.9)))
    b = run(train(plain, samples[:2], samples[2:], TrainConfig(**once)))
    assert a.best_step == b.best_step == 8
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]  # same trajectory
    assert any(not torch.equal(x, y) for x, y in zip(averaged.state_dict().values(), plain.state_dict().values(),
                                                     strict=True))


def test_training_instance_model_and_stop():
    samples = _nuclei_samples(2, "instances", shape=(48, 48))
    model = _tiny("instances")
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 3

    tcfg = TrainConfig(patch=[32, 32], batch_size=2, steps=50, lr=1e-2, warmup=1, val_every=100)
    result = run(train(model, samples[:1], samples[1:], tcfg, should_stop=stop))
    assert len([h for h in result.history if "loss" in h]) == 3  # stopped after 3 steps
    assert "val" in result.history[-1]  # scored once at the end anyway
    assert {"f1@0.5", "mean_matched_iou"} <= set(result.metrics)
    assert 0.0 <= result.best_score <= 1.0


def test_validation_of_an_instance_model_searches_the_seed_threshold():
    # two touching squares whose interior probability dips to 0.8 where they meet: a seed
    # threshold of 0.5 makes one seed (one object, F1 0); 0.9 makes two (F1 1)
    truth = np.zeros((20, 40), np.int32)
    truth[4:16, 4:20], truth[4:16, 20:36] = 1, 2
    probs = np.zeros((3, 20, 40), np.float32)
    probs[0] = 1.0
    inside = truth > 0
    probs[0][inside], probs[1][inside] = 0.0, 0.95
    probs[1][4:16, 19:21], probs[2][4:16, 19:21] = 0.8, 0.2
    sample = Sample("touching", np.zeros((1, 20, 40), np.float32), instance_target(truth), truth)
    cfg = ModelConfig(name="t", output="instances", num_classes=3,
                      postprocess={"seed": 0.5, "mask": 0.5, "min_size": 1, "min_seed_size": 1})
    assert score(cfg, [probs], [sample])["score"] == 0.0
    best = score_seeds(cfg, [probs], [sample], [0.7, 0.9])
    assert best["score"] == 1.0 and best["seed"] == 0.9
    assert score_seeds(cfg, [probs], [sample], [])["score"] == 0.0  # the config's threshold only
    assert TrainConfig().val_seeds  # on by default


def test_train_config_rejects_unknown_options():
    with pytest.raises(ValueError, match="unknown training options: stepz"):
        TrainConfig.from_dict({"stepz": 3})


# --- from a folder, with a recipe -----------------------------------------------------------------


@pytest.fixture
def data_folder(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(4):
        image, labels = synthetic_nuclei((48, 48), radius=6, seed=10 + i)
        tifffile.imwrite(root / "images" / f"n{i}.tif", image)
        tifffile.imwrite(root / "masks" / f"n{i}.tif", labels)
    return root


def _recipe(tmp_path, output="instances"):
    recipe = {
        "model": {
            "name": "tinynuc", "base_channels": 4, "depth": 2, "block": "plain",
            "output": output, "num_classes": 3 if output == "instances" else 2,
            "card": {"task": "test nuclei"},
        },
        "training": {"patch": [32, 32], "batch_size": 2, "steps": 100, "lr": 1e-2,
                     "warmup": 1, "val_every": 5},
        "val_fraction": 0.5,
    }
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(recipe))
    return path


def test_train_from_folder(tmp_path, data_folder):
    recipe = _recipe(tmp_path)
    out = tmp_path / "out" / "tinynuc"
    events = []
    folder = run(train_from_folder(data_folder, recipe, out, steps=5, device="cpu"), callback=events.append)
    assert folder == out
    for name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, "validation_split.json", "history.json"):
        assert (out / name).is_file(), name
    split = json.loads((out / "validation_split.json").read_text())
    assert sorted(split["train"] + split["validation"]) == [f"n{i}.tif" for i in range(4)]
    assert split["validation"] and not set(split["train"]) & set(split["validation"])
    cfg = ModelConfig.from_json(out / CONFIG_FILE)
    metrics = cfg.card["metrics"]
    assert {"f1@0.5", "mean_matched_iou"} <= set(metrics)
    assert "score" not in metrics
    assert "4 images (" in cfg.card["data"]
    card = (out / CARD_FILE).read_text()
    assert "## Validation metrics" in card and "f1@0.5" in card and "test nuclei" in card
    history = json.loads((out / "history.json").read_text())
    assert max(h["step"] for h in history) == 5
    assert isinstance(load_model(out), SkipUNet)
    assert events[0].message.startswith("loading 4 images")


def test_train_from_folder_semantic(tmp_path, data_folder):
    for p in (data_folder / "masks").iterdir():
        tifffile.imwrite(p, (tifffile.imread(p) > 0).astype(np.uint8))
    out = run(train_from_folder(data_folder, _recipe(tmp_path, "semantic"), tmp_path / "sem", steps=3, device="cpu"))
    metrics = ModelConfig.from_json(out / CONFIG_FILE).card["metrics"]
    assert {"mean_dice", "pixel_error", "dice_1"} <= set(metrics)


def test_load_pairs_errors(tmp_path, data_folder):
    cfg = ModelConfig(base_channels=4, depth=2, output="instances", num_classes=3)
    with pytest.raises(FileNotFoundError, match="needs 'images' and 'masks'"):
        load_pairs(tmp_path / "nowhere", cfg)
    (data_folder / "masks" / "n1.tif").unlink()
    with pytest.raises(FileNotFoundError, match="no mask for image n1.tif"):
        load_pairs(data_folder, cfg)
    tifffile.imwrite(data_folder / "masks" / "n1.tif", np.zeros((10, 10), np.uint16))
    with pytest.raises(ValueError, match="n1.tif: image .* and mask .* differ in shape"):
        load_pairs(data_folder, cfg)


def test_load_recipe_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match="bad.json: the recipe is not valid JSON"):
        load_recipe(bad)
    bad.write_text(json.dumps({"model": {"block": "dense"}}))
    with pytest.raises(ValueError, match="block"):
        load_recipe(bad)


def test_train_from_folder_continues_from_init(tmp_path, data_folder):
    """``init``: training starts from a model's weights (lr 0 keeps them), and says so."""
    import torch

    recipe = _recipe(tmp_path)
    first = run(train_from_folder(data_folder, recipe, tmp_path / "a", steps=3, device="cpu"))
    again = run(train_from_folder(data_folder, recipe, tmp_path / "b", steps=2, device="cpu", init=first, lr=0.0))
    a, b = load_model(first), load_model(again)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        if "running" not in name and "num_batches" not in name:  # batch-norm statistics do move
            assert torch.equal(x, y), name
    assert f"continued from {first}" in ModelConfig.from_json(again / CONFIG_FILE).card["training"]
    other = json.loads(recipe.read_text())
    other["model"]["base_channels"] = 8
    recipe.write_text(json.dumps(other))
    with pytest.raises(ValueError, match="its network differs from the recipe's"):
        run(train_from_folder(data_folder, recipe, tmp_path / "c", steps=1, device="cpu", init=first))


def test_card_names_thetraining_extras():
    assert training_extras(TrainConfig()) == ""
    words = training_extras(TrainConfig(ema=0.98, elastic=0.3, class_balance=1.0))
    assert words == ("class weights frequency^-1, elastic deformation of 30% of patches, "
                     "weight average (decay 0.98) validated and kept, ")
    assert training_extras(TrainConfig(elastic=0.3, augment=False)) == ""  # no augmentation: no deformation
