"""Small networks for the skip-connection explorer tests (imported by tests/features, tests/_qt)."""

from __future__ import annotations

import numpy as np


def toy_unet(identity: bool = False, seed: int = 0):
    """A hand-written two-level UNet (not a SkipUNet), 1 input channel, 3 classes.

    With ``identity=True`` every convolution passes channel 0 through unchanged (centre
    tap 1, all else 0), so a single bright input pixel stays a single bright pixel at
    every level.
    """
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class ToyUNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc1 = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU())
            self.enc2 = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(2, 4, 3, padding=1), nn.ReLU())
            self.bottom = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU())
            self.up2 = nn.ConvTranspose2d(8, 4, 2, stride=2)
            self.dec2 = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1), nn.ReLU())
            self.up1 = nn.ConvTranspose2d(4, 2, 2, stride=2)
            self.dec1 = nn.Sequential(nn.Conv2d(4, 2, 3, padding=1), nn.ReLU())
            self.head = nn.Conv2d(2, 3, 1)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(e1)
            b = self.bottom(e2)
            d2 = self.dec2(torch.cat([e2, self.up2(b)], 1))
            d1 = self.dec1(torch.cat([e1, self.up1(d2)], 1))
            return self.head(d1)

    net = ToyUNet().eval()
    if identity:
        with torch.no_grad():
            for m in net.modules():
                if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                    m.weight.zero_()
                    m.bias.zero_()
                    if isinstance(m, nn.Conv2d):
                        c = m.kernel_size[0] // 2
                        m.weight[0, 0, c, c] = 1.0
                    else:
                        m.weight[0, 0] = 1.0
    return net


def hooked_toy(identity: bool = False, seed: int = 0):
    from napari_skipseg.features import HookedFeatures

    return HookedFeatures(toy_unet(identity, seed), encoder=["enc1", "enc2"], decoder=["up1", "up2"],
                          fused=["dec1", "dec2"], bottleneck="bottom", class_names=["bg", "a", "b"],
                          name="toy")


def local_skipunet(depth: int = 3):
    """A real SkipUNet whose weights pass channel 0 straight through: the response to one
    bright pixel stays on that pixel (encoder, fused) or its 2x2 parent block (decoder)."""
    import torch
    from torch import nn

    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.unet import SkipUNet

    cfg = ModelConfig(name="local", spatial_dims=2, num_classes=2, base_channels=2, depth=depth)
    model = SkipUNet(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.zero_()
                if m.bias is not None:
                    m.bias.zero_()
                if isinstance(m, nn.ConvTranspose2d):
                    m.weight[0, 0] = 1.0
                else:
                    c = m.kernel_size[0] // 2
                    m.weight[0, 0, c, c] = 1.0
    return model


def trained_tiny(steps: int = 60, seed: int = 0):
    """The tiny 2D semantic test model, fitted for a few steps to a synthetic nuclei image,
    with that image (normalised) and its mask."""
    import torch
    import torch.nn.functional as F

    from napari_skipseg._sample_data import synthetic_nuclei
    from napari_skipseg.inference.preprocess import normalize, percentile_range
    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.unet import SkipUNet

    image, labels = synthetic_nuclei((64, 64), seed=seed + 5, radius=7.0)
    torch.manual_seed(seed)
    model = SkipUNet(ModelConfig(name="tinytrained", num_classes=2, base_channels=4, depth=2,
                                 class_names=["background", "object"], tile=[64, 64]))
    lo, hi = percentile_range(image)
    x = torch.from_numpy(normalize(image, lo, hi))[None, None]
    y = torch.from_numpy((labels > 0).astype(np.int64))[None]
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), image, labels
