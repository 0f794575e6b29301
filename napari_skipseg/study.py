"""What skip connections buy, measured: twin UNets trained on the same data and budget.

Each *variant* is one choice of block (plain or residual), depth (number of downsamplings)
and skips (on, or off: the decoder fed only from below). For every seed, all variants
start from the same random stream, draw the same patches in the same order and train for
the same number of steps with the training loop the bundled models use
(:func:`napari_skipseg.training.loop.train`). Recorded per run:

- the gradient reaching each encoder stage at every step (the first step's is the
  gradient at initialisation): the norm of the gradient of the loss with respect to the
  stage's weights (with the number of weights, for a per-weight RMS) and with respect to
  the stage's output;
- the training loss (the loop's running mean over 20 steps);
- the held-out score (instance F1 at IoU 0.5, or mean Dice for semantic data) of the
  weights after the last step;
- for networks with skips: the explorer's gradient-flow view (skips on and every skip
  zeroed, see :func:`napari_skipseg.features.gradient_flow`) at initialisation and after
  training, split into what reaches each stage across its skip and from below
  (:func:`gradient_paths`).

:func:`run_study` is a generator yielding :class:`~napari_skipseg.inference.engine.Progress`
like the training loop; ``skipseg study`` and ``benchmarks/bench_skip_study.py`` drive it,
:func:`plot_study` draws the figures of ``docs/skip_connections.md``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Generator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .inference.engine import Progress
from .model.config import BLOCKS, ModelConfig

#: Bounds of the study's options (the CLI's and :meth:`StudyOptions.validate`'s).
MAX_SEEDS = 20
DEPTHS = (1, 2, 3, 4, 5, 6)
NORMS = ("batch", "none")


class StudyError(ValueError):
    """Study options are out of range or the data cannot be studied (one line, naming it)."""


@dataclass(frozen=True)
class Variant:
    """One network of the study: ``block`` (``"plain"`` or ``"residual"``), ``depth``
    (downsamplings), ``skips`` (True: the UNet; False: its twin without skips) and ``norm``
    (``"batch"``: the product's batch norm; ``"none"``: every batch norm removed)."""

    block: str
    depth: int
    skips: bool
    norm: str = "batch"

    @property
    def name(self) -> str:
        norm = "" if self.norm == "batch" else ", no norm"
        return f"{self.block}{norm}, depth {self.depth}, {'with' if self.skips else 'without'} skips"

    @property
    def key(self) -> str:
        norm = "" if self.norm == "batch" else "-nonorm"
        return f"{self.block}{norm}-d{self.depth}-{'skips' if self.skips else 'noskips'}"


@dataclass
class StudyOptions:
    """What to train and how much.

    Parameters
    ----------
    data : str
        Folder with ``images/`` and ``masks/`` (same file names; instance labels).
    train_images, val_images : int
        How many files of the training and of the held-out side of the split to use (the
        split is :func:`napari_skipseg.training.data.split_names`, the bundled models' split).
    crop : int
        Every image (and mask) is cut to its central ``crop x crop`` pixels at most, to bound
        the time validation takes.
    steps, batch_size, patch, lr : training budget (AdamW, warm-up then cosine, the loop's).
    base_channels : int
        Width of the first stage (stage ``k`` has ``base_channels * 2**k`` channels).
    depths, blocks, norms : which depths, blocks and normalisations (``"batch"``, ``"none"``)
        to cross with skips on/off.
    seeds, first_seed : int
        Seeds ``first_seed .. first_seed + seeds - 1``; every variant is trained once per seed.
    output : str
        ``"instances"`` (background, interior, boundary; scored by F1@0.5) or
        ``"semantic"`` (foreground > 0; scored by Dice).
    device : str
    """

    data: str
    train_images: int = 60
    val_images: int = 20
    crop: int = 256
    steps: int = 300
    batch_size: int = 4
    patch: int = 64
    lr: float = 2e-3
    base_channels: int = 8
    depths: list[int] = field(default_factory=lambda: [2, 4])
    blocks: list[str] = field(default_factory=lambda: ["plain", "residual"])
    norms: list[str] = field(default_factory=lambda: ["batch"])
    seeds: int = 3
    first_seed: int = 0
    output: str = "instances"
    device: str = "cpu"

    def validate(self) -> None:
        def whole(name: str, low: int, high: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
                raise StudyError(f"{name} must be a whole number from {low} to {high}, got {v!r}")

        whole("train_images", 1, 10_000)
        whole("val_images", 1, 10_000)
        whole("crop", 16, 4096)
        whole("steps", 1, 100_000)
        whole("batch_size", 1, 256)
        whole("patch", 16, 1024)
        whole("base_channels", 1, 64)
        whole("seeds", 1, MAX_SEEDS)
        whole("first_seed", 0, 2**31)
        if not (isinstance(self.lr, int | float) and 0 < self.lr <= 1):
            raise StudyError(f"lr must be above 0 and at most 1, got {self.lr!r}")
        if not self.depths or any(d not in DEPTHS for d in self.depths):
            raise StudyError(f"depths must be among {list(DEPTHS)}, got {self.depths!r}")
        if not self.blocks or any(b not in BLOCKS for b in self.blocks):
            raise StudyError(f"blocks must be among {list(BLOCKS)}, got {self.blocks!r}")
        if not self.norms or any(n not in NORMS for n in self.norms):
            raise StudyError(f"norms must be among {list(NORMS)}, got {self.norms!r}")
        if self.output not in ("instances", "semantic"):
            raise StudyError(f"output must be 'instances' or 'semantic', got {self.output!r}")
        deepest = 2 ** max(self.depths)
        if self.patch % deepest:
            raise StudyError(f"patch {self.patch} must be a multiple of {deepest} (2 ** the largest depth)")
        if self.patch > self.crop:
            raise StudyError(f"patch {self.patch} is larger than crop {self.crop}")

    def variants(self) -> list[Variant]:
        return [Variant(b, d, s, n) for d in sorted(set(self.depths)) for n in dict.fromkeys(self.norms)
                for b in dict.fromkeys(self.blocks) for s in (True, False)]


@dataclass
class RunRecord:
    """One variant trained with one seed (lists indexed by step - 1; levels shallowest first)."""

    variant: str
    block: str
    depth: int
    skips: bool
    norm: str
    seed: int
    parameters: int
    init_train: list[float]  # d loss / d output of each encoder stage at initialisation, batch statistics
    init_eval: list[float]  # the same with batch norm as at inference (at initialisation: the identity)
    loss: list[float]
    weight_grad: list[list[float]]  # [step][stage]: norm of d loss / d weights of encoder.stages[k]
    weight_count: list[int]  # weights per encoder stage
    output_grad: list[list[float]]  # [step][stage]: norm of d loss / d output of encoder.stages[k]
    output_size: list[int]  # values per stage output (one patch batch)
    diverged: str  # why training stopped early ("" when it did not)
    score: float
    metrics: dict
    seconds: float
    flow: dict = field(default_factory=dict)  # "init"/"trained" -> gradient_paths(...) as lists


@dataclass
class StudyResult:
    options: dict
    data: dict
    runs: list[RunRecord]
    seconds: float
    explorer: dict = field(default_factory=dict)  # gradient_paths of a bundled model, when measured

    def to_json(self, path: str | Path) -> None:
        """Write the result as JSON, numbers to 5 significant digits (one line per run)."""
        data = _rounded(asdict(self))
        runs = data.pop("runs")
        body = json.dumps(data)[:-1] + ', "runs": [\n' + ",\n".join(json.dumps(r) for r in runs) + "\n]}\n"
        Path(path).write_text(body)

    @classmethod
    def from_json(cls, path: str | Path) -> StudyResult:
        data = json.loads(Path(path).read_text())
        data["runs"] = [RunRecord(**r) for r in data["runs"]]
        return cls(**data)

    @classmethod
    def merge(cls, results: Sequence[StudyResult]) -> StudyResult:
        """One result from studies run apart (e.g. in parallel) on the same data and budget:
        their runs together; the options of the first with the others' listed in ``parts``."""
        if not results:
            raise StudyError("nothing to merge")
        first = results[0]
        budget = ("data", "train_images", "val_images", "crop", "steps", "batch_size", "patch", "lr",
                  "base_channels", "output")
        seen = {(r.variant, r.seed) for r in first.runs}
        for other in results[1:]:
            differ = [k for k in budget if other.options.get(k) != first.options.get(k)]
            if differ or other.data.get("val") != first.data.get("val"):
                raise StudyError(f"studies differ in {', '.join(differ) or 'held-out images'}: not comparable")
            twice = seen & {(r.variant, r.seed) for r in other.runs}
            if twice:
                raise StudyError(f"{sorted(twice)[0][0]} with seed {sorted(twice)[0][1]} is in two studies")
            seen |= {(r.variant, r.seed) for r in other.runs}
        seeds = sorted({r.seed for res in results for r in res.runs})
        return cls(options={**first.options, "seeds": len(seeds), "first_seed": seeds[0],
                            "parts": [r.options for r in results]}, data=first.data,
                   runs=[run for r in results for run in r.runs], seconds=max(r.seconds for r in results),
                   explorer=next((r.explorer for r in results if r.explorer), {}))

    def summary(self) -> list[dict]:
        """Per variant: held-out score (mean, min, max over seeds), final loss, parameters,
        runs that diverged, and the ratio of the gradient RMS reaching the output of the
        shallowest encoder stage to the bottleneck's at initialisation (median over seeds),
        with batch statistics (``init_ratio_train``) and with batch norm as the identity
        (``init_ratio_eval``)."""
        out = []
        for key in dict.fromkeys((r.block, r.norm, r.depth, r.skips) for r in self.runs):
            runs = [r for r in self.runs if (r.block, r.norm, r.depth, r.skips) == key]
            scores = [r.score for r in runs]

            def ratio(values, r):
                v = rms(values, r.output_size)
                return float(v[0] / v[-1]) if v[-1] > 0 else float("inf")

            out.append({
                "variant": runs[0].variant, "block": key[0], "norm": key[1], "depth": key[2], "skips": key[3],
                "seeds": len(runs), "parameters": runs[0].parameters,
                "score_mean": float(np.mean(scores)), "score_min": float(min(scores)),
                "score_max": float(max(scores)), "diverged": sum(bool(r.diverged) for r in runs),
                "final_loss_mean": float(np.mean([r.loss[-1] for r in runs if r.loss and not r.diverged] or [np.nan])),
                "init_ratio_train": float(np.median([ratio(r.init_train, r) for r in runs])),
                "init_ratio_eval": float(np.median([ratio(r.init_eval, r) for r in runs])),
                "seconds_mean": float(np.mean([r.seconds for r in runs])),
            })
        return out


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.5g}") if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def rms(norms: Sequence[float], counts: Sequence[int]) -> np.ndarray:
    """Per-element root mean square from norms and element counts."""
    return np.asarray(norms, np.float64) / np.sqrt(np.asarray(counts, np.float64))


# -- the twin without skips --------------------------------------------------------------------
def _no_skip_classes():
    import torch
    from torch import nn

    from .model.blocks import ConvBlock
    from .model.unet import Encoder, _crop, _pad_to_multiple

    class UpOnly(nn.Module):
        """Decoder stage without a skip: upsample the deeper map to the channels the
        concatenation would have had, fuse with the same :class:`ConvBlock`."""

        def __init__(self, dims: int, deep_ch: int, out_ch: int, factors, residual: bool):
            super().__init__()
            tconv = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
            self.up = tconv(deep_ch, 2 * out_ch, kernel_size=factors, stride=factors)
            self.block = ConvBlock(dims, 2 * out_ch, out_ch, residual)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # one input: nothing crosses
            return self.block(self.up(x))

    class NoSkipDecoder(nn.Module):
        def __init__(self, cfg: ModelConfig) -> None:
            super().__init__()
            residual = cfg.block == "residual"
            self.stages = nn.ModuleList(
                UpOnly(cfg.spatial_dims, cfg.channels(k + 1), cfg.channels(k), f, residual)
                for k, f in enumerate(cfg.pool_factors())
            )

    class NoSkipUNet(nn.Module):
        """The twin of :class:`~napari_skipseg.model.unet.SkipUNet` without skips: the same
        encoder (``encoder.stages[k]``, same weights for the same seed), a decoder whose
        stages take only the map coming up from below, the same head. Only the bottleneck's
        output reaches the decoder."""

        def __init__(self, config: ModelConfig) -> None:
            super().__init__()
            config.validate()
            self.config = config
            self.encoder = Encoder(config)
            self.decoder = NoSkipDecoder(config)
            self.head = nn.Conv2d(config.channels(0), config.num_classes, 1) if config.spatial_dims == 2 \
                else nn.Conv3d(config.channels(0), config.num_classes, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            size = tuple(x.shape[2:])
            h = _pad_to_multiple(x, self.config.size_multiple())
            for stage in self.encoder.stages:
                h = stage(h)
            for level in reversed(range(self.config.depth)):
                h = self.decoder.stages[level](h)
            return _crop(self.head(h), size)

        def num_parameters(self) -> int:
            return sum(p.numel() for p in self.parameters())

    return UpOnly, NoSkipUNet


def build_network(variant: Variant, *, base_channels: int = 8, num_classes: int = 3,
                  output: str = "instances", seed: int = 0, in_channels: int = 1):
    """A freshly initialised network for ``variant`` (torch's random stream seeded with
    ``seed`` first, so that twins with and without skips start from the same encoder).
    With ``variant.norm == "none"`` every batch norm is replaced by the identity."""
    import torch
    from torch import nn

    from .model.unet import SkipUNet

    cfg = ModelConfig(name=variant.key, spatial_dims=2, in_channels=in_channels, num_classes=num_classes,
                      base_channels=base_channels, depth=variant.depth, block=variant.block, output=output,
                      normalization={"kind": "none"})
    torch.manual_seed(seed)
    model = SkipUNet(cfg) if variant.skips else _no_skip_classes()[1](cfg)
    if variant.norm == "none":
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.modules.batchnorm._BatchNorm):
                    setattr(parent, name, nn.Identity())
    return model


def stage_output_gradients(model, x, y, *, training: bool) -> list[float]:
    """Norm of d loss / d output of each encoder stage for one batch ``(x, y)``, in training
    mode (batch norm with the batch's statistics) or eval mode (with its running statistics,
    which at initialisation make it the identity); the weights are not changed."""
    import torch

    from .training.loop import loss_fn

    outs: list[torch.Tensor] = []
    handles = [s.register_forward_hook(lambda m, i, o: outs.append(o)) for s in model.encoder.stages]
    was_training = model.training
    state = {k: v.clone() for k, v in model.state_dict().items()}  # running statistics move in training mode
    model.train(training)
    try:
        with torch.enable_grad():
            loss = loss_fn(model(x), y)
            grads = torch.autograd.grad(loss, outs, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        model.load_state_dict(state)
        model.train(was_training)
    return [0.0 if g is None else float(g.detach().float().norm()) for g in grads]


def has_skips(model) -> bool:
    """Whether any encoder stage but the bottleneck reaches the output other than through the
    next encoder stage (a structural check on the autograd graph, see :func:`skip_reach`)."""
    return any(skip_reach(model))


def skip_reach(model, size: int | None = None) -> list[bool]:
    """For each encoder stage above the bottleneck: does its output reach the logits when
    the next encoder stage's input is cut from the graph (``detach``)? True means a path
    around the encoder below, i.e. a skip; a network without skips gives all False."""
    import torch

    cfg = model.config
    size = size or 2 * max(cfg.size_multiple())
    x = torch.randn(1, cfg.in_channels, *([size] * cfg.spatial_dims))
    reach = []
    was_training = model.training
    model.eval()
    try:
        for level in range(cfg.depth):
            kept: list[torch.Tensor] = []
            h1 = model.encoder.stages[level].register_forward_hook(lambda m, i, o, kept=kept: kept.append(o))
            h2 = model.encoder.stages[level + 1].register_forward_pre_hook(
                lambda m, args: tuple(a.detach() for a in args))
            try:
                with torch.enable_grad():
                    logits = model(x)
                    (g,) = torch.autograd.grad(logits.sum(), kept[0], allow_unused=True)
            finally:
                h1.remove()
                h2.remove()
            reach.append(g is not None and bool(g.abs().sum() > 0))
    finally:
        model.train(was_training)
    return reach


# -- gradients -----------------------------------------------------------------------------------
class StageGradients:
    """Records, at every training step, the gradient norms reaching each encoder stage:
    with respect to its weights (read from ``.grad`` after the step) and to its output
    (tensor hooks registered by forward hooks while the model trains)."""

    def __init__(self, model) -> None:
        self.model = model
        self.stages = list(model.encoder.stages)
        self.counts = [sum(p.numel() for p in s.parameters()) for s in self.stages]
        self.output_norms: list[float | None] = [None] * len(self.stages)
        self.output_sizes = [0] * len(self.stages)
        self.handles = [s.register_forward_hook(self._hook(i)) for i, s in enumerate(self.stages)]

    def _hook(self, i: int):
        def forward_hook(module, args, out):
            if module.training and out.requires_grad:
                self.output_sizes[i] = int(out.numel())

                def grad_hook(g):
                    self.output_norms[i] = float(g.detach().float().norm())

                out.register_hook(grad_hook)
        return forward_hook

    def weight_norms(self) -> list[float]:
        out = []
        for s in self.stages:
            sq = sum(float(p.grad.detach().float().pow(2).sum()) for p in s.parameters() if p.grad is not None)
            out.append(math.sqrt(sq))
        return out

    def take_output_norms(self) -> list[float]:
        vals = [float("nan") if v is None else v for v in self.output_norms]
        self.output_norms = [None] * len(self.stages)
        return vals

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def gradient_paths(model, x, class_index: int = 1) -> dict[str, list[float]]:
    """The explorer's gradient flow (:func:`napari_skipseg.features.gradient_flow`), split by path.

    For ``target = sum of class_index logits`` of a :class:`SkipUNet` in eval mode, per
    encoder stage (shallowest first, bottleneck last): ``"on"`` the norm of d target / d
    stage output with the skips in place (the explorer's blue bars), ``"skip"`` and
    ``"below"`` the parts of that gradient arriving across the stage's own skip and from the
    next encoder stage (``on`` is the norm of their sum), ``"cosine"`` the cosine between
    them (negative: they partly cancel) and ``"off"`` the norm with every skip zeroed (the
    explorer's orange bars; only the path from below exists then).
    """
    import torch

    from .model.unet import _crop, _pad_to_multiple

    cfg = model.config
    was_training = model.training
    model.eval()
    x = x.to(next(model.parameters()).device)

    def forward(zero_skips: bool):
        size = tuple(x.shape[2:])
        h = _pad_to_multiple(x, cfg.size_multiple())
        outs, across, below = [], [], []
        for level, stage in enumerate(model.encoder.stages):
            h = stage(h)
            outs.append(h)
            if level < cfg.depth:
                across.append(h * 1.0)  # two distinct nodes: the gradient of each path apart
                h = h * 1.0
                below.append(h)
        for level in reversed(range(cfg.depth)):
            stage = model.decoder.stages[level]
            skip = torch.zeros_like(across[level]) if zero_skips else across[level]
            h = stage.block(torch.cat([skip, stage.up(h)], dim=1))
        logits = _crop(model.head(h), size)
        return logits[:, class_index].sum(), outs, across, below

    def norms(gs):
        return [float(g.detach().float().norm()) if g is not None else 0.0 for g in gs]

    try:
        with torch.enable_grad():
            target, outs, across, below = forward(False)
            g = torch.autograd.grad(target, outs + across + below, allow_unused=True)
            n = len(outs)
            g_out, g_across, g_below = g[:n], g[n:n + cfg.depth], g[n + cfg.depth:]
            cosine = []
            for a, b in zip(g_across, g_below, strict=True):
                if a is None or b is None:
                    cosine.append(0.0)
                else:
                    cosine.append(float(torch.nn.functional.cosine_similarity(
                        a.flatten().float(), b.flatten().float(), dim=0)))
            target_off, outs_off, _, _ = forward(True)
            g_off = torch.autograd.grad(target_off, outs_off, allow_unused=True)
    finally:
        model.train(was_training)
    return {
        "on": norms(g_out), "skip": norms(g_across) + [0.0], "below": norms(g_below) + [norms(g_out)[-1]],
        "cosine": cosine + [1.0], "off": norms(g_off),
    }


# -- data ----------------------------------------------------------------------------------------
def load_study_data(options: StudyOptions):
    """Training and held-out samples (central crops) from ``options.data``, the bundled
    models' hash split; returns ``(train, val, description)``."""
    from .training.data import Sample, load_pairs, split_names

    folder = Path(options.data)
    img_dir = folder / "images"
    if not img_dir.is_dir() or not (folder / "masks").is_dir():
        raise StudyError(f"{folder}: needs 'images' and 'masks' subfolders")
    names = sorted(p.name for p in img_dir.iterdir() if p.is_file())
    if len(names) < 2:
        raise StudyError(f"{folder}: needs at least 2 image/mask pairs (one to train on, one held out), "
                         f"found {len(names)}")
    train_names, val_names = split_names(names)
    train_names, val_names = train_names[: options.train_images], val_names[: options.val_images]
    # read as instances (background, interior, boundary); "semantic" keeps foreground > 0
    cfg = ModelConfig(name="study", num_classes=3, output="instances")

    def crop(samples: list[Sample]) -> list[Sample]:
        out = []
        for s in samples:
            sl = tuple(slice(max(0, (n - options.crop) // 2), max(0, (n - options.crop) // 2) + options.crop)
                       for n in s.target.shape)
            target = s.target[sl]
            if options.output == "semantic":
                target = (target > 0).astype(np.int64)
            inst = None if s.instances is None or options.output == "semantic" else s.instances[sl]
            out.append(Sample(s.name, np.ascontiguousarray(s.image[(slice(None), *sl)]),
                              np.ascontiguousarray(target), inst))
        return out

    train = crop(load_pairs(folder, cfg, train_names))
    val = crop(load_pairs(folder, cfg, val_names))
    desc = {"folder": str(folder), "train": train_names, "val": val_names,
            "split": "napari_skipseg.training.data.split_names (hash of the file name, 15 % held out)",
            "crop": options.crop}
    return train, val, desc


def explorer_input(model, options: StudyOptions, name: str):
    """The central ``options.crop`` crop of ``data/images/name``, normalised as ``model``
    expects, as a ``(1, C, Y, X)`` tensor."""
    import torch

    from .io import read_image
    from .training.data import prepare_image

    cfg = model.config
    if cfg.spatial_dims != 2:
        raise StudyError(f"the explorer model must be a 2D model; {cfg.name} is {cfg.spatial_dims}D")
    raw = np.asarray(read_image(Path(options.data) / "images" / name)[0])
    image = prepare_image(raw, cfg.in_channels, 2, cfg.normalization)
    sl = tuple(slice(max(0, (n - options.crop) // 2), max(0, (n - options.crop) // 2) + options.crop)
               for n in image.shape[1:])
    return torch.from_numpy(np.ascontiguousarray(image[(slice(None), *sl)][None]))


# -- the study -----------------------------------------------------------------------------------
def run_study(options: StudyOptions, *, explorer_model=None,
              should_stop=None) -> Generator[Progress, None, StudyResult]:
    """Train every variant of ``options`` once per seed; yields progress, returns a
    :class:`StudyResult`.

    ``explorer_model``: a trained 2D :class:`SkipUNet` (e.g. a bundled model) whose
    explorer gradient-flow view on the first held-out image (central crop, the model's own
    normalisation) is split by path (:func:`gradient_paths`), stored as ``result.explorer``.
    """
    import torch

    from .training.data import PatchSampler
    from .training.loop import TrainConfig, TrainingDiverged, train

    options.validate()
    t0 = time.perf_counter()
    yield Progress(0, 0, f"reading {options.data}")
    train_samples, val_samples, desc = load_study_data(options)
    variants = options.variants()
    total = len(variants) * options.seeds * options.steps
    probe = torch.from_numpy(np.ascontiguousarray(val_samples[0].image[None]))
    classes = 3 if options.output == "instances" else 2
    runs: list[RunRecord] = []
    done = 0
    for seed in range(options.first_seed, options.first_seed + options.seeds):
        # one batch, the same for every variant of this seed, for the gradients at initialisation
        bx, by = PatchSampler(train_samples, (options.patch,) * 2, np.random.default_rng(10_000 + seed),
                              augment=False).batch(options.batch_size)
        bx, by = torch.from_numpy(bx), torch.from_numpy(by)
        for variant in variants:
            model = build_network(variant, base_channels=options.base_channels, num_classes=classes,
                                  output=options.output, seed=seed)
            init_train = stage_output_gradients(model, bx, by, training=True)
            init_eval = stage_output_gradients(model, bx, by, training=False)
            flow = {"init": gradient_paths(model, probe)} if variant.skips else {}
            tcfg = TrainConfig(patch=[options.patch] * 2, batch_size=options.batch_size, steps=options.steps,
                               lr=options.lr, warmup=min(50, options.steps // 5), val_every=options.steps,
                               max_val_images=len(val_samples), augment=True, seed=seed)
            recorder = StageGradients(model)
            loss, wgrad, ograd = [], [], []
            diverged, score, metrics = "", 0.0, {}
            start = time.perf_counter()
            gen = train(model, train_samples, val_samples, tcfg, device=options.device, should_stop=should_stop)
            try:
                while True:
                    try:
                        event = next(gen)
                    except StopIteration as stop:
                        score = float(stop.value.best_score)
                        metrics = {k: float(v) for k, v in stop.value.metrics.items() if isinstance(v, int | float)}
                        break
                    except TrainingDiverged as err:  # a result too: this network cannot be trained so
                        diverged = str(err)
                        break
                    if "loss" in event.info:
                        loss.append(float(event.info["loss"]))
                        wgrad.append(recorder.weight_norms())
                        ograd.append(recorder.take_output_norms())
                        done += 1
                        yield Progress(done, total, f"{variant.name}, seed {seed}: step {event.done}",
                                       {"loss": event.info["loss"], "variant": variant.key, "seed": seed})
            finally:
                recorder.remove()
            if variant.skips and not diverged:
                flow["trained"] = gradient_paths(model, probe)
            done += options.steps - len(loss)  # steps not taken after a divergence
            runs.append(RunRecord(
                variant=variant.name, block=variant.block, depth=variant.depth, skips=variant.skips,
                norm=variant.norm, seed=seed, parameters=int(sum(p.numel() for p in model.parameters())),
                init_train=init_train, init_eval=init_eval, loss=loss, weight_grad=wgrad,
                weight_count=list(recorder.counts), output_grad=ograd, output_size=list(recorder.output_sizes),
                diverged=diverged, score=score, metrics=metrics, seconds=time.perf_counter() - start, flow=flow,
            ))
            what = f"diverged after {len(loss)} steps" if diverged else f"held-out score {score:.3f}"
            yield Progress(done, total, f"{variant.name}, seed {seed}: {what}", {"val": {"score": score}})
    explorer = {}
    if explorer_model is not None:
        yield Progress(done, total, f"gradient flow of {explorer_model.config.name}, split by path")
        x = explorer_input(explorer_model, options, desc["val"][0])
        explorer = {"model": explorer_model.config.name, "image": desc["val"][0], "shape": list(x.shape[2:]),
                    **gradient_paths(explorer_model, x)}
    return StudyResult(options=asdict(options), data=desc, runs=runs, seconds=time.perf_counter() - t0,
                       explorer=explorer)


# -- figures -------------------------------------------------------------------------------------
COLOURS = {("plain", "batch"): "#1f77b4", ("residual", "batch"): "#d62728",
           ("plain", "none"): "#2ca02c", ("residual", "none"): "#9467bd"}


def _style(block: str, norm: str, skips: bool) -> tuple[str, str, str]:
    """(colour, line style, label) of a variant in the figures."""
    label = f"{block}{'' if norm == 'batch' else ' no-norm'}, {'skips' if skips else 'no skips'}"
    return COLOURS.get((block, norm), "k"), "-" if skips else "--", label


def _stage_ticks(ax, depth: int) -> None:
    ax.set_xticks(range(depth + 1), [f"{k}" if k < depth else f"{k}\n(bottom)" for k in range(depth + 1)])


def plot_study(result: StudyResult, out_dir: str | Path, prefix: str = "skip_study") -> list[Path]:
    """Draw the study's figures as PNG files in ``out_dir``; returns their paths.

    ``<prefix>_init_gradients.png``: gradient RMS reaching each encoder stage at
    initialisation (batch statistics; batch norm as the identity; per weight).
    ``<prefix>_early_gradients.png``: the shallowest stage's over the first steps relative to
    the bottleneck's. ``<prefix>_loss.png``: loss curves. ``<prefix>_score.png``: held-out
    scores. ``<prefix>_explorer.png``: the explorer's gradient view split by path (when
    measured).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    runs = result.runs
    depths = sorted({r.depth for r in runs})
    keys = list(dict.fromkeys((r.block, r.norm, r.skips) for r in runs))
    nseeds = len({r.seed for r in runs})
    ncol = len(depths)
    paths = []

    def group(depth, key):
        return [r for r in runs if r.depth == depth and (r.block, r.norm, r.skips) == key]

    def save(fig, name):
        if not fig.legends:
            fig.tight_layout()
        paths.append(out_dir / f"{prefix}_{name}.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)

    # 1: gradient per encoder stage at initialisation
    rows = (("init_train", "d loss / d stage output\n(batch statistics, as trained)"),
            ("init_eval", "d loss / d stage output\n(batch norm = identity)"),
            ("weight", "d loss / d weight\n(step 1, batch statistics)"))
    fig, axes = plt.subplots(3, ncol, figsize=(4.6 * ncol, 9.0), squeeze=False, sharey="row")
    for j, depth in enumerate(depths):
        for key in keys:
            rs = group(depth, key)
            if not rs:
                continue
            c, ls, label = _style(*key)
            for i, (what, _) in enumerate(rows):
                if what == "weight":
                    v = np.array([rms(r.weight_grad[0], r.weight_count) for r in rs if r.weight_grad])
                else:
                    v = np.array([rms(getattr(r, what), r.output_size) for r in rs])
                if not len(v):
                    continue
                x = np.arange(v.shape[1])
                ax = axes[i, j]
                ax.plot(x, np.median(v, 0), ls, color=c, marker="o", ms=3, label=label)
                ax.fill_between(x, v.min(0), v.max(0), color=c, alpha=0.10)
        for i in range(3):
            axes[i, j].set_yscale("log")
            axes[i, j].grid(alpha=0.3)
            _stage_ticks(axes[i, j], depth)
        axes[0, j].set_title(f"depth {depth}")
        axes[-1, j].set_xlabel("encoder stage (0 = full resolution)")
    for i, (_, ylabel) in enumerate(rows):
        axes[i, 0].set_ylabel("RMS of " + ylabel, fontsize=8)
    _legend(fig, axes)
    fig.suptitle(f"Gradient reaching each encoder stage at initialisation (median of {nseeds} seeds, band: min-max)",
                 fontsize=10)
    save(fig, "init_gradients")

    # 2: shallowest stage relative to the bottleneck over the first steps
    fig, axes = plt.subplots(1, ncol, figsize=(4.6 * ncol, 3.6), squeeze=False, sharey=True)
    for j, depth in enumerate(depths):
        ax = axes[0, j]
        for key in keys:
            rs = [r for r in group(depth, key) if r.output_grad]
            if not rs:
                continue
            c, ls, label = _style(*key)
            n = min(len(r.output_grad) for r in rs)
            ratio = np.array([[rms(g, r.output_size)[0] / max(rms(g, r.output_size)[-1], 1e-30)
                               for g in r.output_grad[:n]] for r in rs])
            ax.plot(np.arange(1, n + 1), np.median(ratio, 0), ls, color=c, label=label, lw=1.2)
        ax.set_yscale("log")
        ax.set_xscale("log")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_title(f"depth {depth}")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("stage 0 / bottleneck\n(RMS of d loss / d stage output)", fontsize=8)
    _legend(fig, axes)
    fig.suptitle(f"Gradient at the shallowest stage relative to the bottleneck's while training "
                 f"(median of {nseeds} seeds)", fontsize=10)
    save(fig, "early_gradients")

    # 3: loss curves
    fig, axes = plt.subplots(1, ncol, figsize=(4.6 * ncol, 3.6), squeeze=False, sharey=True)
    for j, depth in enumerate(depths):
        ax = axes[0, j]
        for key in keys:
            rs = [r for r in group(depth, key) if r.loss]
            if not rs:
                continue
            c, ls, label = _style(*key)
            n = min(len(r.loss) for r in rs)
            v = np.array([r.loss[:n] for r in rs])
            steps = np.arange(1, n + 1)
            ax.plot(steps, v.mean(0), ls, color=c, label=label, lw=1.2)
            ax.fill_between(steps, v.min(0), v.max(0), color=c, alpha=0.10)
        ax.set_title(f"depth {depth}")
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("training loss (CE + Dice,\nrunning mean of 20 steps)", fontsize=8)
    _legend(fig, axes)
    fig.suptitle(f"Training loss (mean of {nseeds} seeds, band: min-max)", fontsize=10)
    save(fig, "loss")

    # 4: held-out score
    metric = "F1@0.5" if result.options.get("output", "instances") == "instances" else "Dice"
    fig, ax = plt.subplots(figsize=(0.75 * len(depths) * len(keys) + 2.0, 3.8))
    ticks, labels = [], []
    pos = 0.0
    for depth in depths:
        for key in keys:
            rs = group(depth, key)
            if not rs:
                continue
            c, _, _ = _style(*key)
            scores = [r.score for r in rs]
            ax.bar(pos, np.mean(scores), 0.7, color=c, alpha=0.9 if key[2] else 0.35, edgecolor=c)
            ax.plot([pos] * len(scores), scores, "k.", ms=4)
            ticks.append(pos)
            labels.append(f"depth {depth}\n{key[0]}{'' if key[1] == 'batch' else chr(10) + 'no norm'}\n"
                          f"{'skips' if key[2] else 'NO skips'}")
            pos += 1
        pos += 0.6
    ax.set_xticks(ticks, labels, fontsize=7)
    ax.set_ylabel(f"held-out {metric}")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"Held-out {metric} after {result.options.get('steps')} steps (bar: mean; dots: {nseeds} seeds; "
                 "pale: no skips)", fontsize=9)
    save(fig, "score")

    # 5: the explorer's view, split by path
    ex = result.explorer
    if ex:
        fig, ax = plt.subplots(figsize=(6.6, 4.0))
        x = np.arange(len(ex["on"]))
        width = 0.2
        bars = (("on", "skips on (the explorer's blue bars)", "#4fc3f7"),
                ("skip", "  part arriving across the skip", "#2e7d32"),
                ("below", "  part arriving from below", "#9e9e9e"),
                ("off", "every skip zeroed (orange bars)", "#ff8a65"))
        for i, (key, label, colour) in enumerate(bars):
            v = np.maximum(np.asarray(ex[key], float), 1e-12)
            n = len(v) - 1 if key == "skip" else len(v)  # the bottleneck has no skip
            ax.bar(x[:n] + (i - 1.5) * width, v[:n], width, label=label, color=colour)
        for k, cos in enumerate(ex["cosine"][:-1]):
            top = max(ex["on"][k], ex["off"][k], ex["skip"][k], ex["below"][k])
            ax.annotate(f"cos {cos:+.2f}", (k, top), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylim(top=4 * max(max(ex["on"]), max(ex["off"])))
        _stage_ticks(ax, len(x) - 1)
        ax.set_xlabel("encoder stage (0 = full resolution)")
        ax.set_ylabel("gradient norm")
        ax.legend(fontsize=7, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.22), frameon=False)
        ax.set_title(f"Gradient flow of the trained {ex['model']} on a {ex['shape'][0]} x {ex['shape'][1]} crop, "
                     "split by path", fontsize=9)
        save(fig, "explorer")

    # 6: the explorer's skips-on / skips-zeroed ratio at initialisation and after training
    with_flow = [r for r in runs if r.skips and r.flow.get("trained")]
    if with_flow:
        fig, axes = plt.subplots(1, ncol, figsize=(4.6 * ncol, 3.8), squeeze=False, sharey=True)
        for j, depth in enumerate(depths):
            ax = axes[0, j]
            for key in keys:
                rs = [r for r in group(depth, key) if r.flow.get("trained")]
                if not key[2] or not rs:
                    continue
                c, _, label = _style(*key)
                for when, ls in (("init", "--"), ("trained", "-")):
                    on = np.array([r.flow[when]["on"] for r in rs], float)
                    off = np.array([r.flow[when]["off"] for r in rs], float)
                    with np.errstate(divide="ignore", invalid="ignore"):
                        ratio = np.where(off > 0, on / off, np.nan)
                    ax.plot(np.arange(depth + 1), np.nanmedian(ratio, 0), ls, color=c, marker="o", ms=3,
                            label=f"{label.rsplit(',', 1)[0]}, {'at initialisation' if when == 'init' else 'trained'}")
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
            _stage_ticks(ax, depth)
            ax.set_title(f"depth {depth}")
            ax.set_xlabel("encoder stage (0 = full resolution)")
        axes[0, 0].set_ylabel("gradient norm, skips on / every skip zeroed\n(the explorer's blue / orange bars)",
                              fontsize=8)
        _legend(fig, axes)
        fig.suptitle(f"The explorer's gradient flow on the study's networks with skips (median of {nseeds} seeds; "
                     "below 1: more gradient with the skips zeroed)", fontsize=9)
        save(fig, "flow")
    return paths


def _legend(fig, axes) -> None:
    """One legend for the figure, below its panels (the union of the panels' lines)."""
    handles, labels = {}, []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[lab] for lab in labels], labels, loc="lower center", ncols=min(4, len(labels)),
               fontsize=7, handlelength=3, frameon=False)
    height = fig.get_size_inches()[1]
    bottom = (0.15 + 0.2 * ((len(labels) + 3) // 4)) / height  # inches of legend rows
    fig.tight_layout(rect=(0, bottom, 1, 1 - 0.35 / height))  # and room for the title above


def format_summary(result: StudyResult) -> str:
    """The summary as a Markdown table."""
    metric = "F1@0.5" if result.options.get("output", "instances") == "instances" else "Dice"
    lines = [f"| network | parameters | held-out {metric}: mean (min-max) | final loss | stage 0 / bottom "
             "gradient at init: batch stats, BN = identity | s per run |", "|---|---|---|---|---|---|"]
    for s in result.summary():
        div = f", {s['diverged']} diverged" if s["diverged"] else ""
        lines.append(f"| {s['variant']} | {s['parameters']:,} | {s['score_mean']:.3f} ({s['score_min']:.3f}-"
                     f"{s['score_max']:.3f}){div} | {s['final_loss_mean']:.3f} | {s['init_ratio_train']:.3g}, "
                     f"{s['init_ratio_eval']:.3g} | {s['seconds_mean']:.0f} |")
    return "\n".join(lines)
