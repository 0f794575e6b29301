"""Screenshots of the Segment widget while a run is half done, and in live mode (1280 x 800).

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/screenshot_progressive.py [dark|light] [OUTDIR]

Writes ``segment_half_done_<theme>.png`` (a 24-slice stack segmented from the slice in view
outward, taken when half of its slices are done) and ``segment_live_<theme>.png`` (live mode
on, the slice in view segmented after a scroll) into ``OUTDIR`` (default docs/screenshots).
"""

from __future__ import annotations

import os
import sys

from _gui import pump


def open_segment(image, theme: str):
    """A 1280 x 800 viewer in ``theme`` with ``image`` and Segment docked, nuclei2d without flips."""
    import napari

    viewer = napari.Viewer(title="napari-skipseg")
    viewer.theme = theme
    viewer.window._qt_window.resize(1280, 800)
    viewer.add_image(image, name="nuclei stack", colormap="gray")
    _, widget = viewer.window.add_plugin_dock_widget("napari-skipseg", "Segment")
    index = widget.model_combo.findText("nuclei2d")
    widget.model_combo.setCurrentIndex(index)
    widget.model_combo.activated.emit(index)
    widget.flips_check.setChecked(False)
    return viewer, widget


def main(theme: str = "dark", outdir: str = "docs/screenshots") -> None:
    from qtpy.QtWidgets import QApplication

    from napari_skipseg._preload import wait
    from napari_skipseg._sample_data import synthetic_nuclei

    os.makedirs(outdir, exist_ok=True)
    QApplication.instance() or QApplication([])

    image, _ = synthetic_nuclei((24, 384, 384), radius=9.0, seed=5)

    # 1. a run half done
    viewer, widget = open_segment(image, theme)
    while not wait(0):
        pump(0.05)
    viewer.dims.set_current_step(0, 12)
    pump(0.5)
    worker = widget.run()
    done = []
    shot = os.path.join(outdir, f"segment_half_done_{theme}.png")
    taken = []

    def on_event(event):
        done.extend(event.info.get("regions", []))
        if len(done) >= 12 and not taken:
            worker.pause()  # hold the run here while the picture is taken
            taken.append(True)

    worker.yielded.connect(on_event)
    while not taken and widget.worker is not None:
        pump(0.05)
    pump(1.0)
    viewer.screenshot(shot, canvas_only=False)
    print(shot, widget.progress.value(), "/", widget.progress.maximum(), widget.status.text())
    worker.resume()
    while widget.worker is not None:
        pump(0.1)
    viewer.close()

    # 2. live mode
    viewer, widget = open_segment(image, theme)
    viewer.dims.set_current_step(0, 4)
    widget.live.check.setChecked(True)
    while not widget.live.shown:
        pump(0.05)
    for z in range(5, 16):  # scroll, then stop on 15
        viewer.dims.set_current_step(0, z)
        pump(0.2)
    while not any(p[0] == 15 for p, *_ in widget.live.shown):
        pump(0.05)
    pump(1.0)
    shot = os.path.join(outdir, f"segment_live_{theme}.png")
    viewer.screenshot(shot, canvas_only=False)
    print(shot, widget.live.status.text())
    widget.live.check.setChecked(False)
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
