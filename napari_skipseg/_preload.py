"""Load torch in the background, without freezing the GUI thread.

``import torch`` takes seconds. Most of it is Python code, which shares the GIL with the
GUI thread in 5 ms slices, but two parts hold the GIL for their whole length: loading the
shared libraries (``libtorch_cpu.so`` alone is about 300 ms; the CUDA libraries are larger)
and the C initialisation of ``torch._C``. A thread that imports torch therefore freezes
napari for a third of a second or more, at whatever moment the import happens.

:func:`preload_torch` starts a thread that first maps torch's libraries with the C library's
``dlopen``, called through :mod:`ctypes` (a ctypes call releases the GIL, unlike Python's
own extension loading), and only then imports torch and the modules a job needs; the
import then finds the libraries already loaded. The widgets call it when they open, so a
segmentation or fine-tune started later does not pay for the import on the GUI thread.
"""

from __future__ import annotations

import ctypes
import gc
import importlib
import importlib.util
import os
import sys
import threading
from collections import OrderedDict
from pathlib import Path

_lock = threading.Lock()
_thread: threading.Thread | None = None
_done = threading.Event()
_error: BaseException | None = None

# imported after torch: what the engine, the model store and napari's Labels layer need
MODULES = (
    "torch",
    "napari_skipseg.model.unet",
    "napari_skipseg.model.store",
    "napari_skipseg.inference.engine",
    "napari_skipseg.inference.postprocess",
    "pandas",
    # napari's label colormap converts its colours with skimage.color.colorconv on the first
    # Labels layer; skimage.color alone loads it lazily, at that first use (on the GUI thread)
    "skimage.color.colorconv",
)


def warm_labels() -> None:
    """Work napari's first Labels layer does once per process on the GUI thread, done here:
    vispy builds the dash patterns of its line visuals (the labels' polygon overlay) on the
    first one, 0.17 s, and caches them for the process."""
    try:
        from vispy.visuals.line.dash_atlas import DashAtlas
    except ImportError:
        return
    DashAtlas()


def torch_libraries() -> list[Path]:
    """torch's shared libraries that its import loads, found without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return []
    root = Path(spec.origin).parent
    libs = []
    for pattern in ("lib/libtorch_python.*", "_C.*"):  # each pulls in libtorch, libc10, ...
        libs += sorted(p for p in root.glob(pattern) if p.suffix in (".so", ".dylib") or ".so" in p.name)
    return libs


def _dlopen_without_gil(paths: list[Path]) -> None:
    if sys.platform not in ("linux", "darwin"):
        return
    try:
        libc = ctypes.CDLL(None)
        dlopen = libc.dlopen
    except (OSError, AttributeError):
        return
    dlopen.restype = ctypes.c_void_p
    dlopen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    flags = os.RTLD_NOW | os.RTLD_LOCAL
    for path in paths:
        dlopen(os.fsencode(path), flags)  # a failure here only means the import does the work


def _run(modules: tuple[str, ...]) -> None:
    global _error
    try:
        if "torch" not in sys.modules:
            _dlopen_without_gil(torch_libraries())
        for name in modules:
            try:
                importlib.import_module(name)
            except ImportError:
                if name == "torch":
                    raise
        warm_labels()
        gc.freeze()  # what was made so far lives as long as the process: no full scans of it
    except BaseException as err:  # noqa: BLE001 - reported by wait(); the job will raise it again
        _error = err
    finally:
        _done.set()


def preload_torch(modules: tuple[str, ...] = MODULES) -> threading.Thread:
    """Start (once per process) loading torch and the job modules in a background thread."""
    global _thread
    with _lock:
        if _thread is None:
            # not a daemon: the interpreter must not exit in the middle of torch's C init
            _thread = threading.Thread(target=_run, args=(modules,), name="skipseg-preload")
            _thread.start()
        return _thread


def ensure_loaded() -> None:
    """For a job's worker thread: start the preload if no widget did, and wait for it."""
    preload_torch()
    wait()


def wait(timeout: float | None = None) -> bool:
    """Wait for a started preload; True when it finished (successfully or not)."""
    return _done.wait(timeout)


def error() -> BaseException | None:
    """The exception the preload ended with, if any."""
    return _error


# -- models loaded once ------------------------------------------------------------------------

#: Models kept loaded (with the fused and ONNX copies the backends cache on them).
MODELS_KEPT = 2
_models: OrderedDict = OrderedDict()  # (model reference, files' stamp) -> loaded model
_models_lock = threading.Lock()


def loaded_model(model_ref):
    """The model ``model_ref`` (name or folder), loaded once per process and per version of
    its files (a model saved again under the same name is loaded again): Segment runs, live
    mode and the warm-up share it, and with it the backends' fused copy and ONNX sessions
    (:mod:`napari_skipseg.inference.backends` caches them on the model object)."""
    from .interactive import model_stamp
    from .model.store import load_model

    key = (str(model_ref), model_stamp(model_ref))
    with _models_lock:  # one load at a time: a second caller waits and takes the first's model
        model = _models.get(key)
        if model is None:
            model = load_model(model_ref)
            _models[key] = model
            while len(_models) > MODELS_KEPT:
                _models.popitem(last=False)
        _models.move_to_end(key)
        return model
