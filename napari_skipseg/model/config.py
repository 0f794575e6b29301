"""Model configuration: everything needed to rebuild a network, plus what it expects and means.

A model on disk is a folder with ``config.json`` (this dataclass), ``model.safetensors``
(weights) and ``card.md`` (a human-readable card rendered from ``config.card``).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .schema import (
    AnyJSON,
    Bool,
    Int,
    List,
    Nullable,
    Num,
    Obj,
    OneOf,
    Str,
    check,
    parse_json,
    read_json,
)

BLOCKS = ("plain", "residual")
OUTPUTS = ("semantic", "instances")
#: Resource bounds of a config: a network larger than this is refused before anything is
#: allocated (the bundled models have 0.3 to 2 M parameters).
MAX_PARAMETERS = 200_000_000
MAX_CLASSES = 255  # labels are stored as uint8 where they fit; a UNet head of 255 classes is plenty
MAX_TILE_PIXELS = 2**24  # 4096 x 4096 or 256 x 256 x 256
#: A model name is a name, never a path: no separators, no drive colon, no control
#: characters, not hidden (so not "." or ".."), at most 128 characters.
NAME_PATTERN = r"[^./\\:\x00-\x1f\x7f][^/\\:\x00-\x1f\x7f]{0,127}"
STAINS = ("hematoxylin", "haematoxylin", "eosin", "dab")


class ModelConfigError(ValueError):
    """A model configuration is malformed or inconsistent."""


_POSITIVE_SMALL = Int(1, 1_000_000_000)
#: The spec of every field but ``card`` and ``training_scale`` (see :meth:`ModelConfig.validate`).
FIELDS = {
    "name": Str(128, pattern=NAME_PATTERN, what="a model name (1 to 128 characters, no '/', '\\', ':' "
                "or control characters, not starting with '.')"),
    "spatial_dims": Int(2, 3),
    "in_channels": Int(1, 64),
    "num_classes": Int(1, MAX_CLASSES),
    "base_channels": Int(1, 1024),
    "depth": Int(1, 8),
    "block": Str(choices=BLOCKS),
    "pool": Nullable(List(List(Int(1, 2), 2, 3), 1, 6)),
    "output": Str(choices=OUTPUTS),
    "class_names": List(Str(128), 0, MAX_CLASSES),
    "normalization": Obj({
        "kind": Str(choices=("percentile", "none")),
        "low": Num(0, 100),
        "high": Num(0, 100),
        "invert": OneOf(Nullable(Bool()), Str(choices=("auto", "none", "no", "yes"))),
        "stain": Nullable(Str(choices=STAINS)),
    }),
    "tile": List(Int(1, 16384), 0, 3),
    "postprocess": Obj({
        "seed": Num(0, 1),
        "mask": Num(0, 1),
        "min_size": Int(0, 1_000_000_000),
        "min_seed_size": Int(0, 1_000_000_000),
    }),
    "inference": Obj({"flips": Bool()}),
    "training_scale": Obj({}, extra=AnyJSON(2, 64, 8)),  # checked in detail by _validate_training_scale
}
#: Python packages whose network classes an imported model may name (``arch.class``): the
#: class is imported from the installed package and built from JSON arguments, nothing else.
ARCH_PACKAGES = ("monai", "pytorch3dunet", "segmentation_models_pytorch", "napari_skipseg")
ARCH_FORMATS = ("state_dict", "torchscript", "export")
_MODULE_NAME = Str(500, pattern=r"[A-Za-z0-9_.]*", what="a module name (letters, digits, '_', '.')")
SKIP_LEVEL = Obj(
    {
        "level": Int(0, 64),
        "scale": List(Int(1, 4096), 2, 3),
        "kind": Str(choices=("cat", "add")),
        "fused": _MODULE_NAME,
        "offset": Int(0, 1_000_000),
        "channels": Int(1, 1_000_000),
        "join_channels": Int(1, 1_000_000),
        "encoder": Nullable(_MODULE_NAME),
        "decoder": Nullable(_MODULE_NAME),
        "join": Nullable(_MODULE_NAME),
    },
    required=("level", "scale", "kind", "fused", "offset", "channels", "join_channels"),
)
SKIP_MAP = Obj(
    {
        "source": Str(choices=("torch.export", "user")),
        "levels": List(SKIP_LEVEL, 0, 64),
        "bottleneck": Nullable(_MODULE_NAME),
        "example_shape": List(Int(1, 4096), 2, 3),
    },
    required=("source", "levels"),
)
#: ``arch`` of an imported network (see :mod:`napari_skipseg.model.foreign`).
ARCH = Obj(
    {
        "class": Str(300, pattern=r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+",
                     what="a dotted class name (package.module.Class)"),
        "args": Obj({}, extra=AnyJSON(6), max_items=200),
        "format": Str(choices=ARCH_FORMATS),
        "size_multiple": List(Int(1, 4096), 2, 3),
        "fixed_shape": List(Int(1, 16384), 2, 3),
        "parameters": Int(0, MAX_PARAMETERS),
        "skips": SKIP_MAP,
    },
    required=("format", "size_multiple", "parameters"),
)
#: The card is free-form, but what the card renderer and the CLI read has a type.
CARD = Obj(
    {
        **{key: Str() for key in ("task", "notes", "flips_effect", "postprocess_tuning")},
        "metrics": Obj({}, extra=AnyJSON(4), max_items=1000),
        "metrics_before": Obj({}, extra=AnyJSON(4), max_items=1000),
        "parameters": Int(0),
        "accepted": Bool(),
    },
    extra=AnyJSON(8),
    max_items=1000,
)


@dataclass
class ModelConfig:
    """Architecture, input handling and output meaning of a :class:`SkipUNet`.

    Parameters
    ----------
    name : str
        Short name of the model (``nuclei2d``).
    spatial_dims : int
        2 for a 2D network (applied slice by slice to stacks) or 3 for a 3D network.
    in_channels : int
        Number of input channels the network takes.
    num_classes : int
        Number of output channels (softmax classes).
    base_channels : int
        Width of the first encoder stage; stage ``i`` has ``base_channels * 2**i`` channels.
    depth : int
        Number of downsamplings; the encoder has ``depth + 1`` stages and there are ``depth``
        skip connections.
    block : str
        ``"plain"`` (conv-norm-relu twice) or ``"residual"`` (the same plus an identity
        shortcut, ``F(x) = H(x) + x``).
    pool : list of list of int, optional
        Downsampling factor per level and axis (for anisotropic 3D data, e.g.
        ``[[1, 2, 2], [2, 2, 2]]``). Default: 2 along every axis at every level.
    output : str
        ``"semantic"``: the argmax class is the label. ``"instances"``: classes are
        background, interior, boundary; objects are split by seeded watershed.
    class_names : list of str
        One name per output class.
    normalization : dict
        How an image is scaled before entering the network, e.g.
        ``{"kind": "percentile", "low": 1.0, "high": 99.8}``.
    tile : list of int
        Default tile shape (spatial) for inference.
    postprocess : dict
        Thresholds for instance extraction (``seed``, ``mask``, ``min_size``).
    inference : dict
        Inference defaults: ``flips`` (bool), test-time flips (see
        :func:`napari_skipseg.inference.engine.predict`).
    arch : dict
        Empty for a :class:`SkipUNet`. For a network imported from another package (see
        :mod:`napari_skipseg.model.foreign`): ``class`` (dotted name, from
        :data:`ARCH_PACKAGES`) and ``args`` (its JSON keyword arguments), or ``format``
        ``"torchscript"``/``"export"`` for a program; ``size_multiple`` (inputs are padded to
        it), ``parameters`` and ``skips`` (the skip map found by tracing or named by the
        user, see :mod:`napari_skipseg.features.discover`). ``depth`` is then the number of
        skip levels and ``base_channels``, ``block`` and ``pool`` are not used.
    training_scale : dict
        The scale the network was trained at: ``object_diameter`` (median equivalent
        diameter of its training objects, in pixels/voxels per spatial axis), optionally
        ``diameter_range`` (``[low, high]`` per axis: the quartiles of its training images'
        median object diameters, the sizes it was trained on as they came), and where the
        data had one ``pixel_size`` (per spatial axis) with its ``unit`` (e.g. ``"um"``,
        ``"mm"``). Inference resamples an image to it (see
        :mod:`napari_skipseg.inference.scale`). Empty: unknown, images are not resampled.
    card : dict
        Free-form model card: task, data, split, training, metrics, licence.
    """

    name: str = "unnamed"
    spatial_dims: int = 2
    in_channels: int = 1
    num_classes: int = 2
    base_channels: int = 16
    depth: int = 4
    block: str = "residual"
    pool: list[list[int]] | None = None
    output: str = "semantic"
    class_names: list[str] = field(default_factory=list)
    normalization: dict[str, Any] = field(
        default_factory=lambda: {"kind": "percentile", "low": 1.0, "high": 99.8}
    )
    tile: list[int] = field(default_factory=list)
    postprocess: dict[str, Any] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)
    training_scale: dict[str, Any] = field(default_factory=dict)
    arch: dict[str, Any] = field(default_factory=dict)
    card: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- checks -----------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ModelConfigError` naming the first problem found.

        Every field is type-checked (``True`` is not an integer, ``2.0`` is not an integer
        ``spatial_dims``), bounded (see :data:`FIELDS` and :data:`MAX_PARAMETERS`) and checked
        against the others (class names per class, tile and pool per spatial axis).
        """
        for key, spec in FIELDS.items():
            check(spec, getattr(self, key), key, ModelConfigError)
        check(CARD, self.card, "card", ModelConfigError)
        if self.arch:
            self._validate_arch()
        elif self.depth > 6:
            raise ModelConfigError(f"depth must be an integer from 1 to 6, got {self.depth}")
        if self.output == "instances" and self.num_classes != 3:
            raise ModelConfigError(
                "an 'instances' model predicts background, interior and boundary: "
                f"num_classes must be 3, got {self.num_classes}"
            )
        if self.pool is not None and (
            len(self.pool) != self.depth or any(len(p) != self.spatial_dims for p in self.pool)
        ):
            raise ModelConfigError(
                f"pool must list {self.depth} factors of length {self.spatial_dims}, "
                f"each 1 or 2; got {self.pool!r}"
            )
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ModelConfigError(
                f"class_names has {len(self.class_names)} names for {self.num_classes} classes"
            )
        if self.tile:
            if len(self.tile) != self.spatial_dims:
                raise ModelConfigError(f"tile must have {self.spatial_dims} sizes, got {self.tile!r}")
            if math.prod(self.tile) > MAX_TILE_PIXELS:
                raise ModelConfigError(f"tile {self.tile} holds {math.prod(self.tile)} pixels; at most "
                                       f"{MAX_TILE_PIXELS} (a tile is held in memory at every level)")
        norm = self.normalization
        if norm.get("low", 1.0) >= norm.get("high", 99.8):
            raise ModelConfigError(f"normalization low must be below high, got {norm!r}")
        self._validate_training_scale()
        n = self.parameter_count()
        if n > MAX_PARAMETERS:
            raise ModelConfigError(
                f"the network would have {n / 1e6:.0f} M parameters (at most {MAX_PARAMETERS // 1_000_000} M): "
                f"base_channels {self.base_channels}, depth {self.depth}, {self.spatial_dims}D"
            )

    def _validate_arch(self) -> None:
        check(ARCH, self.arch, "arch", ModelConfigError)
        arch = self.arch
        if arch["format"] == "state_dict":
            if "class" not in arch:
                raise ModelConfigError("arch: an imported state dict needs the network's class (arch.class)")
            package = arch["class"].split(".", 1)[0]
            if package not in ARCH_PACKAGES:
                raise ModelConfigError(f"arch.class {arch['class']!r} is not from an allowed package "
                                       f"({', '.join(ARCH_PACKAGES)})")
        if len(arch["size_multiple"]) != self.spatial_dims:
            raise ModelConfigError(f"arch.size_multiple must have {self.spatial_dims} sizes, "
                                   f"got {arch['size_multiple']!r}")
        levels = (arch.get("skips") or {}).get("levels", [])
        if levels and len(levels) != self.depth:
            raise ModelConfigError(f"arch.skips lists {len(levels)} levels; depth says {self.depth}")
        for i, lv in enumerate(levels):
            if lv["level"] != i or len(lv["scale"]) != self.spatial_dims:
                raise ModelConfigError(f"arch.skips.levels[{i}] must be level {i} with {self.spatial_dims} "
                                       f"scale factors, got {lv['level']} and {lv['scale']!r}")
            if lv["offset"] + lv["channels"] > lv["join_channels"]:
                raise ModelConfigError(f"arch.skips.levels[{i}]: the crossing channels "
                                       f"{lv['offset']}..{lv['offset'] + lv['channels']} lie outside "
                                       f"the {lv['join_channels']} of the join")

    def _validate_training_scale(self) -> None:
        ts = self.training_scale
        if not isinstance(ts, dict) or set(ts) - {"object_diameter", "diameter_range", "pixel_size", "unit"}:
            raise ModelConfigError("training_scale takes only the keys object_diameter, diameter_range, "
                                   f"pixel_size and unit; got {ts!r}")
        for key in ("object_diameter", "pixel_size"):
            if key not in ts:
                continue
            v = ts[key]
            ok = (isinstance(v, list) and len(v) == self.spatial_dims
                  and all(isinstance(x, int | float) and not isinstance(x, bool)
                          and math.isfinite(x) and x > 0 for x in v))
            if not ok:
                raise ModelConfigError(f"training_scale {key} must list {self.spatial_dims} positive "
                                       f"numbers (one per spatial axis), got {v!r}")
        if "diameter_range" in ts:
            r = ts["diameter_range"]

            def axis_list(v) -> bool:
                return (isinstance(v, list) and len(v) == self.spatial_dims
                        and all(isinstance(x, int | float) and not isinstance(x, bool)
                                and math.isfinite(x) and x > 0 for x in v))

            if not (isinstance(r, list) and len(r) == 2 and axis_list(r[0]) and axis_list(r[1])
                    and all(lo <= hi for lo, hi in zip(r[0], r[1], strict=True))):
                raise ModelConfigError(f"training_scale diameter_range must be [low, high], each {self.spatial_dims} "
                                       f"positive numbers (one per spatial axis, low <= high), got {r!r}")
        if "unit" in ts and not (isinstance(ts["unit"], str) and 0 < len(ts["unit"]) <= 16):
            raise ModelConfigError(f"training_scale unit must be a short string, got {ts['unit']!r}")

    # -- derived ----------------------------------------------------------------------------
    def pool_factors(self) -> list[tuple[int, ...]]:
        """Downsampling factor per level (``depth`` entries, one factor per spatial axis)."""
        if self.pool is None:
            return [(2,) * self.spatial_dims for _ in range(self.depth)]
        return [tuple(int(f) for f in p) for p in self.pool]

    def level_scale(self, level: int) -> tuple[int, ...]:
        """Size, in input pixels along each axis, of one feature pixel at ``level``."""
        if self.arch:
            levels = (self.arch.get("skips") or {}).get("levels", [])
            if level < len(levels):
                return tuple(int(s) for s in levels[level]["scale"])
            return (2**level,) * self.spatial_dims
        scale = [1] * self.spatial_dims
        for factors in self.pool_factors()[:level]:
            scale = [s * f for s, f in zip(scale, factors, strict=True)]
        return tuple(scale)

    def size_multiple(self) -> tuple[int, ...]:
        """Input sizes must be multiples of this (the network pads to it internally)."""
        if self.arch:
            return tuple(int(m) for m in self.arch["size_multiple"])
        return self.level_scale(self.depth)

    def parameter_count(self) -> int:
        """Number of trainable parameters of the :class:`SkipUNet` this config builds (computed,
        nothing allocated; ``validate`` bounds it by :data:`MAX_PARAMETERS`). For an imported
        network: the count recorded when it was imported."""
        if self.arch:
            return int(self.arch["parameters"])
        k = 3**self.spatial_dims
        residual = self.block == "residual"

        def block(cin: int, cout: int) -> int:
            n = cin * cout * k + 2 * cout + cout * cout * k + 2 * cout
            if residual and cin != cout:
                n += cin * cout + 2 * cout
            return n

        total = block(self.in_channels, self.channels(0))
        for level, factors in enumerate(self.pool_factors(), start=1):
            deep, skip = self.channels(level), self.channels(level - 1)
            total += block(skip, deep)  # encoder stage
            total += deep * skip * math.prod(factors) + skip + block(2 * skip, skip)  # decoder stage
        return total + self.channels(0) * self.num_classes + self.num_classes

    def channels(self, level: int) -> int:
        return self.base_channels * 2**level

    def default_tile(self) -> list[int]:
        if self.tile:
            return list(self.tile)
        return [256, 256] if self.spatial_dims == 2 else [64, 128, 128]

    # -- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """A validated config from a JSON object; :class:`ModelConfigError` on anything wrong.

        The values are deep-copied, so the config never shares lists or dicts with ``data``.
        """
        if not isinstance(data, dict):
            raise ModelConfigError(f"a model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k) for k in set(data) - known)
        if unknown:
            raise ModelConfigError(f"unknown keys in model config: {', '.join(unknown)[:200]}")
        check(AnyJSON(max_depth=16), data, "", ModelConfigError)  # plain JSON, bounded, before copying
        try:
            return cls(**copy.deepcopy(data))
        except TypeError as err:  # wrong types for the dataclass
            raise ModelConfigError(str(err)) from err

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> ModelConfig:
        """Read and validate ``path``; every problem is one :class:`ModelConfigError` naming it."""
        return cls.from_bytes(None, path)

    @classmethod
    def from_bytes(cls, raw: bytes | None, path: str | Path) -> ModelConfig:
        """Validate config bytes already read from ``path`` (None: read ``path``)."""
        data = (read_json(path, ModelConfigError, what="model config") if raw is None
                else parse_json(raw, path, ModelConfigError, what="model config"))
        try:
            return cls.from_dict(data)
        except ModelConfigError as err:
            raise ModelConfigError(f"{path}: {err}") from err
