"""Fuzzing every reader with real hostile files (tests/hostile.py draws them with hypothesis).

Each case is a small real file of one format (TIFF with OME-XML or ImageJ metadata, OME-Zarr
and plain zarr, NIfTI, DICOM series) whose metadata lie (sizes, axes, spacing, JSON of the
wrong shape, tags out of range) or whose bytes are cut or garbled. Read eagerly and lazily
(with every pixel pulled), the reader must give a valid array or :class:`ImageReadError`
naming the file; nothing else. Memory is checked with tracemalloc under small read limits.

A few dozen examples per format here; benchmarks/bench_fuzz.py runs thousands.
"""

from __future__ import annotations

import tempfile
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
from hostile import FORMATS, case_strategy, write_case
from hypothesis import HealthCheck, given, settings

from napari_skipseg.io import ImageReadError, read_image

LAZY_LIMIT = 32 << 20
EAGER_LIMIT = 8 << 20
#: What a read may allocate beyond the array itself: a decoded page or chunk next to the
#: result, codec buffers.
SLACK = 2


def read_all(path: Path, lazy: bool) -> tuple[str, int]:
    """Read `path` (pulling every pixel when lazy) under tracemalloc.

    Returns ``("ok" or "refused", peak bytes)``; raises anything that is not a valid array
    or an :class:`ImageReadError` naming the file.
    """
    tracemalloc.start()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                data, meta = read_image(path, lazy=lazy)
                pixels = np.asarray(data[...])
            except ImageReadError as err:
                assert str(err).startswith(str(path)), f"{err} does not name {path}"
                assert "\n" not in str(err) and len(str(err)) < 600, f"not one short line: {err!r}"
                return "refused", tracemalloc.get_traced_memory()[1]
        assert pixels.shape == tuple(data.shape)
        meta.validate(pixels.shape)
        assert 0 not in pixels.shape
        return "ok", tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def check_case(case: dict, monkeypatch_env: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_case(case, Path(tmp))
        for lazy in (False, True):
            _, peak = read_all(path, lazy)
            limit = monkeypatch_env["SKIPSEG_MAX_BYTES" if lazy else "SKIPSEG_MAX_EAGER_BYTES"]
            assert peak <= SLACK * int(limit) + (4 << 20), f"lazy={lazy}: {peak} bytes allocated"


LIMITS = {"SKIPSEG_MAX_BYTES": str(LAZY_LIMIT), "SKIPSEG_MAX_EAGER_BYTES": str(EAGER_LIMIT)}
CI = settings(max_examples=20, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])


@pytest.mark.parametrize("fmt", FORMATS)
def test_hostile_files_give_an_array_or_one_error_naming_the_file(fmt, monkeypatch):
    for key, value in LIMITS.items():
        monkeypatch.setenv(key, value)

    @CI
    @given(case_strategy(fmt))
    def run(case):
        check_case(case, LIMITS)

    run()


def test_the_harness_catches_a_reader_that_raises_something_else(monkeypatch, tmp_path):
    """read_all fails on a reader that lets a raw exception out (so the fuzz test can fail)."""
    import napari_skipseg.io as io

    def broken(path, lazy=False):
        raise KeyError("multiscales")

    monkeypatch.setitem(io.READERS, ".tif", broken)
    path = tmp_path / "a.tif"
    path.write_bytes(b"II*\0")
    with pytest.raises(KeyError):
        read_all(path, lazy=False)
