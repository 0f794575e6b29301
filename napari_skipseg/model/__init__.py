"""The network, its configuration and the model store.

``config`` and ``store`` import without torch; ``SkipUNet`` is imported on first use.
"""

from .config import ModelConfig, ModelConfigError
from .store import ModelLoadError, list_models, load_config, load_model, save_model

__all__ = [
    "ModelConfig",
    "ModelConfigError",
    "ModelLoadError",
    "SkipUNet",
    "list_models",
    "load_config",
    "load_model",
    "save_model",
]


def __getattr__(name):
    if name == "SkipUNet":
        from .unet import SkipUNet

        return SkipUNet
    raise AttributeError(name)
