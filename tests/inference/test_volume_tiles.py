"""3D tiling: a volume that fits in a few configured tiles' worth of voxels is one tile."""

import math

import numpy as np
import pytest
import torch

from napari_skipseg.inference.engine import VOLUME_TILE_GROW, _tiles_in_flight, plan, predict, run
from napari_skipseg.inference.tiling import fit_tile, fit_tile_volume
from napari_skipseg.model.config import ModelConfig
from napari_skipseg.model.store import load_model
from napari_skipseg.model.unet import SkipUNet


def test_fit_tile_volume_whole_volume_when_it_fits():
    tile, mult = (48, 96, 96), (4, 8, 8)
    cap = int(VOLUME_TILE_GROW * math.prod(tile))
    assert fit_tile_volume((128, 128, 128), tile, 0.125, mult, cap) == (128, 128, 128)
    # too large: per axis, as fit_tile does
    assert fit_tile_volume((160, 160, 160), tile, 0.125, mult, cap) == fit_tile((160,) * 3, tile, 0.125, mult)
    # no cap: fit_tile
    assert fit_tile_volume((128, 128, 128), tile, 0.125, mult) == fit_tile((128,) * 3, tile, 0.125, mult)
    # the cap counts voxels padded to the size multiple: 121 -> 128 along Y and X
    assert fit_tile_volume((120, 121, 121), tile, 0.125, mult, 120 * 128 * 128) == (120, 121, 121)
    assert fit_tile_volume((120, 121, 121), tile, 0.125, mult, 120 * 128 * 128 - 1) != (120, 121, 121)


def test_nuclei3d_takes_a_128_cube_in_one_tile():
    cfg = load_model("nuclei3d").config
    assert plan(cfg, (128, 128, 128))["tile"] == (128, 128, 128)
    assert plan(cfg, (2, 128, 128, 128))["tile"] == (128, 128, 128)  # TZYX: one tile per volume
    assert plan(cfg, (256, 256, 256))["tile"] == fit_tile((256,) * 3, (48, 96, 96), 0.125, cfg.size_multiple())


def test_tiles_in_flight():
    cfg = ModelConfig(name="t", spatial_dims=3, base_channels=4, depth=2, tile=[8, 16, 16])  # 2048 voxels
    assert _tiles_in_flight(4, 100, (8, 16, 16), cfg) == 4
    assert _tiles_in_flight(4, 2, (8, 16, 16), cfg) == 2  # no more than the job has
    assert _tiles_in_flight(4, 100, (8, 16, 32), cfg) == 4  # twice the voxels: still 4
    assert _tiles_in_flight(4, 100, (16, 32, 32), cfg) == 1  # 8 times: one at a time
    assert _tiles_in_flight(4, 100, (8, 32, 48), cfg) == 1  # 6 times: 4 * 2048 // 12288 = 0 -> 1
    assert _tiles_in_flight(8, 100, (8, 32, 48), cfg) == 1
    assert _tiles_in_flight(16, 100, (8, 32, 48), cfg) == 2


@pytest.mark.parametrize("batch_size", [1, 4])
def test_one_tile_volume_equals_a_whole_volume_pass(batch_size):
    torch.manual_seed(0)
    cfg = ModelConfig(name="t3", spatial_dims=3, num_classes=2, base_channels=4, depth=2, tile=[8, 16, 16],
                      normalization={"kind": "none"})
    model = SkipUNet(cfg).eval()
    image = np.random.default_rng(0).random((12, 20, 24), dtype=np.float32)  # 5760 voxels <= 5 x 2048
    assert plan(cfg, image.shape)["tile"] == image.shape
    out = run(predict(model, image, output="probabilities", device="cpu", batch_size=batch_size)).probabilities
    with torch.inference_mode():
        ref = torch.softmax(model(torch.from_numpy(image)[None, None]), 1)[0].numpy()
    np.testing.assert_allclose(out, ref, atol=1e-5)
