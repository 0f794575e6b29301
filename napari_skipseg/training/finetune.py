"""Fine-tune a model on masks corrected by hand (human in the loop), without Qt.

The loop a user lives in: segment, correct the mistakes in a Labels layer, mark the
corrected slices *reviewed*, fine-tune, segment again. This module is the core of it:

- :class:`Annotated` is one image with its corrected labels and the slices (2D models) or
  planes of 3D blocks (3D models) marked reviewed. Only reviewed slices are trained on;
  label 0 inside a reviewed slice is background, and everything not reviewed is ignored
  (``IGNORE``), never taken as background.
- :func:`build_samples` turns them into training and held-out validation samples: with 3 or
  more reviewed units (slices, or runs of consecutive planes for 3D) whole units are held
  out, evenly spread; with 1 or 2 a band at the far X end of each is held out (so both
  corrected images still teach the network, and the guard has data nobody trained on).
- :func:`finetune` is a generator (progress events with ``loss`` and ``val`` in ``info``)
  returning a :class:`FinetuneResult`: it picks the input handling that suits the starting
  model (contrast inversion, haematoxylin stain separation for RGB), trains what
  :attr:`FinetuneOptions.train` says with a warm-up + cosine learning-rate schedule, keeps
  the best weights on the held-out data (also when stopped early), re-tunes the
  post-processing there, and compares with the starting model (the guard: ``accepted`` is
  False unless the new model is better on the held-out data).
- :func:`save_version` writes the result as a new version ``<base>-ft-<N>`` in the user's
  store (never overwriting), with the corrected labels and a card saying what it came from.
"""

from __future__ import annotations

import copy
import datetime as _dt
import io
import json
import time
from collections.abc import Callable, Generator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..inference.engine import Progress
from ..model.config import MAX_CLASSES
from ..model.schema import Bool, Int, List, Nullable, Num, Str, check
from .data import IGNORE, Sample, check_mask, instance_target
from .loop import TRAIN_FIELDS, TrainingError, check_batch_size

TRAINABLE = ("auto", "all", "decoder", "decoder+last")
#: cross-entropy class weights (frequency ** -CLASS_BALANCE_NEW) when fine-tuning a new head
CLASS_BALANCE_NEW = 1.0
#: ``train="auto"``, ``lr=None`` and ``class_balance=None``: what a run with the model's own
#: head trains, and with a new head (other classes: nothing of the network was trained for
#: them, so every weight adapts, and the classes are weighted by their rarity in the user's
#: labels, so that a thin structure such as a membrane is not under-predicted)
AUTO_TRAIN = {False: ("decoder+last", 3e-4, 0.0), True: ("all", 3e-3, CLASS_BALANCE_NEW)}
LABELS_FILE = "labels.npz"
#: the batch-norm buffers (statistics gathered in training, not learnt by the optimiser)
NORM_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


#: Types and bounds of :class:`FinetuneOptions` (``model.schema``; :class:`TrainingError`
#: names the field): a finite learning rate up to 1, bounded steps and seconds, a class
#: count labels can hold.
OPTION_FIELDS = {
    **{k: TRAIN_FIELDS[k] for k in ("batch_size", "steps", "time_budget", "weight_decay", "warmup",
                                    "val_every", "dice_weight", "augment", "foreground_bias", "elastic",
                                    "ema", "seed", "zoom")},
    "lr": Nullable(Num(0, TRAIN_FIELDS["lr"].hi, lo_open=True)),
    "train": Str(choices=TRAINABLE),
    "patch": Nullable(TRAIN_FIELDS["patch"]),
    "class_balance": Nullable(TRAIN_FIELDS["class_balance"]),
    "num_classes": Nullable(Int(2, MAX_CLASSES)),
    "new_head": Bool(),
    "class_names": Nullable(List(Str(128), 1, MAX_CLASSES)),
    "preprocess": Str(choices=("auto", "keep")),
    "tune": Bool(),
    "val_fraction": Num(0, 0.9),
}


@dataclass
class FinetuneOptions:
    """How to fine-tune. Training ends after ``steps`` or ``time_budget`` seconds, whichever
    comes first (the budget covers the whole job: choosing the input handling, training,
    tuning)."""

    steps: int = 300
    time_budget: float | None = None
    lr: float | None = None  # None: 3e-4, or 3e-3 with a new head (AUTO_TRAIN)
    train: str = "auto"  # "all", "decoder" (encoder frozen), "decoder+last"; "auto": AUTO_TRAIN
    augment: bool = True
    batch_size: int = 4
    patch: list[int] | None = None  # default: 128 x 128 (2D), 16 x 64 x 64 (3D), within the tile
    warmup: int = 15
    val_every: int = 25
    weight_decay: float = 1e-4
    dice_weight: float = 1.0
    foreground_bias: float = 0.5
    elastic: float = 0.0  # share of patches elastically deformed (with augment)
    zoom: list[float] | None = None  # [low, high] random zoom of patches (with augment), as TrainConfig.zoom
    class_balance: float | None = None  # cross-entropy class weights frequency ** -class_balance (AUTO_TRAIN)
    ema: float = 0.98  # decay of the moving average of the weights that is validated and kept (0: off)
    num_classes: int | None = None  # a different class count: new head, the rest kept
    new_head: bool = False  # other classes (labels are class ids), even as many as the model's
    class_names: list[str] | None = None
    preprocess: str = "auto"  # "auto": pick inversion / stain handling on the data; "keep"
    tune: bool = True  # re-tune post-processing (or the decision threshold) on held-out data
    val_fraction: float = 0.25
    seed: int = 0

    def __post_init__(self) -> None:
        for key, spec in OPTION_FIELDS.items():
            check(spec, getattr(self, key), key, TrainingError)
        if self.patch is not None:
            check_batch_size(self.batch_size, self.patch)


@dataclass
class Annotated:
    """One image and its corrected labels.

    ``image`` is ``labels.shape`` plus an optional trailing channel axis (RGB: ``rgb=True``).
    ``labels`` has the model's spatial dims, or one more (a stack: axis 0 is the slice axis
    of a 2D model, or Z of a 3D model when ``labels`` is ``(Z, Y, X)``). ``reviewed`` lists
    the reviewed indices along axis 0 of a stack (None: all of it; for a single 2D image,
    None or ``[0]`` means reviewed).
    """

    image: np.ndarray
    labels: np.ndarray
    reviewed: Sequence[int] | None = None
    name: str = "image"
    rgb: bool = False


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns. ``model`` holds the best weights found (on CPU)."""

    model: object
    parent: str
    before: dict
    after: dict
    accepted: bool
    message: str
    history: list[dict]
    best_step: int
    steps: int
    seconds: float
    stopped: bool
    options: dict
    split: dict
    normalization: dict
    path: Path | None = None
    extras: dict = field(default_factory=dict)
    #: the starting weights with this job's input handling and post-processing re-tuned on the
    #: same held-out data as the new weights (``{}`` with a new head or no held-out data):
    #: ``retuned - before`` is the gain of re-tuning, ``after - retuned`` that of training
    retuned: dict = field(default_factory=dict)
    #: the starting weights with the batch-norm statistics training gathered (and re-tuned
    #: post-processing): ``restats - retuned`` is the gain of the statistics, ``after - restats``
    #: that of the weights (``{}`` when nothing was trained)
    restats: dict = field(default_factory=dict)
    #: the trained model's held-out metrics, whether it was kept (``after``) or not
    trained: dict = field(default_factory=dict)
    #: the other versions of the model scored on the same held-out data (:func:`score_versions`):
    #: ``{"on": "...", "scores": {name: metrics}}``; the new version is added when it is saved
    compared: dict = field(default_factory=dict)
    device: str = ""


# -- samples ------------------------------------------------------------------------------------


def _input_fn(image: np.ndarray, rgb: bool, norm: dict) -> Callable[[np.ndarray], np.ndarray]:
    """The engine's preprocessing for this image: decided on the whole image (or stack) once,
    applied to a slice or block (channels last when ``rgb``) -> ``(1, *spatial)`` float32."""
    from ..inference.preprocess import (
        InputTransform,
        normalize,
        percentile_range,
        wants_input_transform,
    )

    n_channels = image.shape[-1] if rgb else 0
    if wants_input_transform(norm):
        return InputTransform(image, n_channels, norm)
    n_read = min(n_channels, 3)
    if norm.get("kind", "percentile") == "percentile":
        lo, hi = percentile_range(image[..., :n_read] if n_channels else image,
                                  norm.get("low", 1.0), norm.get("high", 99.8))
    else:
        lo, hi = 0.0, 1.0

    def apply(data: np.ndarray) -> np.ndarray:
        data = np.asarray(data)
        if n_channels:
            data = data[..., :n_read].astype(np.float32).mean(axis=-1)
        return normalize(data, lo, hi)[None]

    return apply


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive runs ``[(first, last), ...]`` of sorted indices."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and i == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def reviewed_units(item: Annotated, spatial_dims: int) -> list[tuple]:
    """The reviewed units of ``item``: ``(index,)`` slices for a 2D model on a stack, ``()`` for
    a single image, ``(first, last)`` runs of planes for a 3D model on a volume."""
    labels = np.asarray(item.labels)
    if labels.ndim == spatial_dims:
        if spatial_dims == 2:
            return [()] if item.reviewed is None or len(item.reviewed) else []
        if item.reviewed is None:
            return [(0, labels.shape[0] - 1)]
        idx = sorted({int(i) for i in item.reviewed if 0 <= int(i) < labels.shape[0]})
        return list(_runs(idx))
    if labels.ndim == spatial_dims + 1 and spatial_dims == 2:
        n = labels.shape[0]
        idx = range(n) if item.reviewed is None else sorted({int(i) for i in item.reviewed})
        bad = [i for i in idx if not 0 <= i < n]
        if bad:
            raise ValueError(f"{item.name}: reviewed slice {bad[0]} is outside 0..{n - 1}")
        return [(i,) for i in idx]
    raise ValueError(
        f"{item.name}: labels of shape {labels.shape} do not fit a {spatial_dims}D model "
        f"(expected {spatial_dims}D labels{', or a stack of 2D slices' if spatial_dims == 2 else ''})"
    )


def build_samples(
    data: Sequence[Annotated],
    cfg,
    val_fraction: float = 0.25,
    context: int = 8,
) -> tuple[list[Sample], list[Sample], dict]:
    """Training and held-out samples from the reviewed parts of ``data`` for a model of ``cfg``.

    Returns ``(train, val, split)`` where ``split`` says in words and indices what was held
    out. For 3D runs of reviewed planes, up to ``context`` unreviewed planes on each side go
    into the training image (targets there are ``IGNORE``) so the network sees around them.
    """
    dims = cfg.spatial_dims
    units = []  # (item index, unit)
    fns = []
    for k, item in enumerate(data):
        image, labels = np.asarray(item.image), check_mask(item.labels, f"{item.name} labels")
        spatial = image.shape[:-1] if item.rgb else image.shape
        if tuple(spatial) != labels.shape:
            raise ValueError(
                f"{item.name}: image {tuple(spatial)} and labels {labels.shape} differ in shape "
                "(the labels must cover every pixel of the image)"
            )
        fns.append(_input_fn(image, item.rgb, cfg.normalization or {}))
        units += [(k, u) for u in reviewed_units(item, dims)]
    if not units:
        raise ValueError("no reviewed slices: mark the corrected slices as reviewed first")

    def unit_arrays(k: int, unit: tuple, with_context: bool):
        item = data[k]
        image, labels = np.asarray(item.image), np.asarray(item.labels)
        if dims == 2:
            img, lab = (image, labels) if unit == () else (image[unit[0]], labels[unit[0]])
            return fns[k](img), _target(lab, cfg), lab, f"{item.name}" + (f"[{unit[0]}]" if unit else "")
        z0, z1 = unit
        a = max(z0 - context, 0) if with_context else z0
        b = min(z1 + 1 + context, labels.shape[0]) if with_context else z1 + 1
        img, lab = image[a:b], labels[a:b]
        target = _target(lab, cfg)
        target[: z0 - a] = IGNORE
        target[z1 + 1 - a:] = IGNORE
        inst = lab.copy()
        return fns[k](img), target, inst, f"{item.name}[{z0}:{z1 + 1}]"

    train, val = [], []
    split: dict = {"units": len(units)}
    if len(units) >= 3:
        n_val = max(1, int(round(len(units) * val_fraction)))
        pos = sorted({int(round(p)) for p in np.linspace(0, len(units) - 1, n_val + 2)[1:-1]})
        held = [units[p] for p in pos]
        for k, unit in units:
            if (k, unit) in held:
                img, tgt, lab, name = unit_arrays(k, unit, with_context=False)
                val.append(Sample(name, img, tgt, lab if cfg.output == "instances" else None))
            else:
                img, tgt, lab, name = unit_arrays(k, unit, with_context=True)
                train.append(Sample(name, img, tgt, lab if cfg.output == "instances" else None))
        split.update(kind="units", held_out=[v.name for v in val])
        split["text"] = f"held out {len(val)} of {len(units)} reviewed {'slices' if dims == 2 else 'blocks'}: " + ", ".join(
            v.name for v in val)
    else:
        for k, unit in units:
            img, tgt, lab, name = unit_arrays(k, unit, with_context=True)
            if dims == 3:  # hold out the band of the reviewed planes only
                z0 = unit[0] - max(unit[0] - context, 0)
                vz = slice(z0, z0 + unit[1] - unit[0] + 1)
            else:
                vz = slice(None)
            width = tgt.shape[-1]
            cut = int(round(width * (1 - val_fraction)))
            if width - cut < 8 or cut < 8:  # too small to split: train and validate on all of it
                train.append(Sample(name, img, tgt, lab if cfg.output == "instances" else None))
                vimg, vtgt, vlab = img, tgt, lab
                split.setdefault("notes", []).append(f"{name} too narrow to hold out a band")
            else:
                train.append(Sample(name, img[..., :cut], tgt[..., :cut],
                                    lab[..., :cut] if cfg.output == "instances" else None))
                vimg, vtgt, vlab = img[..., cut:], tgt[..., cut:], lab[..., cut:]
            if dims == 3:
                vimg, vtgt, vlab = vimg[:, vz], vtgt[vz], vlab[vz]
            val.append(Sample(f"{name} x>={cut}", np.ascontiguousarray(vimg), np.ascontiguousarray(vtgt),
                              np.ascontiguousarray(vlab) if cfg.output == "instances" else None))
        split.update(kind="band", held_out=[v.name for v in val])
        split["text"] = (f"{len(units)} reviewed {'slice' if dims == 2 else 'block'}(s): the last "
                         f"{val_fraction:.0%} of each along X held out")
    return train, val, split


def _target(labels: np.ndarray, cfg) -> np.ndarray:
    labels = np.asarray(labels)
    if cfg.output == "instances":
        return instance_target(labels)
    target = labels.astype(np.int64)
    if target.size and target.max() >= cfg.num_classes:
        raise ValueError(
            f"the labels hold class {int(target.max())} but the model has {cfg.num_classes} classes "
            f"(0..{cfg.num_classes - 1}); fine-tune with num_classes={int(target.max()) + 1} for a new head"
        )
    return target


# -- model surgery ------------------------------------------------------------------------------


def adapt_model(model, num_classes: int | None = None, class_names: list[str] | None = None,
                new_head: bool = False, seed: int = 0):
    """A copy of ``model`` for fine-tuning; with a new head when ``num_classes`` differs (or
    ``new_head``: other classes that happen to be as many).

    A new head makes a semantic model (argmax of the classes): the head is re-initialised
    from ``seed`` (so that a fine-tune can be repeated exactly; the global random state is left
    as it was), every other weight is kept.
    """
    import torch

    from ..model.unet import SkipUNet

    cfg = copy.deepcopy(model.config)
    if cfg.arch:  # a network imported from another package: same head, every weight trainable
        from ..model.foreign import copy_network

        if new_head or (num_classes is not None and num_classes != cfg.num_classes):
            raise ValueError(f"{cfg.name} is an imported network: its head cannot be replaced here "
                             f"(it has {cfg.num_classes} classes); fine-tune with labels of those classes")
        new = copy_network(model)
        if class_names:
            new.config.class_names = list(class_names)
        return new
    num_classes = num_classes if num_classes is not None or not new_head else cfg.num_classes
    if num_classes is None or (num_classes == cfg.num_classes and not new_head):
        new = SkipUNet(cfg)
        new.load_state_dict(model.state_dict())
        if class_names:
            new.config.class_names = list(class_names)
        return new
    names = list(class_names) if class_names else ["background"] + [f"class {i}" for i in range(1, num_classes)]
    cfg = replace(cfg, num_classes=num_classes, output="semantic", class_names=names, postprocess={},
                  card=copy.deepcopy(cfg.card))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        new = SkipUNet(cfg)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = new.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("head.") for k in missing), (missing, unexpected)
    return new


def set_trainable(model, what: str) -> None:
    """``all``; ``decoder`` (encoder frozen, batch-norm statistics included); ``decoder+last``
    (the decoder, the bottleneck and the deepest skip stage train; earlier stages frozen)."""
    model.unfreeze()
    if what == "decoder":
        model.freeze_encoder()
    elif what == "decoder+last":
        model.freeze_encoder(stages=max(len(model.encoder.stages) - 2, 0))


# -- the loop -----------------------------------------------------------------------------------


def _probs(model, samples: list[Sample], device: str) -> list[np.ndarray]:
    from .loop import predict_probabilities

    return [predict_probabilities(model, s.image, device) for s in samples]


def _score(model, samples: list[Sample], device: str, params: dict | None = None) -> dict:
    from .loop import score

    return score(model.config, _probs(model, samples, device), samples, params)


def _centre_crop(s: Sample, size: int) -> Sample:
    sl = tuple(slice(max((n - size) // 2, 0), max((n - size) // 2, 0) + size) for n in s.target.shape)
    inst = None if s.instances is None else s.instances[sl]
    return Sample(s.name, np.ascontiguousarray(s.image[(slice(None), *sl)]), s.target[sl], inst)


def describe_input(norm: dict) -> str:
    """A normalisation config in words, e.g. 'haematoxylin channel, percentiles 1-99.8'."""
    norm = dict(norm or {})
    parts = []
    if norm.get("stain"):
        parts.append(f"{'haematoxylin' if norm['stain'] == 'hematoxylin' else norm['stain']} channel "
                     "(colour deconvolution)")
    invert = norm.get("invert")
    if invert == "auto":
        parts.append("inverted where the background is bright")
    elif invert not in (None, False, "none", "no"):
        parts.append("inverted")
    if norm.get("kind", "percentile") == "percentile":
        parts.append(f"percentiles {norm.get('low', 1.0):g}-{norm.get('high', 99.8):g}")
    else:
        parts.append("no intensity scaling")
    return ", ".join(parts)


def _candidate_norms(base: dict, any_rgb: bool) -> list[dict]:
    base = dict(base or {})
    cands = [base]
    if base.get("invert") in (None, False):
        cands.append({**base, "invert": "auto"})
    if any_rgb and not base.get("stain"):
        cands += [{**base, "stain": "hematoxylin"}, {**base, "stain": "hematoxylin", "invert": "auto"}]
    return cands


def tune_semantic_threshold(model, val: list[Sample], device: str = "cpu") -> tuple[float, dict]:
    """For a 2-class semantic model: the probability threshold of class 1 that scores best on
    ``val``; built into the head (bias shift by ``-logit(t)``) so every user of the model gets
    it. Returns ``(threshold, metrics)``."""
    import torch

    from .loop import score

    probs = _probs(model, val, device)
    best_t, best = 0.5, score(model.config, probs, val)
    if not hasattr(model, "head"):  # an imported network: no known head to shift
        return best_t, best
    for t in (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.55, 0.6, 0.65, 0.7):
        shifted = [np.stack([p[1] <= t, p[1] > t]).astype(np.float32) for p in probs]
        metrics = score(model.config, shifted, val)
        if metrics["score"] > best["score"] + 1e-6:
            best_t, best = t, metrics
    if best_t != 0.5:
        with torch.no_grad():
            model.head.bias[1] -= float(np.log(best_t / (1 - best_t)))
    return best_t, best



def _tunable(cfg, split: dict) -> bool:
    """Whether fine-tuning re-tunes this model's post-processing: the watershed thresholds of
    an instance model; the decision threshold of a 2-class semantic model, but only on whole
    held-out slices/blocks (a band of the training images is too like them: measured, it picks
    thresholds above 0.5 that lose recall elsewhere)."""
    return cfg.output == "instances" or (cfg.num_classes == 2 and split.get("kind") == "units")


def retune(model, val: list[Sample], split: dict) -> dict:
    """Re-tune ``model``'s post-processing on ``val`` in place (see :func:`_tunable`); returns
    the held-out metrics with it."""
    from .loop import tune_postprocess

    cfg = model.config
    if cfg.output == "instances":
        cfg.postprocess, metrics = tune_postprocess(model, cfg, val, "cpu")
        return metrics
    if _tunable(cfg, split):
        t, metrics = tune_semantic_threshold(model, val, "cpu")
        return {**metrics, "threshold": t}
    return _score(model, val, "cpu")


def _retuned_what(norm: dict, base_cfg, tune: bool, split: dict) -> str:
    """What the re-tuned reference changed of the starting model, in words ('' for nothing)."""
    parts = []
    if norm != dict(base_cfg.normalization or {}):
        parts.append("the input handling")
    if tune and _tunable(base_cfg, split):
        parts.append("the post-processing")
    return " and ".join(parts)


def gain_text(before: dict, retuned: dict, after: dict, what: str = "the post-processing",
              restats: dict | None = None) -> str:
    """The held-out gain split into re-tuning and training, e.g. ``'re-tuning the
    post-processing +0.000 (starting weights: 0.942), training +0.033 (batch-norm statistics
    +0.033, weights +0.000)'``. ``after``: the trained model (kept or not); ``restats``: the
    starting weights with training's batch-norm statistics (re-tuned too)."""
    if not retuned or not before or "score" not in after:
        return ""
    tuning, training = retuned["score"] - before["score"], after["score"] - retuned["score"]
    text = (f"re-tuning {what or 'nothing'} {tuning:+.3f} (starting weights: {retuned['score']:.3f}), "
            f"training {training:+.3f}")
    if restats:
        stats = restats["score"] - retuned["score"]
        text += f" (batch-norm statistics {stats:+.3f}, weights {after['score'] - restats['score']:+.3f})"
    return text


def held_out_text(data: Sequence[Annotated], split: dict) -> str:
    """Which held-out data a score is on, in words (the layers' names and the split)."""
    names = ", ".join(dict.fromkeys(item.name for item in data))
    return f"{names}: {split.get('text', 'held-out part')}"


def score_versions(
    models: Sequence[str | Path],
    data: Sequence[Annotated],
    val_fraction: float = 0.25,
    device: str = "cpu",
    like=None,
) -> Generator[Progress, None, dict]:
    """Score each of ``models`` (names or folders) on the same held-out part of ``data`` (the
    split of :func:`build_samples`, which depends on the data only), each with its own input
    handling and post-processing. A generator (one progress event per model); returns
    ``{"on": text, "scores": {name: metrics}}``. A model that predicts something else than
    ``like`` (a config: other output, classes or dimensionality) is left out, with the reason
    (``{"skipped": why}``); so is one that does not load (``{"error": why}``)."""
    from ..model.store import ModelLoadError, load_model

    out: dict = {"on": "", "scores": {}}
    for i, ref in enumerate(models):
        name = Path(str(ref)).name
        yield Progress(i, len(models), f"scoring {name} on the held-out data", {"phase": "compare"})
        try:
            model = load_model(ref, device=device)  # scored where it lies (a fine-tune's device)
        except (ModelLoadError, OSError, ValueError) as err:
            out["scores"][name] = {"error": " ".join(str(err).split())[:200]}
            continue
        c = model.config
        if like is not None and (c.output, c.num_classes, c.spatial_dims) != (like.output, like.num_classes,
                                                                             like.spatial_dims):
            out["scores"][name] = {"skipped": "predicts other classes"}
            continue
        _, val, split = build_samples(data, c, val_fraction)
        out["on"] = held_out_text(data, split)
        out["scores"][name] = {k: round(float(v), 4) for k, v in _score(model, val, device).items()}
        del model
    return out


def _score_lineage(parent, parent_name: str, before: dict, data, cfg, opts, split, dev, budget_left,
                   limit: int = 8) -> Generator[Progress, None, dict]:
    """The other versions of the starting model (the base and its ``-ft-N``, the newest
    ``limit``) scored on this job's held-out data; the starting model's score is ``before``.
    Versions are left out (and named) once the job's time budget is spent."""
    from ..model.store import list_versions

    on = held_out_text(data, split)
    start = Path(str(parent)).resolve() if parent else None
    scores: dict = {parent_name: {k: round(float(v), 4) for k, v in before.items()
                                  if isinstance(v, (int, float))}}
    try:
        entries = list_versions(parent_name)
    except OSError:
        entries = []
    others = [e for e in entries if e.name != parent_name and (start is None or e.path.resolve() != start)]
    others = (others[:1] + others[1:][-(limit - 1):]) if len(others) > limit else others  # the base, the newest
    for entry in others:
        left = budget_left()
        if left is not None and left <= 0:
            scores[entry.name] = {"skipped": "time budget spent"}
            continue
        part = yield from score_versions([entry.path], data, opts.val_fraction, dev, like=cfg)
        scores.update(part["scores"])
    return {"on": on, "scores": scores}


def version_scores(entries, compared: dict | None = None) -> tuple[str, dict]:
    """The scores to show next to ``entries`` (model entries of one lineage, oldest first):
    those of ``compared`` (a :func:`score_versions` result) when given, else of the newest
    version whose card holds a comparison (every version scored on that version's held-out
    data), as ``(on, {name: (metric, value) or None})``; without one, each model's own card
    metrics and ``on`` is ``''`` (then the scores are not comparable: say so)."""
    entries = list(entries)
    for entry in ([None] if compared is not None else reversed(entries)):
        if entry is not None:
            compared = entry.config.card.get("compared")
        if isinstance(compared, dict) and isinstance(compared.get("scores"), dict) and compared["scores"]:
            table = {}
            for e in entries:
                metrics = compared["scores"].get(e.name)
                table[e.name] = _first_metric(metrics) if isinstance(metrics, dict) else None
            return str(compared.get("on", "")), table
    return "", {e.name: _first_metric(e.config.card.get("metrics", {})) for e in entries}


def _first_metric(metrics: dict) -> tuple[str, float] | None:
    return next(((k, float(v)) for k, v in metrics.items()
                 if k != "score" and isinstance(v, (int, float)) and not isinstance(v, bool)), None)


def finetune(
    model,
    data: Sequence[Annotated],
    options: FinetuneOptions | None = None,
    *,
    device: str = "auto",
    should_stop: Callable[[], bool] | None = None,
) -> Generator[Progress, None, FinetuneResult]:
    """Fine-tune a copy of ``model`` (a SkipUNet, or a stored model's name) on the reviewed
    parts of ``data``; yields :class:`Progress` (``info``: ``loss``, ``lr``, ``val``, ``phase``),
    returns a :class:`FinetuneResult`. The caller's model is never changed.

    ``should_stop()`` returning True ends training early; the best weights so far are kept
    and the job finishes normally (tuning, guard). Accelerator memory is released at the end.
    """
    from ..inference.device import describe, release, select_device
    from ..model.store import load_model
    from .loop import TrainConfig, train

    t0 = time.perf_counter()
    opts = options or FinetuneOptions()
    if isinstance(model, (str, Path)):
        model = load_model(model)
    parent = getattr(model, "source_path", None)
    parent_name = model.config.name
    data = list(data)
    if not data:
        raise ValueError("no images to fine-tune on")
    dev = select_device(device)
    base = copy.deepcopy(model).to("cpu").float().eval()
    head_change = opts.new_head or (opts.num_classes is not None and opts.num_classes != base.config.num_classes)
    auto_train, auto_lr, auto_balance = AUTO_TRAIN[head_change]
    opts = replace(opts, train=auto_train if opts.train == "auto" else opts.train,
                   lr=auto_lr if opts.lr is None else opts.lr,
                   class_balance=auto_balance if opts.class_balance is None else opts.class_balance)
    new = adapt_model(base, opts.num_classes, opts.class_names, new_head=head_change, seed=opts.seed)
    base.to(dev)  # scored on the job's device; dropped (and its memory released) at the end
    cfg = new.config

    def budget_left() -> float | None:
        return None if opts.time_budget is None else opts.time_budget - (time.perf_counter() - t0)

    try:
        yield Progress(0, max(opts.steps, 1), f"preparing on {describe(dev)}",
                       {"phase": "prepare", "device": describe(dev)})
        # the guard's reference: the starting model, as it is, on the held-out data
        base_train, base_val, split = build_samples(data, base.config if not head_change else cfg,
                                                    opts.val_fraction)
        before = {} if head_change else _score(base, base_val, dev)
        if before:
            yield Progress(0, max(opts.steps, 1), f"starting model: held-out score {before['score']:.3f}",
                           {"phase": "prepare", "before": before["score"]})
        norm = dict(cfg.normalization or {})
        if opts.preprocess == "auto" and not head_change:
            # the input handling under which the starting model does best on the training part
            any_rgb = any(item.rgb for item in data)
            best_score, seen = -1.0, set()
            for cand in _candidate_norms(norm, any_rgb):
                probe = replace(cfg, normalization=cand)
                tr, _, _ = build_samples(data, probe, opts.val_fraction)
                crops = [_centre_crop(t, 192) for t in tr[:4]]  # enough to tell, and quick
                key = b"".join(c.image.tobytes() for c in crops)
                if key in seen:  # e.g. "invert auto" on fluorescence: the same input again
                    continue
                seen.add(key)
                s = _score(base, crops, dev)["score"]
                if s > best_score + 1e-3:
                    best_score, norm = s, cand
            yield Progress(0, max(opts.steps, 1), f"input: {describe_input(norm)}",
                           {"phase": "prepare", "normalization": norm})
        cfg.normalization = norm
        train_s, val_s, split = build_samples(data, cfg, opts.val_fraction)

        dims = cfg.spatial_dims
        patch = opts.patch or ([128, 128] if dims == 2 else [16, 64, 64])
        set_trainable(new, opts.train)
        left = budget_left()
        tcfg = TrainConfig(
            patch=patch, batch_size=opts.batch_size, steps=opts.steps,
            time_budget=None if left is None else max(left * 0.9 - 2.0, 1.0),
            lr=opts.lr, weight_decay=opts.weight_decay, warmup=opts.warmup, val_every=opts.val_every,
            max_val_images=40, dice_weight=opts.dice_weight, augment=opts.augment,
            foreground_bias=opts.foreground_bias, elastic=opts.elastic, class_balance=opts.class_balance,
            ema=opts.ema, seed=opts.seed, zoom=opts.zoom,
        )
        stopped = {"v": False}

        def stop() -> bool:
            if should_stop is not None and should_stop():
                stopped["v"] = True
            return stopped["v"]

        gen = train(new, train_s, val_s, tcfg, device=dev, should_stop=stop)
        while True:
            try:
                event = next(gen)
            except StopIteration as done:
                tres = done.value
                break
            event.info["phase"] = "train"
            secs = event.info.get("seconds", 0.0)
            if tcfg.time_budget is not None and event.done >= 3 and secs > 0:  # steps that fit the budget
                event.total = max(min(opts.steps, int(event.done * tcfg.time_budget / secs)), event.done)
            yield event
        new.unfreeze()
        new.to("cpu").eval()
        after = dict(tres.metrics)
        yield Progress(tres.best_step, max(tres.best_step, 1), "tuning on the held-out data", {"phase": "tune"})
        if opts.tune and val_s and _tunable(cfg, split):
            after = retune(new, val_s, split)
        if not after and val_s:
            after = _score(new, val_s, "cpu")
        retuned: dict = {}
        restats: dict = {}
        trained = dict(after)  # the trained model's held-out metrics, kept or not
        note = ""
        if not head_change and val_s:
            # the starting weights, with this job's input handling and the post-processing
            # re-tuned on the same held-out data as the new weights: what re-tuning alone gives,
            # so that the gain of training is told apart from it (and training that does not
            # beat it is not kept)
            yield Progress(tres.best_step, max(tres.best_step, 1),
                           "scoring the starting weights with re-tuned post-processing", {"phase": "tune"})
            ref = adapt_model(base.to("cpu"))
            ref.config.normalization = norm
            tuned_ref = opts.tune and _tunable(ref.config, split)
            retuned = retune(ref, val_s, split) if tuned_ref else _score(ref, val_s, "cpu")
            # and with the batch-norm statistics training gathered on the user's patches (the
            # weights as they were): a few steps adapt these to the image (measured: 5 steps at
            # a learning rate of 1e-9 gave the whole gain of a 5-step run)
            buffers = {k: v for k, v in new.state_dict().items() if k.endswith(NORM_BUFFERS)}
            if buffers and tres.best_step > 0:
                stats = adapt_model(base.to("cpu"))
                stats.config.normalization = norm
                stats.load_state_dict(buffers, strict=False)
                restats = retune(stats, val_s, split) if tuned_ref else _score(stats, val_s, "cpu")
                if restats["score"] >= after.get("score", -1.0) and restats["score"] > retuned["score"]:
                    new, after, cfg = stats, dict(restats), stats.config
                    note = "; the starting weights with the new batch-norm statistics are kept: training the weights did not beat them"
            if retuned["score"] >= after.get("score", -1.0):
                new, after, cfg = ref, dict(retuned), ref.config
                tres.best_step = 0
                note = "; the starting weights are kept: training did not beat them"
        if head_change:
            accepted = True
            message = (f"new head for {cfg.num_classes} classes: held-out score {after.get('score', float('nan')):.3f} "
                       "(no comparison with the starting model, which predicts other classes)")
        elif not val_s:
            accepted, message = True, "no held-out data: kept without comparison"
        else:
            accepted = after["score"] > before["score"]
            verdict = "better" if accepted else "not better: the starting model stays active"
            message = (f"held-out score {before['score']:.3f} -> {after['score']:.3f} ({verdict}): "
                       + gain_text(before, retuned, trained, _retuned_what(norm, base.config, opts.tune, split),
                                   restats))
        message += note
        compared = {}
        if not head_change and val_s:
            compared = yield from _score_lineage(parent, parent_name, before, data, cfg, opts, split, dev,
                                                 budget_left)
        return FinetuneResult(
            model=new, parent=str(parent) if parent else parent_name, before=before, after=after,
            accepted=accepted, message=message, history=tres.history, best_step=tres.best_step,
            steps=tres.history[-1]["step"] if tres.history else 0, seconds=time.perf_counter() - t0,
            stopped=stopped["v"], options=asdict(opts), split=split, normalization=norm,
            retuned=retuned, restats=restats, trained=trained, compared=compared, device=describe(dev),
        )
    finally:
        new.to("cpu")
        del base
        release(dev)


def run_finetune(*args, callback=None, **kwargs) -> FinetuneResult:
    """Drive :func:`finetune` to the end (``callback(event)`` for each progress event)."""
    from ..inference.engine import run

    return run(finetune(*args, **kwargs), callback)


# -- versions -----------------------------------------------------------------------------------


def labels_npz(data: Sequence[Annotated]) -> bytes:
    """The corrected labels (and which slices were reviewed) as compressed ``.npz`` bytes."""
    arrays, names = {}, []
    for i, item in enumerate(data):
        arrays[f"labels_{i}"] = np.asarray(item.labels)
        arrays[f"reviewed_{i}"] = np.asarray([] if item.reviewed is None else list(item.reviewed), dtype=np.int64)
        arrays[f"all_reviewed_{i}"] = np.asarray(item.reviewed is None)
        names.append(item.name)
    arrays["names"] = np.asarray(names)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def load_labels(folder: str | Path) -> list[tuple[str, np.ndarray, list[int] | None]]:
    """``[(name, labels, reviewed)]`` saved with a version (``reviewed`` None: all)."""
    with np.load(Path(folder) / LABELS_FILE, allow_pickle=False) as z:
        names = [str(n) for n in z["names"]]
        return [(n, z[f"labels_{i}"], None if bool(z[f"all_reviewed_{i}"]) else [int(v) for v in z[f"reviewed_{i}"]])
                for i, n in enumerate(names)]


def save_labels(folder: str | Path, data: Sequence[Annotated]) -> Path:
    """Write the corrected labels into ``folder`` now (before training: work is not lost).

    Atomic (temporary file, flush, rename): a crash leaves the previous file or the new one.
    """
    from ..model.store import _atomic_write

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LABELS_FILE
    blob = labels_npz(data)
    _atomic_write(path, lambda p: Path(p).write_bytes(blob))
    return path


def save_version(
    result: FinetuneResult,
    data: Sequence[Annotated],
    folder: str | Path | None = None,
    *,
    activate: bool | None = None,
) -> Path:
    """Save ``result`` as a new model version, with its card, history and corrected labels.

    ``folder`` None: the next free ``<base>-ft-<N>`` in the user store (made exclusively, never
    overwriting). An existing folder must not hold a model yet (a folder from
    :func:`~napari_skipseg.model.store.reserve_version` is fine). ``activate`` (default: when
    the guard accepted the result) makes the new version the active model.
    """
    from ..model.config import FIELDS
    from ..model.schema import Invalid
    from ..model.store import is_model_dir, reserve_version, safe_model_name, save_model

    folder = Path(folder) if folder is not None else reserve_version(result.model.config.name)
    if is_model_dir(folder):
        raise FileExistsError(f"{folder}: holds a model already; versions are never overwritten")
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{folder}: exists and is a file")
    from .loop import TrainConfig, training_extras

    model = result.model
    cfg = model.config
    try:
        FIELDS["name"].validate(folder.name, "name")
        cfg.name = folder.name
    except Invalid:  # a folder name that is not a model name (e.g. holds ':'): a safe form of it
        cfg.name = safe_model_name(folder.name, fallback=safe_model_name(cfg.name))
    now = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    before = {k: round(v, 4) for k, v in result.before.items() if isinstance(v, (int, float)) and k != "score"}
    after = {k: round(v, 4) for k, v in result.after.items() if isinstance(v, (int, float)) and k != "score"}
    described = "; ".join(
        f"{d.name} {tuple(np.asarray(d.labels).shape)}"
        + ("" if d.reviewed is None else f", reviewed {list(d.reviewed)}") for d in data)
    card = inherited_card(cfg.card, result.parent)
    retuned = {k: round(v, 4) for k, v in result.retuned.items() if isinstance(v, (int, float)) and k != "score"}
    compared = {"on": result.compared.get("on", ""), "scores": dict(result.compared.get("scores", {}))}
    if compared["scores"]:
        compared["scores"][cfg.name] = {k: round(float(v), 4) for k, v in result.after.items()
                                        if isinstance(v, (int, float))}
    held_out = f"the held-out part of the corrected labels ({result.split.get('text', '')})"
    tuned = result.options.get("tune", True) and _tunable(cfg, result.split)
    if tuned:
        what = ("watershed thresholds" if cfg.output == "instances" else "decision threshold")
        card["postprocess_tuning"] = f"{what} re-tuned on {held_out} when fine-tuning on {now[:10]}"
    elif card.get("postprocess_tuning"):
        card["postprocess_tuning"] = f"not re-tuned; as in {_short_name(result.parent)}: {card['postprocess_tuning']}"
    card.update({
        "task": card.get("task", ""),
        "parent": result.parent,
        "created": now,
        "data": f"fine-tuned on corrected labels: {described}",
        "split": result.split.get("text", ""),
        "training": (f"{result.steps} steps ({result.best_step} kept: best held-out score), train "
                     f"{result.options['train']}, AdamW lr {result.options['lr']} warm-up + cosine, "
                     + training_extras(TrainConfig(class_balance=result.options.get("class_balance") or 0.0,
                                                   elastic=result.options.get("elastic", 0.0),
                                                   zoom=result.options.get("zoom"),
                                                   augment=result.options["augment"],
                                                   ema=result.options.get("ema", 0.0))) +
                     f"batch {result.options['batch_size']}, augment {result.options['augment']}, "
                     f"{result.seconds:.0f} s{', stopped by the user' if result.stopped else ''}"),
        "metrics": after,
        "metrics_on": held_out,
        "metrics_before": before,
        "accepted": result.accepted,
        "guard": result.message,
        "labels": f"{LABELS_FILE} (the corrected labels this version was trained on)",
    })
    if result.device:
        card["hardware"] = f"fine-tuned on {result.device}"
    if "parameters" in card:  # a new head has another count
        card["parameters"] = int(sum(p.numel() for p in model.parameters()))
    if retuned:
        card["metrics_retuned"] = retuned  # the starting weights with re-tuned post-processing
        trained = (result.trained or result.after)["score"]
        card["gain"] = {"re-tuning": round(result.retuned["score"] - result.before["score"], 4),
                        "training": round(trained - result.retuned["score"], 4)}
        if result.restats:
            card["gain"]["of which batch-norm statistics"] = round(result.restats["score"] - result.retuned["score"], 4)
            card["gain"]["of which weights"] = round(trained - result.restats["score"], 4)
    if compared["scores"]:
        card["compared"] = compared
    card["notes"] = (f"Fine-tuned from {result.parent} on {now}. Held-out before: {before or 'n/a'}; "
                     f"after: {after}. {result.message}.")
    cfg.card = card
    extras = {
        LABELS_FILE: labels_npz(data),
        "history.json": json.dumps(result.history) + "\n",
        "finetune.json": json.dumps({
            "parent": result.parent, "created": now, "options": result.options, "split": result.split,
            "before": result.before, "after": result.after, "accepted": result.accepted,
            "message": result.message, "normalization": result.normalization,
            "retuned": result.retuned, "restats": result.restats, "compared": compared,
        }, indent=1, default=str) + "\n",
    }
    save_model(model, folder, half=False, extra_files=extras, exclusive=True)
    result.path = folder
    if activate if activate is not None else result.accepted:
        activate_version(folder)
    return folder


#: Card entries that describe the parent's own training and measurements: a fine-tuned
#: version keeps them only as the parent's (so that its card never claims them as its own)
PARENT_ONLY = ("flips_effect", "training_scale", "speed", "metrics_retuned", "gain", "compared", "metrics_on",
               "hardware")


def _short_name(parent: str) -> str:
    return Path(str(parent)).name or str(parent)


def inherited_card(card: dict, parent: str) -> dict:
    """The card a fine-tuned version starts from: the parent's, with what was measured on the
    parent (test-time flips' effect, speed, training scale) said to be measured on it, and its
    hardware and comparison tables dropped. The caller writes its own data, split,
    training, metrics and post-processing tuning over it."""
    card = copy.deepcopy(dict(card))
    name = _short_name(parent)
    for key in PARENT_ONLY:
        value = card.pop(key, None)
        if key in ("flips_effect", "training_scale", "speed") and isinstance(value, str) and value:
            card[key] = value if value.startswith("measured on ") else f"measured on {name}: {value}"
    return card


def activate_version(folder: str | Path) -> None:
    """Make the saved version in ``folder`` the active model (by name when it is in the user
    store, else by its path)."""
    from ..model.store import set_active_model

    folder = Path(folder)
    set_active_model(str(folder) if folder.parent.resolve() != _user_root() else folder.name)


def _user_root() -> Path:
    from ..model.store import user_model_dir

    return user_model_dir().resolve()
