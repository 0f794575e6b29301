"""Batch norms folded into convolutions: same outputs, and the original model untouched."""

import pytest
import torch

from napari_skipseg.model.config import ModelConfig
from napari_skipseg.model.fuse import FusedConvBlock, fold_conv_norm, fuse_for_inference, is_fused
from napari_skipseg.model.unet import SkipUNet

CASES = [
    pytest.param(2, "plain", id="2d-plain"),
    pytest.param(2, "residual", id="2d-residual"),
    pytest.param(3, "plain", id="3d-plain"),
    pytest.param(3, "residual", id="3d-residual"),
]


def trained_like(dims=2, block="residual", seed=0, base=4):
    """A tiny SkipUNet whose batch norms have non-trivial statistics and affine parameters
    (a fresh model's are 0/1, which folding would get right by accident)."""
    torch.manual_seed(seed)
    model = SkipUNet(ModelConfig(name=f"t{dims}d", spatial_dims=dims, base_channels=base, depth=2, block=block,
                                 num_classes=3))
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return model.eval()


@pytest.mark.parametrize(("dims", "block"), CASES)
@pytest.mark.parametrize("odd", [False, True], ids=["even", "odd"])
def test_fused_equals_unfused(dims, block, odd):
    model = trained_like(dims, block)
    fused = fuse_for_inference(model)
    size = ((21, 19) if odd else (16, 24)) if dims == 2 else ((7, 13, 11) if odd else (8, 12, 16))
    x = torch.randn(2, 1, *size, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref, got = model(x), fused(x)
    assert got.shape == ref.shape
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    # no batch norm is left, every block is fused
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in fused.modules())
    assert all(isinstance(s.block, FusedConvBlock) for s in fused.decoder.stages)
    assert is_fused(fused) and not is_fused(model)


@pytest.mark.parametrize(("dims", "block"), CASES)
def test_features_and_ablation_equal_unfused(dims, block):
    model = trained_like(dims, block)
    fused = fuse_for_inference(model)
    x = torch.randn(1, 1, *((20, 20) if dims == 2 else (8, 12, 12)), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        ref, ref_f = model(x, return_features=True, ablate={0: "mean"})
        got, got_f = fused(x, return_features=True, ablate={0: "mean"})
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(got_f, ref_f, strict=True):
        for kind in ("encoder", "decoder", "fused"):
            torch.testing.assert_close(getattr(a, kind), getattr(b, kind), rtol=1e-4, atol=1e-4)


def test_original_is_untouched_and_its_hooks_keep_working():
    model = trained_like(2, "residual").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    handle = model.encoder.stages[1].register_forward_hook(lambda m, i, o: seen.append(o.shape))
    fused = fuse_for_inference(model)
    assert model.training  # mode kept
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.requires_grad for p in model.parameters())
    assert all(not p.requires_grad for p in fused.parameters())
    # separate storage: changing the copy does not change the original
    with torch.no_grad():
        next(fused.parameters()).add_(1.0)
    assert torch.equal(next(model.parameters()), before[next(iter(before))])
    # the hook fires on the original, not on the copy
    x = torch.randn(1, 1, 16, 16)
    with torch.inference_mode():
        fused(x)
    assert seen == []
    model.eval()
    with torch.inference_mode():
        model(x)
    assert len(seen) == 1
    handle.remove()


def test_fused_copy_stays_in_eval_mode():
    fused = fuse_for_inference(trained_like(2, "plain"))
    fused.train()
    assert not fused.training and not any(m.training for m in fused.modules())


def test_fold_conv_norm_also_for_transposed_and_biased_convs():
    torch.manual_seed(0)
    for conv in (torch.nn.Conv2d(3, 5, 3, padding=1, bias=True),
                 torch.nn.ConvTranspose2d(3, 5, 2, stride=2),
                 torch.nn.Conv3d(2, 4, 3, padding=1, bias=False)):
        dims = conv.weight.ndim - 2
        norm = (torch.nn.BatchNorm2d if dims == 2 else torch.nn.BatchNorm3d)(conv.out_channels)
        with torch.no_grad():
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2)
            norm.weight.uniform_(-2, 2)
            norm.bias.uniform_(-1, 1)
        norm.eval()
        x = torch.randn(2, conv.in_channels, *([6] * dims))
        with torch.no_grad():
            torch.testing.assert_close(fold_conv_norm(conv, norm)(x), norm(conv(x)), rtol=1e-5, atol=1e-5)


def test_generic_sequential_conv_norm_is_folded():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 2, 1))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    net.eval()
    fused = fuse_for_inference(net)
    assert isinstance(fused[1], torch.nn.Identity)
    x = torch.randn(1, 1, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), rtol=1e-5, atol=1e-5)
