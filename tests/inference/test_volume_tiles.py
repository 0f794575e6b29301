"""3D tiling: a volume that fits in a few configured tiles' worth of voxels is one tile; a
larger one gets the tiles of at most that many voxels that recompute least, each computed
once even where blocks meet."""

import math

import numpy as np
import pytest
import torch

from napari_skipseg.inference.engine import (
    VOLUME_TILE_GROW,
    Progress,
    _geometry,
    _tiles_in_flight,
    plan,
    predict,
    run,
    share_tiles,
)
from napari_skipseg.inference.tiling import fit_tile, fit_tile_volume, fit_volume_tiles, tile_starts
from napari_skipseg.model.config import ModelConfig
from napari_skipseg.model.store import load_model
from napari_skipseg.model.unet import SkipUNet


def test_fit_tile_volume_whole_volume_when_it_fits():
    tile, mult = (48, 96, 96), (4, 8, 8)
    cap = int(VOLUME_TILE_GROW * math.prod(tile))
    assert fit_tile_volume((128, 128, 128), tile, 0.125, mult, cap) == (128, 128, 128)
    # too large: the tiles within the cap that compute the fewest voxels
    assert fit_tile_volume((160, 160, 160), tile, 0.125, mult, cap) == fit_volume_tiles(
        (160,) * 3, tile, (6, 12, 12), mult, cap)
    # no cap: fit_tile
    assert fit_tile_volume((128, 128, 128), tile, 0.125, mult) == fit_tile((128,) * 3, tile, 0.125, mult)
    # the cap counts voxels padded to the size multiple: 121 -> 128 along Y and X
    assert fit_tile_volume((120, 121, 121), tile, 0.125, mult, 120 * 128 * 128) == (120, 121, 121)
    assert fit_tile_volume((120, 121, 121), tile, 0.125, mult, 120 * 128 * 128 - 1) != (120, 121, 121)


def test_nuclei3d_takes_a_128_cube_in_one_tile():
    cfg = load_model("nuclei3d").config
    assert plan(cfg, (128, 128, 128))["tile"] == (128, 128, 128)
    assert plan(cfg, (2, 128, 128, 128))["tile"] == (128, 128, 128)  # TZYX: one tile per volume
    big = plan(cfg, (256, 256, 256))
    assert big["tile"] == (56, 136, 256) and big["overlap"] == (6, 12, 12)  # the configured tile's overlap


def computed(shape, tile, overlap):
    """Voxels the tiles of ``tile`` overlapping by ``overlap`` compute over ``shape``."""
    return math.prod(len(tile_starts(n, t, o)) * t for n, t, o in zip(shape, tile, overlap, strict=True))


@pytest.mark.parametrize("shape", [(256, 256, 256), (160, 160, 160), (51, 512, 512), (200, 300, 300), (40, 90, 700)])
def test_volume_tiles_recompute_less_within_the_cap(shape):
    tile, mult, overlap = (48, 96, 96), (4, 8, 8), (6, 12, 12)
    cap = int(VOLUME_TILE_GROW * math.prod(tile))
    got = fit_volume_tiles(shape, tile, overlap, mult, cap)
    padded = [-(-t // m) * m for t, m in zip(got, mult, strict=True)]
    assert math.prod(padded) <= cap
    assert all(g >= min(t, n) for g, t, n in zip(got, tile, shape, strict=True))  # never below the configured tile
    assert all(g % m == 0 or g == n for g, m, n in zip(got, mult, shape, strict=True))
    old = fit_tile(shape, tile, 0.125, mult)
    old_overlap = tuple(int(round(t * 0.125)) for t in old)
    assert computed(shape, got, overlap) < computed(shape, old, old_overlap)
    # no other tile within the cap computes fewer voxels (brute force over sizes)
    best = computed(shape, got, overlap)
    for z in range(min(48, shape[0]), shape[0] + 1, 4):
        for y in range(min(96, shape[1]), shape[1] + 1, 8):
            for x in range(min(96, shape[2]), shape[2] + 1, 8):
                if z * y * x <= cap:
                    assert computed(shape, (z, y, x), overlap) >= best


def test_fit_volume_tiles_keeps_the_configured_tile_when_the_cap_is_below_it():
    assert fit_volume_tiles((100, 200, 200), (48, 96, 96), (6, 12, 12), (4, 8, 8), 1000) == (48, 96, 96)


def test_share_tiles_computes_each_tile_once_between_neighbouring_blocks():
    cfg = load_model("nuclei3d").config
    geo = _geometry(cfg, (256, 256, 256), 3, tile=None, block=None, overlap=0.125, scale=(1.0,) * 3)
    plans = [geo.unit_plan(u) for u in range(len(geo.units))]
    assert len(plans) == 2 and [len(p.tiles) for p in plans] == [6, 6]  # both blocks need the middle row
    jobs = share_tiles(plans)
    assert [len(j) for j in jobs] == [6, 4]  # 10 tiles computed, as many as the grid has
    served = [(u, src, dst) for j in jobs for _, targets in j for u, src, dst in targets]
    wanted = [(p.index, src, dst) for p in plans for _, src, dst in p.tiles]
    assert sorted(map(repr, served)) == sorted(map(repr, wanted))  # every unit gets each of its tiles once


def test_share_tiles_span_bounds_the_units_open_at_once():
    cfg = ModelConfig(name="t", spatial_dims=3, base_channels=4, depth=2, tile=[8, 16, 16])
    geo = _geometry(cfg, (8, 16, 64), 3, tile=(8, 16, 16), block=(8, 16, 8), overlap=0.25, scale=(1.0,) * 3)
    plans = [geo.unit_plan(u) for u in range(len(geo.units))]
    for span in (0, 1, 3):
        jobs = share_tiles(plans, span=span)
        for pos, job in enumerate(jobs):
            for _, targets in job:
                assert all(pos <= u - plans[0].index <= pos + span for u, _, _ in targets)
        served = sorted(repr((u, s, d)) for j in jobs for _, t in j for u, s, d in t)
        assert served == sorted(repr((p.index, s, d)) for p in plans for _, s, d in p.tiles)
    assert sum(map(len, share_tiles(plans, span=0))) == sum(len(p.tiles) for p in plans)
    assert sum(map(len, share_tiles(plans, span=1))) < sum(len(p.tiles) for p in plans)


def test_blocks_sharing_tiles_give_the_one_block_result_and_count_progress():
    torch.manual_seed(0)
    cfg = ModelConfig(name="t3", spatial_dims=3, num_classes=3, base_channels=4, depth=2, tile=[8, 16, 16],
                      output="instances", class_names=["background", "interior", "boundary"],
                      normalization={"kind": "none"})
    model = SkipUNet(cfg).eval()
    image = np.random.default_rng(1).random((40, 40, 48), dtype=np.float32)  # 76800 voxels > 5 x 2048
    whole = run(predict(model, image, output="probabilities", device="cpu", block=image.shape))
    events = []
    parts = run(predict(model, image, output="probabilities", device="cpu", block=(10, 40, 48)),
                callback=events.append)
    assert parts.info["units"] == 4
    np.testing.assert_allclose(parts.probabilities, whole.probabilities, rtol=0, atol=1e-6)
    geo = plan(cfg, image.shape, block=(10, 40, 48))
    g = _geometry(cfg, image.shape, 3, tile=None, block=(10, 40, 48), overlap=0.125, scale=(1.0,) * 3)
    jobs = share_tiles([g.unit_plan(u) for u in range(len(geo["units"]))])
    assert all(isinstance(e, Progress) for e in events) and events[-1].done == events[0].total == sum(map(len, jobs))
    # instances: ids still unique and numbered in unit order
    lab = run(predict(model, image, output="instances", device="cpu", block=(10, 40, 48))).labels
    ids = [int(i) for i in np.unique(lab) if i > 0]
    assert ids == list(range(1, len(ids) + 1))


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
