"""The inference engine: shapes, outputs, errors, devices and progress."""

import numpy as np
import pytest
import torch
from engine_toys import BlobModel, discs

import napari_skipseg
from napari_skipseg.inference.device import available_devices, select_device
from napari_skipseg.inference.engine import Progress, SegmentationError, predict, run
from napari_skipseg.model.config import ModelConfig
from napari_skipseg.model.store import save_model
from napari_skipseg.model.unet import SkipUNet


def tiny(dims=2, in_channels=1, output="semantic", num_classes=None, seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        name=f"tiny{dims}d", spatial_dims=dims, in_channels=in_channels,
        num_classes=num_classes or (3 if output == "instances" else 2),
        base_channels=4, depth=2, output=output,
        tile=[16, 16] if dims == 2 else [8, 16, 16],
    )
    return SkipUNet(cfg).eval()


rng = np.random.default_rng(0)


def _image(*shape):
    return rng.integers(0, 1000, shape).astype(np.uint16)


# --- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "dims", "channel_axis"),
    [
        ((37, 50), 2, None),  # YX
        ((3, 21, 30), 2, None),  # ZYX with a 2D model: slice by slice
        ((2, 2, 19, 23), 2, None),  # TZYX
        ((27, 33, 3), 2, -1),  # RGB into a one-channel model
        ((6, 21, 19), 3, None),  # ZYX with a 3D model
        ((2, 6, 21, 19), 3, None),  # TZYX with a 3D model
    ],
)
@pytest.mark.parametrize("output", ["semantic", "probabilities"])
def test_output_shapes(shape, dims, channel_axis, output):
    image = _image(*shape)
    if channel_axis is not None:
        image = image.astype(np.uint8)
    result = run(predict(tiny(dims), image, channel_axis=channel_axis, output=output, device="cpu"))
    spatial = shape[:-1] if channel_axis is not None else shape
    assert result.output == output
    assert result.device.startswith("cpu")
    if output == "probabilities":
        assert result.labels is None
        assert result.probabilities.shape == (2, *spatial)
        assert result.probabilities.dtype == np.float32
        np.testing.assert_allclose(result.probabilities.sum(axis=0), 1.0, atol=1e-5)
    else:
        assert result.labels.shape == spatial
        assert result.labels.dtype == np.uint8
        assert result.probabilities is None
        assert set(np.unique(result.labels)) <= {0, 1}


def test_semantic_is_argmax_of_probabilities():
    image = _image(40, 44)
    result = run(predict(tiny(), image, output="semantic", keep_probabilities=True, device="cpu"))
    assert result.probabilities.shape == (2, 40, 44)
    np.testing.assert_array_equal(result.labels, result.probabilities.argmax(axis=0))


def test_channel_axis_first_for_multichannel_model():
    image = _image(2, 24, 20)  # CYX
    result = run(predict(tiny(in_channels=2), image, channel_axis=0, output="semantic", device="cpu"))
    assert result.labels.shape == (24, 20)


def test_rgb_equals_grey_for_one_channel_model():
    grey = rng.integers(0, 255, (24, 28)).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    model = tiny()
    a = run(predict(model, grey, output="probabilities", device="cpu")).probabilities
    b = run(predict(model, rgb, channel_axis=-1, output="probabilities", device="cpu")).probabilities
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_stack_slices_are_independent():
    """A 2D model on ZYX gives each slice what it gives that slice alone."""
    model = tiny()
    model.config.normalization = {"kind": "none"}  # percentiles would be taken over the stack
    stack_n = _image(3, 20, 26).astype(np.float32) / 1000
    probs = run(predict(model, stack_n, output="probabilities", batch_size=3, device="cpu")).probabilities
    one = run(predict(model, stack_n[1], output="probabilities", device="cpu")).probabilities
    np.testing.assert_allclose(probs[:, 1], one, atol=1e-5)


# --- instances --------------------------------------------------------------------------------


def test_instances_unique_across_slices():
    yx = (40, 48)
    stack = np.stack(
        [
            discs(yx, [(10, 10), (28, 34)], 5),
            discs(yx, [(12, 30)], 6),
            discs(yx, [(8, 8), (20, 24), (32, 40)], 4),
        ]
    )
    result = run(predict(BlobModel(), stack, output="instances", tile=16, batch_size=3, device="cpu"))
    labels = result.labels
    assert labels.shape == stack.shape
    assert labels.dtype == np.uint32
    ids = [set(np.unique(s)) - {0} for s in labels]
    assert [len(i) for i in ids] == [2, 1, 3]
    assert not (ids[0] & ids[1]) and not (ids[1] & ids[2]) and not (ids[0] & ids[2])
    assert set().union(*ids) == set(range(1, 7))
    np.testing.assert_array_equal(labels > 0, stack > 0)


def test_instances_need_an_instance_model():
    with pytest.raises(SegmentationError, match="semantic classes"):
        run(predict(tiny(), _image(20, 20), output="instances", device="cpu"))


def test_instance_model_semantic_is_foreground():
    image = discs((30, 30), [(15, 15)], 6)
    result = run(predict(BlobModel(), image, output="semantic", device="cpu"))
    np.testing.assert_array_equal(result.labels, image.astype(np.uint8))


def test_postprocess_override():
    image = discs((30, 30), [(15, 15)], 2)  # 13 pixels
    model = BlobModel()
    kept = run(predict(model, image, output="instances", device="cpu")).labels
    assert kept.max() == 1
    dropped = run(predict(model, image, output="instances", postprocess={"min_size": 50}, device="cpu")).labels
    assert dropped.max() == 0


def test_real_instance_model_runs():
    result = run(predict(tiny(output="instances"), _image(2, 30, 30), output="instances", device="cpu"))
    assert result.labels.shape == (2, 30, 30)
    assert result.labels.dtype == np.uint32


# --- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model_kw", "image_shape", "kwargs", "match"),
    [
        ({"dims": 3}, (20, 20), {}, "3D model needs an image with at least 3 spatial axes"),
        ({"dims": 2}, (20, 20, 2), {"channel_axis": -1}, "takes 1 channel"),
        ({"dims": 2, "in_channels": 2}, (20, 20), {}, "takes 2 channels"),
        ({"dims": 2, "in_channels": 2}, (3, 20, 20), {"channel_axis": 0}, "takes 2 channels"),
        ({"dims": 2}, (20, 20), {"mode": "4d"}, "mode must be one of"),
        ({"dims": 2}, (20, 20), {"output": "edges"}, "output must be one of"),
        ({"dims": 2}, (20, 20), {"overlap": 0.7}, "overlap must be between"),
        ({"dims": 2}, (20, 20), {"overlap": -0.1}, "overlap must be between"),
        ({"dims": 2}, (4, 20, 20), {"mode": "3d"}, "2D model; it cannot run in 3d mode"),
        ({"dims": 3}, (4, 20, 20), {"mode": "2d"}, "3D model; it cannot run in 2d mode"),
        ({"dims": 2}, (20, 20), {"channel_axis": 5}, "channel_axis 5 is out of range"),
        ({"dims": 2}, (20, 20), {"tile": (16, 16, 16)}, "tile must be 2 positive sizes"),
        ({"dims": 2}, (20, 20), {"tile": 0}, "tile must be"),
        ({"dims": 2}, (0, 20), {}, "empty"),
    ],
)
def test_segmentation_errors(model_kw, image_shape, kwargs, match):
    image = np.zeros(image_shape, np.float32)
    with pytest.raises(SegmentationError, match=match):
        run(predict(tiny(**model_kw), image, device="cpu", **{"output": "semantic", **kwargs}))


def test_segmentation_error_is_a_value_error():
    assert issubclass(SegmentationError, ValueError)


# --- devices --------------------------------------------------------------------------------------


def test_device_auto_and_cpu():
    assert available_devices()[-1] == "cpu"
    assert select_device("cpu") == "cpu"
    assert select_device("auto") == available_devices()[0]
    if not torch.cuda.is_available():
        assert select_device("auto") in ("cpu", "mps")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present here")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="'cuda' is not available here .*cpu"):
        select_device("cuda")
    with pytest.raises(ValueError, match="not available"):
        run(predict(tiny(), _image(16, 16), output="semantic", device="cuda"))


def test_unknown_device():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        select_device("tpu")


# --- progress and cancellation -----------------------------------------------------------------------


def test_progress_events_monotone_and_complete():
    gen = predict(tiny(), _image(3, 40, 40), output="semantic", tile=16, overlap=0.25, batch_size=3, device="cpu")
    events = []
    result = run(gen, callback=events.append)
    assert all(isinstance(e, Progress) for e in events)
    total = events[0].total
    assert total == 3 * 9  # 3 slices x 3 x 3 tiles
    assert all(e.total == total for e in events)
    done = [e.done for e in events]
    assert done[0] == 0 and done == sorted(done)
    assert done[-1] == total
    assert "cpu" in events[0].info["device"]
    assert result.labels.shape == (3, 40, 40)


@pytest.mark.parametrize("after", [1, 2])
def test_closing_generator_early(after):
    gen = predict(tiny(), _image(2, 40, 40), output="semantic", tile=16, batch_size=1, device="cpu")
    for _ in range(after):
        next(gen)
    gen.close()  # what napari's worker.quit() amounts to
    with pytest.raises(StopIteration):
        next(gen)


# --- convenience API ------------------------------------------------------------------------------------


def test_segment_returns_numpy(tmp_path, monkeypatch):
    image = _image(24, 30)
    model = tiny()
    labels = napari_skipseg.segment(image, model=model, output="semantic", device="cpu")
    assert isinstance(labels, np.ndarray) and labels.shape == (24, 30)
    probs = napari_skipseg.segment(image, model=model, output="probabilities", device="cpu")
    assert isinstance(probs, np.ndarray) and probs.shape == (2, 24, 30)
    # by name, from the user's model folder
    monkeypatch.setenv("SKIPSEG_HOME", str(tmp_path))
    save_model(model, tmp_path / "models" / "tiny")
    by_name = napari_skipseg.segment(image, model="tiny", output="semantic", device="cpu")
    assert isinstance(by_name, np.ndarray) and by_name.shape == (24, 30)


def test_dask_input():
    da = pytest.importorskip("dask.array")
    image = _image(2, 30, 30)
    model = tiny()
    a = run(predict(model, image, output="probabilities", device="cpu")).probabilities
    b = run(predict(model, da.from_array(image, chunks=(1, 30, 30)), output="probabilities", device="cpu")).probabilities
    np.testing.assert_allclose(a, b, atol=1e-6)
