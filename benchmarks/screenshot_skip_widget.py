"""Screenshots of the "Skip connections" widget on the nuclei2d sample, and a timing.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/screenshot_skip_widget.py

Writes docs/screenshots/skip_level1.png, skip_level2.png, skip_ablation.png. The model is
the first found of: ``--model``; the bundled ``nuclei2d``; ``runs/nuclei2d`` (a training
run in progress); a small instance model trained here for ``--train-seconds`` on
synthetic nuclei (kept in ``--cache``); the tiny untrained test model.
Also prints the seconds to capture all levels of the 512x512 slice on the CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _gui import settle, wait_worker

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"


def _quick_model(cache: Path, seconds: float):
    """A small 2D instance model trained for ``seconds`` on synthetic nuclei (cached)."""
    from napari_skipseg._sample_data import synthetic_nuclei
    from napari_skipseg.inference.engine import run
    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.store import is_model_dir, load_model, save_model
    from napari_skipseg.model.unet import SkipUNet
    from napari_skipseg.training.data import Sample, instance_target, prepare_image
    from napari_skipseg.training.loop import TrainConfig, train

    if is_model_dir(cache):
        return load_model(cache)
    cfg = ModelConfig(name="demo2d", base_channels=8, depth=4, num_classes=3, output="instances",
                      class_names=["background", "interior", "boundary"],
                      card={"task": f"demo: {seconds:.0f} s of training on synthetic nuclei"})
    samples = []
    for seed in range(6):
        img, lab = synthetic_nuclei((256, 256), seed=100 + seed)
        samples.append(Sample(f"s{seed}", prepare_image(img, 1, 2, cfg.normalization), instance_target(lab), lab))
    tcfg = TrainConfig(patch=[128, 128], batch_size=4, steps=100_000, time_budget=seconds, lr=3e-3,
                       val_every=10_000, augment=True)
    result = run(train(SkipUNet(cfg), samples[:5], samples[5:], tcfg))
    save_model(result.model, cache)
    return result.model


def pick_model(args):
    from napari_skipseg.model.store import is_model_dir, load_model

    if args.model:
        return load_model(args.model), args.model
    for path in (ROOT / "models" / "nuclei2d", ROOT / "runs" / "nuclei2d"):
        if is_model_dir(path):
            return load_model(path), str(path.relative_to(ROOT))
    if args.train_seconds > 0:
        return _quick_model(Path(args.cache), args.train_seconds), f"demo model ({args.train_seconds:.0f} s training)"
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_model

    return make_tiny_model(), "tiny (untrained)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model name or folder")
    parser.add_argument("--train-seconds", type=float, default=150.0)
    parser.add_argument("--cache", default="/tmp/skipseg_demo2d")
    args = parser.parse_args()

    import napari

    model, label = pick_model(args)
    print(f"model: {label}")
    OUT.mkdir(parents=True, exist_ok=True)

    viewer = napari.Viewer(title="napari-skipseg: skip connections")
    viewer.window._qt_window.resize(1600, 1000)
    viewer.open_sample("napari-skipseg", "nuclei2d")
    image = viewer.layers[0]
    _, w = viewer.window.add_plugin_dock_widget("napari-skipseg", "Skip connections")


    def wait() -> None:
        wait_worker(w)

    w.add_model(model.config.name, model)
    w.device_combo.setCurrentText("cpu")
    t0 = time.perf_counter()
    w.run()
    wait()
    print(f"capture of all {len(w.capture.records)} levels of the {image.data.shape} slice, in the widget: "
          f"{time.perf_counter() - t0:.2f} s wall ({w.capture.seconds:.2f} s in the job)")

    def show(level: int, view: str, kinds) -> None:
        w.hide_all()
        w.view_combo.setCurrentIndex(w.view_combo.findData(view))
        for kind in kinds:
            w.set_visible(level, kind, True)
        settle()

    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera

    def zoom_in() -> None:  # a patch of nuclei, so that feature pixels can be seen
        camera.center = (0, 90, 110)
        camera.zoom = 7.0
        settle()

    show(1, "pca", ["encoder"])
    zoom_in()
    viewer.screenshot(str(OUT / "skip_level1.png"), canvas_only=False)
    show(2, "norm", ["encoder", "decoder"])
    zoom_in()
    viewer.screenshot(str(OUT / "skip_level2.png"), canvas_only=False)

    w.hide_all()
    w.run_gradient()
    wait()
    w.ablate_level.setCurrentIndex(0)
    w.ablate_how.setCurrentText("zero")
    w.side_by_side.setChecked(True)
    w.run_ablation()
    wait()
    print(w.ablation_label.text())
    viewer.reset_view()
    w.scroll.verticalScrollBar().setValue(w.scroll.verticalScrollBar().maximum())  # show the plot
    settle()
    viewer.screenshot(str(OUT / "skip_ablation.png"), canvas_only=False)
    print("wrote", ", ".join(str(p.relative_to(ROOT)) for p in sorted(OUT.glob("skip_*.png"))))

    # timing: all levels of the 512x512 slice, straight through the core on the CPU
    from napari_skipseg.features import capture_features
    from napari_skipseg.inference.engine import run

    times = []
    for _ in range(4):
        t = time.perf_counter()
        run(capture_features(model, image.data, device="cpu"))
        times.append(time.perf_counter() - t)
    print(f"capture all levels, {image.data.shape} slice, cpu: median {sorted(times)[len(times) // 2]:.2f} s "
          f"over {len(times)} runs (min {min(times):.2f} s)")
    viewer.close()


if __name__ == "__main__":
    main()
