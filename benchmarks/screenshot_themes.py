"""Screenshots of the three widgets in napari's dark and light themes, at 1280 x 800.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/screenshot_themes.py [OUT_DIR]

Opens the nuclei2d sample, segments it (Segment), fills the Fine-tune loss plot and the
Skip connections gradient plot with made-up values (no training runs: the colours are what is
checked), and writes ``{segment,finetune,skip}_{dark,light}.png``. The theme is switched in
the open viewer between the two rounds, so the shots also check that the widgets follow a
theme change. The model store is a temporary folder (``SKIPSEG_HOME``).
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path


def main(out: str = "docs/screenshots/themes") -> None:
    os.environ.setdefault("SKIPSEG_HOME", tempfile.mkdtemp(prefix="skipseg_shot_"))
    import napari
    from qtpy.QtWidgets import QApplication

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(title="napari-skipseg")
    viewer.theme = "dark"
    viewer.window.resize(1280, 800)
    viewer.open_sample("napari-skipseg", "nuclei2d")
    app = QApplication.instance()

    def settle(n=30):
        for _ in range(n):
            app.processEvents()
            time.sleep(0.005)

    docks = {}
    for name in ("Skip connections", "Fine-tune", "Segment"):
        docks[name] = viewer.window.add_plugin_dock_widget("napari-skipseg", name, tabify=True)
    seg = docks["Segment"][1]
    seg.run()
    while seg.worker is not None or seg._adding:
        app.processEvents()
        time.sleep(0.01)
    ft = docks["Fine-tune"][1]
    ft.plot.before = 0.62
    for step in range(0, 200, 5):
        info = {"step": step, "loss": 1.2 * 0.985 ** step + 0.05}
        if step % 50 == 0 and step:
            info["val"] = {"score": 0.62 + 0.1 * step / 200}
        ft.plot.add(info)
    ft.plot.redraw(force=True)
    skip = docks["Skip connections"][1]
    skip.gradient_plot.plot(["0", "1", "2", "3"], [3e-2, 1e-2, 4e-3, 2e-3], [1e-4, 8e-4, 2e-3, 3e-3],
                            "gradient norm per encoder stage (made-up values)")
    for theme in ("dark", "light"):
        viewer.theme = theme
        settle()
        for key, name in (("segment", "Segment"), ("finetune", "Fine-tune"), ("skip", "Skip connections")):
            dock = docks[name][0]
            dock.show()
            dock.raise_()
            settle()
            path = out_dir / f"{key}_{theme}.png"
            viewer.screenshot(str(path), canvas_only=False, flash=False)
            print(path)
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:])
