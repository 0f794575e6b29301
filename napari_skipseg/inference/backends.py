"""Running the network on batches of tiles, as fast as the device allows.

A :class:`Runner` takes a normalised batch ``(N, C, *spatial)`` float32 and returns class
probabilities ``(N, classes, *spatial)`` float32. The engine calls it from worker threads,
so that reading, blending, post-processing and writing overlap with the network.

Two backends:

- ``torch``: an inference copy of the model with batch norms folded into the convolutions
  (:func:`~napari_skipseg.model.fuse.fuse_for_inference`), in channels-last memory format,
  under ``torch.inference_mode`` (and autocast on CUDA). The caller's model is not touched.
- ``onnxruntime`` (CPU only, optional: needs ``onnx`` and ``onnxruntime``): the same fused
  network exported to ONNX with the softmax inside, one session per tile shape. Exports are
  kept in memory and on disk (:func:`cache_dir`), keyed by a hash of the weights, so a model
  is exported once per tile shape, not once per run.

On a CPU the engine runs several tiles at once, each on its own worker thread with a
share of the cores (:func:`thread_plan`), rather than one tile on all cores: the workers
never wait for each other, which also keeps the speed up when other programs load the
machine.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import threading
import warnings
import weakref
from pathlib import Path

import numpy as np

BACKENDS = ("auto", "torch", "onnxruntime")
#: Most worker threads one job uses on a CPU (more cores go to threads within a worker).
MAX_WORKERS = 4
#: ``backend="auto"`` exports a model to ONNX only for jobs of at least this many voxels
#: (about 16 slices of 512 x 512); smaller jobs use ONNX Runtime only when an export of that
#: model and tile shape is already cached, else PyTorch.
ORT_MIN_VOXELS = 2**22
ONNX_OPSET = 17
#: Exports kept in the disk cache (the most recent ones).
CACHE_FILES = 24

_lock = threading.Lock()
_fused_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (fingerprint, module)
_ort_cache: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (fingerprint, {key: session})
_interop_set = False


class BackendError(RuntimeError):
    """A backend cannot run this model here (e.g. ONNX Runtime not installed)."""


# -- threads --------------------------------------------------------------------------------------


def thread_budget(threads: int | None = None) -> int:
    """CPU threads a job may use: ``threads``, else ``$SKIPSEG_THREADS``, else torch's
    intra-op thread count (by default the number of physical cores)."""
    import torch

    if threads is None:
        env = os.environ.get("SKIPSEG_THREADS", "").strip()
        threads = int(env) if env.isdigit() and int(env) > 0 else torch.get_num_threads()
    return max(1, int(threads))


def thread_plan(budget: int, max_parallel: int) -> tuple[int, int]:
    """``(workers, threads per worker)`` for a CPU job: up to :data:`MAX_WORKERS` tiles at
    once (never more than ``max_parallel``), the cores shared out between them."""
    workers = max(1, min(budget, max_parallel, MAX_WORKERS))
    return workers, max(1, budget // workers)


def set_interop_single() -> None:
    """One inter-op thread (torch runs one op at a time per caller; the engine parallelises
    over tiles itself). Only possible before torch's first parallel work; tried once."""
    global _interop_set
    if _interop_set:
        return
    _interop_set = True
    import torch

    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


# -- weights identity ---------------------------------------------------------------------------


def fingerprint(model) -> tuple:
    """Changes whenever a parameter or buffer of ``model`` is changed, replaced or moved
    (in-place updates bump a tensor's version counter)."""
    return tuple((name, t.data_ptr(), t._version, str(t.device), t.dtype, tuple(t.shape))
                 for name, t in _tensors(model))


def _tensors(model):
    yield from model.named_parameters()
    yield from model.named_buffers()


def content_hash(model, extra: dict) -> str:
    """SHA-256 of the model's class, config, weights and ``extra`` (for the disk cache)."""
    import torch

    h = hashlib.sha256()
    cfg = getattr(model, "config", None)
    h.update(type(model).__qualname__.encode())
    if cfg is not None and hasattr(cfg, "to_dict"):
        h.update(json.dumps(cfg.to_dict(), sort_keys=True, default=str).encode())
    h.update(json.dumps({**extra, "torch": torch.__version__, "opset": ONNX_OPSET}, sort_keys=True).encode())
    for name, t in _tensors(model):
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.detach().to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def cache_dir() -> Path:
    """Where exported networks are kept: ``$SKIPSEG_CACHE``, else ``$SKIPSEG_HOME/cache``,
    else the platform's cache folder (:func:`napari_skipseg.paths.cache_home`)."""
    from ..paths import cache_home

    return cache_home()


# -- the fused torch copy -----------------------------------------------------------------------


def inference_module(model):
    """The fused eval-only copy of ``model`` on the CPU, cached while the weights stay the
    same; ``None`` when the model cannot be copied (then the caller runs ``model`` itself)."""
    from ..model.fuse import fuse_for_inference, is_fused

    if is_fused(model):
        return model
    fp = fingerprint(model)
    with _lock:
        hit = _fused_cache.get(model)
        if hit is not None and hit[0] == fp:
            return hit[1]
    try:
        fused = fuse_for_inference(model).to("cpu")
    except Exception:  # a module that cannot be deep-copied: run it as it is
        return None
    with _lock:
        try:
            _fused_cache[model] = (fp, fused)
        except TypeError:  # not weak-referenceable
            pass
    return fused


# -- runners --------------------------------------------------------------------------------------


class Runner:
    """``runner(x)``: probabilities for a normalised batch (see the module docstring).

    ``name`` is the backend, ``workers`` how many threads may call it at once, ``threads``
    the CPU threads each call uses, ``batch`` the tiles per call.
    """

    name = "?"
    workers = 1
    threads = 1
    batch = 1
    budget = 1
    uses_original = False  # runs the caller's model itself (moved to the device)
    fallback: str | None = None

    def __call__(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def stop(self) -> None:
        """Ask the calls in progress, and later ones, to end at once: they raise (ONNX
        Runtime only; a PyTorch call runs to its end). From any thread."""

    def describe(self) -> str:
        if self.workers > 1 or self.threads > 1:
            return f"{self.name}, {self.workers} x {self.threads} thread(s)"
        return self.name


class TorchRunner(Runner):
    """The fused model (or, when it cannot be copied, the model itself) in PyTorch."""

    name = "torch"

    def __init__(self, model, device: str, amp=None, *, workers: int = 1, threads: int = 1,
                 batch: int = 1, fuse: bool = True) -> None:
        import torch

        self.device, self.amp = device, amp
        self.workers, self.threads, self.batch = workers, threads, batch
        module = inference_module(model) if fuse else None
        self.uses_original = module is None
        if module is None:
            module = model
        dims = getattr(getattr(model, "config", None), "spatial_dims", None)
        base = device.split(":")[0]
        self.memory_format = None
        if base in ("cpu", "cuda") and dims in (2, 3) and not self.uses_original:
            self.memory_format = torch.channels_last if dims == 2 else torch.channels_last_3d
        if not self.uses_original and base != "cpu":
            # a per-job copy on the accelerator (dropped with the runner: no memory kept there)
            import copy

            module = copy.deepcopy(module)
        if self.uses_original:
            module = module.to(device)
            module.eval()
        else:
            module = module.to(device)
            if self.memory_format is not None:
                module = module.to(memory_format=self.memory_format)
        self.module = module
        if self.uses_original:
            self.name = "torch (unfused)"

    def __call__(self, x: np.ndarray) -> np.ndarray:
        import torch

        t = torch.from_numpy(x).to(self.device)
        if self.memory_format is not None:
            t = t.contiguous(memory_format=self.memory_format)
        dev_type = self.device.split(":")[0]
        with torch.inference_mode(), torch.autocast(dev_type, dtype=self.amp, enabled=self.amp is not None):
            logits = self.module(t)
        p = torch.softmax(logits.float(), dim=1)
        return p.contiguous().cpu().numpy()


class FlipRunner(Runner):
    """Test-time flips: the mean of ``inner``'s probabilities over the batch flipped along
    every combination of spatial axes (4 passes in 2D, 8 in 3D), each flipped back.

    The networks are trained with flips along every axis (``training.data``), so each pass
    is as valid as the plain one; their mean is smoother and less often wrong at object
    borders. It costs one network pass per flip.
    """

    def __init__(self, inner: Runner, spatial_dims: int) -> None:
        import itertools

        self.inner = inner
        axes = range(2, 2 + spatial_dims)  # after batch and channel
        self.flips = [c for r in range(spatial_dims + 1) for c in itertools.combinations(axes, r)]
        for key in ("workers", "threads", "batch", "budget", "fallback", "uses_original"):
            setattr(self, key, getattr(inner, key))
        self.name = f"{inner.name} + {len(self.flips)} flips"

    def stop(self) -> None:
        self.inner.stop()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        total = None
        for axes in self.flips:
            if axes:
                p = np.flip(self.inner(np.ascontiguousarray(np.flip(x, axes))), axes)
            else:
                p = self.inner(x)
            total = np.array(p, dtype=np.float32) if total is None else total + p
        return total / np.float32(len(self.flips))


def ort_available() -> bool:
    """Whether the ONNX Runtime backend can be used (``onnx`` and ``onnxruntime`` present)."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "onnx"))


def ort_supported(model) -> bool:
    """ONNX Runtime runs SkipUNets (whose export is known to be exact), on the CPU."""
    from ..model.unet import SkipUNet

    return isinstance(model, SkipUNet)


def ort_cached(model, spatial: tuple[int, ...]) -> bool:
    """Whether an ONNX export of ``model`` for tiles of ``spatial`` is in memory or on disk."""
    fp = fingerprint(model)
    with _lock:
        hit = _ort_cache.get(model)
        if hit is not None and hit[0] == fp and any(k[0] == tuple(spatial) for k in hit[1]):
            return True
    return _onnx_path(model, spatial).is_file()


def _onnx_path(model, spatial: tuple[int, ...]) -> Path:
    key = content_hash(model, {"spatial": list(spatial)})
    name = getattr(getattr(model, "config", None), "name", "model")
    return cache_dir() / "onnx" / f"{name}-{'x'.join(map(str, spatial))}-{key}.onnx"


def export_onnx(model, spatial: tuple[int, ...], use_cache: bool = True) -> bytes:
    """ONNX bytes of the fused ``model`` with a softmax on top, for tiles of ``spatial``
    (any batch size); read from the disk cache when there (and ``use_cache``), else exported
    and stored."""
    import torch

    path = _onnx_path(model, tuple(spatial))
    if use_cache and path.is_file():
        with contextlib.suppress(OSError):
            return path.read_bytes()
    fused = inference_module(model)
    if fused is None:
        raise BackendError("the model cannot be copied for export")
    net = torch.nn.Sequential(fused, torch.nn.Softmax(dim=1)).eval()
    cfg = model.config
    example = torch.zeros((1, cfg.in_channels, *spatial))
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), buf, dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["x"], output_names=["p"],
                          dynamic_axes={"x": {0: "n"}, "p": {0: "n"}})
    data = buf.getvalue()
    with contextlib.suppress(OSError):  # a read-only or full disk only costs the next export
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)
        _prune(path.parent)
    return data


def _prune(folder: Path, keep: int = CACHE_FILES) -> None:
    """Keep the ``keep`` most recently written exports (fine-tuning makes new ones)."""
    files = sorted(folder.glob("*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[keep:]:
        with contextlib.suppress(OSError):
            old.unlink()


class OrtRunner(Runner):
    """The fused network in ONNX Runtime (CPU), one session per tile shape."""

    name = "onnxruntime"

    def __init__(self, model, *, workers: int = 1, threads: int = 1, batch: int = 1) -> None:
        if not ort_available():
            raise BackendError("the onnxruntime backend needs the onnx and onnxruntime packages "
                               "(pip install 'napari-skipseg[fast]')")
        self.model = model
        self.workers, self.threads, self.batch = workers, threads, batch
        self.fp = fingerprint(model)
        self._sessions: dict = {}
        self._make_lock = threading.Lock()
        import onnxruntime as ort

        self.run_options = ort.RunOptions()  # stop(): its terminate flag ends calls in progress

    def session(self, spatial: tuple[int, ...]):
        key = (tuple(spatial), self.threads)
        s = self._sessions.get(key)
        if s is not None:
            return s
        with self._make_lock:
            s = self._sessions.get(key)
            if s is None:
                with _lock:
                    hit = _ort_cache.get(self.model)
                    cached = hit[1] if hit is not None and hit[0] == self.fp else {}
                s = cached.get(key)
                if s is None:
                    try:
                        s = _new_session(export_onnx(self.model, key[0]), self.threads)
                    except Exception:  # e.g. a damaged file in the cache: export afresh
                        s = _new_session(export_onnx(self.model, key[0], use_cache=False), self.threads)
                    cached = dict(cached)
                    cached[key] = s
                    with _lock, contextlib.suppress(TypeError):
                        _ort_cache[self.model] = (self.fp, cached)
                self._sessions[key] = s
        return s

    def prepare(self, spatial: tuple[int, ...]) -> None:
        """Export and load the network for tiles of ``spatial`` now (before timing)."""
        self.session(spatial)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return self.session(tuple(x.shape[2:])).run(None, {"x": x}, self.run_options)[0]

    def stop(self) -> None:
        self.run_options.terminate = True


def _new_session(data: bytes, threads: int):
    import onnxruntime as ort

    # ONNX Runtime records usage telemetry (on Linux too, since 1.2x, in ~/.cache/Microsoft):
    # images from a microscope or a hospital are none of its business
    disable = getattr(ort, "disable_telemetry_events", None)
    if disable is not None:
        disable()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def choose_backend(backend: str, model, device: str, tile_spatial: tuple[int, ...], voxels: int) -> str:
    """The backend ``backend`` (or ``$SKIPSEG_BACKEND`` for ``"auto"``) resolves to.

    ``auto``: ONNX Runtime on the CPU for a 2D SkipUNet when it is installed and the job is
    large (:data:`ORT_MIN_VOXELS`) or the export is cached already; PyTorch otherwise (3D
    convolutions run faster in PyTorch here: benchmarks/results/speed3d.json).
    Asking for ``onnxruntime`` where it cannot run raises :class:`BackendError`.
    """
    if backend in (None, "", "auto"):
        backend = os.environ.get("SKIPSEG_BACKEND", "auto").strip().lower() or "auto"
    if backend not in BACKENDS:
        raise BackendError(f"backend must be one of {BACKENDS}, got {backend!r}")
    cpu = device.split(":")[0] == "cpu"
    if backend == "onnxruntime":
        if not cpu:
            raise BackendError(f"the onnxruntime backend runs on the CPU only (device {device!r})")
        if not ort_supported(model):
            raise BackendError(f"the onnxruntime backend runs SkipUNet models, not {type(model).__name__}")
        if not ort_available():
            raise BackendError("the onnxruntime backend needs the onnx and onnxruntime packages "
                               "(pip install 'napari-skipseg[fast]')")
        return backend
    if backend == "torch":
        return backend
    if cpu and len(tile_spatial) == 2 and ort_supported(model) and ort_available():
        if voxels >= ORT_MIN_VOXELS or ort_cached(model, tile_spatial):
            return "onnxruntime"
    return "torch"


def make_runner(model, device: str, *, backend: str = "auto", tile_spatial: tuple[int, ...],
                voxels: int, batch_size: int = 4, threads: int | None = None, amp=None,
                flips: bool = False) -> Runner:
    """The runner :func:`~napari_skipseg.inference.engine.predict` uses for a job of
    ``voxels`` tile voxels with tiles of ``tile_spatial``: backend (:func:`choose_backend`),
    worker threads and threads per worker (:func:`thread_plan`) and tiles per call.

    On a CPU, ``batch_size`` tiles are spread over the workers; on an accelerator they make
    one call. With ``backend="auto"`` a failing ONNX export falls back to PyTorch (the reason
    is in ``runner.fallback``); an explicitly asked backend that fails raises
    :class:`BackendError`. Call ``torch.set_num_threads(runner.threads)`` before starting
    the worker threads (:func:`worker_threads`). ``flips``: test-time flips
    (:class:`FlipRunner`; ``voxels`` counts one pass).
    """
    runner = _make_runner(model, device, backend=backend, tile_spatial=tile_spatial, voxels=voxels,
                          batch_size=batch_size, threads=threads, amp=amp)
    if flips:
        dims = getattr(getattr(model, "config", None), "spatial_dims", len(tile_spatial))
        runner = FlipRunner(runner, dims)
    return runner


def _make_runner(model, device: str, *, backend: str, tile_spatial: tuple[int, ...], voxels: int,
                 batch_size: int, threads: int | None, amp) -> Runner:
    name = choose_backend(backend, model, device, tuple(tile_spatial), voxels)
    asked = backend not in (None, "", "auto") or bool(os.environ.get("SKIPSEG_BACKEND", "").strip())
    budget = thread_budget(threads)
    if device.split(":")[0] == "cpu":
        workers, per_worker = thread_plan(budget, batch_size)
        per_call = max(1, batch_size // workers)
    else:
        workers, per_worker, per_call = 1, budget, batch_size
    fallback = None
    if name == "onnxruntime":
        try:
            runner: Runner = OrtRunner(model, workers=workers, threads=per_worker, batch=per_call)
            runner.prepare(tuple(tile_spatial))
        except Exception as err:  # export or session failed
            if asked:
                raise BackendError(f"the onnxruntime backend failed: {type(err).__name__}: {err}") from err
            fallback = f"onnxruntime failed ({type(err).__name__}: {err}); torch used"
        else:
            runner.budget, runner.fallback = budget, None
            return runner
    runner = TorchRunner(model, device, amp, workers=workers, threads=per_worker, batch=per_call)
    runner.budget, runner.fallback = budget, fallback
    return runner


@contextlib.contextmanager
def worker_threads(runner: Runner, device: str):
    """A thread pool of ``runner.workers`` threads, each using ``runner.threads`` CPU
    threads (torch's setting is put back afterwards); pending calls are cancelled and
    running ones awaited on exit."""
    from concurrent.futures import ThreadPoolExecutor

    import torch

    cpu = device.split(":")[0] == "cpu"
    before = torch.get_num_threads()
    if cpu:
        set_interop_single()
        torch.set_num_threads(runner.threads)  # worker threads take this when they start
    pool = ThreadPoolExecutor(max_workers=runner.workers, thread_name_prefix="skipseg-net")
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        if cpu:
            torch.set_num_threads(before)
