"""npe2 reader and writer hooks, called as plain functions (no viewer)."""

import numpy as np
import pytest
import tifffile

from napari_skipseg._reader import get_reader, read_layers
from napari_skipseg._writer import write_image, write_labels
from napari_skipseg.io import ImageMeta, read_image
from napari_skipseg.io import write_image as io_write

rng = np.random.default_rng(1)


@pytest.fixture
def czyx_file(tmp_path):
    data = rng.integers(0, 1000, (2, 3, 16, 20)).astype(np.uint16)
    meta = ImageMeta("CZYX", (1.0, 2.0, 0.5, 0.25), "micrometer")
    return io_write(tmp_path / "cells.ome.tif", data, meta), data


def test_get_reader_accepts_tiff_and_one_element_list(czyx_file):
    path, _ = czyx_file
    assert callable(get_reader(path))
    assert callable(get_reader([path]))


@pytest.mark.parametrize("path", ["image.png", "volume.mha", ["a.tif", "b.tif"], []])
def test_get_reader_declines(path):
    assert get_reader(path) is None


def test_read_channels_split(czyx_file):
    path, data = czyx_file
    [(out, kwargs, layer_type)] = get_reader([path])([path])
    assert layer_type == "image"
    np.testing.assert_array_equal(out, data)
    assert kwargs["channel_axis"] == 0
    assert kwargs["scale"] == pytest.approx((2.0, 0.5, 0.25))
    assert kwargs["rgb"] is False
    assert kwargs["name"] == ["cells [0]", "cells [1]"]
    assert len(kwargs["metadata"]) == 2
    assert kwargs["metadata"][0] is not kwargs["metadata"][1]
    for md in kwargs["metadata"]:
        assert md["skipseg"] == {
            "axes": "ZYX",
            "spacing": pytest.approx((2.0, 0.5, 0.25)),
            "unit": "micrometer",
            "path": path,
            "extra": {},
        }


def test_read_rgb(tmp_path):
    path = tmp_path / "photo.tif"
    tifffile.imwrite(path, rng.integers(0, 255, (16, 20, 3)).astype(np.uint8), photometric="rgb")
    [(out, kwargs, _)] = read_layers(str(path))
    assert out.shape == (16, 20, 3)
    assert kwargs["rgb"] is True
    assert kwargs["scale"] == (1.0, 1.0)
    assert "channel_axis" not in kwargs
    assert kwargs["metadata"]["skipseg"]["axes"] == "YXS"


def test_layer_data_accepted_by_napari(czyx_file):
    pytest.importorskip("napari")
    from napari.layers import Image
    from napari.layers.utils.stack_utils import split_channels

    path, data = czyx_file
    [(out, kwargs, _)] = read_layers(path)
    layers = [
        Image(d, **kw) for d, kw, _ in split_channels(out, kwargs.pop("channel_axis"), **kwargs)
    ]
    assert [layer.name for layer in layers] == ["cells [0]", "cells [1]"]
    for layer in layers:
        assert layer.data.shape == data.shape[1:]
        assert tuple(layer.scale) == pytest.approx((2.0, 0.5, 0.25))
        assert layer.metadata["skipseg"]["axes"] == "ZYX"


def test_write_labels_keeps_layer_spacing(tmp_path, czyx_file):
    path, _ = czyx_file
    [(_, kwargs, _)] = read_layers(path)
    labels = rng.integers(0, 5, (3, 16, 20)).astype(np.int64)  # napari Labels default dtype
    attributes = {"name": "mask", "scale": kwargs["scale"], "metadata": kwargs["metadata"][0]}
    written = write_labels(str(tmp_path / "mask.tif"), labels, attributes)
    assert written == [str(tmp_path / "mask.tif")]
    out, meta = read_image(written[0])
    np.testing.assert_array_equal(out, labels)
    assert (meta.axes, meta.unit) == ("ZYX", "micrometer")
    assert meta.spacing == pytest.approx((2.0, 0.5, 0.25))


def test_write_image_without_metadata_uses_ndim_and_scale(tmp_path):
    data = rng.random((2, 3, 8, 9), dtype=np.float32)
    [path] = write_image(
        str(tmp_path / "t.tif"), data, {"name": "t", "scale": (1.0, 3.0, 0.5, 0.5)}
    )
    out, meta = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert (meta.axes, meta.spacing) == ("TZYX", (1.0, 3.0, 0.5, 0.5))


def test_write_rgb_layer(tmp_path):
    data = rng.integers(0, 255, (8, 9, 3)).astype(np.uint8)
    [path] = write_image(str(tmp_path / "rgb.tif"), data, {"rgb": True, "scale": (0.2, 0.2)})
    out, meta = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert meta.axes == "YXS"
    assert meta.spatial_spacing == pytest.approx((0.2, 0.2))


def test_write_ignores_metadata_that_does_not_fit(tmp_path):
    # Labels drawn on a ZYX image but saved from a 2D layer.
    attributes = {"scale": (0.5, 0.5), "metadata": {"skipseg": {"axes": "ZYX", "unit": "nm"}}}
    [path] = write_labels(str(tmp_path / "l.tif"), np.ones((8, 9), np.uint8), attributes)
    _, meta = read_image(path)
    assert (meta.axes, meta.spacing) == ("YX", (0.5, 0.5))
