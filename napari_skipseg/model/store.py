"""Finding, loading and saving models: a folder with config.json + model.safetensors + card.md.

Loading never unpickles anything: weights are safetensors, the config is JSON.
Bundled models live in the repository's ``models/`` folder (shipped inside the wheel as
``napari_skipseg/bundled_models``); the user's models live in :func:`user_model_dir`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .config import ModelConfig, ModelConfigError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.md"


class ModelLoadError(RuntimeError):
    """A model could not be found or does not load; the message says why."""


@dataclass(frozen=True)
class ModelEntry:
    """A model found on disk (without loading its weights)."""

    name: str
    path: Path
    source: str  # "bundled" or "user"
    config: ModelConfig


def bundled_model_dirs() -> list[Path]:
    here = Path(__file__).resolve().parent.parent
    return [d for d in (here / "bundled_models", here.parent / "models") if d.is_dir()]


def user_model_dir() -> Path:
    """Where fine-tuned and user-imported models are kept (``$SKIPSEG_HOME/models``)."""
    home = os.environ.get("SKIPSEG_HOME")
    if home:
        return Path(home) / "models"
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "napari-skipseg" / "models"


def is_model_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()


def list_models() -> list[ModelEntry]:
    """All usable models: bundled first, then the user's (newest last)."""
    found: list[ModelEntry] = []
    seen: set[str] = set()
    for source, roots in (("bundled", bundled_model_dirs()), ("user", [user_model_dir()])):
        for root in roots:
            if not root.is_dir():
                continue
            for path in sorted(p for p in root.iterdir() if p.is_dir() and is_model_dir(p)):
                try:
                    cfg = ModelConfig.from_json(path / CONFIG_FILE)
                except ModelConfigError:
                    continue  # a broken folder is skipped in listings; loading it says why
                name = path.name
                if name in seen:
                    continue
                seen.add(name)
                found.append(ModelEntry(name, path, source, cfg))
    return found


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """Folder of the model called ``name_or_path`` (a model name or a folder path)."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_dir():
        if not is_model_dir(candidate):
            raise ModelLoadError(
                f"{candidate}: not a model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
        return candidate
    if candidate.suffix in (".pt", ".pth", ".ckpt", ".pkl"):
        raise ModelLoadError(
            f"{candidate}: pickled checkpoints are not loaded (they can run code); "
            "import it with `skipseg import-model` which reads weights only"
        )
    for entry in list_models():
        if entry.name == str(name_or_path):
            return entry.path
    names = ", ".join(e.name for e in list_models()) or "none"
    raise ModelLoadError(f"no model named {str(name_or_path)!r} (available: {names})")


def load_config(name_or_path: str | os.PathLike) -> ModelConfig:
    path = resolve_model(name_or_path)
    try:
        return ModelConfig.from_json(path / CONFIG_FILE)
    except ModelConfigError as err:
        raise ModelLoadError(str(err)) from err


def load_model(name_or_path: str | os.PathLike, device: str = "cpu"):
    """Build the network of a stored model and load its weights (float32, eval mode).

    Raises :class:`ModelLoadError` if the folder is incomplete, the weights file is
    damaged, or the weights do not match the config (naming the tensors that differ).
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .unet import SkipUNet

    path = resolve_model(name_or_path)
    cfg = load_config(path)
    model = SkipUNet(cfg)
    try:
        state = load_file(str(path / WEIGHTS_FILE))
    except (SafetensorError, OSError, ValueError) as err:
        raise ModelLoadError(f"{path / WEIGHTS_FILE}: damaged or not a safetensors file ({err})") from err
    load_state(model, state, source=str(path))
    model.source_path = path
    return model.to(device=device, dtype=torch.float32).eval()


def load_state(model, state: dict, source: str = "weights") -> None:
    """Load ``state`` into ``model``; on any mismatch raise one error listing all of them."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(
        f"{k}: file {tuple(state[k].shape)} vs config {tuple(own[k].shape)}"
        for k in set(own) & set(state)
        if tuple(own[k].shape) != tuple(state[k].shape)
    )
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shape mismatch: " + "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else ""))
        if missing:
            parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
        raise ModelLoadError(f"{source}: weights do not match the config: " + "; ".join(parts))
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


def save_model(model, folder: str | os.PathLike, half: bool = True) -> Path:
    """Write ``model`` (a SkipUNet) as config.json + model.safetensors + card.md.

    Every file is written to a temporary name and renamed into place, so a crash leaves
    either the old file or the new one. Float weights are stored as float16 when ``half``.
    """
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu()
        if half and t.is_floating_point() and "running_var" not in key:
            t = t.to(torch.float16)
        state[key] = t.contiguous()
    cfg: ModelConfig = model.config
    _atomic_write(folder / WEIGHTS_FILE, lambda p: save_file(state, str(p), metadata={"name": cfg.name}))
    _atomic_write(folder / CONFIG_FILE, cfg.to_json)
    _atomic_write(folder / CARD_FILE, lambda p: Path(p).write_text(render_card(cfg)))
    return folder


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def render_card(cfg: ModelConfig) -> str:
    """A Markdown model card from the config."""
    card = cfg.card
    lines = [f"# {cfg.name}", ""]
    if card.get("task"):
        lines += [card["task"], ""]
    lines += [
        "| | |",
        "|---|---|",
        f"| network | SkipUNet {cfg.spatial_dims}D, depth {cfg.depth}, base width {cfg.base_channels}, {cfg.block} blocks |",
        f"| input | {cfg.in_channels} channel(s), normalisation {cfg.normalization} |",
        f"| output | {cfg.output}: {', '.join(cfg.class_names) or cfg.num_classes} |",
    ]
    for key in ("axes", "data", "split", "training", "hardware", "parameters", "speed", "licence"):
        if key in card:
            lines.append(f"| {key} | {card[key]} |")
    metrics = card.get("metrics")
    if metrics:
        lines += ["", "## Validation metrics", ""]
        lines += [f"- {k}: {v}" for k, v in metrics.items()]
    if card.get("notes"):
        lines += ["", card["notes"]]
    return "\n".join(lines) + "\n"
