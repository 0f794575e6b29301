"""Before/after figure for README: a nuclei2d validation image enlarged 2x (its nuclei twice
the size the model was trained at), segmented without resampling and with ``diameter="auto"``.

    python benchmarks/figure_diameter.py [--image NAME] [--zoom 2] [-o docs/screenshots/diameter_auto.png]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tifffile
    from skimage.color import label2rgb
    from skimage.transform import rescale

    from napari_skipseg.evaluate import score_image
    from napari_skipseg.inference.engine import predict, run
    from napari_skipseg.model.store import load_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "nuclei2d")
    p.add_argument("--image", default=None, help="file name (default: the first validation image)")
    p.add_argument("--zoom", type=float, default=2.0)
    p.add_argument("-o", "--output", type=Path, default=ROOT / "docs" / "screenshots" / "diameter_auto.png")
    args = p.parse_args(argv)
    model = load_model("nuclei2d")
    split = json.loads((ROOT / "models" / "nuclei2d" / "validation_split.json").read_text())
    name = args.image or sorted(split["validation"])[0]
    image = tifffile.imread(args.data / "images" / name)
    mask = tifffile.imread(args.data / "masks" / name)
    if image.ndim == 3:
        image = image[..., :3].mean(axis=-1)
    big = rescale(image.astype(np.float32), args.zoom, order=1, preserve_range=True)
    truth = rescale(mask, args.zoom, order=0, preserve_range=True, anti_aliasing=False).astype(mask.dtype)
    panels = [(f"image, nuclei x{args.zoom:g}", None, "")]
    for title, kw in (("no resampling", {}), ('diameter="auto"', {"diameter": "auto"})):
        res = run(predict(model, big, output="instances", device="cpu", flips=False, **kw))
        m, _ = score_image(truth, np.asarray(res.labels), "instances", 3)
        note = res.info.get("scale_message") or "image as it is"
        panels.append((f"{title}: {res.info['objects']} objects, F1@0.5 {m['f1@0.5']:.2f}", res.labels, note))
    lo, hi = np.percentile(big, (1, 99.8))
    grey = np.clip((big - lo) / max(hi - lo, 1e-6), 0, 1)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.9))
    for ax, (title, labels, note) in zip(axes, panels, strict=True):
        ax.imshow(grey if labels is None else label2rgb(labels, grey, alpha=0.35, bg_label=0), cmap="gray")
        ax.set_title(title, fontsize=11)
        ax.set_xlabel(note, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"nuclei2d on {name[:12]}... enlarged {args.zoom:g}x ({int(truth.max())} nuclei)", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=80)
    print(args.output, "|", " | ".join(t for t, _, _ in panels[1:]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
