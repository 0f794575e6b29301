"""Streaming: results written unit by unit into zarr stores equal the in-memory results,
and block-wise prediction gives the whole-image values."""

import numpy as np
import pytest
import torch
import zarr

from napari_skipseg.inference.engine import SegmentationError, plan, predict, run
from napari_skipseg.inference.tiling import block_grid, block_tiles, tile_grid
from napari_skipseg.model.config import ModelConfig
from napari_skipseg.model.unet import SkipUNet


def tiny(dims=2, output="semantic", seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(
        name=f"tiny{dims}d", spatial_dims=dims, num_classes=3 if output == "instances" else 2,
        base_channels=4, depth=2, output=output,
        class_names=["background", "interior", "boundary"] if output == "instances" else ["bg", "fg"],
        tile=[16, 16] if dims == 2 else [8, 16, 16],
        postprocess={"seed": 0.3, "mask": 0.3, "min_size": 1, "min_seed_size": 1},
    )
    return SkipUNet(cfg).eval()


def stack(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 1000, shape).astype(np.uint16)


def stores(tmp_path, shape, classes, label_dtype, chunks):
    root = zarr.open_group(tmp_path / "out.zarr", mode="w")
    labels = root.create_array("labels", shape=shape, dtype=label_dtype, chunks=chunks, fill_value=0)
    probs = root.create_array("probs", shape=(classes, *shape), dtype="f4", chunks=(1, *chunks), fill_value=0)
    return labels, probs


@pytest.mark.parametrize("output", ["semantic", "instances"])
def test_2d_stack_streamed_equals_in_memory(tmp_path, output):
    model = tiny(2, "instances")
    image = stack((5, 37, 45))
    ref = run(predict(model, image, output=output, keep_probabilities=True, device="cpu", batch_size=3))
    geo = plan(model.config, image.shape)
    assert geo["chunks"] == (1, 37, 45) and len(geo["units"]) == 5
    labels, probs = stores(tmp_path, image.shape, 3, ref.labels.dtype, geo["chunks"])
    # a zarr source too: read one slice at a time from disk
    src = zarr.open_array(tmp_path / "in.zarr", mode="w", shape=image.shape, dtype=image.dtype, chunks=(1, 37, 45))
    src[:] = image
    out = run(predict(model, src, output=output, keep_probabilities=True, device="cpu", batch_size=3,
                      labels_out=labels, probabilities_out=probs))
    assert out.labels is labels and out.probabilities is probs
    np.testing.assert_array_equal(labels[:], ref.labels)
    np.testing.assert_array_equal(probs[:], ref.probabilities)
    if output == "instances":
        assert out.info["objects"] == int(ref.labels.max()) == sum(out.info["label_counts"])


def test_3d_blocks_equal_whole_volume_and_stream(tmp_path):
    model = tiny(3)
    image = stack((13, 40, 35))
    whole = run(predict(model, image, output="semantic", keep_probabilities=True, device="cpu",
                        block=image.shape))
    assert whole.info["units"] == 1
    blocks = run(predict(model, image, output="semantic", keep_probabilities=True, device="cpu",
                         block=(8, 16, 16)))
    assert blocks.info["units"] == 2 * 3 * 3
    np.testing.assert_array_equal(blocks.labels, whole.labels)
    np.testing.assert_allclose(blocks.probabilities, whole.probabilities, rtol=0, atol=1e-6)
    labels, probs = stores(tmp_path, image.shape, 2, np.uint8, (8, 16, 16))
    run(predict(model, image, output="semantic", keep_probabilities=True, device="cpu", block=(8, 16, 16),
                labels_out=labels, probabilities_out=probs))
    np.testing.assert_array_equal(labels[:], blocks.labels)
    np.testing.assert_array_equal(probs[:], blocks.probabilities)


def test_3d_instances_stream_with_offsets_per_block(tmp_path):
    model = tiny(3, "instances")
    image = stack((2, 10, 30, 30))  # TZYX
    ref = run(predict(model, image, output="instances", device="cpu", block=(10, 16, 16)))
    labels, _ = stores(tmp_path, ref.labels.shape, 3, np.uint32, (1, 10, 16, 16))
    out = run(predict(model, image, output="instances", device="cpu", block=(10, 16, 16), labels_out=labels))
    np.testing.assert_array_equal(labels[:], ref.labels)
    assert len(out.info["label_counts"]) == 2 * 4
    ids = [int(i) for i in np.unique(ref.labels) if i > 0]
    assert ids == list(range(1, len(ids) + 1)) and len(ids) == out.info["objects"]  # unique across blocks


def test_2d_blocks_within_a_plane_equal_whole_plane():
    model = tiny(2)
    image = stack((70, 90))
    whole = run(predict(model, image, output="probabilities", device="cpu"))
    parts = run(predict(model, image, output="probabilities", device="cpu", block=32))
    np.testing.assert_allclose(parts.probabilities, whole.probabilities, rtol=0, atol=1e-6)


def test_units_subset_and_fixed_intensity_range():
    model = tiny(2)
    image = stack((4, 20, 20))
    ref = run(predict(model, image, output="semantic", keep_probabilities=True, device="cpu"))
    lo, hi = ref.info["intensity_range"]
    part = run(predict(model, image, output="semantic", keep_probabilities=True, device="cpu", units=[1, 3],
                       intensity_range=(lo, hi)))
    np.testing.assert_array_equal(part.labels[[1, 3]], ref.labels[[1, 3]])
    assert not part.labels[[0, 2]].any()


def test_block_geometry_covers_every_voxel_once():
    shape, tile, overlap = (23, 50), (8, 16), (1, 2)
    weight = np.zeros(shape)
    grid = tile_grid(shape, tile, overlap)
    n_tiles = 0
    for blk in block_grid(shape, (10, 20)):
        region, tiles = block_tiles(blk, shape, tile, overlap)
        for tile_sl, _src, dst in tiles:
            absolute = tuple(slice(r.start + t.start, r.start + t.stop) for r, t in zip(region, tile_sl, strict=True))
            assert absolute in grid
            part = tuple(slice(b.start + d.start, b.start + d.stop) for b, d in zip(blk, dst, strict=True))
            weight[part] += 1
            n_tiles += 1
    assert n_tiles >= len(grid)
    # every voxel gets each covering tile exactly once
    ref = np.zeros(shape)
    for sl in grid:
        ref[sl] += 1
    np.testing.assert_array_equal(weight, ref)


def test_bad_outputs_are_clear_errors():
    model = tiny(2)
    image = stack((20, 20))
    with pytest.raises(SegmentationError, match="labels_out must be an array of shape"):
        run(predict(model, image, output="semantic", device="cpu", labels_out=np.zeros((5, 5))))
    with pytest.raises(SegmentationError, match="probabilities are not kept"):
        run(predict(model, image, output="semantic", device="cpu", probabilities_out=np.zeros((2, 20, 20))))
    with pytest.raises(SegmentationError, match="block must be"):
        run(predict(model, image, output="semantic", device="cpu", block=(0, 4)))
