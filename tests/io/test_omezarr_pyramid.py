"""OME-Zarr output: a pyramid for large planes, NGFF metadata from ome-zarr's writer, and the
class names of semantic labels as NGFF label properties (read back by ome-zarr and by us)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from napari_skipseg._reader import get_reader
from napari_skipseg._writer import write_labels
from napari_skipseg.io import ImageMeta, read_image
from napari_skipseg.io.zarr_io import (
    PYRAMID_MIN,
    pyramid_shapes,
    read_levels,
    write_labels_next_to,
    write_ome_zarr,
)

ome_zarr = pytest.importorskip("ome_zarr")


def test_pyramid_shapes():
    assert pyramid_shapes((3, 64, 64), "ZYX") == [(3, 64, 64)]  # small: one level
    assert pyramid_shapes((2, 2100, 1500), "ZYX") == [(2, 2100, 1500), (2, 1050, 750), (2, 525, 375)]
    assert pyramid_shapes((2100, 1500, 3), "YXC") == [(2100, 1500, 3)]  # not ...YX: one level
    assert all(max(s[-2:]) > PYRAMID_MIN for s in pyramid_shapes((4097, 10), "YX")[:-1])


def _ome_read(path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    return list(Reader(parse_url(str(path)))())


def test_large_image_gets_a_pyramid_that_ome_zarr_reads(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 60000, (2, 2101, 1501)).astype(np.uint16)
    meta = ImageMeta("ZYX", (3.0, 0.5, 0.25), "micrometer")
    path = write_ome_zarr(tmp_path / "big.zarr", data, meta)
    levels = read_levels(path)
    assert [lv.shape for lv in levels] == [(2, 2101, 1501), (2, 1051, 751), (2, 526, 376)]
    np.testing.assert_array_equal(levels[0][:], data)
    # 2 x 2 means (the odd last row/column averaged with itself)
    expect = data[:, :2, :2].astype(float).mean(axis=(1, 2))
    np.testing.assert_array_equal(levels[1][:, 0, 0], np.rint(expect).astype(np.uint16))
    edge = data[:, 2100, 1500]
    np.testing.assert_array_equal(levels[1][:, 1050, 750], edge)
    node = _ome_read(path)[0]
    assert len(node.data) == 3 and node.data[2].shape == (2, 526, 376)
    scales = [t[0]["scale"] for t in node.metadata["coordinateTransformations"]]
    assert scales == [[3.0, 0.5, 0.25], [3.0, 1.0, 0.5], [3.0, 2.0, 1.0]]
    # napari: a multiscale layer
    [(layer_data, kwargs, kind)] = get_reader(path)(path)
    assert kind == "image" and kwargs["multiscale"] and len(layer_data) == 3
    out, back = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert back.spacing == pytest.approx((3.0, 0.5, 0.25))


def test_label_pyramid_has_no_new_values_and_names_its_classes(tmp_path):
    image = np.zeros((1100, 1030), np.uint16)
    path = write_ome_zarr(tmp_path / "img.zarr", image, ImageMeta("YX", (0.5, 0.5), "micrometer"))
    labels = np.zeros((1100, 1030), np.uint8)
    labels[100:700, 50:600] = 1
    labels[300:1000, 500:900] = 2
    dest = write_labels_next_to(path, "classes", labels, class_names=["membrane", "cell interior", "mito"])
    levels = read_levels(dest)
    assert len(levels) == 2
    np.testing.assert_array_equal(levels[1][:], labels[::2, ::2])
    attrs = dict(zarr.open_group(dest, mode="r").attrs)["ome"]
    assert attrs["image-label"]["properties"] == [
        {"label-value": 0, "class": "membrane"}, {"label-value": 1, "class": "cell interior"},
        {"label-value": 2, "class": "mito"}]
    # ome-zarr finds the labels and their properties
    nodes = _ome_read(path)
    label_nodes = [n for n in nodes if n.metadata.get("properties")]
    assert label_nodes and label_nodes[0].metadata["properties"][1] == {"class": "cell interior"}
    # napari (our reader): the labels layer carries the class names as features
    layers = get_reader(path)(path)
    (data, kwargs, kind) = layers[-1]
    assert kind == "labels" and kwargs["multiscale"]
    assert kwargs["features"] == {"index": [0, 1, 2], "class": ["membrane", "cell interior", "mito"]}


def test_napari_writer_saves_the_class_names_of_a_semantic_layer(tmp_path):
    from napari_skipseg.layers import semantic_display

    labels = np.zeros((40, 50), np.uint8)
    labels[10:20, 10:30] = 1
    features = semantic_display(["membrane", "cell interior"])["features"]
    [path] = write_labels(str(tmp_path / "sem.zarr"), labels, {"name": "sem", "features": features,
                                                                 "scale": (1.0, 1.0)})
    attrs = dict(zarr.open_group(path, mode="r").attrs)
    assert attrs["ome"]["image-label"]["properties"][0] == {"label-value": 0, "class": "membrane"}
    assert attrs["napari_skipseg"]["label"] is True
    # saved again over our own labels store: allowed, and still named
    write_labels(path, labels, {"name": "sem", "features": features})
    assert dict(zarr.open_group(path, mode="r").attrs)["ome"]["image-label"]["properties"][1]["class"] == "cell interior"


def test_cli_semantic_labels_name_their_classes(model_home, tmp_path):
    from napari_skipseg.cli import main
    from napari_skipseg.io import write_image

    rng = np.random.default_rng(1)
    src = write_image(tmp_path / "img.zarr", rng.normal(size=(2, 32, 32)).astype(np.float32),
                      ImageMeta("ZYX", (1.0, 0.5, 0.5)))
    assert main(["segment", src, "-o", src, "--model", "tiny", "--device", "cpu", "-q", "--kind", "semantic",
                 "--labels-name", "classes"]) == 0
    attrs = dict(zarr.open_group(f"{src}/labels/classes", mode="r").attrs)["ome"]
    assert [p["class"] for p in attrs["image-label"]["properties"]] == ["background", "interior", "boundary"]
