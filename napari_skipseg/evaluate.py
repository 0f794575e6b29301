"""Score a model on images with known masks: the numbers in the model cards.

For a model with instance output: F1 at IoU 0.5 with one-to-one matching, the mean IoU of
the matched pairs, Dice of the foreground and the pixel error of foreground versus
background. For a semantic model: Dice of every class but 0 and the pixel error (the
fraction of pixels whose class differs); a model of two classes (foreground versus
background, as membranes in EM) also gets the pixel error as the ISBI 2012 challenge defined
it, ``pixel_error_isbi``: 1 - the maximal F-score of the foreground over the thresholds 0,
0.1, ..., 1 of its probability (:func:`napari_skipseg.metrics.max_f_pixel_error`). Per image,
and overall: instance counts are summed over images before the F1 is taken, and the counts
behind ``pixel_error_isbi`` before its F-scores (as the challenge scored a stack); Dice and
pixel error are averaged over images.

The images are segmented by the same engine as ``skipseg segment`` and the widgets.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .metrics import (
    InstanceScores,
    dice_per_class,
    match_instances,
    max_f_pixel_error,
    pixel_error,
    threshold_counts,
)


class EvaluationError(ValueError):
    """The images and masks given cannot be scored (missing, mismatched, wrong kind)."""


@dataclass
class ImageScore:
    name: str
    metrics: dict[str, float]
    counts: InstanceScores | None = None
    seconds: float = 0.0
    #: foreground counts per threshold (:func:`threshold_counts`), for a two-class semantic model
    threshold_counts: np.ndarray | None = None


@dataclass
class Evaluation:
    model: str
    output: str
    images: list[ImageScore] = field(default_factory=list)
    overall: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"model": self.model, "output": self.output, "overall": self.overall,
                "images": [{"name": s.name, **s.metrics} for s in self.images]}


def pair_files(images: str | Path, masks: str | Path, names: list[str] | None = None) -> list[tuple[Path, Path]]:
    """Image/mask pairs: two files, or two folders matched by file name (``names``: only these)."""
    images, masks = Path(images), Path(masks)
    for p in (images, masks):
        if not p.exists():
            raise EvaluationError(f"{p}: no such file or folder")
    if images.is_file() != masks.is_file():
        raise EvaluationError("give two files or two folders (images, masks)")
    if images.is_file():
        return [(images, masks)]
    found = sorted(p.name for p in images.iterdir() if p.is_file() and not p.name.startswith("."))
    if names is not None:
        missing = sorted(set(names) - set(found))
        if missing:
            raise EvaluationError(f"{images}: {len(missing)} of the requested images are missing, e.g. {missing[0]}")
        found = [n for n in found if n in set(names)]
    if not found:
        raise EvaluationError(f"{images}: no image files")
    no_mask = [n for n in found if not (masks / n).is_file()]
    if no_mask:
        raise EvaluationError(f"{masks}: no mask for {len(no_mask)} image(s), e.g. {no_mask[0]} "
                              "(masks need the same file names as the images)")
    return [(images / n, masks / n) for n in found]


def split_names(model_folder: Path, split: str) -> list[str]:
    """File names of a model's recorded ``train`` or ``validation`` split."""
    import json

    path = Path(model_folder) / "validation_split.json"
    try:
        return list(json.loads(path.read_text())[split])
    except (OSError, ValueError, KeyError) as err:
        raise EvaluationError(f"the model has no recorded {split} split ({path}: {err})") from err


def score_image(truth: np.ndarray, pred: np.ndarray, output: str, num_classes: int) -> tuple[dict, InstanceScores | None]:
    """Metrics of one prediction against its mask (same shape)."""
    if truth.shape != pred.shape:
        raise EvaluationError(f"mask shape {truth.shape} differs from the image's {pred.shape}")
    if output == "instances":
        if truth.max() <= 1:  # a binary mask: its connected components are the objects
            from skimage.measure import label

            truth = label(truth > 0)
        counts = match_instances(truth, pred, 0.5)
        fg = dice_per_class(truth > 0, pred > 0, [True])[1]
        return {"f1@0.5": counts.f1, "mean_matched_iou": counts.mean_matched_iou, "precision": counts.precision,
                "recall": counts.recall, "dice_foreground": fg,
                "pixel_error": pixel_error(truth, pred)}, counts
    top = int(truth.max())
    if top >= num_classes:
        raise EvaluationError(f"mask holds class {top} but the model has {num_classes} classes (0..{num_classes - 1})")
    dice = dice_per_class(truth, pred, range(1, num_classes))
    out = {f"dice_{c}": v for c, v in dice.items()}
    out["mean_dice"] = float(np.mean(list(dice.values())))
    out["pixel_error"] = float(np.mean(truth != pred))
    return out, None


def evaluate(
    model,
    pairs: list[tuple[Path, Path]],
    *,
    drive: Callable | None = None,
    collect: list | None = None,
    **options,
) -> Generator[ImageScore, None, Evaluation]:
    """Segment each image with ``model`` (a loaded SkipUNet), score it; yields one
    :class:`ImageScore` per image and returns the :class:`Evaluation`.

    ``drive(generator) -> result`` runs the engine (a progress bar); ``options`` go to the
    engine (``device``, ``tile``, ``overlap``, ``mode``, ``batch_size``). ``collect``: a list
    that receives ``(probabilities, mask)`` per image of an instance model, for
    :func:`tune_instances`.
    """
    import time

    from .batch import open_source
    from .inference.engine import predict, run
    from .io import ImageReadError, read_image

    drive = drive or run
    cfg = model.config
    output = "instances" if cfg.output == "instances" else "semantic"
    result = Evaluation(cfg.name, output)
    for img_path, mask_path in pairs:
        t0 = time.perf_counter()
        try:
            image, _, channel_axis = open_source(img_path, None)
            mask, _ = read_image(mask_path)
        except ImageReadError as err:
            raise EvaluationError(str(err)) from err
        mask = np.asarray(mask)
        if not np.issubdtype(mask.dtype, np.integer):
            if not np.all(np.isfinite(mask)) or np.any(mask != np.round(mask)) or mask.min() < 0:
                raise EvaluationError(f"{mask_path}: a mask must hold whole, non-negative label numbers")
            mask = mask.astype(np.int64)
        keep = collect is not None and output == "instances"
        binary = output == "semantic" and cfg.num_classes == 2
        seg = drive(predict(model, np.asarray(image), output=output, channel_axis=channel_axis,
                            keep_probabilities=keep or binary, **options))
        pred = np.asarray(seg.labels)
        if keep and mask.shape == pred.shape:
            collect.append((np.asarray(seg.probabilities, dtype=np.float32), mask))
        if mask.shape != pred.shape:
            raise EvaluationError(f"{mask_path}: mask shape {mask.shape} differs from the image's "
                                  f"{pred.shape} ({img_path.name})")
        metrics, counts = score_image(mask, pred, output, cfg.num_classes)
        fg_counts = None
        if binary:
            fg_counts = threshold_counts(mask, np.asarray(seg.probabilities[1]))
            metrics["pixel_error_isbi"] = max_f_pixel_error(fg_counts)
        score = ImageScore(img_path.name, metrics, counts, time.perf_counter() - t0, fg_counts)
        result.images.append(score)
        yield score
    result.overall = overall(result.images, output)
    return result


def tune_instances(cfg, collected: list[tuple[np.ndarray, np.ndarray]]) -> tuple[dict, dict]:
    """The watershed thresholds (``cfg.postprocess``) that give the best pooled F1 at IoU 0.5
    on ``collected`` (from :func:`evaluate` with ``collect=``); returns ``(params,
    {"f1@0.5", "mean_matched_iou", "score"})`` (the training loop's grid:
    :func:`napari_skipseg.training.loop.search_postprocess`)."""
    from .inference.postprocess import instance_labels
    from .training.loop import search_postprocess

    if cfg.output != "instances":
        raise EvaluationError(f"model {cfg.name!r} is semantic: it has no instance thresholds to tune")
    if not collected:
        raise EvaluationError("no images to tune on")

    def labels(probs: np.ndarray, params: dict) -> np.ndarray:
        probs = np.asarray(probs, dtype=np.float32)
        if probs.ndim - 1 == cfg.spatial_dims:
            return instance_labels(probs, params)
        # a 2D model on a stack: slice by slice, ids kept apart, as the engine does
        out = np.zeros(probs.shape[1:], np.uint32)
        top = 0
        for idx in np.ndindex(*probs.shape[1:-cfg.spatial_dims]):
            lab = instance_labels(probs[(slice(None), *idx)], params)
            out[idx] = np.where(lab > 0, lab + top, 0)
            top += int(lab.max())
        return out

    def score_fn(params: dict) -> dict:
        total = InstanceScores(0, 0, 0, 0.0)
        for probs, mask in collected:
            total = total + match_instances(mask, labels(probs, params))
        return {"score": total.f1, "f1@0.5": total.f1, "mean_matched_iou": total.mean_matched_iou}

    return search_postprocess(score_fn, dict(cfg.postprocess))


def overall(scores: list[ImageScore], output: str) -> dict[str, float]:
    """Pooled instance counts (F1 over all objects) and threshold counts (``pixel_error_isbi``
    over all pixels); other metrics averaged over images."""
    if not scores:
        return {}
    keys = list(scores[0].metrics)
    out = {k: float(np.mean([s.metrics[k] for s in scores])) for k in keys}
    if all(s.threshold_counts is not None for s in scores):
        out["pixel_error_isbi"] = max_f_pixel_error(sum(s.threshold_counts for s in scores))
    if output == "instances":
        total = InstanceScores(0, 0, 0, 0.0)
        for s in scores:
            total = total + s.counts
        out.update({"f1@0.5": total.f1, "mean_matched_iou": total.mean_matched_iou,
                    "precision": total.precision, "recall": total.recall,
                    "true_positives": total.tp, "false_positives": total.fp, "false_negatives": total.fn})
    return out
