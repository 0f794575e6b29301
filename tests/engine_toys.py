"""Small stand-in networks for engine tests whose right answer is known without training."""

import numpy as np
import torch

from napari_skipseg.model.config import ModelConfig


class BlobModel(torch.nn.Module):
    """A per-pixel instance model: bright pixels are interior, dim ones background.

    Logits are (background, interior, boundary) = (0, k * (x - 0.5), -10), so discs in the
    image come back as one object each. ``tile``: the config's default tile (None: the
    config's default); ``postprocess``: thresholds over ``min_size=2, min_seed_size=1``.
    """

    def __init__(self, spatial_dims=2, tile=None, **postprocess):
        super().__init__()
        self.config = ModelConfig(
            name="blobs", spatial_dims=spatial_dims, num_classes=3, base_channels=4, depth=2,
            output="instances", normalization={"kind": "none"}, tile=list(tile or []),
            postprocess={"min_size": 2, "min_seed_size": 1, **postprocess},
        )
        self.k = torch.nn.Parameter(torch.tensor(20.0))

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), self.k * (x - 0.5), torch.full_like(x, -10.0)], dim=1)


def discs(shape, centres, radius):
    """A float32 image of 1s in discs of ``radius`` around ``centres`` (y, x), 0 elsewhere."""
    yy, xx = np.indices(shape)
    out = np.zeros(shape, np.float32)
    for cy, cx in centres:
        out[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = 1.0
    return out
