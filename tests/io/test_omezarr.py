"""OME-Zarr (NGFF 0.4 and 0.5) and plain zarr: lazy reading, pyramids, labels next to the image,
interoperability with the ome-zarr package both ways, and clear errors."""

import json

import numpy as np
import pytest
import zarr

from napari_skipseg._reader import get_reader, read_layers
from napari_skipseg.io import ImageMeta, ImageReadError, read_image, write_image
from napari_skipseg.io.validate import unwrap
from napari_skipseg.io.zarr_io import create_ome_zarr, read_levels, write_labels_next_to

ome_zarr = pytest.importorskip("ome_zarr")


def _data(shape=(4, 32, 40), seed=0):
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)


def _ome_zarr_pyramid(path, data, version="0.5"):
    """A pyramid written by the ome-zarr package itself."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image as ome_write

    fmt = FormatV05() if version == "0.5" else FormatV04()
    root = zarr.open_group(path, mode="w", zarr_format=3 if version == "0.5" else 2)
    ome_write(data, root, axes="zyx", fmt=fmt, scale_factors=[2, 4], scale={"z": 2.0, "y": 0.5, "x": 0.5},
              axes_units={"z": "micrometer", "y": "micrometer", "x": "micrometer"})
    return root


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_reads_ome_zarr_pyramid_lazily(tmp_path, version):
    data = _data()
    path = tmp_path / "img.ome.zarr"
    try:
        _ome_zarr_pyramid(path, data, version)
    except TypeError as err:  # pragma: no cover - older ome-zarr signature
        pytest.skip(f"ome-zarr writer: {err}")
    out, meta = read_image(path, lazy=True)
    assert isinstance(unwrap(out), zarr.Array)  # a GuardedArray: reads name the store
    assert meta.axes == "ZYX" and meta.spacing == pytest.approx((2.0, 0.5, 0.5)) and meta.unit == "micrometer"
    assert meta.extra["ome_zarr"]["version"] == version
    np.testing.assert_array_equal(out[:], data)
    levels = read_levels(path)
    assert len(levels) == 3 and levels[1].shape == (4, 16, 20)
    # napari: one multiscale image layer, segmented at full resolution
    [(layer_data, kwargs, kind)] = get_reader(str(path))(str(path))
    assert kind == "image" and kwargs["multiscale"] is True and len(layer_data) == 3
    assert kwargs["scale"] == pytest.approx((2.0, 0.5, 0.5))


def test_round_trip_and_ome_zarr_reads_ours(tmp_path):
    data = _data((2, 3, 16, 20))
    meta = ImageMeta("TZYX", (1.0, 3.0, 0.25, 0.2), "micrometer")
    path = write_image(tmp_path / "ours.zarr", data, meta)
    out, back = read_image(path)
    np.testing.assert_array_equal(out, data)
    assert back.axes == "TZYX" and back.spacing == pytest.approx(meta.spacing) and back.unit == "micrometer"
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(path)))()))
    np.testing.assert_array_equal(np.asarray(node.data[0]), data)
    assert [a["name"] for a in node.metadata["axes"]] == ["t", "z", "y", "x"]


def test_labels_written_next_to_the_image(tmp_path):
    data = _data()
    path = tmp_path / "img.zarr"
    try:
        _ome_zarr_pyramid(path, data, "0.5")
    except TypeError as err:  # pragma: no cover
        pytest.skip(f"ome-zarr writer: {err}")
    labels = (data > 2000).astype(np.uint32)
    write_labels_next_to(path, "cells", labels)
    with pytest.raises(FileExistsError):
        write_labels_next_to(path, "cells", labels)
    _, meta = read_image(path, lazy=True)
    assert meta.extra["ome_zarr"]["labels"] == ["cells"]
    lab, lab_meta = read_image(path / "labels" / "cells")
    np.testing.assert_array_equal(lab, labels)
    assert lab_meta.spacing == pytest.approx((2.0, 0.5, 0.5))
    attrs = json.loads((path / "labels" / "cells" / "zarr.json").read_text())["attributes"]["ome"]
    assert "image-label" in attrs
    layers = read_layers(str(path))
    assert [k for _, _, k in layers] == ["image", "labels"]
    np.testing.assert_array_equal(np.asarray(layers[1][0]), labels)
    # the ome-zarr package finds them too
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    nodes = list(Reader(parse_url(str(path)))())
    assert any("cells" in str(n.zarr) or n.metadata.get("name") == "cells" for n in nodes)


def test_streamed_writes_go_straight_to_disk(tmp_path):
    target = create_ome_zarr(tmp_path / "s.zarr", (3, 8, 8), np.uint8, ImageMeta("ZYX", (1, 1, 1)))
    target.array[1] = 5
    assert not (tmp_path / "s.zarr").exists()  # published only when complete
    target.commit()
    out, _ = read_image(tmp_path / "s.zarr")
    assert out[1].min() == 5 and out[0].max() == 0
    aborted = create_ome_zarr(tmp_path / "a.zarr", (3, 8, 8), np.uint8)
    aborted.abort()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr"]


def test_plain_zarr_array_and_xarray_dims(tmp_path):
    arr = zarr.open_array(tmp_path / "plain.zarr", mode="w", shape=(5, 6, 7), dtype="u2", chunks=(1, 6, 7))
    arr[:] = _data((5, 6, 7))
    out, meta = read_image(tmp_path / "plain.zarr", lazy=True)
    assert isinstance(unwrap(out), zarr.Array) and meta.axes == "ZYX"
    arr2 = zarr.open_array(tmp_path / "tyx.zarr", mode="w", shape=(2, 6, 7), dtype="f4", zarr_format=2)
    arr2.attrs["_ARRAY_DIMENSIONS"] = ["t", "y", "x"]
    assert read_image(tmp_path / "tyx.zarr")[1].axes == "TYX"


@pytest.mark.parametrize(("shape", "problem"), [((10,), "1 dimension"), ((2,) * 6, "6 dimension")])
def test_1d_and_6d_zarr_are_clear_errors(tmp_path, shape, problem):
    zarr.open_array(tmp_path / "odd.zarr", mode="w", shape=shape, dtype="u1")
    with pytest.raises(ImageReadError, match=problem) as info:
        read_image(tmp_path / "odd.zarr")
    assert "odd.zarr" in str(info.value)


def test_group_without_multiscales_and_corrupt_store(tmp_path):
    g = zarr.open_group(tmp_path / "g.zarr", mode="w")
    g.create_array("raw", shape=(4, 4), dtype="u1")
    with pytest.raises(ImageReadError, match=r"without OME-NGFF multiscales.*raw"):
        read_image(tmp_path / "g.zarr")
    bad = tmp_path / "bad.zarr"
    bad.mkdir()
    (bad / "zarr.json").write_text('{"zarr_format": 3, "node_type": "arr')  # truncated
    with pytest.raises(ImageReadError, match="bad.zarr"):
        read_image(bad)


def test_unknown_formats_are_named(tmp_path):
    odd = tmp_path / "scan.mha"
    odd.write_bytes(b"ObjectType = Image\n")
    with pytest.raises(ImageReadError, match=r"scan.mha: unsupported file type.*\.nii\.gz"):
        read_image(odd)


def test_napari_writers_keep_spacing_and_add_labels_next_to_an_image(tmp_path):
    from napari_skipseg._writer import write_image as npe2_write_image
    from napari_skipseg._writer import write_labels as npe2_write_labels

    data = _data((3, 16, 16))
    attrs = {"name": "cells", "scale": (2.0, 0.5, 0.5),
             "metadata": {"skipseg": {"axes": "ZYX", "unit": "micrometer"}}}
    [img] = npe2_write_image(str(tmp_path / "img.zarr"), data, attrs)
    [lab] = npe2_write_labels(img, (data > 2000).astype(np.uint8), {**attrs, "name": "my cells"})
    assert lab.endswith("labels/my_cells")
    _, meta = read_image(img, lazy=True)
    assert meta.spacing == pytest.approx((2.0, 0.5, 0.5)) and meta.extra["ome_zarr"]["labels"] == ["my_cells"]
