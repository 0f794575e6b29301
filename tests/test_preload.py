"""Loading torch in the background (napari_skipseg._preload), in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

CHILD = """
import sys, threading, time
import napari_skipseg._preload as p
assert "torch" not in sys.modules
libs = p.torch_libraries()
assert any("libtorch_python" in l.name for l in libs) or sys.platform == "win32", libs
ticks = []
thread = p.preload_torch()
assert p.preload_torch() is thread  # once per process
while not p.wait(0):
    ticks.append(time.perf_counter())
    time.sleep(0.002)
assert p.error() is None, p.error()
assert "torch" in sys.modules and "napari_skipseg.inference.engine" in sys.modules
# what napari's first Labels layer converts its colours with (skimage.color loads it lazily)
assert "skimage.color.colorconv" in sys.modules
assert thread is not threading.main_thread() and not thread.daemon
print("OK", len(ticks))
"""


def test_preload_imports_torch_in_a_background_thread():
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    # the main thread kept running (ticking) while torch was loading
    assert out.stdout.startswith("OK") and int(out.stdout.split()[1]) > 10
