"""Screenshots of the Fine-tune widget during and after fine-tuning nuclei2d on H&E-like images.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/screenshot_finetune.py [--time 60]

A stack of four H&E-like images (made from nuclei2d validation images as in
``bench_finetune.py``) is opened with its labels as the "corrected" layer; slices 0 and 1
are marked reviewed and nuclei2d is fine-tuned in the widget. Writes
``docs/screenshots/finetune_during.png`` and ``finetune_after.png`` (after re-segmenting).
The model store is a temporary folder (``SKIPSEG_HOME``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--time", type=int, default=60)
    parser.add_argument("--out", default="docs/screenshots")
    args = parser.parse_args()
    os.environ["SKIPSEG_HOME"] = tempfile.mkdtemp(prefix="skipseg_shot_")

    import napari
    from bench_finetune import shift_sets
    from qtpy.QtWidgets import QApplication

    train, evals = shift_sets()
    items = [it for it in train + evals if it[1].shape[:2] == (256, 256)][:4]
    image = np.stack([it[1] for it in items])
    labels = np.stack([it[2] for it in items]).astype(np.int32)

    viewer = napari.Viewer(title="napari-skipseg: fine-tune")
    viewer.window._qt_window.resize(1560, 980)
    viewer.add_image(image, name="H&E", rgb=True)
    viewer.add_labels(labels, name="corrected", opacity=0.35)
    _, seg = viewer.window.add_plugin_dock_widget("napari-skipseg", "Segment")
    _, ft = viewer.window.add_plugin_dock_widget("napari-skipseg", "Fine-tune")
    app = QApplication.instance()
    ft.image_combo.setCurrentText("H&E")
    ft.labels_combo.setCurrentText("corrected")
    for z in (0, 1):
        viewer.dims.set_current_step(0, z)
        ft.mark_reviewed()
    viewer.dims.set_current_step(0, 2)
    ft.time_spin.setValue(args.time)
    ft.steps_spin.setValue(100_000)
    ft.start()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shot_during = False
    while ft.worker is not None:
        app.processEvents()
        time.sleep(0.02)
        if not shot_during and len(ft.plot.val) >= 2 and ft.progress.value() >= 0.6 * ft.progress.maximum():
            for _ in range(10):
                app.processEvents()
            viewer.screenshot(str(out / "finetune_during.png"), canvas_only=False)
            shot_during = True
    print(ft.status.text())
    ft.resegment()
    while ft.seg_worker is not None:
        app.processEvents()
        time.sleep(0.02)
    viewer.layers["corrected"].visible = False
    for _ in range(20):
        app.processEvents()
    viewer.screenshot(str(out / "finetune_after.png"), canvas_only=False)
    print(ft.status.text())
    viewer.close()


if __name__ == "__main__":
    main()
