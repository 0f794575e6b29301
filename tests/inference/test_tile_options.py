"""Bad tile, overlap and mode options: one clear line, from plan() and predict() alike.

``plan`` runs first in the CLI, batch and dask paths, so it must refuse what ``predict``
refuses, with the same words, before anything else breaks on the bad value.
"""

import numpy as np
import pytest
import torch

from napari_skipseg.inference.engine import MAX_TILES, SegmentationError, plan, predict, run
from napari_skipseg.model.config import ModelConfig
from napari_skipseg.model.store import load_model
from napari_skipseg.model.unet import SkipUNet


def tiny(dims=2):
    torch.manual_seed(0)
    cfg = ModelConfig(name=f"tiny{dims}d", spatial_dims=dims, num_classes=2, base_channels=4, depth=2,
                      tile=[16, 16] if dims == 2 else [8, 16, 16])
    return SkipUNet(cfg).eval()


def refused(model, shape, match, **kwargs):
    """Both plan() and predict() refuse, with one line matching ``match``."""
    channel_axis = kwargs.pop("channel_axis", None)
    with pytest.raises(SegmentationError, match=match) as a:
        plan(model.config, shape, channel_axis=channel_axis, **kwargs)
    with pytest.raises(SegmentationError, match=match) as b:
        run(predict(model, np.zeros(shape, np.float32), channel_axis=channel_axis, output="semantic",
                    device="cpu", **kwargs))
    for err in (a, b):
        assert "\n" not in str(err.value)


# --- overlap -----------------------------------------------------------------------------------


@pytest.mark.parametrize("overlap", [float("nan"), float("inf"), -float("inf"), 0.51, -0.01, "lots", None])
def test_bad_overlap(overlap):
    refused(tiny(), (40, 40), "overlap must be", overlap=overlap)


def test_overlap_as_a_string_number_is_taken():
    assert plan(tiny().config, (40, 40), overlap="0.25")["tile"] == plan(tiny().config, (40, 40), overlap=0.25)["tile"]


# --- tiles too small ----------------------------------------------------------------------------


@pytest.mark.parametrize("tile", [1, 3, (16, 2)])
def test_tile_below_the_size_multiple(tile):
    refused(tiny(), (40, 40), "smallest tile allowed is 4", tile=tile)


def test_tile_below_the_size_multiple_3d_names_each_axis():
    model = tiny(3)
    model.config.pool = [[1, 2, 2], [2, 2, 2]]  # Z pooled once: multiples of 2 x 4 x 4
    assert tuple(model.config.size_multiple()) == (2, 4, 4)
    refused(model, (20, 40, 40), r"smallest tile allowed is 2 x 4 x 4", tile=(1, 16, 16))
    assert plan(model.config, (20, 40, 40), tile=(2, 4, 4))["tile"] == (2, 4, 4)


def test_tile_below_the_multiple_is_fine_where_it_covers_the_image():
    """A 3-pixel tile along a 3-pixel axis is the whole axis: nothing is wasted."""
    model = tiny()
    assert plan(model.config, (3, 40), tile=(3, 16))["tile"] == (3, 16)
    out = run(predict(model, np.zeros((3, 40), np.float32), output="semantic", tile=(3, 16), device="cpu"))
    assert out.labels.shape == (3, 40)


@pytest.mark.parametrize("tile", [7, 1, 15])
def test_real_model_refuses_tiny_tiles_on_a_large_image(tile):
    model = load_model("nuclei2d")
    refused(model, (1024, 1024), "tile .* is smaller than model 'nuclei2d' can use: the smallest tile allowed is 16",
            tile=tile)
    assert plan(model.config, (1024, 1024), tile=16)["tile"] == (16, 16)


def test_absurd_tile_counts_are_refused_with_the_smallest_tile_allowed():
    cfg = tiny().config
    with pytest.raises(SegmentationError, match=f"into 1863225 tiles .at most {MAX_TILES}.; the smallest tile "
                                                "allowed here is 8"):
        plan(cfg, (4096, 4096), tile=4, overlap=0.25)
    assert plan(cfg, (4096, 4096), tile=8, overlap=0.25)["tile"] == (8, 8)


# --- tiles of the wrong kind ----------------------------------------------------------------------


@pytest.mark.parametrize(("dims", "shape", "tile", "match"), [
    (3, (8, 40, 40), (16, 16), r"tile must be 3 positive sizes \(Z, Y, X\) for this 3D run, got \(16, 16\)"),
    (2, (40, 40), (16, 16, 16), r"tile must be 2 positive sizes \(Y, X\)"),
    (2, (40, 40), 0, "tile must be 2 positive sizes"),
    (2, (40, 40), -16, "tile must be 2 positive sizes"),
    (2, (40, 40), 16.5, "whole pixels"),
    (2, (40, 40), float("nan"), "whole pixels"),
    (2, (40, 40), (16, 16.5), "whole pixels"),
    (2, (40, 40), "big", "tile must be 2 positive sizes"),
    (2, (40, 40), [], "tile must be 2 positive sizes"),
])
def test_bad_tile_values(dims, shape, tile, match):
    refused(tiny(dims), shape, match, tile=tile)


def test_whole_number_floats_are_tiles():
    assert plan(tiny().config, (40, 40), tile=16.0)["tile"] == (16, 16)
    assert plan(tiny().config, (40, 40), tile=np.int64(16))["tile"] == (16, 16)


# --- model and image that do not fit ------------------------------------------------------------------


def test_3d_model_on_a_2d_image():
    refused(tiny(3), (40, 40), r"a 3D model needs an image with at least 3 spatial axes; got shape \(40, 40\)")
    refused(tiny(3), (40, 40, 3), "with a channel axis", channel_axis=-1)


def test_3d_model_in_2d_mode():
    refused(tiny(3), (8, 40, 40), "model 'tiny3d' is a 3D model; it cannot run in 2d mode", mode="2d")
    refused(tiny(2), (8, 40, 40), "model 'tiny2d' is a 2D model; it cannot run in 3d mode", mode="3d")


def test_real_3d_models_on_bad_input():
    hippo = load_model("hippocampus3d")
    with pytest.raises(SegmentationError, match="'hippocampus3d' is a 3D model; it cannot run in 2d mode"):
        plan(hippo.config, (30, 40, 40), mode="2d")
    with pytest.raises(SegmentationError, match="a 3D model needs an image with at least 3 spatial axes"):
        plan(load_model("nuclei3d").config, (64, 64))


@pytest.mark.parametrize("block", [0, (16,), "x", (16, -1)])
def test_bad_blocks(block):
    refused(tiny(), (40, 40), "block must be 2 positive sizes", block=block)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, None])
def test_bad_batch_size(batch_size):
    with pytest.raises(SegmentationError, match="batch_size must be at least 1"):
        run(predict(tiny(), np.zeros((20, 20), np.float32), output="semantic", batch_size=batch_size,
                    device="cpu"))


def test_channel_axis_out_of_range_in_plan():
    with pytest.raises(SegmentationError, match="channel_axis 3 is out of range"):
        plan(tiny().config, (40, 40, 3), channel_axis=3)
