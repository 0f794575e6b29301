"""``skipseg segment --scheduler``: a real dask.distributed cluster on loopback gives exactly
the single-process result, split by chunk (zarr output) and by file (TIFF/NIfTI outputs)."""

import numpy as np
import pytest
import tifffile

from napari_skipseg.cli import main
from napari_skipseg.io import ImageMeta, read_image, write_image

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def cluster():
    """Two worker processes, one thread each, on 127.0.0.1 (started here, closed after)."""
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=":0") as c:
        yield c


@pytest.fixture
def instance_model(model_home):
    """The tiny untrained model with thresholds that find objects in noise."""
    import torch

    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.store import save_model
    from napari_skipseg.model.unet import SkipUNet

    torch.manual_seed(0)  # the same network as conftest's "tiny"
    cfg = ModelConfig(name="blobby", spatial_dims=2, num_classes=3, base_channels=4, depth=2, output="instances",
                      class_names=["background", "interior", "boundary"], tile=[64, 64],
                      postprocess={"seed": 0.465, "mask": 0.5, "min_size": 2, "min_seed_size": 1})
    save_model(SkipUNet(cfg).eval(), model_home / "models" / "blobby")
    return "blobby"


@pytest.mark.slow
def test_cluster_equals_single_process(instance_model, tmp_path, cluster):
    kind = "instances"
    rng = np.random.default_rng(0)
    stack = rng.integers(0, 1000, (7, 40, 52)).astype(np.uint16)
    src = tmp_path / "stack.zarr"
    write_image(src, stack, ImageMeta("ZYX", (2.0, 0.5, 0.5), "micrometer"), chunks=(1, 40, 52))
    common = ["--model", instance_model, "--kind", kind, "--device", "cpu", "-q", "--batch-size", "3"]
    assert main(["segment", str(src), "-o", str(tmp_path / "one.zarr"), *common]) == 0
    assert main(["segment", str(src), "-o", str(tmp_path / "many.zarr"), *common,
                 "--scheduler", cluster.scheduler_address]) == 0
    one, meta_one = read_image(tmp_path / "one.zarr")
    many, meta_many = read_image(tmp_path / "many.zarr")
    assert one.shape == stack.shape and meta_many.spacing == (2.0, 0.5, 0.5) == meta_one.spacing
    np.testing.assert_array_equal(many, one)
    assert one.max() > 10
    # ids are unique across the tasks' slices: the offsets pass ran
    assert len(np.unique(many)) - 1 == many.max()

    # by file: a folder of TIFF and NIfTI inputs, each written by a worker
    folder = tmp_path / "inputs"
    folder.mkdir()
    tifffile.imwrite(folder / "a.tif", stack[:3])
    write_image(folder / "b.nii.gz", stack[3:], ImageMeta("ZYX", (3.0, 1.0, 1.0), "millimeter"))
    assert main(["segment", str(folder), "-o", str(tmp_path / "single"), *common]) == 0
    assert main(["segment", str(folder), "-o", str(tmp_path / "dist"), *common,
                 "--scheduler", cluster.scheduler_address]) == 0
    for name in ("a.tif", "b.nii.gz"):
        a, _ = read_image(tmp_path / "single" / name)
        b, meta_b = read_image(tmp_path / "dist" / name)
        np.testing.assert_array_equal(a, b)
    assert meta_b.spacing == (3.0, 1.0, 1.0)
