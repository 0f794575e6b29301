"""Train a model from a folder of images and masks, following a recipe file.

A recipe is JSON: ``{"model": {ModelConfig fields}, "training": {TrainConfig fields},
"val_fraction": 0.15}``. ``train_from_folder`` is a generator (progress events) that
returns the saved model's folder.
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
from .data import load_pairs, split_names
from .loop import TrainConfig, TrainingError, train, training_extras, tune_postprocess

#: A recipe: the model's config, the training options, the validation share; other keys
#: (comments) are kept as plain JSON.
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


def train_from_folder(
    data_dir: str | Path,
    recipe: str | Path,
    out_dir: str | Path,
    *,
    steps: int | None = None,
    time_budget: float | None = None,
    device: str = "auto",
    init: str | Path | None = None,
    lr: float | None = None,
) -> Generator[Progress, None, Path]:
    """Train the recipe's model on ``data_dir`` (``images/`` + ``masks/``), save it to ``out_dir``.

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
    data_dir = Path(data_dir)
    names = sorted(p.name for p in (data_dir / "images").iterdir() if p.is_file())
    train_names, val_names = split_names(names, extra.get("val_fraction", 0.15))
    yield Progress(0, tcfg.steps, f"loading {len(names)} images")
    train_s = load_pairs(data_dir, cfg, train_names)
    val_s = load_pairs(data_dir, cfg, val_names)
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
    cfg.card.update(
        {
            "data": f"{data_dir.name}: {len(names)} images ({len(train_names)} train, {len(val_names)} validation)",
            "split": f"hash of file name (napari_skipseg.training.data.split_names, val_fraction={extra.get('val_fraction', 0.15)}); validation files: {', '.join(val_names[:5])}{' ...' if len(val_names) > 5 else ''}",
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
        "validation_split.json": json.dumps({"train": train_names, "validation": val_names}, indent=1) + "\n",
        "history.json": json.dumps(result.history) + "\n",
    }
    return save_model(model, out_dir, extra_files=extras)
