"""Measure the object size each bundled model was trained at (its ``training_scale``).

For every model: the median per-axis equivalent-ellipsoid diameter
(:func:`napari_skipseg.training.object_size.median_diameter`) of the objects in the masks of
its recorded training split (``models/<name>/validation_split.json``, key ``train``; files no
longer in the data folder are skipped), plus the pixel size the data README gives.

Objects touching the border of their mask (cut by the crop) are left out where a mask has
others.

- nuclei2d, nuclei3d: the instance labels of the masks;
- em2d: cell interiors, the connected components of ``mask == 1``;
- hippocampus3d: the labelled structure (anterior + posterior, ``mask > 0``) as one object
  per volume.

Prints the figures; ``--write`` puts them into ``models/<name>/config.json``
(``training_scale``) and a ``training_scale`` line into its card, then regenerates
``card.md`` with :func:`napari_skipseg.model.store.render_card`.

    PYTHONPATH=$PWD python benchmarks/measure_training_scale.py [--data ../shared/data] [--write] [--range] [names...]

``--range`` adds ``diameter_range`` for instance models: the quartiles of the training
images' median object diameters (the range ``diameter="auto"`` resamples into).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

#: how each model's objects are read from its masks, and the pixel size of its data
MODELS = {
    "nuclei2d": {"objects": "instances", "min_size": 4},
    "nuclei3d": {"objects": "instances", "min_size": 10, "pixel_size": [0.28, 0.127, 0.127], "unit": "um"},
    "em2d": {"objects": "components", "min_size": 10},
    "hippocampus3d": {"objects": "structure", "min_size": 10, "pixel_size": [1.0, 1.0, 1.0], "unit": "mm"},
}


def _objects(mask: np.ndarray, kind: str) -> np.ndarray:
    if kind == "instances":
        return mask
    if kind == "components":
        from scipy import ndimage

        return ndimage.label(mask == 1)[0]
    return (mask > 0).astype(np.int32)


def measure(name: str, data: Path, args_range: bool = False) -> dict:
    """``training_scale`` of model ``name`` from its training masks under ``data/<name>``;
    with ``args_range``, also ``diameter_range`` (instance models: the quartiles of the
    training images' median object diameters)."""
    import tifffile

    from napari_skipseg.training.object_size import object_diameters

    spec = MODELS[name]
    split = json.loads((ROOT / "models" / name / "validation_split.json").read_text())
    folder = data / name / "masks"
    rows, used = [], 0
    for fname in split["train"]:
        path = folder / fname
        if not path.exists():
            continue
        mask = np.asarray(tifffile.imread(path))
        objects = _objects(mask, spec["objects"])
        inner = object_diameters(objects, min_size=spec["min_size"], exclude_border=True)
        # objects cut by the crop's border are smaller than what the network learnt from;
        # they are left out unless they are all there is (e.g. one structure per volume)
        rows.append(inner if len(inner) else object_diameters(objects, min_size=spec["min_size"]))
        used += 1
    allrows = np.concatenate(rows)
    med = np.median(allrows, axis=0)
    out = {"object_diameter": [round(float(v), 2) for v in med]}
    if args_range and spec["objects"] == "instances":
        # the sizes the model saw as they came: quartiles of the images' median diameters
        per_image = np.array([np.median(r, axis=0) for r in rows if len(r)])
        lo, hi = np.percentile(per_image, [25, 75], axis=0)
        out["diameter_range"] = [[round(float(v), 2) for v in lo], [round(float(v), 2) for v in hi]]
    if "pixel_size" in spec:
        out["pixel_size"] = spec["pixel_size"]
        out["unit"] = spec["unit"]
    q1, q3 = np.percentile(allrows, [25, 75], axis=0)
    out["_stats"] = {"images": used, "objects": int(allrows.shape[0]),
                     "q25": [round(float(v), 1) for v in q1], "q75": [round(float(v), 1) for v in q3]}
    return out


def card_line(ts: dict, stats: dict, name: str) -> str:
    d = " x ".join(f"{v:g}" for v in ts["object_diameter"])
    axes = "ZYX" if len(ts["object_diameter"]) == 3 else "YX"
    kind = {"instances": "objects", "components": "cell interiors (connected components of mask 1)",
            "structure": "labelled structures (one per volume)"}[MODELS[name]["objects"]]
    text = (f"median object diameter {d} px ({axes}; per-axis equivalent-ellipsoid diameter of "
            f"{stats['objects']} {kind} not cut by the border in {stats['images']} training mask{'s' if stats['images'] != 1 else ''}, quartiles "
            f"{' x '.join(f'{v:g}' for v in stats['q25'])} to {' x '.join(f'{v:g}' for v in stats['q75'])}; "
            "`benchmarks/measure_training_scale.py`)")
    if "diameter_range" in ts:
        lo, hi = (" x ".join(f"{v:g}" for v in r) for r in ts["diameter_range"])
        text += (f"; the training images' median diameters have quartiles {lo} to {hi} px (`diameter_range`: "
                 "`diameter=\"auto\"` resamples only images whose objects are outside it, to its nearer end)")
    if "pixel_size" in ts:
        p = " x ".join(f"{v:g}" for v in ts["pixel_size"])
        text += f"; pixel size {p} {ts['unit']}"
    else:
        text += "; pixel size unknown"
    return text


def write(name: str, ts: dict, stats: dict) -> None:
    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.store import render_card

    path = ROOT / "models" / name / "config.json"
    data = json.loads(path.read_text())
    data["training_scale"] = ts
    data.setdefault("card", {})["training_scale"] = card_line(ts, stats, name)
    cfg = ModelConfig.from_dict(data)  # validates
    path.write_text(json.dumps(data, indent=2) + "\n")
    (ROOT / "models" / name / "card.md").write_text(render_card(cfg))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", default=list(MODELS))
    p.add_argument("--data", type=Path, default=ROOT.parent.parent / "shared" / "data")
    p.add_argument("--write", action="store_true", help="write training_scale into the configs and cards")
    p.add_argument("--range", action="store_true", help="also diameter_range (instance models), which "
                   "diameter='auto' resamples into instead of to the median")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        args.data = Path("/work/shared/data")
    for name in args.names:
        if name not in MODELS:
            print(f"unknown model {name!r}; known: {', '.join(MODELS)}", file=sys.stderr)
            return 2
        ts = measure(name, args.data, args.range)
        stats = ts.pop("_stats")
        print(f"{name}: {json.dumps(ts)}  ({stats['objects']} objects in {stats['images']} masks; "
              f"quartiles {stats['q25']} .. {stats['q75']})")
        if args.write:
            write(name, ts, stats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
