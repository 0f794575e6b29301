"""Tile grids, the blending window, and seamless blending through the engine."""

import numpy as np
import pytest
import torch

from napari_skipseg.inference.engine import VOLUME_TILE_GROW, plan, predict, run
from napari_skipseg.inference.tiling import (
    blend_window,
    fit_tile,
    fit_tile_volume,
    tile_grid,
    tile_starts,
)
from napari_skipseg.model.config import ModelConfig


@pytest.mark.parametrize(
    ("size", "tile", "overlap"),
    [(100, 32, 4), (100, 32, 0), (33, 32, 8), (64, 32, 16), (7, 16, 2), (16, 16, 4), (257, 64, 8), (5, 2, 1)],
)
def test_tile_starts_cover_with_overlap(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    length = min(tile, size)
    assert starts[0] == 0
    assert starts[-1] + length == size  # the last tile ends at the border, not past it
    assert starts == sorted(set(starts))
    covered = np.zeros(size, int)
    for s in starts:
        assert 0 <= s and s + length <= size
        covered[s : s + length] += 1
    assert covered.min() >= 1
    for a, b in zip(starts, starts[1:], strict=False):
        assert a + length - b >= overlap  # neighbours share at least `overlap` pixels
        assert b > a


@pytest.mark.parametrize(
    ("n", "t", "m"),
    [(256, 128, 8), (50, 48, 8), (128, 96, 8), (128, 48, 4), (696, 512, 16), (512, 512, 16), (1024, 512, 16),
     (20000, 512, 16), (3, 64, 8), (65, 64, 1), (1000, 100, 7)],
)
def test_fit_tile_never_computes_more(n, t, m):
    overlap = 0.125
    (size,) = fit_tile((n,), (t,), overlap, (m,))
    padded = -(-size // m) * m
    k = len(tile_starts(n, size, int(round(size * overlap))))
    k0 = len(tile_starts(n, t, int(round(t * overlap))))
    assert size <= n and size <= max(t, int(t * 1.25))
    assert size == n or size % m == 0  # what the network pads to anyway (or the whole axis)
    assert k * padded <= k0 * (-(-min(t, n) // m) * m)  # never more pixels through the network
    if n <= t:
        assert size == n


def test_fit_tile_examples():
    # 256 with tiles of 128: 3 tiles (384 computed) -> 2 of 144 (288)
    assert fit_tile((256, 256, 256), (128, 128, 128), 0.125, (8, 8, 8)) == (144, 144, 144)
    # a hippocampus volume a little wider than the tile: one tile instead of two
    assert fit_tile((35, 50, 35), (48, 48, 64), 0.125, (8, 8, 8)) == (35, 50, 35)
    assert fit_tile((512, 512), (512, 512), 0.125, (16, 16)) == (512, 512)


def test_default_tile_is_fitted_and_explicit_tile_kept():
    cfg = ModelConfig(name="t", spatial_dims=3, depth=3, base_channels=4, tile=[32, 64, 64])
    cap = int(VOLUME_TILE_GROW * 32 * 64 * 64)
    assert plan(cfg, (100, 128, 128))["tile"] == fit_tile_volume((100, 128, 128), (32, 64, 64), 0.125,
                                                                 cfg.size_multiple(), cap)
    assert plan(cfg, (100, 128, 128))["tile"] != (32, 64, 64)
    assert plan(cfg, (100, 128, 128), tile=(32, 64, 64))["tile"] == (32, 64, 64)
    # the overlap is part of the fit: plan and predict agree for any overlap
    assert plan(cfg, (100, 128, 128), overlap=0.25)["tile"] == fit_tile_volume((100, 128, 128), (32, 64, 64), 0.25,
                                                                               cfg.size_multiple(), cap)
    # 2D: fitted per axis
    cfg2 = ModelConfig(name="t2", spatial_dims=2, depth=3, base_channels=4, tile=[128, 128])
    assert plan(cfg2, (300, 300))["tile"] == fit_tile((300, 300), (128, 128), 0.125, cfg2.size_multiple())


def test_tile_starts_small_image_is_one_tile():
    assert tile_starts(10, 32, 4) == [0]
    assert tile_starts(32, 32, 4) == [0]


@pytest.mark.parametrize(
    ("shape", "tile", "overlap"),
    [((50, 70), (32, 32), (4, 4)), ((10, 70), (32, 32), (4, 8)), ((9, 20, 33), (8, 16, 16), (2, 4, 4))],
)
def test_tile_grid_fixed_shape_and_cover(shape, tile, overlap):
    tiles = tile_grid(shape, tile, overlap)
    expected = tuple(min(t, n) for t, n in zip(tile, shape, strict=True))
    count = np.zeros(shape, int)
    for sl in tiles:
        assert len(sl) == len(shape)
        assert tuple(s.stop - s.start for s in sl) == expected
        count[sl] += 1
    assert count.min() >= 1
    assert len(tiles) == np.prod([len(tile_starts(n, t, o)) for n, t, o in zip(shape, tile, overlap, strict=True)])


@pytest.mark.parametrize(("shape", "overlap"), [((32, 32), (4, 4)), ((16, 24), (2, 6)), ((8, 16, 16), (2, 4, 4)), ((12,), (0,))])
def test_blend_window(shape, overlap):
    w = blend_window(shape, overlap)
    assert w.shape == shape
    assert w.dtype == np.float32
    assert (w > 0).all()
    assert w.max() == pytest.approx(1.0)
    for axis in range(len(shape)):
        np.testing.assert_allclose(w, np.flip(w, axis), rtol=0, atol=1e-7)
    if any(overlap):
        assert w.min() < 0.5  # borders are down-weighted
    else:
        assert (w == 1).all()
    assert not w.flags.writeable  # cached, so it must not be changed in place


def test_blend_window_ramp_is_monotone():
    w = blend_window((40,), (10,))
    assert np.all(np.diff(w[:10]) > 0)
    assert (w[10:30] == 1).all()


# --- seamless blending: a per-pixel model must come back exactly -------------------------


class PixelwiseModel(torch.nn.Module):
    """A real network whose output at a pixel depends on that pixel only: logits [0, x].

    Its class-1 probability is sigmoid(x), so any tile grid and any blending of tiles must
    reproduce sigmoid(image) exactly, seams included.
    """

    def __init__(self, spatial_dims=2):
        super().__init__()
        self.config = ModelConfig(
            name="pixelwise", spatial_dims=spatial_dims, num_classes=2, base_channels=4, depth=2,
            normalization={"kind": "none"},
        )
        self.scale = torch.nn.Parameter(torch.ones(()))

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), self.scale * x], dim=1)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x.astype(np.float64)))


@pytest.mark.parametrize(
    ("shape", "tile", "overlap", "batch_size"),
    [
        ((37, 50), 16, 0.125, 1),
        ((37, 50), 16, 0.5, 3),
        ((37, 50), (12, 20), 0.25, 4),
        ((61, 29), 24, 0.0, 2),
        ((9, 11), 16, 0.25, 1),  # image smaller than a tile
        ((3, 37, 50), 16, 0.25, 1),  # ZYX, slice by slice
        ((3, 37, 50), 16, 0.25, 3),  # ZYX, batches spanning slices
        ((5, 23, 17), 8, 0.375, 3),
    ],
)
def test_blending_reproduces_pixelwise_model(shape, tile, overlap, batch_size):
    rng = np.random.default_rng(0)
    image = rng.normal(0, 2, shape).astype(np.float32)
    result = run(
        predict(PixelwiseModel(), image, output="probabilities", tile=tile, overlap=overlap,
                batch_size=batch_size, device="cpu")
    )
    probs = result.probabilities
    assert probs.shape == (2, *shape)
    assert np.isfinite(probs).all()
    expected = _sigmoid(image)
    np.testing.assert_allclose(probs[1], expected, rtol=0, atol=1e-5)
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, rtol=0, atol=1e-5)
    # and it can be inverted back to the input
    p = np.clip(probs[1].astype(np.float64), 1e-12, 1 - 1e-12)
    np.testing.assert_allclose(np.log(p / (1 - p)), image, atol=2e-3 * (1 + np.abs(image).max()))


def test_blending_reproduces_pixelwise_model_3d():
    rng = np.random.default_rng(1)
    image = rng.normal(0, 2, (13, 21, 19)).astype(np.float32)
    result = run(
        predict(PixelwiseModel(spatial_dims=3), image, output="probabilities", tile=(8, 12, 8),
                overlap=0.25, batch_size=2, device="cpu")
    )
    np.testing.assert_allclose(result.probabilities[1], _sigmoid(image), rtol=0, atol=1e-5)
