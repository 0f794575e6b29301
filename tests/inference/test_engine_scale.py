"""Resampling inside the engine: ``scale`` and ``diameter``.

The image is resampled unit by unit (with a halo), the network runs on the resampled unit
and its probabilities come back onto the input grid, so every output has the input's shape
and block-wise or streamed runs give what one whole-image run gives.
"""

import sys

import numpy as np
import pytest
import torch
import zarr
from engine_toys import BlobModel as _BlobModel
from engine_toys import discs
from scipy import ndimage as ndi

from napari_skipseg.inference.engine import (
    BLOCK_VOXELS,
    SegmentationError,
    choose_scale,
    instance_params,
    plan,
    predict,
    run,
)
from napari_skipseg.inference.resample import Resampling
from napari_skipseg.model.config import ModelConfig
from napari_skipseg.model.unet import SkipUNet


def tiny(dims=2, output="semantic", seed=0, **extra):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        name=f"tiny{dims}d", spatial_dims=dims, num_classes=3 if output == "instances" else 2,
        base_channels=4, depth=2, output=output, tile=[16, 16] if dims == 2 else [8, 16, 16],
        postprocess={"seed": 0.3, "mask": 0.3, "min_size": 1, "min_seed_size": 1}, **extra,
    )
    return SkipUNet(cfg).eval()


class PixelwiseModel(torch.nn.Module):
    """A network whose class-1 probability at a pixel is sigmoid(that pixel): what comes back
    is exactly what the network was shown, so resampling errors show undisguised."""

    def __init__(self, spatial_dims=2):
        super().__init__()
        self.config = ModelConfig(name="pixelwise", spatial_dims=spatial_dims, num_classes=2, base_channels=4,
                                  depth=2, normalization={"kind": "none"})
        self.gain = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), self.gain * x], dim=1)


def BlobModel(spatial_dims=2, **postprocess):  # noqa: N802 - stands for the class
    """engine_toys.BlobModel with small default tiles, so that resampled units span several."""
    return _BlobModel(spatial_dims, tile=[32, 32] if spatial_dims == 2 else [16, 32, 32], **postprocess)


def smooth(shape, seed=0, sigma=3.0, amplitude=4.0):
    rng = np.random.default_rng(seed)
    x = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return (amplitude * x / np.abs(x).max()).astype(np.float32)


def noise(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 1000, shape).astype(np.uint16)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


# --- scale 1 is today's path ---------------------------------------------------------------------


@pytest.mark.parametrize(("dims", "shape"), [(2, (3, 45, 53)), (3, (13, 40, 35))])
def test_scale_one_is_bit_identical(dims, shape):
    model, image = tiny(dims, "instances"), noise(shape)
    kw = {"output": "instances", "keep_probabilities": True, "device": "cpu"}
    ref = run(predict(model, image, **kw))
    for scale in (1, 1.0, (1.0,) * dims):
        out = run(predict(model, image, scale=scale, **kw))
        np.testing.assert_array_equal(out.probabilities, ref.probabilities)
        np.testing.assert_array_equal(out.labels, ref.labels)
        assert out.info["scale"] == (1.0,) * dims and out.info["scale_message"] == ""
    # a diameter equal to the trained one resamples nothing either
    model.config.training_scale = {"object_diameter": [10.0] * dims}
    same = run(predict(model, image, diameter=10, **kw))
    np.testing.assert_array_equal(same.probabilities, ref.probabilities)


# --- shapes and values --------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "scale"), [
    ((37, 51), 2.0),
    ((37, 51), 0.5),
    ((3, 29, 33), (1.5, 0.7)),  # a 2D model on a stack
    ((11, 21, 19), (2.0, 1.0, 0.5)),  # 3D, per axis
    ((2, 7, 17, 13), (1.0, 1.7, 2.3)),  # TZYX, 3D
])
@pytest.mark.parametrize("output", ["semantic", "instances"])
def test_outputs_keep_the_input_shape(shape, scale, output):
    dims = 3 if isinstance(scale, tuple) and len(scale) == 3 else 2
    model = tiny(dims, "instances")
    result = run(predict(model, noise(shape), output=output, keep_probabilities=True, scale=scale, device="cpu"))
    assert result.labels.shape == shape
    assert result.probabilities.shape == (3, *shape)
    np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
    assert result.info["scale"] == ((float(scale),) * dims if not isinstance(scale, tuple) else scale)


@pytest.mark.parametrize(("shape", "scale"), [
    ((41, 57), 2.0),
    ((41, 57), (3.0, 1.5)),
    ((41, 57), 0.6),
    ((13, 25, 23), (2.0, 1.0, 1.5)),
    ((13, 25, 23), (1.0, 0.7, 2.0)),
])
def test_smooth_image_comes_back_at_any_scale(shape, scale):
    """Through a pixel-wise network a smooth image's probabilities are nearly the same at
    any scale: resampling there and back loses little, and nothing is shifted."""
    image = smooth(shape)
    model = PixelwiseModel(len(shape))
    one = run(predict(model, image, output="probabilities", device="cpu")).probabilities
    np.testing.assert_allclose(one[1], _sigmoid(image), atol=1e-5)
    out = run(predict(model, image, output="probabilities", scale=scale, tile=16, device="cpu")).probabilities
    assert out.shape == one.shape
    err = np.abs(out[1] - one[1])
    assert err.mean() < 0.01 and err.max() < 0.08
    # no shift: the probability map's centre of mass stays put (were the two directions
    # aligned differently, e.g. one by pixel corners, the errors above would grow)
    np.testing.assert_allclose(ndi.center_of_mass(out[1]), ndi.center_of_mass(one[1]), atol=0.05)


def test_discs_found_at_scale_two():
    image = discs((61, 67), [(15, 15), (40, 45), (20, 50)], 6)
    result = run(predict(BlobModel(), image, output="instances", scale=2.0, device="cpu"))
    assert result.labels.shape == image.shape
    assert result.info["objects"] == 3
    overlap = ((result.labels > 0) & (image > 0)).sum() / ((result.labels > 0) | (image > 0)).sum()
    assert overlap > 0.9


# --- sizes of the post-processing -------------------------------------------------------------------


def test_instance_params_convert_areas():
    model = BlobModel(min_size=30)
    assert instance_params(model.config, None, Resampling((40, 40), (1.0, 1.0)))["min_size"] == 30
    assert instance_params(model.config, None, Resampling((40, 40), (0.5, 0.5)))["min_size"] == 120
    assert instance_params(model.config, {"min_size": 40}, Resampling((40, 40), (2.0, 2.0)))["min_size"] == 10
    small = instance_params(model.config, {"min_size": 2}, Resampling((40, 40), (4.0, 4.0)))
    assert small["min_size"] == 1 and small["min_seed_size"] == 1  # never below one pixel
    assert instance_params(model.config, None, Resampling((8, 40, 40), (1.0, 2.0, 2.0)))["min_size"] == 8


def test_min_size_counts_pixels_the_network_sees():
    """min_size 30 on the network's grid: a 13-pixel disc is 52 pixels there at scale 2 (kept)
    but 13 at scale 1 (dropped); an 81-pixel disc is about 20 there at scale 0.5 (dropped)."""
    model = BlobModel(min_size=30)
    small = discs((40, 40), [(20, 20)], 2)  # 13 pixels
    assert run(predict(model, small, output="instances", device="cpu")).info["objects"] == 0
    assert run(predict(model, small, output="instances", scale=2.0, device="cpu")).info["objects"] == 1
    big = discs((40, 40), [(20, 20)], 5)  # 81 pixels
    assert run(predict(model, big, output="instances", device="cpu")).info["objects"] == 1
    assert run(predict(model, big, output="instances", scale=0.5, device="cpu")).info["objects"] == 0


# --- blocks and streaming -------------------------------------------------------------------------------


def _stores(tmp_path, shape, classes, label_dtype, chunks):
    root = zarr.open_group(tmp_path / "out.zarr", mode="w")
    labels = root.create_array("labels", shape=shape, dtype=label_dtype, chunks=chunks, fill_value=0)
    probs = root.create_array("probs", shape=(classes, *shape), dtype="f4", chunks=(1, *chunks), fill_value=0)
    return labels, probs


@pytest.mark.parametrize(("dims", "shape", "scale", "block"), [
    (2, (3, 45, 53), (1.5, 0.7), (20, 30)),
    (2, (45, 53), 2.0, (16, 17)),
    (3, (13, 40, 35), (2.0, 1.0, 0.5), (5, 20, 17)),
])
def test_blocks_and_zarr_streaming_agree_with_one_block(tmp_path, dims, shape, scale, block):
    model = tiny(dims, "instances")
    image = noise(shape)
    kw = {"keep_probabilities": True, "scale": scale, "device": "cpu", "batch_size": 3}
    whole = run(predict(model, image, output="semantic", **kw))
    geo = plan(model.config, shape, block=block, scale=scale)
    assert len(geo["units"]) > np.prod(shape[:-dims], dtype=int)  # more than one block per slice
    labels, probs = _stores(tmp_path, shape, 3, np.uint8, geo["chunks"])
    src = zarr.open_array(tmp_path / "in.zarr", mode="w", shape=shape, dtype=image.dtype, chunks=geo["chunks"])
    src[:] = image
    out = run(predict(model, src, output="semantic", block=block, labels_out=labels, probabilities_out=probs, **kw))
    assert out.labels is labels and out.probabilities is probs
    assert out.info["units"] == len(geo["units"])
    # every block is predicted from the whole working grid's tiles: the same probabilities
    np.testing.assert_allclose(probs[:], whole.probabilities, atol=2e-5)
    agree = (labels[:] == whole.labels).mean()
    assert agree > 0.999  # only exact ties could differ
    # and in memory, block by block, the same as streamed
    mem = run(predict(model, image, output="semantic", block=block, **kw))
    np.testing.assert_array_equal(mem.probabilities, probs[:])


def test_instances_in_blocks_agree_away_from_block_borders(tmp_path):
    centres = [(10, 10), (12, 40), (40, 12), (38, 42), (25, 25)]
    image = discs((50, 54), centres, 4)
    model = BlobModel()
    whole = run(predict(model, image, output="instances", scale=1.5, device="cpu"))
    labels = zarr.open_array(tmp_path / "l.zarr", mode="w", shape=image.shape, dtype=np.uint32, chunks=(25, 27))
    out = run(predict(model, image, output="instances", scale=1.5, block=(25, 27), labels_out=labels,
                      device="cpu"))
    blocks = labels[:]
    np.testing.assert_array_equal(blocks > 0, whole.labels > 0)
    assert whole.info["objects"] == 5 and out.info["objects"] == 8  # the disc at (25, 25) is cut in 4
    for cy, cx in centres[:4]:  # discs inside one block each: the same pixels, one id
        w, b = whole.labels == whole.labels[cy, cx], blocks == blocks[cy, cx]
        np.testing.assert_array_equal(w, b)


def test_dask_input_with_scale():
    da = pytest.importorskip("dask.array")
    image = noise((2, 30, 34))
    model = tiny()
    a = run(predict(model, image, output="probabilities", scale=1.7, device="cpu")).probabilities
    b = run(predict(model, da.from_array(image, chunks=(1, 15, 34)), output="probabilities", scale=1.7,
                    device="cpu")).probabilities
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_default_block_bounds_working_memory():
    cfg = tiny().config
    geo = plan(cfg, (3000, 3000), scale=4.0)
    assert geo["working"] == (12000, 12000)
    block_working = np.prod([b * 4 for b in geo["block"]])
    assert block_working <= BLOCK_VOXELS[2] and len(geo["units"]) > 1
    assert plan(cfg, (3000, 3000))["block"] == (3000, 3000)  # unscaled: the whole slice fits
    assert plan(cfg, (3000, 3000), scale=0.5)["block"] == (3000, 3000)


# --- diameter ----------------------------------------------------------------------------------------------


def test_diameter_resamples_like_the_scale_it_makes():
    model = tiny(training_scale={"object_diameter": [20.0, 20.0]})
    image = noise((37, 45))
    events = []
    by_d = run(predict(model, image, output="probabilities", diameter=10, device="cpu"), events.append)
    by_s = run(predict(model, image, output="probabilities", scale=2.0, device="cpu"))
    np.testing.assert_array_equal(by_d.probabilities, by_s.probabilities)
    info = events[0].info
    assert info["scale"] == (2.0, 2.0) and info["diameter"] == (10.0, 10.0)
    assert info["scale_message"] == "diameter 10 px (given); image resampled x2.00"
    assert by_d.info["scale_message"] == info["scale_message"] and by_d.info["scale_source"] == "given"
    # scale overrides the diameter
    over = run(predict(model, image, output="probabilities", diameter=10, scale=1, device="cpu"))
    assert over.info["scale"] == (1.0, 1.0) and over.info["diameter"] is None


def test_choose_scale_calls_the_estimate_only_for_auto():
    cfg = tiny(training_scale={"object_diameter": [20.0, 20.0]}).config
    calls = []

    def estimate():
        calls.append(1)
        return (40.0, 40.0)

    assert choose_scale(cfg, (100, 100), diameter=10, estimate=estimate).scale == (2.0, 2.0) and not calls
    auto = choose_scale(cfg, (100, 100), diameter="auto", estimate=estimate)
    assert auto.scale == (0.5, 0.5) and auto.source == "estimated" and calls == [1]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"scale": float("nan")}, "scale must be between"),
    ({"scale": 0}, "scale must be between"),
    ({"scale": -1.0}, "scale must be between"),
    ({"scale": 500}, "scale must be between"),
    ({"scale": (1.0, 2.0, 3.0)}, "scale takes 1 or 2 values"),
    ({"scale": "x"}, "scale must be a number"),
    ({"diameter": -3}, "diameter must be a positive"),
    ({"diameter": "big"}, "diameter must be"),
    ({"diameter": 500}, "larger than the image"),
])
def test_bad_scale_and_diameter_are_one_line_errors(kwargs, match):
    model = tiny(training_scale={"object_diameter": [20.0, 20.0]})
    with pytest.raises(SegmentationError, match=match) as err:
        run(predict(model, noise((40, 40)), output="semantic", device="cpu", **kwargs))
    assert "\n" not in str(err.value)


def test_diameter_needs_a_model_that_records_its_object_size():
    with pytest.raises(SegmentationError, match="does not record the object size"):
        run(predict(tiny(), noise((40, 40)), output="semantic", diameter=12, device="cpu"))


def test_auto_diameter_without_the_estimator_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "napari_skipseg.inference.size", None)  # as if not installed
    model = tiny(training_scale={"object_diameter": [20.0, 20.0]})
    with pytest.raises(SegmentationError, match="diameter 'auto' needs the size estimator"):
        run(predict(model, noise((40, 40)), output="semantic", diameter="auto", device="cpu"))


# --- a real model ----------------------------------------------------------------------------------------------


def test_nuclei2d_on_an_upsampled_image_with_scale_half():
    """nuclei2d on synthetic nuclei enlarged 2x finds, at scale 0.5, what it finds at 1x."""
    from napari_skipseg._sample_data import synthetic_nuclei
    from napari_skipseg.metrics import match_instances
    from napari_skipseg.model.store import load_model

    model = load_model("nuclei2d")
    image, truth = synthetic_nuclei((256, 256), seed=4)
    big = ndi.zoom(image.astype(np.float32), 2, order=1, grid_mode=True, mode="nearest")
    big_truth = ndi.zoom(truth, 2, order=0, grid_mode=True, mode="nearest")
    one = run(predict(model, image, device="cpu", flips=False))
    half = run(predict(model, big, device="cpu", flips=False, scale=0.5))
    assert half.labels.shape == big.shape
    n1, n2 = one.info["objects"], half.info["objects"]
    assert n1 > 30 and abs(n2 - n1) <= 0.1 * n1
    f1_one = match_instances(truth, one.labels).f1
    f1_half = match_instances(big_truth, half.labels).f1
    assert f1_half > f1_one - 0.05
