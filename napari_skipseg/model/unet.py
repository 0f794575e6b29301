"""SkipUNet: a UNet for 2D and 3D whose every skip connection is addressable by level.

Level ``k`` (0 = full resolution) has an encoder stage ``encoder.stages[k]`` whose output
crosses the skip connection to decoder stage ``decoder.stages[k]``; there it is concatenated
with the upsampled map coming from level ``k + 1`` and fused. ``encoder.stages[depth]`` is the
bottleneck and ``head`` maps the level-0 fused map to class logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import ConvBlock, Down, Up, conv_nd
from .config import ModelConfig

ABLATIONS = ("zero", "mean")


@dataclass
class SkipTensors:
    """What passes one skip connection at ``level`` (tensors shaped ``(N, C, *spatial)``).

    ``encoder`` is the map handed across, ``decoder`` the upsampled deeper map it is
    concatenated with, ``fused`` the output of the decoder stage. ``scale`` is the size of
    one feature pixel in input pixels along each spatial axis.
    """

    level: int
    scale: tuple[int, ...]
    encoder: torch.Tensor
    decoder: torch.Tensor
    fused: torch.Tensor


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dims, residual = cfg.spatial_dims, cfg.block == "residual"
        stages: list[nn.Module] = [ConvBlock(dims, cfg.in_channels, cfg.channels(0), residual)]
        for level, factors in enumerate(cfg.pool_factors(), start=1):
            stages.append(Down(dims, cfg.channels(level - 1), cfg.channels(level), factors, residual))
        self.stages = nn.ModuleList(stages)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        dims, residual = cfg.spatial_dims, cfg.block == "residual"
        # stages[k] fuses the skip of level k with the map coming up from level k + 1
        self.stages = nn.ModuleList(
            Up(dims, cfg.channels(k + 1), cfg.channels(k), cfg.channels(k), factors, residual)
            for k, factors in enumerate(cfg.pool_factors())
        )


class SkipUNet(nn.Module):
    """Configurable UNet (see :class:`ModelConfig`), any input size, 2D or 3D.

    Built from a :class:`ModelConfig`, or from its fields as keyword arguments
    (``SkipUNet(spatial_dims=2, num_classes=3, ...)``, as a bioimage.io package's
    ``pytorch_state_dict`` architecture calls it).

    Inputs of any spatial size are padded at their far end to a multiple of
    ``config.size_multiple()`` and the outputs cropped back, so pixel ``i`` of every map
    stays aligned with the input's origin.
    """

    def __init__(self, config: ModelConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:  # the config's fields as keyword arguments (bioimage.io's architecture)
            config = ModelConfig.from_dict(kwargs)
        elif kwargs:
            raise TypeError("give either a ModelConfig or its fields as keyword arguments, not both")
        config.validate()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.head = conv_nd(config.spatial_dims)(config.channels(0), config.num_classes, 1)
        self._encoder_frozen = False

    # -- forward ----------------------------------------------------------------------------
    def forward(
        self,
        x: torch.Tensor,
        return_features: bool = False,
        ablate: dict[int, str] | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, list[SkipTensors]]:
        """Class logits for ``x`` shaped ``(N, in_channels, *spatial)``.

        Parameters
        ----------
        return_features : bool
            Also return one :class:`SkipTensors` per level (0 = full resolution), cropped
            to the part that covers the input.
        ablate : dict, optional
            ``{level: "zero" | "mean"}`` replaces what crosses that skip by zeros or by its
            per-channel spatial mean, to see what the skip contributes.
        """
        cfg = self.config
        dims = cfg.spatial_dims
        if x.ndim != dims + 2:
            raise ValueError(
                f"{cfg.name}: a {dims}D model takes (N, C, {'Z, ' if dims == 3 else ''}Y, X) "
                f"tensors, got shape {tuple(x.shape)}"
            )
        if x.shape[1] != cfg.in_channels:
            raise ValueError(
                f"{cfg.name}: model takes {cfg.in_channels} input channel(s), got {x.shape[1]}"
            )
        ablate = ablate or {}
        for level, how in ablate.items():
            if not 0 <= level < cfg.depth or how not in ABLATIONS:
                raise ValueError(f"ablate must map levels 0..{cfg.depth - 1} to {ABLATIONS}, got {ablate!r}")

        size = tuple(x.shape[2:])
        x = _pad_to_multiple(x, cfg.size_multiple())

        skips = []
        h = x
        for level, stage in enumerate(self.encoder.stages):
            h = stage(h)
            if level < cfg.depth:
                skips.append(h)
        records: list[SkipTensors] = []
        for level in reversed(range(cfg.depth)):
            stage = self.decoder.stages[level]
            skip = skips[level]
            how = ablate.get(level)
            if how == "zero":
                skip = torch.zeros_like(skip)
            elif how == "mean":
                skip = skip.mean(dim=tuple(range(2, skip.ndim)), keepdim=True).expand_as(skip)
            up = stage.up(h)
            h = stage.block(torch.cat([skip, up], dim=1))
            if return_features:
                scale = cfg.level_scale(level)
                crop = tuple(-(-s // f) for s, f in zip(size, scale, strict=True))
                records.append(
                    SkipTensors(level, scale, _crop(skip, crop), _crop(up, crop), _crop(h, crop))
                )
        logits = _crop(self.head(h), size)
        if return_features:
            return logits, sorted(records, key=lambda r: r.level)
        return logits

    # -- fine-tuning helpers ----------------------------------------------------------------
    def freeze_encoder(self, stages: int | None = None) -> None:
        """Stop training the encoder (all stages, or the first ``stages`` of them).

        Frozen stages get ``requires_grad=False`` and keep their batch-norm statistics
        fixed, also after ``model.train()``.
        """
        n = len(self.encoder.stages) if stages is None else stages
        self._frozen_stages = list(range(n))
        for i in self._frozen_stages:
            for p in self.encoder.stages[i].parameters():
                p.requires_grad_(False)
        self._encoder_frozen = True
        self.train(self.training)

    def unfreeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(True)
        self._encoder_frozen = False
        self.train(self.training)

    def train(self, mode: bool = True) -> SkipUNet:
        super().train(mode)
        if mode and self._encoder_frozen:
            for i in self._frozen_stages:
                for m in self.encoder.stages[i].modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def _pad_to_multiple(x: torch.Tensor, multiple: tuple[int, ...]) -> torch.Tensor:
    size = x.shape[2:]
    extra = [(-s) % m for s, m in zip(size, multiple, strict=True)]
    if not any(extra):
        return x
    pad: list[int] = []
    for e in reversed(extra):  # F.pad wants the last axis first
        pad += [0, e]
    mode = "reflect" if all(e < s for e, s in zip(extra, size, strict=True)) else "replicate"
    return F.pad(x, pad, mode=mode)


def _crop(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    return x[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]
