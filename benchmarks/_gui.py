"""Event-loop helpers the screenshot scripts share (they run as scripts, with benchmarks/ on
``sys.path``): let Qt paint and the workers report before a picture is taken."""

from __future__ import annotations

import time


def _app():
    from qtpy.QtWidgets import QApplication

    return QApplication.instance()


def settle(n: int = 30, dt: float = 0.01) -> None:
    """Process events ``n`` times, ``dt`` seconds apart."""
    app = _app()
    for _ in range(n):
        app.processEvents()
        time.sleep(dt)


def pump(seconds: float = 0.2) -> None:
    """Process events for ``seconds`` (every 5 ms)."""
    app = _app()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.005)


def wait_worker(widget, dt: float = 0.02) -> None:
    """Until ``widget.worker`` is None (its job ended), then :func:`settle`."""
    app = _app()
    while widget.worker is not None:
        app.processEvents()
        time.sleep(dt)
    settle()
