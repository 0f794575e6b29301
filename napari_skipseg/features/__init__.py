"""Skip-connection explorer (headless): what crosses every skip of a UNet.

- :func:`capture_features` / :func:`skip_features`: encoder, decoder and fused maps per level.
- :mod:`.summaries`: L2 norm over channels, PCA to RGB, most active channels.
- :func:`ablate_skips`: the output with a skip zeroed or replaced by its mean.
- :func:`gradient_flow`: gradient norm reaching each encoder stage, skips on and off.
- :func:`feature_placement`: scale/translate that lay a level's maps over the image.
- :class:`HookedFeatures`: the same for any UNet-shaped torch module, through hooks.
- :func:`discover_skips`: find a network's skips by tracing it (:class:`SkipMap`), tapped by
  :class:`MappedFeatures`.

No Qt or napari here; torch is imported only when a job runs (``HookedFeatures`` and
``as_taps`` are loaded on first use).
"""

from .capture import (
    KINDS,
    AblationResult,
    FeatureCapture,
    FeatureError,
    GradientFlow,
    PreparedInput,
    SkipRecord,
    ablate_skips,
    capture_features,
    gradient_flow,
    prepare_input,
    region_mask,
    skip_features,
)
from .placement import block_around, feature_placement, layer_placement
from .summaries import VIEWS, channel_norm, contrast_range, pca_rgb, summarise, top_channels

__all__ = [
    "KINDS",
    "VIEWS",
    "AblationResult",
    "FeatureCapture",
    "FeatureError",
    "GradientFlow",
    "HookedFeatures",
    "MappedFeatures",
    "PreparedInput",
    "SkipMap",
    "SkipRecord",
    "ablate_skips",
    "as_taps",
    "block_around",
    "capture_features",
    "channel_norm",
    "contrast_range",
    "discover_skips",
    "feature_placement",
    "gradient_flow",
    "layer_placement",
    "pca_rgb",
    "prepare_input",
    "region_mask",
    "skip_features",
    "summarise",
    "top_channels",
    "write_features",
]


def __getattr__(name):
    if name in ("HookedFeatures", "as_taps", "SkipUNetTaps"):
        from . import taps

        return getattr(taps, name)
    if name in ("MappedFeatures", "SkipMap", "discover_skips"):
        from . import discover

        return getattr(discover, name)
    if name == "write_features":
        from .export import write_features

        return write_features
    raise AttributeError(name)
