"""The engine's fast paths (fused PyTorch copy, ONNX Runtime, worker threads) give what a
plain loop gives, leave the caller's model alone, and fall back when they cannot run."""

import numpy as np
import pytest
import torch

from napari_skipseg.inference import backends as bk
from napari_skipseg.inference.engine import SegmentationError, predict, run
from napari_skipseg.model.config import ModelConfig
from napari_skipseg.model.unet import SkipUNet

ORT = bk.ort_available()
needs_ort = pytest.mark.skipif(not ORT, reason="onnx/onnxruntime not installed")
BACKENDS = ["torch", pytest.param("onnxruntime", marks=needs_ort)]


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SKIPSEG_BACKEND", raising=False)
    monkeypatch.delenv("SKIPSEG_THREADS", raising=False)


def model_with_stats(dims=2, block="residual", output="semantic", seed=0):
    """A tiny SkipUNet with non-trivial batch-norm statistics, normalisation off."""
    torch.manual_seed(seed)
    model = SkipUNet(ModelConfig(
        name=f"fast{dims}d", spatial_dims=dims, base_channels=4, depth=2, block=block, output=output,
        num_classes=3, class_names=["background", "interior", "boundary"], normalization={"kind": "none"},
        tile=[48, 48] if dims == 2 else [16, 24, 24],
    ))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(1 + 0.3 * torch.randn(m.num_features, generator=g))
    return model.eval()


def plain_loop(model, image, dims):
    """Model in eval mode, one slice (or volume) at a time, softmax: no tiling, no tricks."""
    units = [image] if image.ndim == dims else list(image)
    out = []
    with torch.inference_mode():
        for u in units:
            out.append(torch.softmax(model(torch.from_numpy(u)[None, None]), dim=1)[0].numpy())
    return np.stack(out, axis=1) if image.ndim > dims else out[0]


def assert_labels_equal_except_ties(labels, probs_ref, tol=1e-4):
    ref = probs_ref.argmax(axis=0)
    top2 = np.sort(probs_ref, axis=0)[-2:]
    tie = (top2[1] - top2[0]) < tol
    assert np.array_equal(labels[~tie], ref[~tie])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("dims", "block", "shape"), [
    (2, "residual", (5, 37, 45)),  # odd sizes, padded inside the network
    (2, "plain", (3, 32, 40)),
    (3, "residual", (13, 21, 19)),
])
def test_engine_equals_plain_loop(backend, threads, dims, block, shape):
    model = model_with_stats(dims, block)
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    ref = plain_loop(model, image, dims)
    # tiles as large as the slice: the engine must give exactly what the network gives
    res = run(predict(model, image, output="probabilities", device="cpu", backend=backend, threads=threads,
                      tile=tuple(max(s, 8) for s in shape[-dims:]), batch_size=3))
    assert res.info["backend"].startswith(backend)
    np.testing.assert_allclose(res.probabilities, ref, rtol=0, atol=2e-5)
    sem = run(predict(model, image, output="semantic", device="cpu", backend=backend, threads=threads,
                      tile=tuple(max(s, 8) for s in shape[-dims:]), batch_size=3))
    assert_labels_equal_except_ties(sem.labels, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_backends_agree_with_overlapping_tiles(backend):
    model = model_with_stats(2, "residual")
    image = np.random.default_rng(1).random((2, 70, 61), dtype=np.float32)
    ref = run(predict(model, image, output="probabilities", device="cpu", backend="torch", threads=1,
                      tile=32, overlap=0.25, batch_size=1)).probabilities
    got = run(predict(model, image, output="probabilities", device="cpu", backend=backend, threads=2,
                      tile=32, overlap=0.25, batch_size=4)).probabilities
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_callers_model_is_left_alone(backend):
    model = model_with_stats(2).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    handle = model.encoder.stages[0].register_forward_hook(lambda m, i, o: calls.append(1))
    run(predict(model, np.random.default_rng(2).random((2, 30, 30), dtype=np.float32), output="semantic",
                device="cpu", backend=backend, threads=2))
    handle.remove()
    assert model.training and calls == []
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("backend", BACKENDS)
def test_changed_weights_are_used(backend):
    """The fused copy and the ONNX export are cached, but never outlive a weight change
    (fine-tuning changes the model in place)."""
    model = model_with_stats(2)
    image = np.random.default_rng(3).random((30, 30), dtype=np.float32)
    first = run(predict(model, image, output="probabilities", device="cpu", backend=backend)).probabilities
    with torch.no_grad():
        model.head.bias[1] += 2.0
    second = run(predict(model, image, output="probabilities", device="cpu", backend=backend)).probabilities
    assert not np.allclose(first, second, atol=1e-3)
    np.testing.assert_allclose(second, plain_loop(model.eval(), image, 2), rtol=0, atol=2e-5)
    model.load_state_dict(model_with_stats(2, seed=5).state_dict())  # replaced wholesale
    third = run(predict(model, image, output="probabilities", device="cpu", backend=backend)).probabilities
    np.testing.assert_allclose(third, plain_loop(model, image, 2), rtol=0, atol=2e-5)


@needs_ort
def test_onnx_export_is_cached_on_disk_and_reused_by_auto(tmp_path):
    model = model_with_stats(2)
    image = np.random.default_rng(4).random((40, 40), dtype=np.float32)
    # a small job: auto takes PyTorch while nothing is exported
    res = run(predict(model, image, output="semantic", device="cpu"))
    assert res.info["backend"].startswith("torch")
    run(predict(model, image, output="semantic", device="cpu", backend="onnxruntime"))
    files = list((tmp_path / "cache" / "onnx").glob("*.onnx"))
    assert len(files) == 1
    # a fresh model object with the same weights finds the export on disk
    clone = model_with_stats(2)
    res = run(predict(clone, image, output="semantic", device="cpu"))
    assert res.info["backend"].startswith("onnxruntime")
    assert "onnxruntime" in res.device


@needs_ort
def test_auto_takes_onnxruntime_for_large_2d_jobs_and_torch_for_3d(monkeypatch):
    monkeypatch.delenv("SKIPSEG_BACKEND", raising=False)
    model2d = model_with_stats(2)
    assert bk.choose_backend("auto", model2d, "cpu", (256, 256), 2**40) == "onnxruntime"
    model3d = model_with_stats(3)
    assert bk.choose_backend("auto", model3d, "cpu", (32, 64, 64), 2**40) == "torch"
    assert bk.choose_backend("onnxruntime", model3d, "cpu", (32, 64, 64), 1) == "onnxruntime"  # if asked


def test_auto_uses_torch_without_onnxruntime(monkeypatch):
    monkeypatch.setattr(bk, "ort_available", lambda: False)
    model = model_with_stats(2)
    assert bk.choose_backend("auto", model, "cpu", (48, 48), 2**40) == "torch"
    res = run(predict(model, np.zeros((20, 20), np.float32), output="semantic", device="cpu"))
    assert res.info["backend"].startswith("torch")
    with pytest.raises(SegmentationError, match="needs the onnx and onnxruntime packages"):
        run(predict(model, np.zeros((20, 20), np.float32), output="semantic", device="cpu",
                    backend="onnxruntime"))


@needs_ort
def test_failed_export_falls_back_to_torch_for_auto_only(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("exporter broke")

    monkeypatch.setattr(bk, "export_onnx", broken)
    monkeypatch.setattr(bk, "ORT_MIN_VOXELS", 0)
    model = model_with_stats(2)
    image = np.random.default_rng(5).random((24, 24), dtype=np.float32)
    res = run(predict(model, image, output="probabilities", device="cpu"))
    assert res.info["backend"].startswith("torch") and "exporter broke" in res.info["backend_fallback"]
    np.testing.assert_allclose(res.probabilities, plain_loop(model, image, 2), rtol=0, atol=2e-5)
    with pytest.raises(SegmentationError, match="exporter broke"):
        run(predict(model, image, output="semantic", device="cpu", backend="onnxruntime"))


def test_backend_errors():
    class Pixelwise(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = ModelConfig(name="px", normalization={"kind": "none"})
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return torch.cat([torch.zeros_like(x), self.w * x], dim=1)

    image = np.zeros((10, 10), np.float32)
    with pytest.raises(SegmentationError, match="backend must be one of"):
        run(predict(model_with_stats(2), image, output="semantic", device="cpu", backend="tensorrt"))
    if ORT:
        with pytest.raises(SegmentationError, match="runs SkipUNet models"):
            run(predict(Pixelwise(), image, output="semantic", device="cpu", backend="onnxruntime"))
    # any module runs on the torch backend
    res = run(predict(Pixelwise(), image, output="semantic", device="cpu", threads=2))
    assert res.info["backend"].startswith("torch")


def test_threads_setting_and_restore(monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("SKIPSEG_THREADS", "2")
    res = run(predict(model_with_stats(2), np.zeros((3, 20, 20), np.float32), output="semantic",
                      device="cpu", backend="torch", batch_size=4))
    assert res.info["backend"] == "torch, 2 x 1 thread(s)"
    assert res.device == "cpu (2 threads, float32, torch)"
    assert torch.get_num_threads() == 1  # put back


def test_thread_plan():
    assert bk.thread_plan(1, 4) == (1, 1)
    assert bk.thread_plan(2, 4) == (2, 1)
    assert bk.thread_plan(2, 1) == (1, 2)  # batch of one tile: all threads inside it
    assert bk.thread_plan(16, 4) == (4, 4)
    assert bk.thread_plan(16, 64) == (bk.MAX_WORKERS, 16 // bk.MAX_WORKERS)


@pytest.mark.parametrize("after", [1, 2, 3])
def test_closing_early_with_worker_threads(after):
    before = torch.get_num_threads()
    gen = predict(model_with_stats(2), np.zeros((6, 40, 40), np.float32), output="semantic", device="cpu",
                  tile=16, batch_size=2, threads=2)
    for _ in range(after):
        next(gen)
    gen.close()
    with pytest.raises(StopIteration):
        next(gen)
    assert torch.get_num_threads() == before


@needs_ort
def test_damaged_cached_export_is_replaced(tmp_path):
    model = model_with_stats(2)
    image = np.random.default_rng(6).random((24, 24), dtype=np.float32)
    ref = run(predict(model, image, output="probabilities", device="cpu", backend="onnxruntime")).probabilities
    (path,) = (tmp_path / "cache" / "onnx").glob("*.onnx")
    path.write_bytes(b"not an onnx file")
    again = run(predict(model_with_stats(2), image, output="probabilities", device="cpu",
                        backend="onnxruntime")).probabilities
    np.testing.assert_allclose(again, ref, rtol=0, atol=1e-6)
    assert path.read_bytes() != b"not an onnx file"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("dims", "shape"), [(2, (2, 37, 45)), (3, (13, 21, 19))])
def test_test_time_flips_average_the_flipped_passes(backend, dims, shape):
    import itertools

    model = model_with_stats(dims)
    image = np.random.default_rng(3).random(shape, dtype=np.float32)
    axes = range(image.ndim - dims, image.ndim)
    passes = [c for r in range(dims + 1) for c in itertools.combinations(axes, r)]
    assert len(passes) == 2**dims
    ref = np.mean([np.flip(plain_loop(model, np.ascontiguousarray(np.flip(image, a)), dims), tuple(x + 1 for x in a))
                   for a in passes], axis=0)
    tile = tuple(max(s, 8) for s in shape[-dims:])
    res = run(predict(model, image, output="probabilities", device="cpu", backend=backend, tile=tile, flips=True))
    assert res.info["backend"].startswith(backend) and f"+ {2**dims} flips" in res.info["backend"]
    np.testing.assert_allclose(res.probabilities, ref, rtol=0, atol=3e-5)
    plain = run(predict(model, image, output="probabilities", device="cpu", backend=backend, tile=tile))
    assert "flips" not in plain.info["backend"]
    assert np.abs(plain.probabilities - ref).max() > 1e-3  # the flips changed something


def test_flips_default_comes_from_the_models_config():
    model = model_with_stats(2)
    image = np.random.default_rng(4).random((40, 40), dtype=np.float32)
    model.config.inference = {"flips": True}
    assert "4 flips" in run(predict(model, image, output="semantic", device="cpu")).info["backend"]
    assert "flips" not in run(predict(model, image, output="semantic", device="cpu", flips=False)).info["backend"]
