"""The training loop (used to train bundled models and, later, to fine-tune).

``train`` is a generator: it yields :class:`~napari_skipseg.inference.engine.Progress`
events (with loss and validation scores in ``info``) and returns a :class:`TrainResult`.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Generator
from dataclasses import asdict, dataclass, field

import numpy as np

from ..inference.engine import Progress
from ..inference.postprocess import instance_labels, semantic_labels
from ..metrics import InstanceScores, dice_per_class, match_instances, pixel_error
from ..model.schema import Bool, Int, List, Nullable, Num, check
from .data import IGNORE, PatchSampler, Sample

#: Bounds of training options (steps, seconds, pixels per batch): a run asks for at most
#: this much; larger values are typos or attacks on memory and time.
MAX_STEPS = 10_000_000
MAX_SECONDS = 30 * 24 * 3600.0
MAX_BATCH_PIXELS = 2**26  # batch_size x patch pixels (the bundled recipes use 2**15 to 2**19)
MAX_LR = 1.0


class TrainingError(ValueError):
    """Training options are out of range, or training went wrong (nothing is saved)."""


class TrainingDiverged(TrainingError):
    """The loss or the weights became NaN or infinite: training stopped, nothing is saved."""


#: The spec of every :class:`TrainConfig` field (``model.schema``), used for recipes too.
TRAIN_FIELDS = {
    "patch": List(Int(1, 4096), 2, 3),
    "batch_size": Int(1, 1024),
    "steps": Int(0, MAX_STEPS),
    "time_budget": Nullable(Num(0, MAX_SECONDS, lo_open=True)),
    "lr": Num(0, MAX_LR),  # 0 trains nothing (the CLI and fine-tuning ask for more than 0)
    "weight_decay": Num(0, 1),
    "warmup": Int(0, MAX_STEPS),
    "val_every": Int(1, MAX_STEPS),
    "max_val_images": Int(0, 100_000),
    "dice_weight": Num(0, 100),
    "augment": Bool(),
    "foreground_bias": Num(0, 1),
    "elastic": Num(0, 1),
    "class_balance": Num(0, 2),
    "ema": Num(0, 0.99999),
    "val_seeds": List(Num(0, 1), 0, 64),
    "seed": Int(0, 2**32 - 1),
    "zoom": Nullable(List(Num(0.05, 20, lo_open=True), 2, 2)),  # ordered and sane: data.check_zoom
    "zoom_isotropic": Bool(),
}


def check_batch_size(batch_size: int, patch) -> None:
    """Refuse a batch of more than :data:`MAX_BATCH_PIXELS` pixels (memory)."""
    n = batch_size * int(np.prod(patch))
    if n > MAX_BATCH_PIXELS:
        raise TrainingError(f"a batch of {batch_size} patches of {list(patch)} holds {n} pixels; at most "
                            f"{MAX_BATCH_PIXELS} (lower batch_size or patch)")


@dataclass
class TrainConfig:
    """How to train. ``steps`` and ``time_budget`` (seconds) both stop training.

    Every field is type-checked and bounded (:data:`TRAIN_FIELDS`); :meth:`validate` raises
    :class:`TrainingError` naming the field.
    """

    patch: list[int] = field(default_factory=lambda: [256, 256])
    batch_size: int = 8
    steps: int = 2000
    time_budget: float | None = None
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup: int = 50
    val_every: int = 100
    max_val_images: int = 40
    dice_weight: float = 1.0
    augment: bool = True
    foreground_bias: float = 0.5
    elastic: float = 0.0  # share of patches given a smooth elastic deformation
    # scale augmentation: [low, high] range of a random zoom per patch (log-uniform, per axis;
    # one factor for all axes with zoom_isotropic); null: off
    zoom: list[float] | None = None
    zoom_isotropic: bool = False
    class_balance: float = 0.0  # cross-entropy class weights: frequency ** -class_balance (0: none)
    ema: float = 0.0  # decay of an exponential moving average of the weights, validated and kept (0: none)
    # instance models: seed thresholds tried at each validation (the best one scores the check), so
    # that a model whose interior becomes surer is not judged by a seed threshold that now merges
    # touching objects; the thresholds kept are tuned at the end. Empty: the config's only.
    val_seeds: list[float] = field(default_factory=lambda: [0.5, 0.7, 0.9, 0.97])
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for key, spec in TRAIN_FIELDS.items():
            check(spec, getattr(self, key), key, TrainingError)
        check_batch_size(self.batch_size, self.patch)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        if not isinstance(data, dict):
            raise TrainingError(f"training options must be a JSON object, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise TrainingError(f"unknown training options: {', '.join(unknown)[:200]}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def non_finite(state: dict) -> str | None:
    """Name of the first floating-point tensor of ``state`` holding NaN or infinity, or None."""
    import torch

    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return key
    return None


def training_extras(tcfg: TrainConfig) -> str:
    """The model card's words for the training options beyond the basics (empty when unused)."""
    words = []
    if tcfg.class_balance:
        words.append(f"class weights frequency^-{tcfg.class_balance:g}")
    if tcfg.augment and tcfg.elastic:
        words.append(f"elastic deformation of {tcfg.elastic:.0%} of patches")
    if tcfg.augment and tcfg.zoom:
        kind = "isotropic" if tcfg.zoom_isotropic else "per axis"
        words.append(f"random zoom {tcfg.zoom[0]:g}-{tcfg.zoom[1]:g}x ({kind}, log-uniform)")
    if tcfg.ema:
        words.append(f"weight average (decay {tcfg.ema:g}) validated and kept")
    return "".join(w + ", " for w in words)


@dataclass
class TrainResult:
    model: object
    history: list[dict]
    best_step: int
    best_score: float
    metrics: dict
    seconds: float


def class_weights(samples: list[Sample], num_classes: int, balance: float) -> np.ndarray | None:
    """Cross-entropy weights ``frequency ** -balance`` of each class over the labelled pixels
    of ``samples``, scaled so that the mean weight per labelled pixel is 1 (the loss keeps its
    size); ``None`` when ``balance`` is 0. A class that is absent gets the largest weight of
    the present ones. 1 weighs every class as much in total (the original U-Net's balancing);
    0.5 lifts rare classes less."""
    if not balance:
        return None
    counts = np.zeros(num_classes, dtype=np.float64)
    for s in samples:
        t = s.target[s.target != IGNORE]
        counts += np.bincount(t.ravel().astype(np.int64), minlength=num_classes)[:num_classes]
    if counts.sum() == 0:
        return None
    freq = counts / counts.sum()
    present = freq > 0
    w = np.ones(num_classes)
    w[present] = freq[present] ** -float(balance)
    w[~present] = w[present].max()
    return (w / float((freq * w).sum())).astype(np.float32)


class WeightAverage:
    """Exponential moving average of a model's floating-point weights and batch-norm
    statistics (Polyak averaging): ``avg = d * avg + (1 - d) * current`` after each step, with
    ``d = min(decay, (1 + step) / (10 + step))`` so that early steps are not swamped by the
    starting weights. The average moves less from step to step than the weights do, so the
    held-out score that picks the weights to keep is less noisy.

    The averaging is torch's ``torch.optim.swa_utils.AveragedModel`` (buffers averaged too);
    this class only adds the warm-up of the decay and starts the average at the model's
    starting weights."""

    def __init__(self, model, decay: float) -> None:
        from torch.optim.swa_utils import AveragedModel

        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema must be between 0 and 1, got {decay}")
        self.decay = decay
        self.step = 0
        self.averaged = AveragedModel(model, multi_avg_fn=self._average, use_buffers=True)
        self.averaged.update_parameters(model)  # the first call copies: the average starts here

    def _average(self, averaged, current, num_averaged) -> None:
        d = min(self.decay, (1 + self.step) / (10 + self.step))
        for a, c in zip(averaged, current, strict=True):
            if a.is_floating_point():
                a.mul_(d).add_(c, alpha=1 - d)
            else:  # counters (batch norm's num_batches_tracked): the current value
                a.copy_(c)

    def update(self, model, step: int) -> None:
        """Fold in the weights after ``step`` (steps count from 0)."""
        self.step = int(step)
        self.averaged.update_parameters(model)

    def state(self, model) -> dict:
        """The model's state dict with the averaged entries (copies)."""
        return {k: v.detach().clone() for k, v in self.averaged.module.state_dict().items()}


def loss_fn(logits, target, dice_weight: float = 1.0, weight=None):
    """Cross-entropy (with per-class ``weight``, optional) plus soft Dice over the foreground
    classes; IGNORE pixels don't count."""
    import torch
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)
    if not dice_weight:
        return ce
    valid = (target != IGNORE).unsqueeze(1)
    probs = torch.softmax(logits, dim=1) * valid
    onehot = F.one_hot(target.clamp(min=0), logits.shape[1]).movedim(-1, 1) * valid
    dims = (0, *range(2, logits.ndim))
    inter = (probs * onehot).sum(dims)[1:]
    denom = (probs + onehot).sum(dims)[1:]
    dice = (2 * inter + 1.0) / (denom + 1.0)
    return ce + dice_weight * (1 - dice.mean())


def predict_probabilities(model, image: np.ndarray, device: str = "cpu") -> np.ndarray:
    """Class probabilities for one normalised ``(C, *spatial)`` image (whole, no tiling)."""
    import torch

    was_training = model.training
    model.eval()
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(image[None])).to(device)
        p = torch.softmax(model(x), dim=1)[0].cpu().numpy()
    model.train(was_training)
    return p


def score(cfg, probs_list: list[np.ndarray], samples: list[Sample], params: dict | None = None) -> dict:
    """Validation metrics for one model output per sample. ``score`` is what is maximised."""
    if cfg.output == "instances":
        total = InstanceScores(0, 0, 0, 0.0)
        for probs, s in zip(probs_list, samples, strict=True):
            truth = _instances_from_target(s)
            total = total + match_instances(truth, instance_labels(probs, params or cfg.postprocess))
        return {"score": total.f1, "f1@0.5": total.f1, "mean_matched_iou": total.mean_matched_iou}
    dices, errors = [], []
    for probs, s in zip(probs_list, samples, strict=True):
        pred = semantic_labels(probs, cfg.output)
        valid = s.target != IGNORE
        d = dice_per_class(s.target[valid], pred[valid], range(1, cfg.num_classes))
        dices.append(list(d.values()))
        errors.append(pixel_error(s.target[valid], pred[valid]))
    per_class = np.mean(dices, axis=0)
    out = {"score": float(per_class.mean()), "mean_dice": float(per_class.mean()), "pixel_error": float(np.mean(errors))}
    out.update({f"dice_{c}": float(v) for c, v in zip(range(1, cfg.num_classes), per_class, strict=True)})
    return out


def score_seeds(cfg, probs_list: list[np.ndarray], samples: list[Sample], seeds) -> dict:
    """:func:`score` with the best of ``seeds`` as the instance seed threshold (``"seed"`` in the
    result); the config's thresholds alone for semantic models or an empty ``seeds``."""
    if cfg.output != "instances" or not seeds:
        return score(cfg, probs_list, samples)
    best = None
    for seed in sorted({*map(float, seeds), float(cfg.postprocess.get("seed", 0.5))}):
        metrics = score(cfg, probs_list, samples, {**cfg.postprocess, "seed": seed})
        if best is None or metrics["score"] > best["score"] + 1e-9:
            best = {**metrics, "seed": seed}
    return best


def _instances_from_target(s: Sample) -> np.ndarray:
    truth = getattr(s, "instances", None)
    if truth is None:
        raise ValueError(f"{s.name}: instance scoring needs the instance labels (Sample.instances)")
    return truth


def train(
    model,
    train_samples: list[Sample],
    val_samples: list[Sample],
    tcfg: TrainConfig,
    device: str = "cpu",
    should_stop=None,
) -> Generator[Progress, None, TrainResult]:
    """Train ``model`` in place; keep and return the weights with the best validation score."""
    import torch

    t0 = time.perf_counter()
    torch.manual_seed(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    cfg = model.config
    sampler = PatchSampler(train_samples, tuple(tcfg.patch), rng, tcfg.augment, tcfg.foreground_bias,
                           elastic=tcfg.elastic if tcfg.augment else 0.0,
                           zoom=tcfg.zoom if tcfg.augment else None, zoom_isotropic=tcfg.zoom_isotropic)
    val = val_samples[: tcfg.max_val_images]
    ema = WeightAverage(model, tcfg.ema) if tcfg.ema else None

    def validate() -> tuple[dict, dict]:
        """Score the weights that would be kept (the average, with ``ema``); returns a copy of
        them and the metrics."""
        state = copy.deepcopy(model.state_dict()) if ema is None else ema.state(model)
        bad = non_finite(state)
        if bad:
            raise TrainingDiverged(f"training diverged by step {step}: weight tensor {bad} holds NaN or "
                                   f"infinite values (learning rate {tcfg.lr:g}: try a smaller one); "
                                   "nothing was saved")
        live = None
        if ema is not None:
            live = copy.deepcopy(model.state_dict())
            model.load_state_dict(state)
        try:
            metrics = score_seeds(cfg, [predict_probabilities(model, s.image, device) for s in val], val,
                                  tcfg.val_seeds)
        finally:
            if live is not None:
                model.load_state_dict(live)
        return state, metrics

    weights = class_weights(train_samples, cfg.num_classes, tcfg.class_balance)
    weight = None if weights is None else torch.from_numpy(weights).to(device)
    model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay)

    def lr_at(step: int, total: int) -> float:
        if step < tcfg.warmup:
            return tcfg.lr * (step + 1) / tcfg.warmup
        frac = (step - tcfg.warmup) / max(total - tcfg.warmup, 1)
        return tcfg.lr * (0.02 + 0.98 * 0.5 * (1 + np.cos(np.pi * min(frac, 1.0))))

    history: list[dict] = []
    best = {"score": -1.0, "step": 0, "state": copy.deepcopy(model.state_dict()), "metrics": {}}
    step, losses = 0, []
    total = tcfg.steps
    while step < tcfg.steps:
        elapsed = time.perf_counter() - t0
        if tcfg.time_budget is not None:
            # schedule by time: estimate the total number of steps that fit in the budget
            if elapsed >= tcfg.time_budget:
                break
            if step >= 20:
                total = min(tcfg.steps, int(step * tcfg.time_budget / elapsed))
        if should_stop is not None and should_stop():
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total)
        x, y = sampler.batch(tcfg.batch_size)
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        loss = loss_fn(model(x), y, tcfg.dice_weight, weight)
        if not bool(torch.isfinite(loss)):
            raise TrainingDiverged(
                f"training diverged at step {step + 1}: the loss became {loss.item()} (learning rate "
                f"{tcfg.lr:g}: try a smaller one); nothing was saved")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if ema is not None:
            ema.update(model, step)
        losses.append(loss.item())
        step += 1
        record = {"step": step, "loss": float(np.mean(losses[-20:])), "lr": opt.param_groups[0]["lr"],
                  "seconds": time.perf_counter() - t0}
        last = step >= tcfg.steps or (
            tcfg.time_budget is not None and time.perf_counter() - t0 >= tcfg.time_budget
        )
        if val and (step % tcfg.val_every == 0 or last):
            state, metrics = validate()
            record["val"] = metrics
            if metrics["score"] > best["score"]:
                best = {"score": metrics["score"], "step": step, "state": state, "metrics": metrics}
        history.append(record)
        yield Progress(step, total, f"step {step}: loss {record['loss']:.4f}", record)

    if val and (not history or "val" not in history[-1]):
        state, metrics = validate()
        history.append({"step": step, "val": metrics})
        if metrics["score"] > best["score"]:
            best = {"score": metrics["score"], "step": step, "state": state, "metrics": metrics}
    if not val:
        best = {"score": float("nan"), "step": step,
                "state": model.state_dict() if ema is None else ema.state(model), "metrics": {}}
    bad = non_finite(best["state"])
    if bad:
        raise TrainingDiverged(f"training diverged: weight tensor {bad} holds NaN or infinite values "
                               f"(learning rate {tcfg.lr:g}: try a smaller one); nothing was saved")
    model.load_state_dict(best["state"])
    model.eval()
    return TrainResult(model, history, best["step"], best["score"], best["metrics"], time.perf_counter() - t0)


#: Watershed thresholds searched on validation data: seed x mask first, then the size floor
#: (measured on nuclei2d: the best seed threshold lies near 0.97, above the old grid's 0.8).
SEED_GRID = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
MASK_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
SIZE_GRID = (4, 8, 12, 20, 30)


def search_postprocess(score_fn, base: dict) -> tuple[dict, dict]:
    """Best instance post-processing for ``score_fn(params) -> metrics`` (``"score"`` is
    maximised) over :data:`SEED_GRID` x :data:`MASK_GRID`, then :data:`SIZE_GRID`; ``base``
    is kept unless something beats it. Returns ``(params, metrics)``."""
    best_params, best = dict(base), score_fn(dict(base))
    for seed in SEED_GRID:
        for mask in MASK_GRID:
            params = {**best_params, "seed": seed, "mask": mask}
            metrics = score_fn(params)
            if metrics["score"] > best["score"] + 1e-9:
                best_params, best = params, metrics
    for size in SIZE_GRID:
        params = {**best_params, "min_size": size}
        metrics = score_fn(params)
        if metrics["score"] > best["score"] + 1e-9:
            best_params, best = params, metrics
    return best_params, best


def tune_postprocess(model, cfg, val_samples: list[Sample], device: str = "cpu") -> tuple[dict, dict]:
    """Grid-search the watershed thresholds of an instance model on validation samples."""
    probs = [predict_probabilities(model, s.image, device) for s in val_samples]
    return search_postprocess(lambda params: score(cfg, probs, val_samples, params), dict(cfg.postprocess))
