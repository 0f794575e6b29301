"""Building blocks of :class:`~napari_skipseg.model.unet.SkipUNet`, for 2D and 3D."""

from __future__ import annotations

import torch
from torch import nn


def conv_nd(dims: int) -> type[nn.Module]:
    return nn.Conv2d if dims == 2 else nn.Conv3d


def norm_nd(dims: int) -> type[nn.Module]:
    return nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d


class ConvBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and ReLU.

    With ``residual=True`` the block computes ``relu(H(x) + shortcut(x))``: the identity
    (or a 1x1 projection when the channel count changes) carries the signal, and its
    gradient, past the two convolutions.
    """

    def __init__(self, dims: int, in_ch: int, out_ch: int, residual: bool = True) -> None:
        super().__init__()
        conv, norm = conv_nd(dims), norm_nd(dims)
        self.residual = residual
        self.conv1 = conv(in_ch, out_ch, 3, padding=1, bias=False)
        self.norm1 = norm(out_ch)
        self.conv2 = conv(out_ch, out_ch, 3, padding=1, bias=False)
        self.norm2 = norm(out_ch)
        self.act = nn.ReLU(inplace=True)
        if residual and in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(conv(in_ch, out_ch, 1, bias=False), norm(out_ch))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        if self.residual:
            h = h + self.shortcut(x)
        return self.act(h)


class Down(nn.Module):
    """Encoder stage below the first: max-pool by ``factors``, then a :class:`ConvBlock`."""

    def __init__(self, dims: int, in_ch: int, out_ch: int, factors: tuple[int, ...], residual: bool):
        super().__init__()
        pool = nn.MaxPool2d if dims == 2 else nn.MaxPool3d
        self.pool = pool(kernel_size=factors, stride=factors)
        self.block = ConvBlock(dims, in_ch, out_ch, residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.pool(x))


class Up(nn.Module):
    """Decoder stage: upsample the deeper map, concatenate the skip, fuse with a ConvBlock.

    ``up(x)`` is the decoder map that meets the skip; ``forward`` returns the fused map.
    """

    def __init__(
        self, dims: int, deep_ch: int, skip_ch: int, out_ch: int, factors: tuple[int, ...], residual: bool
    ):
        super().__init__()
        tconv = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
        self.up = tconv(deep_ch, skip_ch, kernel_size=factors, stride=factors)
        self.block = ConvBlock(dims, 2 * skip_ch, out_ch, residual)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([skip, self.up(x)], dim=1))
