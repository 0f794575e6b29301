"""Odd and hostile images: every one segments or fails with one clear error, never another
exception; a job leaves the caller's model as it found it; memory does not grow."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import napari_skipseg
from napari_skipseg.inference.engine import SegmentationError, predict, run
from napari_skipseg.inference.preprocess import normalize, percentile_range
from napari_skipseg.model.config import ModelConfig
from napari_skipseg.model.unet import SkipUNet


def make_tiny_model(name="tiny", spatial_dims=2, output="instances"):
    """Like tests/conftest.py's helper: tile 64 (2D) or 16 x 32 x 32 (3D), untrained."""
    torch.manual_seed(0)
    cfg = ModelConfig(
        name=name, spatial_dims=spatial_dims, num_classes=3 if output == "instances" else 2,
        base_channels=4, depth=2, output=output,
        tile=[64, 64] if spatial_dims == 2 else [16, 32, 32],
    )
    return SkipUNet(cfg).eval()


@pytest.fixture(scope="module")
def model2d():
    return make_tiny_model("tiny", spatial_dims=2, output="instances")


def _seg(model, image, **kw):
    return run(predict(model, image, device="cpu", **{"output": "semantic", **kw}))


# --- pixel values ------------------------------------------------------------------------------


def test_nan_and_inf_pixels_segment_as_zero_after_normalisation(model2d):
    rng = np.random.default_rng(0)
    image = rng.random((40, 48)).astype(np.float32) * 100
    bad = np.zeros(image.shape, bool)
    bad[5:15, 5:20] = True
    image_nan = image.copy()
    image_nan[bad] = np.nan
    image_nan[30, 30] = np.inf
    image_nan[31, 31] = -np.inf
    result = _seg(model2d, image_nan, output="probabilities")
    assert np.isfinite(result.probabilities).all()
    # the same as that image with those pixels set to the low percentile (normalised 0)
    lo, hi = percentile_range(image_nan)
    assert np.isfinite([lo, hi]).all()
    same = image_nan.copy()
    same[~np.isfinite(same)] = lo
    expected = _seg(model2d, same, output="probabilities").probabilities
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-5)
    norm = normalize(image_nan, lo, hi)
    assert (norm[bad] == 0).all() and norm[30, 30] == 0 and norm[31, 31] == 0
    labels = _seg(model2d, image_nan, output="instances").labels
    assert labels.shape == image.shape


def test_all_nan_image_segments_as_background(model2d):
    image = np.full((20, 24), np.nan, np.float32)
    result = _seg(model2d, image, output="probabilities")
    assert np.isfinite(result.probabilities).all()
    zeros = _seg(model2d, np.zeros((20, 24), np.float32), output="probabilities")
    np.testing.assert_allclose(result.probabilities, zeros.probabilities, atol=1e-6)


@pytest.mark.parametrize("value", [0, 7, 65535, -3.5, 1e30])
def test_constant_images_without_division_by_zero(model2d, value):
    dtype = np.uint16 if value == 65535 else np.float64
    image = np.full((3, 20, 24), value, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # 0/0 or overflow would warn
        result = _seg(model2d, image, output="instances", keep_probabilities=True)
    assert result.labels.shape == image.shape
    assert np.isfinite(result.probabilities).all()


# --- shapes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (5, 1), (3, 2, 2), (63, 65), (1, 1, 1)])
def test_images_smaller_than_a_tile(model2d, shape):
    labels = _seg(model2d, np.arange(np.prod(shape), dtype=np.float32).reshape(shape), output="instances").labels
    assert labels.shape == shape


@pytest.mark.parametrize("shape", [(1, 100_000), (100_000, 1)])
def test_long_strips_segment(model2d, shape):
    """A 1 x 100000 strip is tiled along its length (one row of 64-pixel tiles)."""
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, shape).astype(np.uint8)
    events = []
    result = run(predict(model2d, image, output="semantic", batch_size=32, device="cpu"), events.append)
    assert result.labels.shape == shape
    assert events[-1].done == events[-1].total > 1000  # many tiles, all of them run


def test_3d_model_on_thin_volumes():
    model = make_tiny_model("tiny3d", spatial_dims=3, output="semantic")
    for shape in [(1, 20, 20), (2, 1, 30), (1, 1, 1)]:
        assert _seg(model, np.ones(shape, np.float32)).labels.shape == shape


@pytest.mark.parametrize(
    ("shape", "kw", "match"),
    [
        ((100,), {}, "2D model needs an image with at least 2 spatial axes; got shape \\(100,\\)"),
        ((), {}, "needs an image with at least 2 spatial axes"),
        ((2, 2, 2, 2, 2, 4, 4), {}, "more than 5 axes"),
        ((1, 1, 1, 1, 1, 1, 4, 4), {}, "more than 5 axes"),
        ((0, 16, 16), {}, "the image is empty"),
        ((16, 0), {}, "the image is empty"),
        ((16, 16, 0), {"channel_axis": -1}, "channel axis has length 0"),
    ],
)
def test_bad_shapes_are_clear_errors(model2d, shape, kw, match):
    with pytest.raises(SegmentationError, match=match):
        _seg(model2d, np.zeros(shape, np.float32), **kw)


def test_six_axes_with_a_channel_axis_segment(model2d):
    image = np.zeros((1, 2, 1, 8, 8, 3), np.uint8)  # 5 axes besides RGB
    assert _seg(model2d, image, channel_axis=-1).labels.shape == image.shape[:-1]


# --- pixel types -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [bool, np.int8, np.int64, np.uint64, np.float16, np.float32, np.float64])
def test_real_dtypes_segment(model2d, dtype):
    rng = np.random.default_rng(2)
    if dtype is bool:
        image = rng.random((24, 30)) > 0.5
    elif np.dtype(dtype).kind == "f":
        image = (rng.random((24, 30)) * 1000).astype(dtype)
    else:
        info = np.iinfo(dtype)
        image = rng.integers(info.min // 2, info.max // 2, (24, 30), dtype=dtype, endpoint=True)
    result = _seg(model2d, image, output="instances", keep_probabilities=True)
    assert result.labels.shape == (24, 30) and np.isfinite(result.probabilities).all()


@pytest.mark.parametrize(
    ("image", "match"),
    [
        (np.ones((16, 16), np.complex64), r"complex pixels \(complex64\) are not supported; segment the magnitude"),
        (np.ones((16, 16), np.complex128), "complex pixels"),
        (np.full((16, 16), "a"), "pixels of type <U1 are not numbers"),
        (np.empty((16, 16), object), "pixels of type object are not numbers"),
        (np.zeros((16, 16), "datetime64[s]"), "are not numbers"),
    ],
)
def test_non_real_dtypes_are_clear_errors(model2d, image, match):
    with pytest.raises(SegmentationError, match=match):
        _seg(model2d, image)
    with pytest.raises(SegmentationError, match=match):
        napari_skipseg.segment(image, model=model2d, output="semantic", device="cpu")


def test_nested_lists_are_arrays(model2d):
    assert _seg(model2d, [[0, 1, 2, 3]] * 4).labels.shape == (4, 4)


# --- any array at all: segments or a clear error ---------------------------------------------------

DTYPES = [bool, np.uint8, np.int8, np.uint16, np.int32, np.int64, np.uint64,
          np.float16, np.float32, np.float64, np.complex64]


@st.composite
def odd_images(draw):
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(st.one_of(
        hnp.array_shapes(min_dims=2, max_dims=4, min_side=1, max_side=9),
        hnp.array_shapes(min_dims=0, max_dims=7, min_side=0, max_side=5),
        st.sampled_from([(1, 300), (300, 1), (1, 1), (2, 1, 70), (1, 1, 1, 1, 1, 1)]),
    ))
    assume(int(np.prod(shape)) <= 1500)
    elements = None
    if dtype.kind == "f":
        elements = st.one_of(
            hnp.from_dtype(dtype),  # NaN, Inf, subnormals, extremes
            st.sampled_from([0.0, 1.0, -1.0]),
        )
    image = draw(hnp.arrays(dtype, shape, elements=elements))
    channel_axis = draw(st.sampled_from([None, None, -1, 0]))
    output = draw(st.sampled_from(["instances", "semantic", "probabilities"]))
    return image, channel_axis, output


@settings(
    max_examples=int(os.environ.get("SKIPSEG_HYPOTHESIS_EXAMPLES", 50)),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
@given(case=odd_images())
def test_any_array_segments_or_fails_clearly(model2d, case):
    image, channel_axis, output = case
    try:
        result = run(predict(model2d, image, channel_axis=channel_axis, output=output, device="cpu",
                             batch_size=8))
    except (SegmentationError, ValueError) as err:
        assert str(err).strip(), "an error without a message"
        return
    shape = image.shape
    if channel_axis is not None:
        shape = shape[: channel_axis % image.ndim] + shape[channel_axis % image.ndim + 1:]
    if output == "probabilities":
        assert result.probabilities.shape == (3, *shape)
        assert np.isfinite(result.probabilities).all()
    else:
        assert result.labels.shape == shape


# --- jobs leave no trace -----------------------------------------------------------------------------


@pytest.mark.parametrize("stop_after", [None, 0, 1, 3])
def test_model_state_restored_after_job_or_cancel(stop_after):
    model = make_tiny_model("tiny", spatial_dims=2, output="instances")
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = predict(model, np.random.default_rng(3).random((3, 40, 40)), output="semantic", tile=16,
                  batch_size=1, device="cpu")
    if stop_after is None:
        run(gen)
    else:
        for _ in range(stop_after + 1):
            next(gen)
        gen.close()  # what cancelling does
    assert model.training  # train mode given back
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # batch-norm statistics untouched


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_memory_released_after_jobs():
    model = make_tiny_model("tiny", spatial_dims=2, output="instances")
    image = np.random.default_rng(4).random((4, 256, 256)).astype(np.float32)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    for stop in (None, 1):
        gen = predict(model, image, output="instances", device="cuda", tile=64)
        if stop is None:
            run(gen)
        else:
            next(gen), next(gen)
            gen.close()
        torch.cuda.synchronize()
        assert torch.cuda.memory_allocated() == base  # weights went back to the CPU too
        assert torch.cuda.memory_reserved() == 0  # the cache was emptied
        assert next(model.parameters()).device.type == "cpu"


def test_repeated_segmentation_does_not_grow_memory():
    """10 runs of the same job in one process: RSS settles (see benchmarks/bench_memory.py)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from bench_memory import MIB, rss_bytes

    model = make_tiny_model("tiny", spatial_dims=2, output="instances")
    image = np.random.default_rng(5).integers(0, 1000, (4, 128, 128)).astype(np.uint16)
    napari_skipseg.segment(image, model=model, device="cpu")  # warm-up: caches, lazy imports
    figures = []
    for _ in range(10):
        napari_skipseg.segment(image, model=model, device="cpu")
        figures.append(rss_bytes())
    growth = (min(figures[-3:]) - min(figures[:3])) / MIB  # transient allocator peaks do not count
    assert growth < 40, f"RSS grew by {growth:.1f} MiB over 10 runs: {[round(f / MIB) for f in figures]}"
