"""Train a model from a folder of images and masks, following a recipe file.

A recipe is JSON: ``{"model": {ModelConfig fields}, "training": {TrainConfig fields},
"val_fraction": 0.15}``. ``train_from_folder`` is a generator (progress events) that
returns the saved model's folder.

Optional keys for training on several folders at one physical scale:

- ``"target_spacing"``: voxel size (micrometres per spatial axis) every image and mask is
  resampled to at load, from its own (the file's metadata, or the folder's ``spacing``);
  recorded as the model's ``training_scale.pixel_size``. Null/absent: no resampling.
- ``"folders"``: options per data folder, keyed by the folder's name:
  ``{"nuclei3d": {"spacing": [0.28, 0.127, 0.127], "use": "train"}}``. ``spacing``: the
  voxel size of its files (for files that record none); ``use``: ``"split"`` (default: its
  files are split into train and validation), ``"train"`` or ``"validation"`` (all of them).
- ``"split_group"``: a regular expression; files whose names give the same group (its first
  capture group) land on the same side of the split, e.g. ``"^(Emb\\d+)_"`` keeps every time
  point of an embryo together. The groups, not the files, are hashed by ``split_names``.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Generator
from pathlib import Path

from ..inference.engine import Progress
from ..model.config import ModelConfig, ModelConfigError
from ..model.schema import AnyJSON, Num, Obj, check, read_json
from .data import check_spacing, load_pairs, split_groups
from .loop import TrainConfig, TrainingError, train, training_extras, tune_postprocess

#: A recipe: the model's config, the training options, the validation share; other keys
#: (``target_spacing``, ``folders``, ``split_group``, comments) are plain JSON, checked where
#: they are used (:func:`split_folders`).
RECIPE = Obj(
    {"model": Obj({}, extra=AnyJSON(16)), "training": Obj({}, extra=AnyJSON(4)),
     "val_fraction": Num(0, 0.9)},
    extra=AnyJSON(8),
)


def load_recipe(path: str | Path) -> tuple[ModelConfig, TrainConfig, dict]:
    """The model config, training options and other settings of the recipe file ``path``,
    validated (:class:`TrainingError` naming the file and the field)."""
    path = Path(path)
    data = read_json(path, TrainingError, what="recipe")
    check(RECIPE, data, "", lambda m: TrainingError(f"{path}: {m}"))
    extra = {k: v for k, v in data.items() if k not in ("model", "training")}
    try:
        cfg = ModelConfig.from_dict(data.get("model", {}))
    except ModelConfigError as err:
        raise TrainingError(f"{path}: model: {err}") from err
    try:
        tcfg = TrainConfig.from_dict(data.get("training", {}))
    except TrainingError as err:
        raise TrainingError(f"{path}: training: {err}") from err
    if len(tcfg.patch) != cfg.spatial_dims:
        raise TrainingError(f"{path}: training: patch {tcfg.patch} must have {cfg.spatial_dims} sizes "
                            f"(the model is {cfg.spatial_dims}D)")
    return cfg, tcfg, extra


FOLDER_USES = ("split", "train", "validation")


def split_folders(folders: list[Path], extra: dict) -> list[dict]:
    """Each data folder with its options and its train/validation file names, from the
    recipe's extra keys (``folders``, ``split_group``, ``val_fraction``); ``ValueError``
    naming the problem (a folder without ``images/``, an unknown option, a file name found in
    two folders)."""
    options = extra.get("folders") or {}
    if not isinstance(options, dict):
        raise ValueError(f"recipe 'folders' must map folder names to options, got {options!r}")
    names_of = {f.name for f in folders}
    unknown = sorted(set(options) - names_of)
    if unknown:
        raise ValueError(f"recipe 'folders' names {', '.join(unknown)}, not among the data folders "
                         f"({', '.join(sorted(names_of))})")
    seen: dict[str, str] = {}
    out = []
    for folder in folders:
        opts = dict(options.get(folder.name) or {})
        bad = sorted(set(opts) - {"spacing", "use"})
        if bad:
            raise ValueError(f"recipe 'folders' {folder.name}: unknown option(s) {', '.join(bad)} "
                             "(known: spacing, use)")
        use = opts.get("use", "split")
        if use not in FOLDER_USES:
            raise ValueError(f"recipe 'folders' {folder.name}: use must be one of {', '.join(FOLDER_USES)}, got {use!r}")
        img_dir = folder / "images"
        if not img_dir.is_dir():
            raise FileNotFoundError(f"{folder}: needs 'images' and 'masks' subfolders")
        names = sorted(p.name for p in img_dir.iterdir() if p.is_file())
        for n in names:
            if n in seen:
                raise ValueError(f"file name {n} is in both {seen[n]} and {folder}: the recorded split "
                                 "lists file names, so they must differ between folders")
            seen[n] = str(folder)
        if use == "split":
            train_names, val_names, groups = split_groups(names, extra.get("val_fraction", 0.15), extra.get("split_group"))
        else:
            groups = {n: n for n in names}
            train_names, val_names = (names, []) if use == "train" else ([], names)
        out.append({"folder": folder, "names": names, "train": train_names, "validation": val_names, "use": use,
                    "spacing": opts.get("spacing"),
                    "validation_groups": sorted({groups[n] for n in val_names})})
    return out


def train_from_folder(
    data_dir: str | Path | list,
    recipe: str | Path,
    out_dir: str | Path,
    *,
    steps: int | None = None,
    time_budget: float | None = None,
    device: str = "auto",
    init: str | Path | None = None,
    lr: float | None = None,
) -> Generator[Progress, None, Path]:
    """Train the recipe's model on ``data_dir`` (``images/`` + ``masks/``, or a list of such
    folders, see the module's recipe keys), save it to ``out_dir``.

    ``init``: a model (name or folder) with the recipe's architecture whose weights training
    starts from (to continue a run) instead of a random initialisation.
    """
    import torch

    from ..inference.device import describe, select_device
    from ..model.store import save_model
    from ..model.unet import SkipUNet

    cfg, tcfg, extra = load_recipe(recipe)
    if steps is not None:
        tcfg.steps = steps
    if time_budget is not None:
        tcfg.time_budget = time_budget
    if lr is not None:
        tcfg.lr = lr
    tcfg.validate()  # the overrides are bounded like the recipe's values
    dev = select_device(device)
    folders = [Path(d) for d in (data_dir if isinstance(data_dir, list | tuple) else [data_dir])]
    target = extra.get("target_spacing")
    if target is not None:
        target = list(check_spacing(target, cfg.spatial_dims, "recipe target_spacing"))
    parts = split_folders(folders, extra)
    names = [n for p in parts for n in p["names"]]
    train_names = [n for p in parts for n in p["train"]]
    val_names = [n for p in parts for n in p["validation"]]
    yield Progress(0, tcfg.steps, f"loading {len(names)} images")
    train_s, val_s = [], []
    for p in parts:
        kw = {"spacing": p["spacing"], "target_spacing": target}
        train_s += load_pairs(p["folder"], cfg, p["train"], **kw)
        val_s += load_pairs(p["folder"], cfg, p["validation"], **kw)
    if target is not None:
        cfg.training_scale = {**cfg.training_scale, "pixel_size": target, "unit": "um"}
    model = SkipUNet(cfg)
    previous = ""
    if init is not None:
        from ..model.store import load_model

        start = load_model(init)
        try:
            model.load_state_dict(start.state_dict())
        except RuntimeError as err:
            raise ValueError(f"--init {init}: its network differs from the recipe's ({str(err).splitlines()[0]})") from err
        model.float()
        previous = f"continued from {init} ({start.config.card.get('training', 'no training record')}); "
    t0 = time.perf_counter()
    result = yield from train(model, train_s, val_s, tcfg, device=dev)
    yield Progress(result.best_step, result.best_step, "validating on all held-out images")
    if cfg.output == "instances":
        cfg.postprocess, metrics = tune_postprocess(model, cfg, val_s, dev)
    else:
        from .loop import predict_probabilities, score

        metrics = score(cfg, [predict_probabilities(model, s.image, dev) for s in val_s], val_s)
    metrics.pop("score", None)
    data_words = "; ".join(
        f"{p['folder'].name}: {len(p['names'])} images ({len(p['train'])} train, {len(p['validation'])} validation)"
        for p in parts)
    if target is not None:
        data_words += f"; resampled to voxels {' x '.join(f'{v:g}' for v in target)} um"
    split_words = (f"hash of file name (napari_skipseg.training.data.split_names, val_fraction={extra.get('val_fraction', 0.15)})"
                   if not extra.get("split_group") else
                   f"by group (regex {extra['split_group']} on the file name; groups hashed by "
                   f"napari_skipseg.training.data.split_groups, val_fraction={extra.get('val_fraction', 0.15)}); "
                   f"validation groups: {', '.join(g for p in parts if p['use'] == 'split' for g in p['validation_groups'])}")
    fixed = [f"{p['folder'].name} all {p['use']}" for p in parts if p["use"] != "split"]
    if fixed:
        split_words += f" ({'; '.join(fixed)})"
    cfg.card.update(
        {
            "data": data_words,
            "split": f"{split_words}; validation files: {', '.join(val_names[:5])}{' ...' if len(val_names) > 5 else ''}",
            "training": f"{previous}{result.best_step} of {len(result.history)} steps kept (best validation score), "
            f"batch {tcfg.batch_size} x patch {tcfg.patch}, AdamW lr {tcfg.lr} cosine, CE + Dice, "
            f"{training_extras(tcfg)}{time.perf_counter() - t0:.0f} s",
            "hardware": f"{describe(dev)}, {platform.processor() or platform.machine()}, torch {torch.__version__}",
            "parameters": model.num_parameters(),
            "metrics": {k: round(v, 4) for k, v in metrics.items()},
        }
    )
    # one atomic version: weights, config, card and these files appear together or not at all
    extras = {
        "validation_split.json": json.dumps(_split_record(parts, train_names, val_names, extra), indent=1) + "\n",
        "history.json": json.dumps(result.history) + "\n",
    }
    return save_model(model, out_dir, extra_files=extras)


def _split_record(parts: list[dict], train_names: list[str], val_names: list[str], extra: dict) -> dict:
    """What ``validation_split.json`` records: the file names of each side (what
    ``skipseg evaluate --split`` reads) and, for grouped or several folders, the groups and
    folders."""
    record: dict = {"train": train_names, "validation": val_names}
    if extra.get("split_group"):
        record["split_group"] = extra["split_group"]
        record["validation_groups"] = [g for p in parts if p["use"] == "split" for g in p["validation_groups"]]
    if len(parts) > 1:
        record["folders"] = {p["folder"].name: {"use": p["use"], "train": p["train"], "validation": p["validation"]}
                             for p in parts}
    return record
