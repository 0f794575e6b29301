"""Screenshots of the Skip connections widget on an imported MONAI BasicUNet, at 1280 x 800.

    xvfb-run -a -s "-screen 0 1600x1000x24" .venv/bin/python benchmarks/screenshot_byo_unet.py [--theme light]

A MONAI BasicUNet (2D, features 8-8-16-32-64-8, 3 classes: background, interior, boundary)
is imported with ``napari_skipseg.import_model`` (its skips found by tracing), trained for
``--train-seconds`` on synthetic nuclei with the project's training loop, and stored in
``--home``. Writes docs/screenshots/byo_monai_{features,ablation,gradient}[_light].png.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from _gui import settle, wait_worker

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "screenshots"
ARCH = "monai.networks.nets.BasicUNet"
ARGS = {"spatial_dims": 2, "in_channels": 1, "out_channels": 3, "features": [8, 8, 16, 32, 64, 8]}


def trained_monai(seconds: float):
    import torch

    import napari_skipseg as ss
    from napari_skipseg._sample_data import synthetic_nuclei
    from napari_skipseg.inference.engine import run
    from napari_skipseg.model.foreign import build_network
    from napari_skipseg.model.store import ModelLoadError, load_model, save_model, store_path
    from napari_skipseg.training.data import Sample, instance_target, prepare_image
    from napari_skipseg.training.loop import TrainConfig, train

    try:
        return load_model("monai_basicunet")
    except ModelLoadError:
        pass
    torch.manual_seed(0)
    net = build_network(ARCH, ARGS)
    ss.import_model(net, name="monai_basicunet", arch=ARCH, arch_args=ARGS, output="instances",
                    classes=["background", "interior", "boundary"])
    model = load_model("monai_basicunet")
    model.config.postprocess = {"seed": 0.5, "mask": 0.5, "min_size": 10, "min_seed_size": 3}
    samples = []
    for seed in range(6):
        img, lab = synthetic_nuclei((256, 256), seed=100 + seed)
        samples.append(Sample(f"s{seed}", prepare_image(img, 1, 2, model.config.normalization),
                              instance_target(lab), lab))
    tcfg = TrainConfig(patch=[128, 128], batch_size=4, steps=100_000, time_budget=seconds, lr=3e-3,
                       val_every=10_000, augment=True)
    result = run(train(model, samples[:5], samples[5:], tcfg))
    model = result.model
    model.config.card["training"] = f"{seconds:.0f} s on synthetic nuclei (benchmarks/screenshot_byo_unet.py)"
    save_model(model, store_path("monai_basicunet"), half=False)
    return load_model("monai_basicunet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-seconds", type=float, default=90.0)
    parser.add_argument("--home", default="/tmp/skipseg_byo_home")
    parser.add_argument("--theme", default="dark")
    args = parser.parse_args()
    os.environ["SKIPSEG_HOME"] = args.home

    import napari

    from napari_skipseg.model.store import set_active_model

    model = trained_monai(args.train_seconds)
    set_active_model("monai_basicunet", persist=False)  # Segment's model: the explorer starts with it
    print("skip map:", [(lv["level"], lv["scale"], lv["fused"], lv["encoder"]) for lv in model.config.arch["skips"]["levels"]])
    OUT.mkdir(parents=True, exist_ok=True)
    suffix = "" if args.theme == "dark" else f"_{args.theme}"

    viewer = napari.Viewer(title="napari-skipseg: an imported MONAI BasicUNet")
    viewer.theme = args.theme
    viewer.window._qt_window.resize(1280, 800)
    viewer.open_sample("napari-skipseg", "nuclei2d")
    _, w = viewer.window.add_plugin_dock_widget("napari-skipseg", "Skip connections")


    def wait() -> None:
        wait_worker(w)

    settle()
    print("explorer starts with:", w.model_combo.currentText())
    w.device_combo.setCurrentText("cpu")
    w.run()
    wait()
    w.hide_all()
    w.view_combo.setCurrentIndex(w.view_combo.findData("pca"))
    w.set_visible(1, "encoder", True)
    settle()
    viewer.screenshot(str(OUT / f"byo_monai_features{suffix}.png"), canvas_only=False)

    w.pages.setCurrentIndex(1)
    w.ablate_level.setCurrentIndex(0)
    w.run_ablation()
    wait()
    print(w.ablation_label.text())
    viewer.screenshot(str(OUT / f"byo_monai_ablation{suffix}.png"), canvas_only=False)

    w.run_gradient()
    wait()
    g = w.last_gradient
    print("gradient norms on:", [f"{v:.3g}" for v in g.norms_on], "off:", [f"{v:.3g}" for v in g.norms_off])
    viewer.screenshot(str(OUT / f"byo_monai_gradient{suffix}.png"), canvas_only=False)
    plot = w.gradient_plot
    top_left = plot.mapTo(w.scroll.viewport(), plot.rect().topLeft())
    bottom = top_left.y() + plot.height()
    print(f"gradient plot: y {top_left.y()}..{bottom} of the dock's {w.scroll.viewport().height()} px "
          f"(visible without scrolling: {bottom <= w.scroll.viewport().height()})")
    viewer.close()


if __name__ == "__main__":
    main()
