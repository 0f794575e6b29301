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
    net = SkipUNet(cfg).eval()
    save_model(net, model_home / "models" / "blobby")
    # the same network, recording the object size it was "trained" at (so it can be resampled)
    cfg.name, cfg.training_scale = "blobby_sized", {"object_diameter": [8.0, 8.0]}
    save_model(net, model_home / "models" / "blobby_sized")
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
    # resampled to the model's object size: resolved once on the client, the same zoom in every task
    sized = [*common, "--model", "blobby_sized", "--diameter", "13", "--block", "24"]
    assert main(["segment", str(src), "-o", str(tmp_path / "one_d.zarr"), *sized]) == 0
    assert main(["segment", str(src), "-o", str(tmp_path / "many_d.zarr"), *sized,
                 "--scheduler", cluster.scheduler_address]) == 0
    one_d, _ = read_image(tmp_path / "one_d.zarr")
    many_d, _ = read_image(tmp_path / "many_d.zarr")
    assert one_d.shape == stack.shape and not np.array_equal(one_d, one)  # resampled: another result
    np.testing.assert_array_equal(many_d, one_d)

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


@pytest.fixture
def black_hole():
    """A real loopback TCP server that accepts connections and never answers."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    held, stop = [], threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in held:
        conn.close()
    server.close()


def test_a_scheduler_that_never_answers_fails_in_bounded_time(model_home, tmp_path, black_hole, capsys):
    """dask's Client() waits forever on such an address; the CLI gives up with one line, exit 2."""
    import time

    src = tmp_path / "a.tif"
    tifffile.imwrite(src, np.ones((64, 64), np.uint16))
    t0 = time.monotonic()
    rc = main(["segment", str(src), "-o", str(tmp_path / "a_labels.tif"), "--model", "tiny", "-q",
               "--scheduler", black_hole])
    took = time.monotonic() - t0
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and took < 30, (rc, took)
    assert err == [f"skipseg: error: {black_hole}: the dask scheduler did not answer within 10 s"]
    assert not (tmp_path / "a_labels.tif").exists()


def test_a_closed_port_fails_at_once(model_home, tmp_path, capsys):
    import socket
    import time

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, np.ones((64, 64), np.uint16))
    t0 = time.monotonic()
    rc = main(["segment", str(src), "-o", str(tmp_path / "b.tif"), "--model", "tiny", "-q",
               "--scheduler", f"tcp://127.0.0.1:{port}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and time.monotonic() - t0 < 5
    assert len(err) == 1 and "cannot reach the dask scheduler" in err[0] and f":{port}" in err[0]
