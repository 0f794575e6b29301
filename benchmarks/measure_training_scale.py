"""Measure the object size each bundled model was trained at (its ``training_scale``).

For every model: the median per-axis equivalent-ellipsoid diameter
(:func:`napari_skipseg.training.object_size.median_diameter`) of the objects in the masks of
its recorded training split (``models/<name>/validation_split.json``, key ``train``; files no
longer in the data folder are skipped), plus the pixel size the data README gives.

Objects touching the border of their mask (cut by the crop) are left out where a mask has
others.

- nuclei2d, nuclei3d: the instance labels of the masks;
- nuclei3d was trained on several folders resampled to one voxel size (its recipe's
  ``target_spacing`` and ``folders``; ``validation_split.json`` records each folder's train
  files): every training mask is resampled to that voxel size as training resampled it
  (:func:`napari_skipseg.training.data.resample_to_spacing`, nearest neighbour, from the
  image file's voxel size or the folder's ``spacing``) and measured there;
- em2d: cell interiors, the connected components of ``mask == 1``;
- hippocampus3d: the labelled structure (anterior + posterior, ``mask > 0``) as one object
  per volume.

Prints the figures; ``--write`` puts them into ``models/<name>/config.json``
(``training_scale``) and a ``training_scale`` line into its card, then regenerates
``card.md`` with :func:`napari_skipseg.model.store.render_card`.

    PYTHONPATH=$PWD python benchmarks/measure_training_scale.py [--data ../shared/data] [--write] [--range]
        [--range-only] [names...]

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
    "nuclei3d": {"objects": "instances", "min_size": 10, "recipe": "recipe_v3.json"},
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


def training_masks(name: str, data: Path):
    """``(file name, mask)`` of every training mask of model ``name``, at the voxel size it
    was trained at: from ``validation_split.json`` (``train``, or each of its ``folders``'
    ``train``; never a file of its ``validation``), resampled to the recipe's
    ``target_spacing`` where the model's ``MODELS`` entry names a recipe."""
    import tifffile

    split = json.loads((ROOT / "models" / name / "validation_split.json").read_text())
    held_out = set(split.get("validation", []))
    spec = MODELS[name]
    if "recipe" not in spec:
        for fname in split["train"]:
            path = data / name / "masks" / fname
            if path.exists():
                yield fname, np.asarray(tifffile.imread(path))
        return
    from napari_skipseg.io import read_image
    from napari_skipseg.training.data import file_spacing, resample_to_spacing

    recipe = json.loads((ROOT / "models" / name / spec["recipe"]).read_text())
    target = recipe["target_spacing"]
    for folder, part in split["folders"].items():
        spacing = (recipe.get("folders") or {}).get(folder, {}).get("spacing")
        for fname in part["train"]:
            if fname in held_out or fname in part.get("validation", []):
                raise SystemExit(f"{name}: {fname} is both a training and a validation file")
            path = data / folder / "masks" / fname
            if not path.exists():
                continue
            own = spacing or file_spacing(read_image(data / folder / "images" / fname)[1], len(target))
            if own is None:
                raise SystemExit(f"{data / folder / 'images' / fname}: no voxel size to resample it by")
            yield fname, resample_to_spacing(np.asarray(read_image(path)[0]), own, target, order=0)


def measure(name: str, data: Path, args_range: bool = False) -> dict:
    """``training_scale`` of model ``name`` from its training masks (:func:`training_masks`);
    with ``args_range``, also ``diameter_range`` (instance models: the quartiles of the
    training images' median object diameters, per axis)."""
    from napari_skipseg.training.object_size import object_diameters

    spec = MODELS[name]
    rows, used = [], 0
    for _, mask in training_masks(name, data):
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
    if "recipe" in spec:
        out["pixel_size"] = json.loads((ROOT / "models" / name / spec["recipe"]).read_text())["target_spacing"]
        out["unit"] = "um"
    elif "pixel_size" in spec:
        out["pixel_size"] = spec["pixel_size"]
        out["unit"] = spec["unit"]
    q1, q3 = np.percentile(allrows, [25, 75], axis=0)
    out["_stats"] = {"images": used, "objects": int(allrows.shape[0]),
                     "q25": [round(float(v), 1) for v in q1], "q75": [round(float(v), 1) for v in q3]}
    return out


def card_line(ts: dict, stats: dict, name: str) -> str:
    d = " x ".join(f"{v:g}" for v in ts["object_diameter"])
    axes = "ZYX" if len(ts["object_diameter"]) == 3 else "YX"
    recipe = MODELS[name].get("recipe")
    where = (f" (every folder's training files, resampled to the voxel size {' x '.join(f'{v:g}' for v in ts['pixel_size'])} "
             f"{ts['unit']} as `{recipe}` trains at)" if recipe else "")
    kind = {"instances": "objects", "components": "cell interiors (connected components of mask 1)",
            "structure": "labelled structures (one per volume)"}[MODELS[name]["objects"]]
    text = (f"median object diameter {d} px ({axes}; per-axis equivalent-ellipsoid diameter of "
            f"{stats['objects']} {kind} not cut by the border in {stats['images']} training mask{'s' if stats['images'] != 1 else ''}{where}, quartiles "
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


def write(name: str, ts: dict, stats: dict, range_only: bool = False) -> None:
    """Put ``ts`` into ``models/<name>/config.json`` (``training_scale``) with a card line,
    and regenerate ``card.md``. ``range_only``: keep the recorded ``object_diameter``,
    ``pixel_size`` and ``unit``, add only ``diameter_range`` (a model whose median was
    recorded at training time, where a given diameter must keep mapping to the same zoom)."""
    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.store import render_card

    path = ROOT / "models" / name / "config.json"
    data = json.loads(path.read_text())
    if range_only:
        measured = ts
        ts = {**data["training_scale"], "diameter_range": measured["diameter_range"]}
        line = card_line(ts, stats, name)
        if measured["object_diameter"] != ts["object_diameter"]:
            m = " x ".join(f"{v:g}" for v in measured["object_diameter"])
            line = line.replace("median object diameter", "median object diameter (recorded at training)", 1)
            line = line.replace(" px (", f" px (measured again by the script: {m} px; ", 1)
    else:
        line = card_line(ts, stats, name)
    data["training_scale"] = ts
    data.setdefault("card", {})["training_scale"] = line
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
    p.add_argument("--range-only", action="store_true", help="with --write --range: add only diameter_range, "
                   "keeping the recorded object_diameter and pixel size")
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
            write(name, ts, stats, args.range_only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
