"""An inference-only copy of a network with every batch norm folded into its convolution.

In eval mode a batch norm is an affine map per channel, ``y = (x - mean) / sqrt(var + eps)
* gamma + beta``; after a convolution (or a transposed convolution) it can be absorbed into
that convolution's weights and bias. :func:`fuse_for_inference` returns a copy of the model
where this is done, so the network runs one operation where it ran two, and the residual
sum and the ReLUs run in place.

The model the caller holds is never changed: the copy has its own parameters, no autograd,
no forward hooks (feature-capture hooks stay on the original, where they keep working), and
stays in eval mode (``train()`` leaves it there).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
          "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks_with_kwargs")


def fold_conv_norm(conv: nn.Module, norm: nn.Module) -> nn.Module:
    """A copy of ``conv`` with the eval-mode batch norm ``norm`` that follows it folded in."""
    fused = copy.deepcopy(conv)
    _strip_hooks(fused)
    _fold_into_conv(fused, norm)
    return fused


def fuse_for_inference(model: nn.Module) -> nn.Module:
    """An equivalent eval-only copy of ``model`` with batch norms folded into convolutions.

    Every ``ConvBlock`` of a :class:`~napari_skipseg.model.unet.SkipUNet` becomes a
    :class:`FusedConvBlock` (both convolutions and the 1x1 shortcut projection folded), and
    in every ``nn.Sequential`` a convolution directly followed by a batch norm with running
    statistics is folded; any other module is copied as it is. The copy computes what
    ``model.eval()`` computes, up to float rounding, and its ``forward`` (including
    ``return_features`` and ``ablate`` for a SkipUNet) is unchanged. ``model`` itself is left
    untouched (mode, parameters, hooks).
    """
    # the copy starts without the original's hooks (their owners are not copied either)
    memo: dict = {}
    for m in model.modules():
        for attr in _HOOKS:
            d = getattr(m, attr, None)
            if d is not None:
                memo[id(d)] = type(d)()
    fused = copy.deepcopy(model, memo)
    fused.eval()
    _fold_modules(fused)
    for p in fused.parameters():
        p.requires_grad_(False)
    fused.train = _no_train.__get__(fused)  # type: ignore[method-assign]
    fused._skipseg_fused = True
    return fused


def is_fused(model: nn.Module) -> bool:
    """Whether ``model`` came from :func:`fuse_for_inference`."""
    return bool(getattr(model, "_skipseg_fused", False))


class FusedConvBlock(nn.Module):
    """A ``ConvBlock`` with its batch norms folded: ``relu(conv2(relu(conv1(x))) [+ shortcut(x)])``."""

    def __init__(self, conv1: nn.Module, conv2: nn.Module, shortcut: nn.Module | None) -> None:
        super().__init__()
        self.conv1, self.conv2 = conv1, conv2
        self.shortcut = shortcut if shortcut is not None else nn.Identity()
        self.residual = shortcut is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu_(self.conv1(x))
        h = self.conv2(h)
        if self.residual:
            h += self.shortcut(x)
        return torch.relu_(h)


def _no_train(self, mode: bool = True):
    # folded batch norms have no batch statistics to use or update: the copy stays in eval
    # mode whatever is asked (tools such as exporters switch modes back and forth)
    return nn.Module.train(self, False)


def _fold_modules(root: nn.Module) -> None:
    from .blocks import ConvBlock

    if isinstance(root, nn.Sequential):
        _fold_sequential(root)
    for parent in list(root.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, ConvBlock):
                _fold_into_conv(child.conv1, child.norm1)
                _fold_into_conv(child.conv2, child.norm2)
                shortcut = None
                if child.residual:
                    shortcut = child.shortcut
                    if isinstance(shortcut, nn.Sequential):
                        _fold_sequential(shortcut)
                        kept = [m for m in shortcut if not isinstance(m, nn.Identity)]
                        shortcut = kept[0] if len(kept) == 1 else nn.Sequential(*kept)
                setattr(parent, name, FusedConvBlock(child.conv1, child.conv2, shortcut))
            elif isinstance(child, nn.Sequential):
                _fold_sequential(child)


def _fold_sequential(seq: nn.Sequential) -> None:
    names = [n for n, _ in seq.named_children()]
    for a, b in zip(names, names[1:], strict=False):
        conv, norm = getattr(seq, a), getattr(seq, b)
        if isinstance(conv, _CONV) and isinstance(norm, _NORM) and norm.running_mean is not None:
            _fold_into_conv(conv, norm)
            setattr(seq, b, nn.Identity())


@torch.no_grad()
def _fold_into_conv(conv: nn.Module, norm: nn.Module) -> None:
    """Fold eval-mode ``norm`` into ``conv``'s weight and bias, in place (``conv`` is a copy)."""
    if not isinstance(conv, _CONV) or not isinstance(norm, _NORM):
        raise TypeError(f"cannot fold {type(norm).__name__} into {type(conv).__name__}")
    if norm.running_mean is None or norm.running_var is None:
        raise ValueError("a batch norm without running statistics cannot be folded")
    transposed = isinstance(conv, nn.modules.conv._ConvTransposeNd)
    if transposed and conv.groups != 1:
        raise ValueError("folding into a grouped transposed convolution is not supported")
    w = conv.weight.detach().double()
    mean = norm.running_mean.detach().double()
    scale = torch.rsqrt(norm.running_var.detach().double() + norm.eps)
    if norm.affine:
        scale = scale * norm.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else torch.zeros_like(mean)
    shift = (bias - mean) * scale
    if norm.affine:
        shift = shift + norm.bias.detach().double()
    # output channels: axis 0 of a convolution's weight, axis 1 of a transposed one's
    shape = [1] * w.ndim
    shape[1 if transposed else 0] = -1
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter((w * scale.reshape(shape)).to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(shift.to(dtype), requires_grad=False)


def _strip_hooks(module: nn.Module) -> None:
    """Drop hooks that a deep copy carried over from the original."""
    for m in module.modules():
        for attr in _HOOKS:
            d = getattr(m, attr, None)
            if d is not None:
                d.clear()
