"""Scale augmentation (random zoom of patches) in PatchSampler, and loading several folders at
one physical voxel size with a split by group."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from napari_skipseg.training.data import (
    IGNORE,
    PatchSampler,
    Sample,
    check_zoom,
    file_spacing,
    instance_target,
    load_pairs,
    resample_patch,
    split_groups,
    split_names,
    zoom_crop,
)


def _ball(shape, centre, radius) -> np.ndarray:
    grid = np.indices(shape)
    d2 = sum((g - c) ** 2 for g, c in zip(grid, centre, strict=True))
    return d2 <= radius**2


def _blobs_3d(seed: int = 5) -> list[Sample]:
    r = np.random.default_rng(seed)
    img = r.random((1, 20, 40, 40)).astype(np.float32)
    lab = np.zeros((20, 40, 40), np.int64)
    lab[5:12, 10:25, 12:30] = 1
    lab[8:15, 20:30, 5:15] = 2
    return [Sample("a", img, instance_target(lab), lab)]


def _extent(mask: np.ndarray, axis: int) -> int:
    other = tuple(a for a in range(mask.ndim) if a != axis)
    idx = np.flatnonzero(mask.any(axis=other))
    return int(idx[-1] - idx[0] + 1) if idx.size else 0


@pytest.mark.parametrize("isotropic", [False, True])
def test_zoom_keeps_patch_shape_dtype_and_label_set(isotropic):
    samples = _blobs_3d()
    samples[0].target[0, :5, :5] = IGNORE  # unlabelled pixels stay unlabelled, never a class
    allowed = set(np.unique(samples[0].target).tolist()) | {IGNORE}
    sampler = PatchSampler(samples, (16, 32, 32), np.random.default_rng(0), augment=True, foreground_bias=0.5,
                           zoom=(0.5, 2.0), zoom_isotropic=isotropic)
    for _ in range(12):
        x, y = sampler.draw()
        assert x.shape == (1, 16, 32, 32) and x.dtype == np.float32
        assert y.shape == (16, 32, 32) and y.dtype == samples[0].target.dtype
        assert set(np.unique(y).tolist()) <= allowed


def test_zoom_2d_patches():
    lab = np.zeros((60, 50), np.int64)
    lab[10:30, 10:30] = 1
    img = np.random.default_rng(1).random((1, 60, 50)).astype(np.float32)
    sampler = PatchSampler([Sample("b", img, lab)], (24, 24), np.random.default_rng(2), zoom=(0.5, 2.0))
    x, y = sampler.batch(5)
    assert x.shape == (5, 1, 24, 24) and y.shape == (5, 24, 24)
    assert set(np.unique(y).tolist()) <= {0, 1, IGNORE}


def test_zoom_factors_log_uniform_per_axis_or_isotropic():
    samples = _blobs_3d()
    per_axis = PatchSampler(samples, (16, 32, 32), np.random.default_rng(0), zoom=(0.5, 2.0))
    iso = PatchSampler(samples, (16, 32, 32), np.random.default_rng(0), zoom=(0.5, 2.0), zoom_isotropic=True)
    draws = np.array([per_axis._draw_zoom() for _ in range(2000)])
    assert draws.min() >= 0.5 and draws.max() <= 2.0
    assert np.ptp(draws, axis=1).mean() > 0.3  # the axes get different factors
    logs = np.log2(draws[:, 1])  # log-uniform: as many below 1 as above, uniform in log
    assert abs(np.mean(logs)) < 0.05 and abs(np.mean(np.abs(logs) < 0.5) - 0.5) < 0.05
    same = np.array([iso._draw_zoom() for _ in range(50)])
    assert np.allclose(same, same[:, :1])


def test_zoom_of_two_doubles_a_ball():
    shape, radius = (40, 40, 40), 4.5  # a ball 9 voxels across
    ball = _ball(shape, (20, 20, 20), radius)
    labels = ball.astype(np.int64)
    img = (ball.astype(np.float32) * 0.8 + 0.1)[None]
    sampler = PatchSampler([Sample("ball", img, instance_target(labels), labels)], shape,
                           np.random.default_rng(4), augment=True, foreground_bias=1.0, zoom=(2.0, 2.0))
    for _ in range(4):
        x, y = sampler.draw()
        fg = y > 0
        for axis in range(3):
            assert abs(_extent(fg, axis) - 18) <= 2, (axis, _extent(fg, axis))
        # the image is resampled the same way: its bright ball spans the same voxels
        bright = x[0] > (np.median(x[0][~fg]) + np.median(x[0][fg])) / 2
        assert (bright & fg).sum() / (bright | fg).sum() > 0.8
    # and directly: a crop half the patch size, resampled, doubles the extent
    crop = ball[10:30, 10:30, 10:30]
    _, tgt = resample_patch(crop[None].astype(np.float32), crop.astype(np.int64), (40, 40, 40))
    assert [_extent(tgt > 0, a) for a in range(3)] == [2 * _extent(crop, a) for a in range(3)]


def test_zoom_per_axis_changes_only_that_axis():
    ball = _ball((30, 30, 30), (15, 15, 15), 5.5)
    _, tgt = resample_patch(ball[None].astype(np.float32), ball.astype(np.int64), (30, 60, 15))
    assert _extent(tgt > 0, 0) == _extent(ball, 0)
    assert abs(_extent(tgt > 0, 1) - 2 * _extent(ball, 1)) <= 1
    assert abs(_extent(tgt > 0, 2) - _extent(ball, 2) / 2) <= 1


def test_zoom_off_is_the_previous_sampler_bit_for_bit():
    """Without zoom, the same seed gives the very patches the sampler gave before zoom existed
    (checksums recorded with the code of commit d921dbb)."""
    sampler = PatchSampler(_blobs_3d(), (16, 32, 32), np.random.default_rng(3), True, 0.5)
    x, y = sampler.batch(6)
    assert hashlib.sha1(y.tobytes()).hexdigest() == "b88d1bf3879899f3b916b286da8beeb8d7736053"
    assert float(x.astype(np.float64).sum()) == pytest.approx(49654.60561064456, rel=1e-12)
    # and asking for zoom without augmentation changes nothing either
    again = PatchSampler(_blobs_3d(), (16, 32, 32), np.random.default_rng(3), False, 0.5, zoom=(0.5, 2.0))
    plain = PatchSampler(_blobs_3d(), (16, 32, 32), np.random.default_rng(3), False, 0.5)
    a, b = again.batch(3), plain.batch(3)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


@pytest.mark.parametrize("bad", [(0, 2), (2, 1), (1,), "x", (float("nan"), 2)])
def test_bad_zoom_is_one_clear_error(bad):
    with pytest.raises(ValueError, match="zoom"):
        check_zoom(bad)
    assert zoom_crop((16, 32), (2.0, 0.5)) == (8, 64)


def test_train_config_zoom_reaches_the_card():
    from napari_skipseg.training.loop import TrainConfig, training_extras

    assert TrainConfig().zoom is None  # old recipes: off
    words = training_extras(TrainConfig.from_dict({"zoom": [0.5, 2.0]}))
    assert "random zoom 0.5-2x (per axis" in words
    assert "isotropic" in training_extras(TrainConfig(zoom=[0.5, 2.0], zoom_isotropic=True))
    assert "zoom" not in training_extras(TrainConfig(zoom=[0.5, 2.0], augment=False))


# -- physical scale and group split ------------------------------------------------------


def _write_pair(folder, name, image, mask, spacing=None):
    import tifffile

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    kw = {}
    if spacing is not None:  # ImageJ metadata: Z step as 'spacing', Y/X as resolution
        kw = {"imagej": True, "resolution": (1 / spacing[2], 1 / spacing[1]),
              "metadata": {"spacing": spacing[0], "unit": "um", "axes": "ZYX"}}
    tifffile.imwrite(folder / "images" / name, image, **kw)
    tifffile.imwrite(folder / "masks" / name, mask, **kw)


def _config():
    from napari_skipseg.model.config import ModelConfig

    return ModelConfig(name="t", spatial_dims=3, num_classes=3, base_channels=4, depth=2,
                       pool=[[1, 2, 2], [2, 2, 2]], output="instances",
                       class_names=["background", "interior", "boundary"], tile=[16, 32, 32])


def test_load_pairs_resamples_to_target_spacing(tmp_path):
    from napari_skipseg.io import read_image

    ball = _ball((10, 40, 40), (5, 20, 20), 4.5)  # in voxels; anisotropic in um with the spacing below
    mask = ball.astype(np.uint16)
    image = (ball * 200 + 20).astype(np.uint16)
    _write_pair(tmp_path / "a", "x.tif", image, mask, spacing=(2.0, 0.5, 0.5))
    meta = read_image(tmp_path / "a" / "images" / "x.tif")[1]
    assert file_spacing(meta, 3) == pytest.approx((2.0, 0.5, 0.5))
    (s,) = load_pairs(tmp_path / "a", _config(), target_spacing=(1.0, 1.0, 1.0))
    assert s.image.shape == (1, 20, 20, 20) and s.target.shape == (20, 20, 20)
    assert set(np.unique(s.instances).tolist()) == {0, 1}
    assert abs(_extent(s.instances > 0, 0) - 2 * _extent(ball, 0)) <= 1
    assert abs(_extent(s.instances > 0, 1) - _extent(ball, 1) / 2) <= 1
    # the folder's given spacing wins over the file's
    (g,) = load_pairs(tmp_path / "a", _config(), spacing=(1.0, 1.0, 1.0), target_spacing=(1.0, 1.0, 1.0))
    assert g.target.shape == (10, 40, 40)
    # a file without a voxel size cannot be put at a physical scale unless the folder says it
    _write_pair(tmp_path / "b", "y.tif", image, mask)
    with pytest.raises(ValueError, match="records no voxel size"):
        load_pairs(tmp_path / "b", _config(), target_spacing=(1.0, 1.0, 1.0))
    (plain,) = load_pairs(tmp_path / "b", _config())  # no target: nothing resampled
    assert plain.target.shape == (10, 40, 40)


def test_split_by_group_keeps_groups_together():
    names = [f"Emb{e:02d}_t{t}.tif" for e in range(1, 12) for t in (301, 351, 401)] + ["other.tif"]
    train, val, groups = split_groups(names, 0.2, r"^(Emb\d+)_")
    assert set(train) | set(val) == set(names) and not set(train) & set(val)
    val_groups = {groups[n] for n in val}
    assert val_groups and all(groups[n] not in val_groups for n in train)
    assert groups["other.tif"] == "other.tif"
    _, expected_val_groups = split_names(sorted(set(groups.values())), 0.2)
    assert val_groups == set(expected_val_groups)
    assert split_groups(names, 0.2) [:2] == split_names(names, 0.2)  # no pattern: the file-name split
    with pytest.raises(ValueError, match="regular expression"):
        split_groups(names, 0.2, "(")


def test_train_on_two_folders_at_one_spacing(tmp_path):
    """End to end: two folders, one with its spacing in the files and one given in the recipe,
    grouped split, zoom on; the saved model records the split, groups and pixel size."""
    from napari_skipseg.training.recipe import train_from_folder

    rng = np.random.default_rng(0)
    for e in range(1, 5):
        for t in (1, 2):
            lab = np.zeros((8, 32, 32), np.uint16)
            for k in range(3):
                c = rng.integers([2, 6, 6], [6, 26, 26])
                lab[_ball(lab.shape, c, 3.5) & (lab == 0)] = k + 1
            img = (lab > 0) * 150 + rng.integers(0, 30, lab.shape)
            _write_pair(tmp_path / "emb", f"Emb{e:02d}_t{t}.tif", img.astype(np.uint16), lab, spacing=(2.0, 1.0, 1.0))
    _write_pair(tmp_path / "plant", "p1.tif", (_ball((16, 16, 16), (8, 8, 8), 5) * 200).astype(np.uint8),
                _ball((16, 16, 16), (8, 8, 8), 5).astype(np.uint16))
    recipe = {"model": {k: v for k, v in _config().to_dict().items() if k not in ("card",)},
              "training": {"patch": [8, 16, 16], "batch_size": 1, "steps": 2, "val_every": 1, "warmup": 1,
                           "zoom": [0.5, 2.0], "val_seeds": []},
              "val_fraction": 0.3, "target_spacing": [2.0, 1.0, 1.0], "split_group": r"^(Emb\d+)_",
              "folders": {"plant": {"spacing": [0.5, 0.25, 0.25], "use": "train"}}}
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    gen = train_from_folder([tmp_path / "emb", tmp_path / "plant"], tmp_path / "r.json", tmp_path / "out", device="cpu")
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            out = stop.value
            break
    split = json.loads((out / "validation_split.json").read_text())
    val_groups = set(split["validation_groups"])
    assert val_groups and {n[:5] for n in split["validation"]} == val_groups
    assert not {n[:5] for n in split["train"] if n.startswith("Emb")} & val_groups
    assert "p1.tif" in split["train"] and split["folders"]["plant"]["use"] == "train"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["training_scale"]["pixel_size"] == [2.0, 1.0, 1.0] and cfg["training_scale"]["unit"] == "um"
    assert "resampled to voxels 2 x 1 x 1 um" in cfg["card"]["data"]
    assert "by group" in cfg["card"]["split"] and "random zoom" in cfg["card"]["training"]


def test_folder_options_are_checked(tmp_path):
    from napari_skipseg.training.recipe import split_folders

    _write_pair(tmp_path / "a", "x.tif", np.zeros((4, 8, 8), np.uint8), np.zeros((4, 8, 8), np.uint8))
    _write_pair(tmp_path / "b", "x.tif", np.zeros((4, 8, 8), np.uint8), np.zeros((4, 8, 8), np.uint8))
    with pytest.raises(ValueError, match="in both"):
        split_folders([tmp_path / "a", tmp_path / "b"], {})
    with pytest.raises(ValueError, match="not among the data folders"):
        split_folders([tmp_path / "a"], {"folders": {"zz": {}}})
    with pytest.raises(ValueError, match="use must be one of"):
        split_folders([tmp_path / "a"], {"folders": {"a": {"use": "test"}}})
    with pytest.raises(ValueError, match="unknown option"):
        split_folders([tmp_path / "a"], {"folders": {"a": {"spacin": [1, 1, 1]}}})


def test_cli_train_takes_several_folders(tmp_path, capsys):
    from napari_skipseg.cli import main

    rng = np.random.default_rng(1)
    for folder, names in (("a", ["a1.tif", "a2.tif"]), ("b", ["b1.tif"])):
        for n in names:
            lab = _ball((8, 24, 24), (4, 12, 12), 3.5).astype(np.uint16)
            _write_pair(tmp_path / folder, n, (lab * 150 + rng.integers(0, 30, lab.shape)).astype(np.uint16), lab,
                        spacing=(2.0, 1.0, 1.0))
    recipe = {"model": {k: v for k, v in _config().to_dict().items() if k != "card"},
              "training": {"patch": [8, 16, 16], "batch_size": 1, "val_every": 1, "warmup": 1, "val_seeds": []},
              "val_fraction": 0.5, "target_spacing": [2.0, 1.0, 1.0], "folders": {"b": {"use": "train"}}}
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    args = ["train", str(tmp_path / "a"), str(tmp_path / "b"), "--recipe", str(tmp_path / "r.json"), "--steps", "1",
            "-q", "--device", "cpu"]
    assert main([*args, "-o", str(tmp_path / "out")]) == 0
    split = json.loads((tmp_path / "out" / "validation_split.json").read_text())
    assert "b1.tif" in split["train"] and len(split["validation"]) == 1
    recipe["folders"] = {"c": {"use": "train"}}
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    capsys.readouterr()
    assert main([*args, "-o", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip()
    assert "recipe 'folders' names c, not among the data folders" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out2").exists()


def test_finetune_takes_the_zoom_option(model_home):
    from napari_skipseg.training.finetune import (
        Annotated,
        FinetuneOptions,
        run_finetune,
        save_version,
    )

    rng = np.random.default_rng(2)
    labels = np.zeros((3, 48, 48), np.uint16)
    for z in range(3):
        for k, (y, x) in enumerate(rng.integers(8, 40, (4, 2))):
            labels[z][_ball((48, 48), (y, x), 5) & (labels[z] == 0)] = k + 1
    image = ((labels > 0) * 180 + rng.integers(0, 40, labels.shape)).astype(np.uint8)
    data = [Annotated(image, labels, [0, 1, 2], name="cells")]
    opts = FinetuneOptions(steps=2, val_every=2, patch=[32, 32], batch_size=1, zoom=[0.5, 2.0], tune=False)
    result = run_finetune("tiny", data, opts, device="cpu")
    assert result.options["zoom"] == [0.5, 2.0]
    card = json.loads((save_version(result, data) / "config.json").read_text())["card"]
    assert "random zoom 0.5-2x" in card["training"]
