"""Resampling between the input grid and the working grid, piece by piece."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_skipseg.inference.resample import Resampling, parse_scale


def smooth(shape, seed=0, sigma=2.0):
    rng = np.random.default_rng(seed)
    return ndi.gaussian_filter(rng.random(shape).astype(np.float32), sigma)


def whole(shape):
    return tuple(slice(0, n) for n in shape)


# --- parse_scale ------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "ndim", "expected"), [
    (2, 2, (2.0, 2.0)),
    (0.5, 3, (0.5, 0.5, 0.5)),
    ((2,), 2, (2.0, 2.0)),
    ((1, 2, 0.5), 3, (1.0, 2.0, 0.5)),
    (np.float32(1.5), 2, (1.5, 1.5)),
])
def test_parse_scale(value, ndim, expected):
    assert parse_scale(value, ndim) == expected


@pytest.mark.parametrize(("value", "match"), [
    (float("nan"), "between"),
    (float("inf"), "between"),
    (0, "between"),
    (-2, "between"),
    (1000, "between"),
    ((1, 2, 3), "takes 1 or 2 values"),
    ("big", "a number"),
    (None, "a number"),
])
def test_parse_scale_refuses(value, match):
    with pytest.raises(ValueError, match=f"scale.*{match}"):
        parse_scale(value, 2)


# --- the mapping -------------------------------------------------------------------------------


def test_working_shape_and_zoom():
    r = Resampling((37, 50), (2.0, 0.3))
    assert r.working == (74, 15)
    assert r.zoom == (2.0, 15 / 50)
    assert r.sigma[0] == 0 and r.sigma[1] > 0  # smoothing only along the axis that shrinks
    assert not r.identity
    assert Resampling((5, 5), (0.01, 1)).working == (1, 5)  # never empty
    assert Resampling((37, 50), (1.001, 1.0)).identity  # rounds to the same grid


def test_identity_returns_its_input_untouched():
    r = Resampling((20, 30), (1.0, 1.0))
    data = smooth((1, 20, 30))
    assert r.to_working(data, whole((20, 30)), whole((20, 30))) is data
    assert r.to_input(data, whole((20, 30)), whole((20, 30))) is data
    block = (slice(3, 9), slice(0, 30))
    assert r.working_block(block) == block and r.input_region(block) == block
    assert r.area_factor() == 1.0


def test_upsampling_whole_image_equals_scipy_zoom():
    x = smooth((1, 21, 34))
    r = Resampling((21, 34), (2.0, 3.0))
    up = r.to_working(x, whole(x.shape[1:]), whole(r.working))
    ref = ndi.zoom(x[0], r.zoom, order=1, grid_mode=True, mode="nearest")
    np.testing.assert_allclose(up[0], ref, atol=1e-6)


@pytest.mark.parametrize(("shape", "scale"), [
    ((37, 50), (2.0, 2.0)),
    ((37, 50), (0.5, 0.3)),
    ((31, 29), (3.0, 0.45)),
    ((9, 21, 30), (3.0, 1.0, 0.7)),
    ((11, 16, 13), (0.5, 2.5, 1.5)),
])
def test_pieces_equal_the_whole(shape, scale):
    """A region resampled alone from the input pixels :meth:`input_region` names equals that
    region of the whole image resampled at once; the same for mapping back."""
    x = smooth((2, *shape))
    r = Resampling(shape, scale)
    up = r.to_working(x, whole(shape), whole(r.working))
    down = r.to_input(up, whole(r.working), whole(shape))
    for frac in ((0.0, 0.4), (0.3, 0.7), (0.55, 1.0)):
        region = tuple(slice(int(w * frac[0]), max(int(w * frac[0]) + 1, int(w * frac[1]))) for w in r.working)
        read = r.input_region(region)
        piece = r.to_working(x[(slice(None), *read)], read, region)
        np.testing.assert_allclose(piece, up[(slice(None), *region)], atol=1e-6)
        block = tuple(slice(int(n * frac[0]), max(int(n * frac[0]) + 1, int(n * frac[1]))) for n in shape)
        wb = r.working_block(block)
        back = r.to_input(up[(slice(None), *wb)], wb, block)
        assert back.shape == (2, *(b.stop - b.start for b in block))
        np.testing.assert_allclose(back, down[(slice(None), *block)], atol=1e-6)


@pytest.mark.parametrize(("shape", "scale"), [((41, 37), (2.0, 2.0)), ((41, 37), (3.0, 1.5)),
                                              ((9, 23, 21), (2.0, 1.0, 1.5))])
def test_round_trip_of_a_smooth_image_is_close(shape, scale):
    x = smooth((1, *shape), sigma=3.0)
    r = Resampling(shape, scale)
    back = r.to_input(r.to_working(x, whole(shape), whole(r.working)), whole(r.working), whole(shape))
    assert back.shape == x.shape and back.dtype == np.float32
    assert np.abs(back - x).max() < 0.02 * np.ptp(x)


def test_probabilities_still_sum_to_one():
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(3, 30, 40))
    probs = (np.exp(logits) / np.exp(logits).sum(0)).astype(np.float32)
    for scale in ((2.0, 2.0), (0.4, 0.7)):
        r = Resampling((17, 23), scale)
        # probs live on the working grid; map back onto 17 x 23
        work = probs[:, : r.working[0], : r.working[1]]
        back = r.to_input(np.ascontiguousarray(work), whole(r.working), whole((17, 23)))
        np.testing.assert_allclose(back.sum(0), 1.0, atol=1e-5)
        assert back.min() >= 0


def test_shrinking_smooths_first():
    """A checkerboard shrunk by 1/3 would alias into a pattern; smoothed first, it is grey."""
    board = (np.indices((60, 60)).sum(0) % 2).astype(np.float32)[None]
    r = Resampling((60, 60), (1 / 3, 1 / 3))
    small = r.to_working(board, whole((60, 60)), whole(r.working))
    assert small.shape == (1, 20, 20)
    assert np.abs(small - 0.5).max() < 0.05


def test_area_factor():
    assert Resampling((40, 40), (0.5, 0.5)).area_factor() == pytest.approx(4.0)
    assert Resampling((10, 40, 40), (1.0, 2.0, 2.0)).area_factor() == pytest.approx(0.25)
