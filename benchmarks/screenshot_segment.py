"""Screenshot of napari after segmenting the nuclei2d sample with the Segment widget.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/screenshot_segment.py [OUT.png] [dark|light]

At a laptop's size (1280 x 800), with the model left to the widget's choice and the object
diameter estimated (the defaults), then the diameter circle drawn.
"""

from __future__ import annotations

import sys
import time


def main(out: str = "docs/screenshots/segment_nuclei2d.png", theme: str = "dark") -> None:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-skipseg")
    viewer.theme = theme
    viewer.window._qt_window.resize(1280, 800)
    viewer.open_sample("napari-skipseg", "nuclei2d")
    _, widget = viewer.window.add_plugin_dock_widget("napari-skipseg", "Segment")
    app = QApplication.instance()
    widget.run()
    while widget.worker is not None:
        app.processEvents()
        time.sleep(0.01)
    for _ in range(20):
        app.processEvents()
    if widget.diameter_button.isEnabled():
        widget.show_diameter()
    for _ in range(20):
        app.processEvents()
    viewer.screenshot(out, canvas_only=False)
    print(out, widget.status.text())
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
