"""Taps on the skip connections of a network: our SkipUNet, or any UNet-shaped module.

A *tap* runs a network once and hands back, per level, what crossed the skip (encoder),
the upsampled map it met (decoder) and the decoder stage's output (fused); it can also
switch skips off and expose the encoder stage outputs for gradients.

- :class:`SkipUNetTaps` uses ``SkipUNet.forward(x, return_features=True, ablate=...)``.
- :class:`HookedFeatures` does the same for any ``torch.nn.Module`` through forward hooks
  on named submodules (like MONAI's ``ModelWithHooks`` or torchvision's
  ``create_feature_extractor``). Hooks are registered for one forward pass and removed
  right after, so the module is left as it was.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field

import torch
from torch import nn

from ..model.unet import ABLATIONS, SkipTensors, SkipUNet, _crop, _pad_to_multiple

DEFAULT_NORMALIZATION = {"kind": "percentile", "low": 1.0, "high": 99.8}


@dataclass
class TapResult:
    """One forward pass: logits ``(N, classes, *spatial)``, skip records (level order) and,
    when asked for, the encoder stage outputs (autograd nodes, for gradients)."""

    logits: torch.Tensor
    records: list[SkipTensors] = field(default_factory=list)
    stages: list[torch.Tensor] = field(default_factory=list)


def _check_ablate(ablate: dict | None, depth: int) -> dict[int, str]:
    ablate = dict(ablate or {})
    for level, how in ablate.items():
        if not isinstance(level, int) or not 0 <= level < depth or how not in ABLATIONS:
            raise ValueError(f"ablate must map levels 0..{depth - 1} to {ABLATIONS}, got {ablate!r}")
    return ablate


def _replace(skip: torch.Tensor, how: str) -> torch.Tensor:
    if how == "zero":
        return torch.zeros_like(skip)
    return skip.mean(dim=tuple(range(2, skip.ndim)), keepdim=True).expand_as(skip)


class SkipUNetTaps:
    """Taps on a :class:`~napari_skipseg.model.unet.SkipUNet`."""

    def __init__(self, model: SkipUNet) -> None:
        self.module = model
        cfg = model.config
        self.config = cfg
        self.name = cfg.name
        self.spatial_dims = cfg.spatial_dims
        self.in_channels = cfg.in_channels
        self.num_classes = cfg.num_classes
        self.class_names = list(cfg.class_names) or [f"class {i}" for i in range(cfg.num_classes)]
        self.normalization = dict(cfg.normalization or DEFAULT_NORMALIZATION)
        self.output = cfg.output
        self.depth = cfg.depth
        self.default_block = tuple(cfg.default_tile())

    def stage_names(self) -> list[str]:
        return [f"encoder.stages[{i}]" for i in range(len(self.module.encoder.stages))]

    def run(self, x: torch.Tensor, *, capture: bool = True, ablate: dict | None = None,
            stages: bool = False) -> TapResult:
        ablate = _check_ablate(ablate, self.depth)
        outputs: list[torch.Tensor] = []
        handles = []
        if stages:
            for stage in self.module.encoder.stages:
                handles.append(stage.register_forward_hook(lambda m, i, o: outputs.append(o)))
        try:
            out = self.module(x, return_features=capture, ablate=ablate)
        finally:
            for h in handles:
                h.remove()
        logits, records = out if capture else (out, [])
        return TapResult(logits, records, outputs)


class HookedFeatures:
    """Skip taps on any UNet-shaped ``torch.nn.Module``, through removable forward hooks.

    Parameters
    ----------
    module : torch.nn.Module
        The network; ``module(x)`` returns logits ``(N, classes, *spatial)`` (or a tuple,
        list or dict whose first tensor they are).
    encoder : list of str
        Names (as in ``module.named_modules()``) of the modules whose outputs cross the
        skips, shallowest (full resolution, level 0) first.
    decoder : list of str
        Modules whose outputs are the upsampled maps concatenated with each skip.
    fused : list of str
        Decoder modules that take the concatenation (``torch.cat([skip, up], 1)``, or
        ``[up, skip]`` with ``skip_first=False``) as first argument; their outputs are the
        fused maps. Skip ablation rewrites the skip part of their input.
    bottleneck : str, optional
        The deepest encoder module (no skip); included in gradient-flow stages.
    spatial_dims, in_channels : int, optional
        Inferred from the first convolution when not given.
    normalization : dict, optional
        How images are scaled before entering the network (as in ``ModelConfig``);
        default percentile 1 to 99.8.
    class_names : list of str, optional
    size_multiple : int or tuple, optional
        Inputs are padded (at their far end) to a multiple of this; default
        ``2 ** len(encoder)``.
    skip_first : bool
        Whether the skip comes first in the concatenation the fused modules take.
    name : str, optional

    Examples
    --------
    >>> taps = HookedFeatures(net, encoder=["enc1", "enc2"], decoder=["up1", "up2"],
    ...                       fused=["dec1", "dec2"])
    >>> records = napari_skipseg.skip_features(taps, image)
    """

    def __init__(
        self,
        module: nn.Module,
        encoder: list[str],
        decoder: list[str],
        fused: list[str],
        *,
        bottleneck: str | None = None,
        spatial_dims: int | None = None,
        in_channels: int | None = None,
        normalization: dict | None = None,
        class_names: list[str] | None = None,
        size_multiple: int | tuple[int, ...] | None = None,
        skip_first: bool = True,
        name: str | None = None,
        output: str = "semantic",
    ) -> None:
        if not isinstance(module, nn.Module):
            raise TypeError(f"HookedFeatures needs a torch.nn.Module, got {type(module).__name__}")
        if not encoder or not (len(encoder) == len(decoder) == len(fused)):
            raise ValueError(
                "encoder, decoder and fused must name one module per skip level each "
                f"(got {len(encoder)}, {len(decoder)}, {len(fused)})"
            )
        self.module = module
        named = dict(module.named_modules())
        for key in [*encoder, *decoder, *fused, *([bottleneck] if bottleneck else [])]:
            if key not in named:
                near = difflib.get_close_matches(key, [n for n in named if n], n=3)
                hint = f"; did you mean {', '.join(near)}?" if near else ""
                raise ValueError(f"{type(module).__name__} has no submodule named {key!r}{hint}")
        self.encoder_names, self.decoder_names, self.fused_names = list(encoder), list(decoder), list(fused)
        self.bottleneck_name = bottleneck
        self._named = named
        first_conv = next((m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))), None)
        if spatial_dims is None:
            if first_conv is None:
                raise ValueError("cannot infer spatial_dims (no Conv2d/Conv3d found); pass spatial_dims=")
            spatial_dims = 2 if isinstance(first_conv, nn.Conv2d) else 3
        if in_channels is None:
            in_channels = first_conv.in_channels if first_conv is not None else 1
        self.spatial_dims = int(spatial_dims)
        self.in_channels = int(in_channels)
        self.depth = len(encoder)
        if size_multiple is None:
            size_multiple = 2 ** self.depth
        if isinstance(size_multiple, int):
            size_multiple = (size_multiple,) * self.spatial_dims
        self.size_multiple = tuple(int(m) for m in size_multiple)
        self.normalization = dict(normalization or DEFAULT_NORMALIZATION)
        self.skip_first = skip_first
        self.name = name or type(module).__name__
        self.output = output
        self._class_names = list(class_names or [])
        self.num_classes: int | None = len(self._class_names) or None
        self.default_block = (64, 128, 128) if self.spatial_dims == 3 else (1024, 1024)
        self._handles: list = []
        self._state: dict | None = None

    # -- identity -------------------------------------------------------------------------
    @property
    def class_names(self) -> list[str]:
        if self._class_names:
            return list(self._class_names)
        return [f"class {i}" for i in range(self.num_classes or 0)]

    def stage_names(self) -> list[str]:
        return self.encoder_names + ([self.bottleneck_name] if self.bottleneck_name else [])

    def __repr__(self) -> str:
        return (f"HookedFeatures({self.name}, encoder={self.encoder_names}, decoder={self.decoder_names}, "
                f"fused={self.fused_names})")

    # -- hooks ------------------------------------------------------------------------------
    def attach(self, ablate: dict | None = None) -> HookedFeatures:
        """Register the hooks (done for you by :meth:`run`); undo with :meth:`remove`."""
        if self._handles:
            raise RuntimeError("hooks are already attached; call remove() first")
        ablate = _check_ablate(ablate, self.depth)
        state: dict = {"encoder": {}, "decoder": {}, "fused": {}, "stages": {}, "skip": {}}
        self._state = state

        def keep(kind: str, key):
            def hook(mod, args, out):
                state[kind][key] = _first_tensor(out)
            return hook

        for level, key in enumerate(self.encoder_names):
            self._handles.append(self._named[key].register_forward_hook(keep("encoder", level)))
        for level, key in enumerate(self.decoder_names):
            self._handles.append(self._named[key].register_forward_hook(keep("decoder", level)))
        for level, key in enumerate(self.fused_names):
            self._handles.append(self._named[key].register_forward_hook(keep("fused", level)))
            self._handles.append(self._named[key].register_forward_pre_hook(self._pre_fuse(level, ablate)))
        if self.bottleneck_name:
            self._handles.append(
                self._named[self.bottleneck_name].register_forward_hook(keep("stages", self.depth))
            )
        return self

    def remove(self) -> None:
        """Remove every hook this object registered."""
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> HookedFeatures:
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.remove()

    def _pre_fuse(self, level: int, ablate: dict[int, str]):
        def hook(mod, args):
            state = self._state
            x = args[0]
            skip_ch = state["encoder"].get(level)
            up = state["decoder"].get(level)
            if skip_ch is None:
                raise RuntimeError(
                    f"{self.fused_names[level]!r} ran before {self.encoder_names[level]!r}: "
                    "encoder and fused names do not describe a UNet level"
                )
            c_skip = skip_ch.shape[1]
            c_up = up.shape[1] if up is not None else x.shape[1] - c_skip
            if x.shape[1] != c_skip + c_up:
                raise RuntimeError(
                    f"{self.fused_names[level]!r} takes {x.shape[1]} channels, not the "
                    f"{c_skip} + {c_up} of skip and upsampled map: it must take torch.cat([skip, up], 1)"
                )
            skip = x[:, :c_skip] if self.skip_first else x[:, x.shape[1] - c_skip:]
            rest = x[:, c_skip:] if self.skip_first else x[:, : x.shape[1] - c_skip]
            how = ablate.get(level)
            if how is None:
                state["skip"][level] = skip
                return None
            new_skip = _replace(skip, how)
            state["skip"][level] = new_skip
            x = torch.cat([new_skip, rest] if self.skip_first else [rest, new_skip], dim=1)
            return (x, *args[1:])
        return hook

    # -- running ------------------------------------------------------------------------------
    def run(self, x: torch.Tensor, *, capture: bool = True, ablate: dict | None = None,
            stages: bool = False) -> TapResult:
        size = tuple(x.shape[2:])
        xp = _pad_to_multiple(x, self.size_multiple)
        padded = tuple(xp.shape[2:])
        self.attach(ablate)
        try:
            out = _first_tensor(self.module(xp))
        finally:
            self.remove()
        state, self._state = self._state, None
        if out.ndim != self.spatial_dims + 2:
            raise RuntimeError(f"{self.name} returned shape {tuple(out.shape)}; expected (N, classes, *spatial)")
        self.num_classes = int(out.shape[1])
        logits = _crop(out, size)
        records: list[SkipTensors] = []
        if capture:
            for level in range(self.depth):
                enc = state["skip"].get(level, state["encoder"].get(level))
                dec, fus = state["decoder"].get(level), state["fused"].get(level)
                if enc is None or dec is None or fus is None:
                    missing = [n for n, t in ((self.encoder_names[level], enc), (self.decoder_names[level], dec),
                                              (self.fused_names[level], fus)) if t is None]
                    raise RuntimeError(f"{self.name}: module(s) {missing} did not run in forward()")
                scale = tuple(max(1, int(round(p / f))) for p, f in zip(padded, enc.shape[2:], strict=True))
                crop = tuple(-(-s // f) for s, f in zip(size, scale, strict=True))
                fus = resize_to(fus, tuple(enc.shape[2:]))  # a fusion that also up-samples (MONAI UNet)
                records.append(SkipTensors(level, scale, _crop(enc, crop), _crop(dec, crop), _crop(fus, crop)))
        stage_out: list[torch.Tensor] = []
        if stages:
            stage_out = [state["encoder"][lv] for lv in range(self.depth)]
            if self.bottleneck_name:
                stage_out.append(state["stages"][self.depth])
        return TapResult(logits, records, stage_out)


def resize_to(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``t`` on the grid ``shape`` (area average when shrinking, nearest when growing)."""
    if tuple(t.shape[2:]) == tuple(shape):
        return t
    smaller = all(s <= c for s, c in zip(shape, t.shape[2:], strict=True))
    return torch.nn.functional.interpolate(t, size=tuple(shape), mode="area" if smaller else "nearest")


def _first_tensor(out):
    from ..model.foreign import first_tensor  # one rule for every network's output

    return first_tensor(out)


def as_taps(model):
    """A tap object for ``model``: a SkipUNet, an imported network
    (:class:`~napari_skipseg.model.foreign.ImportedNet`, tapped through its skip map), a
    :class:`HookedFeatures`, or the name or folder of a stored model."""
    if isinstance(model, (SkipUNetTaps, HookedFeatures)):
        return model
    if isinstance(model, SkipUNet):
        return SkipUNetTaps(model)
    if hasattr(model, "taps") and hasattr(model, "config") and getattr(model.config, "arch", None):
        return model.taps()  # an ImportedNet: taps from its skip map
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        from ..model.store import load_model

        return as_taps(load_model(model))
    if isinstance(model, nn.Module):
        raise TypeError(
            f"{type(model).__name__} is not a SkipUNet: wrap it in HookedFeatures(module, encoder=[...], "
            "decoder=[...], fused=[...]) naming its skip-producing modules"
        )
    raise TypeError(f"expected a SkipUNet, HookedFeatures or model name, got {type(model).__name__}")
