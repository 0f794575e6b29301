"""The Fine-tune widget docked under Segment on a 1280 x 800 screen: fits, all reachable.

    xvfb-run -a -s "-screen 0 1280x800x24" python benchmarks/screenshot_finetune_small.py \
        [--theme dark|light] [--time 40] [--out docs/screenshots]

Opens a nuclei2d validation image (fluorescence, as the model was trained on) with its mask
as the "corrected" labels, docks Segment and Fine-tune, sizes the main window to the
1280 x 800 screen, marks the image reviewed (one image: the last 25 % along X is held out)
and fine-tunes nuclei2d for ``--time`` seconds, as a new user would. Then it prints the main window's
size, and for each control of the Fine-tune widget whether it can be scrolled into view, and
saves ``finetune_1280x800_<theme>.png`` (the window after the fine-tune),
``finetune_1280x800_<theme>_curves.png`` (scrolled to the curves) and
``finetune_1280x800_<theme>_versions.png`` (scrolled to the versions list). The model store
is a temporary folder (``SKIPSEG_HOME``). Exit code 1 when the window grew past the screen
or a control cannot be reached.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import _gui
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SKIPSEG_DATA", ROOT.parent / "shared" / "data"))


def image_and_mask(size: int = 256):
    """The first grey nuclei2d validation image of ``size`` x ``size`` with 10+ nuclei, and its mask."""
    import tifffile

    names = json.loads((ROOT / "models" / "nuclei2d" / "validation_split.json").read_text())["validation"]
    for name in sorted(names):
        img = tifffile.imread(DATA / "nuclei2d" / "images" / name)
        mask = tifffile.imread(DATA / "nuclei2d" / "masks" / name)
        if img.shape != (size, size) or len(np.unique(mask)) - 1 < 10:
            continue
        return img, mask.astype(np.int32)
    raise SystemExit(f"no {size} x {size} nuclei2d validation image in {DATA}")


def settle(app, n: int = 20) -> None:
    _gui.settle(n)


def reachable(ft, scroll, app) -> dict:
    """For each control: can it be scrolled into view inside the widget and the screen?"""
    screen = app.primaryScreen().availableGeometry()
    out = {}
    controls = {
        "image": ft.image_combo, "labels": ft.labels_combo, "start from": ft.model_combo,
        "mark": ft.mark_button, "steps": ft.steps_spin, "device": ft.device_combo,
        "Fine-tune": ft.start_button, "Stop": ft.stop_button, "plot": ft.plot, "status": ft.status,
        "Re-segment": ft.resegment_button, "versions": ft.versions, "Make active": ft.activate_button,
        "Refresh": ft.refresh_button,
    }
    for name, widget in controls.items():
        ft.reveal(widget)
        settle(app, 3)
        top_left = widget.mapToGlobal(widget.rect().topLeft())
        bottom_right = widget.mapToGlobal(widget.rect().bottomRight())
        visible = not widget.visibleRegion().isEmpty()
        on_screen = screen.contains(top_left) and screen.contains(bottom_right)
        out[name] = bool(visible and on_screen and widget.isVisible())
    scroll.verticalScrollBar().setValue(0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--theme", default="dark", choices=["dark", "light"])
    parser.add_argument("--time", type=int, default=40)
    parser.add_argument("--out", default="docs/screenshots")
    args = parser.parse_args()
    os.environ.setdefault("SKIPSEG_HOME", tempfile.mkdtemp(prefix="skipseg_shot_"))

    import napari
    from qtpy.QtWidgets import QApplication, QMainWindow, QScrollArea

    from napari_skipseg.model.store import set_active_model

    image, labels = image_and_mask()
    set_active_model("nuclei2d", persist=False)  # as chosen in Segment's model list
    viewer = napari.Viewer(title="napari-skipseg: fine-tune at 1280 x 800")
    viewer.theme = args.theme
    app = QApplication.instance()
    window = next(w for w in app.topLevelWidgets() if isinstance(w, QMainWindow) and w.isVisible())
    screen = app.primaryScreen().availableGeometry()
    viewer.add_image(image, name="nuclei")
    viewer.add_labels(labels, name="corrected", opacity=0.4)
    viewer.window.add_plugin_dock_widget("napari-skipseg", "Segment")
    _, ft = viewer.window.add_plugin_dock_widget("napari-skipseg", "Fine-tune")
    window.setGeometry(screen)  # maximised (Xvfb has no window manager to do it)
    settle(app, 40)
    ft.image_combo.setCurrentText("nuclei")
    ft.labels_combo.setCurrentText("corrected")
    ft.mark_reviewed()
    ft.time_spin.setValue(args.time)
    ft.steps_spin.setValue(100_000)
    t0 = time.perf_counter()
    ft.start()
    while ft.worker is not None:
        app.processEvents()
        time.sleep(0.02)
    seconds = time.perf_counter() - t0
    viewer.layers.selection.active = viewer.layers["corrected"]
    settle(app, 40)
    scroll = ft.findChild(QScrollArea)
    report = {
        "screen": [screen.width(), screen.height()],
        "window": [window.frameGeometry().width(), window.frameGeometry().height()],
        "finetune_widget": [ft.width(), ft.height()],
        "finetune_minimum_height": ft.minimumSizeHint().height(),
        "seconds": round(seconds, 1),
        "status": ft.status.text(),
        "versions": [ft.versions.item(i).text() for i in range(ft.versions.count())],
        "versions_header": ft.versions_label.text(),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(str(out / f"finetune_1280x800_{args.theme}.png"), canvas_only=False)
    report["reachable"] = reachable(ft, scroll, app)
    ft.reveal(ft.plot)
    settle(app, 10)
    viewer.screenshot(str(out / f"finetune_1280x800_{args.theme}_curves.png"), canvas_only=False)
    ft.reveal(ft.activate_button)
    settle(app, 10)
    viewer.screenshot(str(out / f"finetune_1280x800_{args.theme}_versions.png"), canvas_only=False)
    print(json.dumps(report, indent=1))
    ok = report["window"][1] <= screen.height() and all(report["reachable"].values())
    viewer.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
