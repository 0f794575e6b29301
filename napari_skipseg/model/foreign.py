"""Networks trained elsewhere (MONAI, pytorch-3dunet, segmentation_models_pytorch, ...).

An imported model is stored like our own: ``config.json`` (a :class:`ModelConfig` whose
``arch`` names the network) + ``model.safetensors`` + ``card.md``. The network is rebuilt
from a class of an allowed, installed package (:data:`~.config.ARCH_PACKAGES`) and its JSON
keyword arguments, then the weights are loaded into it; nothing is unpickled. A TorchScript
or ``torch.export`` program is kept next to the weights (``network.ts`` / ``network.pt2``)
and loaded with TorchScript's or torch.export's own loaders, which rebuild tensors and
operators, not arbitrary Python objects.

:class:`ImportedNet` wraps the network so the engine, the skip explorer and fine-tuning use it
as they use a :class:`~napari_skipseg.model.unet.SkipUNet`: ``config``, inputs padded to the
network's size multiple and outputs cropped back, ``freeze_encoder``/``unfreeze``, and
:meth:`ImportedNet.taps` for the skip connections found when it was imported
(:mod:`napari_skipseg.features.discover`).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from .config import ARCH_PACKAGES, ModelConfig
from .store import ModelLoadError
from .unet import _crop, _pad_to_multiple

#: The program file kept in a model folder for ``arch.format`` torchscript / export.
PROGRAM_FILES = {"torchscript": "network.ts", "export": "network.pt2"}


def arch_class(dotted: str) -> type[nn.Module]:
    """The ``torch.nn.Module`` class ``dotted`` (``package.module.Class``) of an allowed package.

    Raises :class:`ModelLoadError` naming what is wrong: a package outside
    :data:`~.config.ARCH_PACKAGES`, a package that is not installed, no such class, or not a
    network class.
    """
    if not isinstance(dotted, str) or "." not in dotted:
        raise ModelLoadError(f"{dotted!r}: give the network class as package.module.Class")
    package = dotted.split(".", 1)[0]
    if package not in ARCH_PACKAGES:
        raise ModelLoadError(f"{dotted}: networks are imported from {', '.join(ARCH_PACKAGES)} only")
    module_name, _, class_name = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelLoadError(f"{dotted}: cannot import {module_name} ({err}); is {package} installed?") from err
    except Exception as err:  # a package that is installed but breaks on import (e.g. a mismatched torchvision)
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(f"{dotted}: {package} is installed but does not import here ({first})") from err
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ModelLoadError(f"{dotted}: {module_name} has no network class {class_name}")
    return cls


def build_network(dotted: str, args: dict[str, Any] | None = None) -> nn.Module:
    """``Class(**args)`` for the allowed class ``dotted``; bad arguments give one line."""
    cls = arch_class(dotted)
    try:
        net = cls(**dict(args or {}))
    except (TypeError, ValueError, AssertionError, KeyError, IndexError) as err:
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(f"{dotted}: cannot build it from the arguments {args!r} ({first})") from err
    return net


def load_program(path: str | Path, fmt: str) -> nn.Module:
    """A TorchScript (``fmt="torchscript"``) or ``torch.export`` (``"export"``) program as a module."""
    path = Path(path)
    try:
        if fmt == "torchscript":
            return torch.jit.load(str(path), map_location="cpu")
        if fmt == "export":
            return torch.export.unflatten(torch.export.load(str(path)))  # submodules kept, for hooks
    except Exception as err:  # each loader raises its own kinds of errors for damaged files
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(f"{path}: not a loadable {fmt} program ({first[:200]})") from err
    raise ModelLoadError(f"unknown program format {fmt!r}")


def program_format(path: str | Path) -> str | None:
    """``"torchscript"`` or ``"export"`` if ``path`` is such a program (read from its zip
    index, nothing loaded), else None."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return None
    if any(n.endswith("/code/__torch__.py") or "/code/__torch__/" in n for n in names):
        return "torchscript"
    if any(n.endswith("serialized_exported_program.json") or "/models/model.json" in n
           or n.endswith("archive_format") for n in names):
        return "export"
    return None


class ImportedNet(nn.Module):
    """A network trained elsewhere, used like a SkipUNet.

    ``forward(x)`` pads ``x`` (at its far end) to ``config.size_multiple()``, runs the
    network, takes its first tensor output (deep-supervision heads and dict outputs are
    dropped) and crops it back. ``config.arch.skips`` says where its skip connections are.
    """

    def __init__(self, net: nn.Module, config: ModelConfig) -> None:
        super().__init__()
        self.net = net
        self.config = config
        self._frozen_modules: list[str] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.ndim != cfg.spatial_dims + 2 or x.shape[1] != cfg.in_channels:
            raise ValueError(f"{cfg.name}: takes (N, {cfg.in_channels}, {'Z, ' if cfg.spatial_dims == 3 else ''}"
                             f"Y, X) tensors, got shape {tuple(x.shape)}")
        size = tuple(x.shape[2:])
        fixed = cfg.arch.get("fixed_shape")
        if fixed:  # a program exported for one input shape: pad up to it
            if any(s > f for s, f in zip(size, fixed, strict=True)):
                raise ValueError(f"{cfg.name}: a program exported for {tuple(fixed)} inputs; got {size}")
            xp = _pad_to_multiple(x, tuple(fixed))
        else:
            xp = _pad_to_multiple(x, cfg.size_multiple())
        out = first_tensor(self.net(xp))
        if tuple(out.shape[2:]) != tuple(xp.shape[2:]):
            raise RuntimeError(f"{cfg.name}: the network returned shape {tuple(out.shape)} for an input of "
                               f"{tuple(xp.shape)}; a segmentation network keeps the spatial size")
        return _crop(out, size)

    # -- skips ----------------------------------------------------------------------------
    def skip_map(self):
        """The :class:`~napari_skipseg.features.discover.SkipMap` stored in the config, or None."""
        from ..features.discover import SkipMap

        skips = self.config.arch.get("skips")
        return SkipMap.from_dict(skips) if skips else None

    def taps(self):
        """Skip taps (removable forward hooks) on the network, from its skip map."""
        from ..features.discover import MappedFeatures
        from ..features.taps import DEFAULT_NORMALIZATION

        skip_map = self.skip_map()
        if skip_map is None or not skip_map.levels:
            raise ModelLoadError(
                f"{self.config.name}: no skip connections are known for this network (tracing found none, "
                "or it is a TorchScript program); import it with a skip map naming its modules (--skips)"
            )
        cfg = self.config
        return MappedFeatures(self.net, skip_map, normalization=cfg.normalization or DEFAULT_NORMALIZATION,
                              class_names=cfg.class_names, name=cfg.name, output=cfg.output,
                              spatial_dims=cfg.spatial_dims, in_channels=cfg.in_channels,
                              size_multiple=cfg.size_multiple(), default_block=tuple(cfg.default_tile()))

    # -- fine-tuning ------------------------------------------------------------------------
    def encoder_stage_names(self) -> list[str]:
        """Modules of the encoder, shallowest first (the skip map's encoder modules, then the
        bottleneck)."""
        skip_map = self.skip_map()
        if skip_map is None:
            return []
        names = [lv.encoder for lv in skip_map.levels if lv.encoder]
        if skip_map.bottleneck:
            names.append(skip_map.bottleneck)
        return names

    @property
    def encoder(self) -> SimpleNamespace:
        """``encoder.stages``: the encoder modules (as for a SkipUNet; read only)."""
        named = dict(self.net.named_modules(remove_duplicate=False))
        return SimpleNamespace(stages=[named[n] for n in self.encoder_stage_names() if n in named])

    def freeze_encoder(self, stages: int | None = None) -> None:
        """Stop training the encoder (every module the skip map names as an encoder stage, or
        the first ``stages``; the encoder modules are those feeding the skips, so everything
        they contain is frozen), batch-norm statistics included."""
        names = self.encoder_stage_names()
        if not names:
            raise ModelLoadError(f"{self.config.name}: the encoder is not known (no skip map); train it whole")
        names = names if stages is None else names[:stages]
        named = dict(self.net.named_modules(remove_duplicate=False))
        for n in names:
            for p in named[n].parameters():
                p.requires_grad_(False)
        self._frozen_modules = list(names)
        self.train(self.training)

    def unfreeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(True)
        self._frozen_modules = []
        self.train(self.training)

    def train(self, mode: bool = True) -> ImportedNet:
        super().train(mode)
        if mode and self._frozen_modules:
            named = dict(self.net.named_modules(remove_duplicate=False))
            for n in self._frozen_modules:
                for m in named[n].modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def first_tensor(out) -> torch.Tensor:
    """The first tensor of a network's output (a tensor, or a tuple, list or dict of them)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        for item in out:
            if isinstance(item, torch.Tensor):
                return item
    raise TypeError(f"expected a tensor output, got {type(out).__name__}")


def network_for(config: ModelConfig, folder: Path | None = None) -> nn.Module:
    """The bare network of an imported ``config`` (untrained weights; program files from ``folder``)."""
    arch = config.arch
    fmt = arch["format"]
    if fmt == "state_dict":
        return build_network(arch["class"], arch.get("args"))
    if folder is None:
        raise ModelLoadError(f"{config.name}: a {fmt} program needs its model folder")
    return load_program(Path(folder) / PROGRAM_FILES[fmt], fmt)


def copy_network(model: ImportedNet) -> ImportedNet:
    """A separate copy of ``model`` with the same weights (for fine-tuning)."""
    import copy

    new = ImportedNet(copy.deepcopy(model.net), copy.deepcopy(model.config))
    if getattr(model, "source_path", None) is not None:
        new.source_path = model.source_path  # where a program file is read from when the copy is saved
    return new


# -- importing -------------------------------------------------------------------------------------

NORMALIZATIONS = {
    "percentile": {"kind": "percentile", "low": 1.0, "high": 99.8},
    "none": {"kind": "none"},
}


def import_model(
    source,
    *,
    name: str,
    arch: str | None = None,
    arch_args: dict[str, Any] | None = None,
    normalization: str | dict = "percentile",
    axes: str | None = None,
    classes: list[str] | None = None,
    output: str = "semantic",
    skips: dict | None = None,
    trace_shape: tuple[int, ...] | None = None,
    tile: list[int] | None = None,
    overwrite: bool = False,
    half: bool = False,
) -> Path:
    """Import a network trained elsewhere as a stored model; returns its folder.

    Parameters
    ----------
    source : torch.nn.Module or path
        A network instance (of ``arch``'s class; its weights are taken), a weights file
        (``.safetensors``, or a state dict read with ``torch.load(weights_only=True)``), or a
        TorchScript / ``torch.export`` program file (``torch.jit.save`` / ``torch.export.save``).
    name : str
        Model name (saved into the user store) or a folder path.
    arch, arch_args : str, dict
        The network class (``monai.networks.nets.BasicUNet``; from
        :data:`~.config.ARCH_PACKAGES`) and its keyword arguments as JSON. Default for a
        module: its own class (``arch_args`` must then be given: the arguments it was built with).
    normalization : ``"percentile"``, ``"none"`` or dict
        How images are scaled before entering the network (as in ModelConfig).
    axes : ``"yx"`` or ``"zyx"``, optional
        The network's spatial axes (2D or 3D); default from its first convolution.
    classes : list of str, optional
        One name per output channel (default ``background``, ``class 1``, ...).
    skips : dict, optional
        A skip map naming modules (see :meth:`~napari_skipseg.features.discover.SkipMap.from_user`),
        for networks that do not trace.
    trace_shape : tuple of int, optional
        Spatial shape of the example input for tracing (default 256 x 256 or 128^3).

    Raises
    ------
    ModelLoadError
        One line: a class outside the allowlist, weights that do not fit the class, a file
        that holds Python objects, a network that does not segment (output size differs).
    """
    from ..features.discover import SkipDiscoveryError, SkipMap, discover_skips
    from .config import ModelConfig, ModelConfigError
    from .store import _import_destination, is_model_dir, read_checkpoint, save_model

    program = fixed = None
    fmt = "state_dict"
    if isinstance(source, nn.Module):
        arch = arch or f"{type(source).__module__}.{type(source).__qualname__}"
        if arch_args is None:
            raise ModelLoadError(f"{arch}: pass arch_args= (the keyword arguments the network was built with), "
                                 "so that it can be rebuilt from its class")
        net = build_network(arch, arch_args)
        _load_weights(net, {k: v.detach().cpu() for k, v in source.state_dict().items()}, arch)
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"{path}: no such file")
        program = program_format(path)
        if program is not None and arch is None:
            fmt = program
            net = load_program(path, fmt)
            if fmt == "export" and trace_shape is None:
                fixed = _exported_shape(path)
                trace_shape = fixed
        else:
            if arch is None:
                raise ModelLoadError(f"{path}: weights need their network: --config CONFIG.json for a SkipUNet "
                                     "(ours), --arch package.module.Class for another package's network")
            net = build_network(arch, arch_args)
            _load_weights(net, read_checkpoint(path), str(path))
    net = net.float().eval()

    if isinstance(normalization, str):
        if normalization not in NORMALIZATIONS:
            raise ModelLoadError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
        normalization = dict(NORMALIZATIONS[normalization])
    dims, in_channels = _dims_and_channels(net, axes)
    if skips is not None:
        try:
            skip_map = SkipMap.from_user(net, skips, dims, in_channels, trace_shape)
        except SkipDiscoveryError as err:
            raise ModelLoadError(f"skip map: {err}") from err
        multiple = tuple(_pow2(m) for m in skip_map.size_multiple(dims))
        num_classes = _probe_classes(net, dims, in_channels, multiple)
    elif fmt == "torchscript":
        skip_map, multiple = None, (2**4,) * dims
        num_classes = _probe_classes(net, dims, in_channels, (64,) * dims)
    else:
        try:
            found = discover_skips(net, dims, in_channels, trace_shape)
        except SkipDiscoveryError as err:
            raise ModelLoadError(str(err)) from err
        skip_map, multiple, num_classes = found.skip_map, found.size_multiple, found.num_classes
    if classes and len(classes) != num_classes:
        raise ModelLoadError(f"{len(classes)} class names for a network with {num_classes} outputs")
    folder, is_name = _import_destination(name)
    arch_entry: dict[str, Any] = {"format": fmt, "size_multiple": list(multiple),
                                  "parameters": sum(p.numel() for p in net.parameters())}
    if fmt == "state_dict":
        arch_entry.update({"class": arch, "args": dict(arch_args or {})})
    if fixed is not None:
        arch_entry["fixed_shape"] = list(fixed)
        tile = list(tile or fixed)
    if skip_map is not None:
        arch_entry["skips"] = skip_map.to_dict()
    depth = len(skip_map.levels) if skip_map is not None else 1
    card = {
        "task": f"imported {arch or fmt} network",
        "source": f"imported from {type(source).__name__ if isinstance(source, nn.Module) else Path(source).name}",
        "axes": (axes or ("zyx" if dims == 3 else "yx")).lower(),
        "notes": _skip_note(skip_map),
    }
    try:
        cfg = ModelConfig(
            name=folder.name, spatial_dims=dims, in_channels=in_channels, num_classes=num_classes,
            depth=max(depth, 1), output=output, class_names=list(classes or []),
            normalization=normalization, tile=list(tile or []), arch=arch_entry, card=card,
        )
    except ModelConfigError as err:
        raise ModelLoadError(f"{name}: {err}") from err
    if folder.exists() and is_model_dir(folder) and not overwrite:
        raise ModelLoadError(f"{folder}: exists already; pass overwrite=True (--overwrite) to replace it")
    extra = {PROGRAM_FILES[fmt]: Path(source).read_bytes()} if fmt != "state_dict" else None
    model = ImportedNet(net, cfg)
    return save_model(model, folder, half=half, extra_files=extra, exclusive=not overwrite)


def _exported_shape(path: Path) -> tuple[int, ...] | None:
    """The spatial input shape an exported program was traced at, when it is static."""
    try:
        ep = torch.export.load(str(path))
        node = next(n for n in ep.graph.nodes if n.op == "placeholder" and n.name in ep.graph_signature.user_inputs)
        return tuple(int(s) for s in node.meta["val"].shape[2:])
    except Exception:  # dynamic (symbolic) sizes, or no such input: not fixed
        return None


def _skip_note(skip_map) -> str:
    if skip_map is None:
        return "no skip connections known (TorchScript programs cannot be traced)"
    where = "; ".join(f"level {lv.level} (x{'x'.join(map(str, lv.scale))}): {lv.kind} into {lv.fused}"
                      + (f" from {lv.encoder}" if lv.encoder else "") for lv in skip_map.levels)
    return f"{len(skip_map.levels)} skip connections ({skip_map.source}): {where}"


def _load_weights(net: nn.Module, state: dict, source: str) -> None:
    from .store import _mismatch

    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in state.items()}
    problems = _mismatch(own, theirs)
    if problems:
        raise ModelLoadError(f"{source}: the weights do not fit the network: {problems}")
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ModelLoadError(f"{source}: {len(bad)} weight tensor(s) hold NaN or infinite values, e.g. {bad[0]}")
    own_t = net.state_dict()
    net.load_state_dict({k: v.to(own_t[k].dtype) for k, v in state.items()})


def _pow2(m: int) -> int:
    return 1 << max(int(m) - 1, 0).bit_length()


def _dims_and_channels(net: nn.Module, axes: str | None) -> tuple[int, int]:
    """Spatial dims and input channels from the first convolution weight (also in programs)."""
    weight = next((p for n, p in net.named_parameters() if n.endswith("weight") and p.ndim in (4, 5)), None)
    if weight is None:
        raise ModelLoadError("cannot tell the network's input channels (no 2D/3D convolution weight found)")
    dims = weight.ndim - 2
    if axes is not None:
        if axes.lower() not in ("yx", "zyx"):
            raise ModelLoadError(f"axes must be yx (2D) or zyx (3D), got {axes!r}")
        if len(axes) != dims:
            raise ModelLoadError(f"axes {axes} say {len(axes)}D but the network's first convolution is {dims}D")
    return dims, int(weight.shape[1])


def _probe_classes(net, dims, in_channels, shape) -> int:
    with torch.no_grad():
        try:
            out = first_tensor(net(torch.zeros((1, in_channels, *shape))))
        except Exception as err:
            first = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ModelLoadError(f"the network fails on a {tuple(shape)} image ({first[:200]})") from err
    return int(out.shape[1])
