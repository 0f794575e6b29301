"""Training data that cannot be trained on gives one clear error naming the sample or file:
images and labels of different shapes, empty labels, labels that are not labels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_skipseg.model.config import ModelConfig
from napari_skipseg.training.data import IGNORE, PatchSampler, Sample, check_mask, load_pairs

rng = np.random.default_rng(0)


def _sample(shape=(20, 24), name="s", target=None, image=None):
    if target is None:
        target = np.zeros(shape, np.int64)
        target[5:10, 5:10] = 1
    if image is None:
        image = rng.random((1, *target.shape)).astype(np.float32)
    return Sample(name, image, target)


def _sampler(samples, patch=(16, 16)):
    return PatchSampler(samples, patch, np.random.default_rng(0))


def test_valid_samples_pass():
    x, y = _sampler([_sample(), _sample((30, 30))]).batch(2)
    assert x.shape == (2, 1, 16, 16) and y.shape == (2, 16, 16)


def test_image_and_labels_of_different_shapes():
    bad = _sample(name="cell_07", image=rng.random((1, 20, 25)).astype(np.float32))
    with pytest.raises(ValueError, match=r"cell_07: image \(20, 25\) and labels \(20, 24\) differ in shape"):
        _sampler([_sample(), bad])


def test_labels_of_other_dimensionality():
    bad = _sample(name="vol", target=np.ones((4, 20, 24), np.int64), image=rng.random((1, 4, 20, 24)))
    with pytest.raises(ValueError, match=r"vol: expected a \(C, Y, X\) image and 2D labels for 2D patches"):
        _sampler([bad])
    with pytest.raises(ValueError, match=r"s: expected a \(C, Z, Y, X\) image and 3D labels"):
        _sampler([_sample()], patch=(4, 8, 8))


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (np.zeros((20, 24), np.int64), "the labels are empty: every pixel is background in all 2 sample"),
        (np.full((20, 24), IGNORE, np.int64), "the labels are empty: no pixel is labelled in all 2 sample"),
    ],
)
def test_empty_labels(target, message):
    empty = [_sample(target=target, name="a"), _sample(target=target.copy(), name="b")]
    with pytest.raises(ValueError, match=message):
        _sampler(empty)
    _sampler([*empty, _sample()])  # one sample with an object is enough


def test_bad_label_values_and_images():
    with pytest.raises(ValueError, match="f: labels must be integers, got float32"):
        _sampler([_sample(name="f", target=np.ones((20, 24), np.float32))])
    with pytest.raises(ValueError, match=r"neg: labels must be >= 0 \(or -1 for unlabelled\), found -5"):
        _sampler([_sample(name="neg", target=np.full((20, 24), -5, np.int64))])
    nan_image = rng.random((1, 20, 24)).astype(np.float32)
    nan_image[0, 3, 3] = np.nan
    with pytest.raises(ValueError, match="nan: the normalised image holds NaN or Inf"):
        _sampler([_sample(name="nan", image=nan_image)])
    with pytest.raises(ValueError, match="z: the image is empty"):
        _sampler([_sample(name="z", target=np.zeros((0, 24), np.int64), image=np.zeros((1, 0, 24), np.float32))])


def test_check_mask():
    assert check_mask(np.array([[True, False]])).dtype == np.uint8
    assert check_mask(np.array([[1.0, 2.0]])).tolist() == [[1, 2]]
    with pytest.raises(ValueError, match="m.tif: labels must be whole numbers"):
        check_mask(np.array([[0.5, 1.0]]), "m.tif")
    with pytest.raises(ValueError, match="labels must be whole numbers"):
        check_mask(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match=r"labels must be >= 0 \(0 is background\), found -1"):
        check_mask(np.array([[-1, 1]]))
    with pytest.raises(ValueError, match="labels must be integers, got pixels of type complex64"):
        check_mask(np.ones((2, 2), np.complex64))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    return root


CFG = ModelConfig(name="t", base_channels=4, depth=2, output="semantic", num_classes=2)


def test_load_pairs_errors_name_the_file(folder):
    image = rng.integers(0, 255, (24, 24)).astype(np.uint8)
    tifffile.imwrite(folder / "images" / "a.tif", image)
    tifffile.imwrite(folder / "masks" / "a.tif", (image > 128).astype(np.uint8))
    assert load_pairs(folder, CFG)[0].target.shape == (24, 24)

    tifffile.imwrite(folder / "masks" / "a.tif", np.zeros((24, 20), np.uint8))
    with pytest.raises(ValueError, match=r"a.tif: image \(24, 24\) and mask \(24, 20\) differ in shape"):
        load_pairs(folder, CFG)
    tifffile.imwrite(folder / "masks" / "a.tif", np.full((24, 24), 0.5, np.float32))
    with pytest.raises(ValueError, match="masks/a.tif: labels must be whole numbers"):
        load_pairs(folder, CFG)
    (folder / "masks" / "a.tif").write_bytes(b"")
    with pytest.raises(ValueError, match="masks/a.tif: the file is empty"):
        load_pairs(folder, CFG)
    data = (folder / "images" / "a.tif").read_bytes()
    (folder / "images" / "a.tif").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match="images/a.tif: .*truncated or corrupt"):
        load_pairs(folder, CFG)
    tifffile.imwrite(folder / "images" / "a.tif", np.zeros((2, 2, 24, 24), np.uint8))
    with pytest.raises(ValueError, match=r"images/a.tif: expected a 2D image, got shape \(2, 2, 24, 24\)"):
        load_pairs(folder, CFG)
