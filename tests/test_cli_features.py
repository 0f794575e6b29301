"""`skipseg features`: feature maps of every skip written as OME-TIFF with an index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_skipseg.cli import main
from napari_skipseg.io import ImageMeta, read_image, write_image


@pytest.fixture
def stack(tmp_path):
    data = (np.random.default_rng(0).random((3, 40, 52)) * 1000).astype(np.uint16)
    path = tmp_path / "stack.ome.tif"
    write_image(path, data, ImageMeta("ZYX", (2.0, 0.5, 0.25), "micrometer"))
    return path, data


def test_features_writes_one_tiff_per_level_and_kind(model_home, stack, tmp_path, capsys):
    path, data = stack
    out = tmp_path / "feat"
    assert main(["features", str(path), "--model", "tiny", "--slice", "2", "-o", str(out), "-q"]) == 0
    index = json.loads((out / "index.json").read_text())
    assert index["model"] == "tiny" and index["index"] == [2] and index["unit"] == "micrometer"
    assert index["image_spacing"] == [0.5, 0.25]
    maps = {(m["level"], m["kind"]): m for m in index["maps"]}
    assert set(maps) == {(lv, k) for lv in (0, 1) for k in ("encoder", "decoder", "fused")}
    m1 = maps[(1, "encoder")]
    assert m1["file"] == "L1_encoder.ome.tif" and m1["shape"] == [8, 20, 26] and m1["axes"] == "CYX"
    assert m1["scale"] == [1.0, 0.5] and m1["translate"] == pytest.approx([0.25, 0.125])
    arr, meta = read_image(out / m1["file"])
    assert arr.shape == (8, 20, 26) and arr.dtype == np.float32
    assert meta.axes == "CYX" and meta.spacing[1:] == (1.0, 0.5) and meta.unit == "micrometer"
    # the same numbers as the Python API on that slice
    from napari_skipseg import skip_features

    recs = skip_features("tiny", data, index=2, device="cpu")
    np.testing.assert_allclose(arr, recs[1].encoder, atol=1e-5)
    assert read_image(out / "L0_fused.ome.tif")[0].shape == (4, 40, 52)


def test_features_3d_model_block_and_kinds(model_home, tmp_path):
    data = np.random.default_rng(1).random((20, 32, 40)).astype(np.float32)
    path = tmp_path / "vol.tif"
    write_image(path, data, ImageMeta("ZYX", (3.0, 1.0, 1.0), "micrometer"))
    out = tmp_path / "f3"
    rc = main(["features", str(path), "--model", "tiny3d", "--center", "19", "0", "20", "--block", "8", "16", "16",
               "--kinds", "fused", "-o", str(out), "-q"])
    assert rc == 0
    index = json.loads((out / "index.json").read_text())
    assert index["origin"] == [12, 0, 12] and index["shape"] == [8, 16, 16]
    assert [(m["level"], m["kind"]) for m in index["maps"]] == [(0, "fused"), (1, "fused")]
    m = index["maps"][1]
    assert m["axes"] == "CZYX" and m["scale"] == [6.0, 2.0, 2.0]
    assert m["translate"] == pytest.approx([12 * 3.0 + 1.5, 0.5, 12.5])


def test_features_errors_exit_2(model_home, stack, tmp_path, capsys):
    path, _ = stack
    out = tmp_path / "feat"
    assert main(["features", str(tmp_path / "missing.tif"), "--model", "tiny", "-o", str(out)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["features", str(path), "--model", "tiny", "--slice", "9", "-o", str(out)]) == 2
    assert "outside" in capsys.readouterr().err
    assert main(["features", str(path), "--model", "nope", "-o", str(out)]) == 2
    assert "no model named" in capsys.readouterr().err
    assert main(["features", str(path), "--model", "tiny", "-o", str(out), "-q"]) == 0
    assert main(["features", str(path), "--model", "tiny", "-o", str(out), "-q"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["features", str(path), "--model", "tiny", "-o", str(out), "-q", "--overwrite"]) == 0
    flat = tmp_path / "flat.tif"
    write_image(flat, np.zeros((16, 16), np.uint8))
    assert main(["features", str(flat), "--model", "tiny", "--slice", "1", "-o", str(out)]) == 2
    assert "no Z axis" in capsys.readouterr().err
