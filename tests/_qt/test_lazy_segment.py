"""A lazily opened (dask / OME-Zarr) layer is segmented into zarr stores on disk, and the result
layers are backed by those stores, not by arrays in memory."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_skipseg._qt.segment_widget import SegmentWidget
from napari_skipseg.inference.engine import predict, run
from napari_skipseg.io import ImageMeta, read_image, write_image
from napari_skipseg.model.store import load_model


@pytest.fixture
def widget(make_napari_viewer, model_home, qtbot, tmp_path):
    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    w.results_folder = str(tmp_path / "results")
    qtbot.addWidget(w)
    return viewer, w


def test_dask_layer_gives_zarr_backed_labels(widget, qtbot, tmp_path):
    viewer, w = widget
    stack = np.random.default_rng(0).integers(0, 1000, (4, 48, 40)).astype(np.uint16)
    viewer.add_image(da.from_array(stack, chunks=(1, 48, 40)), name="lazy", scale=(2.0, 0.5, 0.5))
    w.model_combo.setCurrentText("tiny")
    w.output_combo.setCurrentText("instances")
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    assert "done" in w.status.text(), w.status.text()
    labels = viewer.layers["lazy [tiny] instances"]
    assert isinstance(labels.data, zarr.Array)
    stores = sorted(p.name for p in (tmp_path / "results").iterdir())
    assert len(stores) == 2 and all(not s.startswith(".") for s in stores)  # committed, no temp left
    ref = run(predict(load_model("tiny"), stack, output="instances", device="cpu"))
    np.testing.assert_array_equal(labels.data[:], ref.labels)
    np.testing.assert_allclose(labels.scale, (2.0, 0.5, 0.5))
    prob = viewer.layers["lazy [tiny] p(foreground)"]
    assert type(prob.data).__module__.startswith("dask")  # computed from the store when shown
    # the stores are OME-Zarr: they open again with the plugin, with the spacing
    labels_store = next(p for p in (tmp_path / "results").iterdir() if p.name.endswith(".labels.zarr"))
    data, meta = read_image(labels_store)
    assert meta.spacing == (2.0, 0.5, 0.5)


def test_ome_zarr_pyramid_opens_and_segments_at_full_resolution(widget, qtbot, tmp_path):
    viewer, w = widget
    stack = np.random.default_rng(1).integers(0, 1000, (2, 64, 64)).astype(np.uint16)
    path = write_image(tmp_path / "img.zarr", stack, ImageMeta("ZYX", (1.0, 0.5, 0.5)))
    # add a half-resolution level to make it a pyramid
    import json

    group = zarr.open_group(path, mode="r+")
    group.create_array("1", data=stack[:, ::2, ::2], chunks=(1, 32, 32))
    ome = dict(group.attrs["ome"])
    ms = ome["multiscales"][0]
    ms["datasets"].append({"path": "1", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]})
    group.attrs["ome"] = json.loads(json.dumps(ome))
    [layer] = viewer.open(path, plugin="napari-skipseg")
    assert layer.multiscale and len(layer.data) == 2
    w.model_combo.setCurrentText("tiny")
    w.output_combo.setCurrentText("semantic")
    w.run()
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    labels = viewer.layers["img [tiny] semantic"]
    assert labels.data.shape == (2, 64, 64) and isinstance(labels.data, zarr.Array)
