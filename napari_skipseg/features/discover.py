"""Find the skip connections of any UNet-shaped network by tracing it, and tap them with hooks.

:func:`discover_skips` traces the network once with ``torch.export`` (on fake tensors: no
real computation) and reads its graph. Every tensor gets its *scale* (input pixels per
feature pixel along each axis) and its *depth* (the largest scale any tensor on a path to
it had). A *join* is a channel concatenation (``torch.cat(..., dim=1)``) or a sum whose
inputs share one scale but not one depth: one input never went deeper than the join (the
encoder tensor that crosses), the others went down and came back up (the decoder tensor it
meets). Joins are the skip levels, shallowest first.

Each level is then named by modules, so it can be tapped with removable forward hooks at
run time (no tracing then): the module that takes the join as its first input (its output
is the *fused* map; a pre-hook reads and, for ablation, rewrites the crossing channels),
and where they are single modules, the modules whose outputs cross (the encoder stage, for
gradient flow) and meet it. Where tracing fails, the user writes the same map by hand
(:meth:`SkipMap.from_user`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from .taps import HookedFeatures, _check_ablate, _replace

#: Example spatial size used for tracing when none is given (fake tensors: no memory used).
TRACE_SIZE = {2: 256, 3: 128}


class SkipDiscoveryError(ValueError):
    """The network could not be traced, or its graph shows no usable skip connection."""


@dataclass
class SkipLevel:
    """One skip connection, named by modules of the network.

    ``fused``: the module whose first input is the join (``torch.cat`` or sum) and whose
    output is the fused map. ``kind``: ``"cat"`` (the crossing tensor is channels
    ``offset .. offset + channels`` of the join's ``join_channels``) or ``"add"`` (the
    crossing tensor is the output of ``encoder``, added to the rest). ``encoder``/``decoder``:
    modules whose outputs cross / meet it (None where no single module gives them).
    ``join``: the module inside which the join happens. ``scale``: input pixels per feature
    pixel along each spatial axis.
    """

    level: int
    scale: list[int]
    kind: str
    fused: str
    offset: int
    channels: int
    join_channels: int
    encoder: str | None = None
    decoder: str | None = None
    join: str | None = None


@dataclass
class SkipMap:
    """The skip levels of a network (shallowest first), how they were found, the
    bottleneck module (deepest encoder output, for gradient flow) and the traced shape."""

    levels: list[SkipLevel]
    source: str = "torch.export"
    bottleneck: str | None = None
    example_shape: list[int] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {"source": self.source, "levels": [asdict(lv) for lv in self.levels],
               "bottleneck": self.bottleneck}
        if self.example_shape:
            out["example_shape"] = list(self.example_shape)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> SkipMap:
        """A map from its JSON form (as stored in ``config.arch.skips``, checked there)."""
        levels = [SkipLevel(**lv) for lv in data.get("levels", [])]
        return cls(levels, data.get("source", "torch.export"), data.get("bottleneck"),
                   list(data.get("example_shape", [])))

    @classmethod
    def from_user(cls, module: nn.Module, mapping: dict, spatial_dims: int, in_channels: int,
                  example_shape=None) -> SkipMap:
        """A map from module names given by the user, checked by one forward pass.

        ``mapping``: ``{"encoder": [...], "fused": [...], "decoder": [...] (optional),
        "skip_first": true, "bottleneck": name (optional)}``, one name per level, shallowest
        first, as for :class:`~napari_skipseg.features.taps.HookedFeatures`: each fused
        module takes ``torch.cat([skip, up], 1)`` (``[up, skip]`` with ``skip_first``
        false) as its first input.
        """
        enc, fused = list(mapping.get("encoder", [])), list(mapping.get("fused", []))
        dec = list(mapping.get("decoder") or [None] * len(enc))
        if not enc or len(enc) != len(fused) or len(dec) != len(enc):
            raise SkipDiscoveryError("a skip map names one encoder and one fused module per level "
                                     f"(got {len(enc)} encoder, {len(fused)} fused, {len(dec)} decoder)")
        skip_first = bool(mapping.get("skip_first", True))
        named = dict(module.named_modules(remove_duplicate=False))
        for name in [*enc, *fused, *[d for d in dec if d], *([mapping["bottleneck"]] if mapping.get("bottleneck") else [])]:
            if name not in named:
                raise SkipDiscoveryError(f"{type(module).__name__} has no submodule named {name!r}")
        shapes = _probe_shapes(module, enc + fused, spatial_dims, in_channels, example_shape)
        size = shapes["__input__"][2:]
        levels = []
        for i, (e, f, d) in enumerate(zip(enc, fused, dec, strict=True)):
            c_skip, c_join = shapes[e]["out"][1], shapes[f]["in"][1]
            scale = [max(1, round(s / t)) for s, t in zip(size, shapes[e]["out"][2:], strict=True)]
            levels.append(SkipLevel(i, scale, "cat", f, 0 if skip_first else c_join - c_skip, c_skip, c_join,
                                    e, d, None))
        levels.sort(key=lambda lv: math.prod(lv.scale))
        for i, lv in enumerate(levels):
            lv.level = i
        return cls(levels, "user", mapping.get("bottleneck"), list(size))

    def size_multiple(self, spatial_dims: int) -> tuple[int, ...]:
        return tuple(max([lv.scale[a] for lv in self.levels] or [1]) for a in range(spatial_dims))


# -- tracing ---------------------------------------------------------------------------------------


@dataclass
class TraceResult:
    """What tracing found: the skip map, the size multiple (the deepest scale along each
    axis, rounded up to a power of two), the input channels and the output classes."""

    skip_map: SkipMap
    size_multiple: tuple[int, ...]
    num_classes: int


def discover_skips(net: nn.Module, spatial_dims: int, in_channels: int,
                   example_shape: tuple[int, ...] | None = None) -> TraceResult:
    """Trace ``net`` (in eval mode, with ``torch.export`` on fake tensors) and find its skips.

    Raises :class:`SkipDiscoveryError` (one line) if the network does not trace, or a join
    found cannot be named by modules.
    """
    shape = tuple(example_shape or (TRACE_SIZE[spatial_dims],) * spatial_dims)
    x = torch.zeros((1, in_channels, *shape))
    was_training = net.training
    net.eval()
    try:
        ep = torch.export.export(net, (x,), strict=False)
    except Exception as err:  # export raises many kinds of errors for untraceable code
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SkipDiscoveryError(f"{type(net).__name__} could not be traced with torch.export at input "
                                 f"{tuple(x.shape)} ({first[:200]}); give a skip map (--skips) naming its modules, "
                                 "or another --trace-shape") from err
    finally:
        net.train(was_training)
    return analyse_graph(ep.graph, ep.graph_signature.user_inputs, spatial_dims, shape)


def _val(node):
    v = node.meta.get("val") if hasattr(node, "meta") else None
    return v if isinstance(v, torch.Tensor) else None


def _stack(node) -> list[str]:
    """Module paths the node ran inside, outermost first (the root module excluded)."""
    stack = node.meta.get("nn_module_stack") or {}
    return [path for path, _ in stack.values() if path]


def analyse_graph(graph, user_inputs, spatial_dims: int, shape: tuple[int, ...]) -> TraceResult:
    """The skip map of an exported graph (see :func:`discover_skips`)."""
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder" and n.name in set(user_inputs)]
    if len(inputs) != 1:
        raise SkipDiscoveryError(f"the network takes {len(inputs)} inputs; one image tensor is expected")
    size = tuple(shape)
    derived: set = {inputs[0]}
    scale: dict = {}
    depth: dict = {}

    def args_of(n):
        out = []
        for a in n.all_input_nodes:
            if a in derived:
                out.append(a)
        return out

    for n in nodes:
        if n.op != "call_function":
            if n in derived:
                v = _val(n)
                scale[n] = depth[n] = _scale_of(v, size)
            continue
        ins = args_of(n)
        if not ins:
            continue
        derived.add(n)
        ins = _content_inputs(n, ins)
        v = _val(n)
        own = _scale_of(v, size) if v is not None and v.ndim == spatial_dims + 2 else None
        deep = [depth[a] for a in ins if depth.get(a) is not None]
        if own is not None:
            scale[n] = own
            deep.append(own)
        depth[n] = tuple(max(d[i] for d in deep) for i in range(spatial_dims)) if deep else None

    output = next(n for n in nodes if n.op == "output")
    out_node = output.all_input_nodes[0] if output.all_input_nodes else None
    out_val = _val(out_node) if out_node is not None else None
    if out_val is None or out_val.ndim != spatial_dims + 2:
        raise SkipDiscoveryError("the network's first output is not an (N, classes, *spatial) tensor")
    num_classes = int(out_val.shape[1])

    joins = []
    for n in nodes:
        if n not in derived or n.op != "call_function":
            continue
        kind = _join_kind(n, spatial_dims)
        if kind is None or n not in scale:
            continue
        parts = list(n.args[0]) if kind == "cat" else [a for a in n.args[:2]]
        if not all(isinstance(p, torch.fx.Node) and p in derived and _val(p) is not None for p in parts):
            continue
        here = scale[n]
        enc = [p for p in parts if all(d <= s * 1.01 for d, s in zip(depth[p], here, strict=True))]
        dec = [p for p in parts if p not in enc]
        if kind == "cat" and not dec and len(parts) == 2:
            # a concatenation of a tensor with what a block made of it at the same scale (the
            # innermost skip of MONAI's UNet, around its bottom layer); a residual sum is not one
            for a, b in (parts, parts[::-1]):
                if _ancestor(a, b, derived):
                    enc, dec = [a], [b]
                    break
        if len(enc) != 1 or not dec:
            continue
        joins.append((n, kind, parts, enc[0], dec))

    scope = _scopes(nodes)
    levels = []
    for n, kind, parts, enc, dec in joins:
        fused = _consumer_module(n)
        if fused is None:
            raise SkipDiscoveryError(f"a skip join ({n.target}) at scale {scale[n]} feeds no single module, so it "
                                     "cannot be tapped; give a skip map (--skips) naming the modules")
        join_stack = _stack(n)
        enc_mod = _producer_module(enc, n, scope)
        dec_mod = _producer_module(dec[0], n, scope) if len(dec) == 1 else None
        channels = int(_val(enc).shape[1])
        if kind == "cat":
            offset = sum(int(_val(p).shape[1]) for p in parts[: parts.index(enc)])
        else:
            offset = 0
            if enc_mod is None:
                raise SkipDiscoveryError(f"an additive skip at scale {scale[n]} adds a tensor no single module "
                                         "outputs; give a skip map (--skips) naming the modules")
        here = [max(1, round(s)) for s in scale[n]]
        levels.append(SkipLevel(0, here, kind, fused, offset, channels, int(_val(n).shape[1]),
                                enc_mod, dec_mod, join_stack[-1] if join_stack else ""))
    # a concatenation is the skip where one meets a sum at the same scale (the sum is then
    # part of an attention gate, as in MONAI's AttentionUnet)
    cat_scales = {tuple(lv.scale) for lv in levels if lv.kind == "cat"}
    levels = [lv for lv in levels if lv.kind == "cat" or tuple(lv.scale) not in cat_scales]
    if not levels:
        raise SkipDiscoveryError("no skip connection found: no concatenation or sum joins a tensor that "
                                 "went deeper with one that did not")
    fused_names = [lv.fused for lv in levels]
    if len(set(fused_names)) != len(fused_names):
        raise SkipDiscoveryError(f"two skips feed the same module ({fused_names}); give a skip map (--skips)")
    levels.sort(key=lambda lv: (math.prod(lv.scale), lv.scale))
    for i, lv in enumerate(levels):
        lv.level = i
    deepest = max((depth[n] for n in derived if depth.get(n) is not None), key=math.prod)
    multiple = tuple(_pow2_ceil(d) for d in deepest)
    join_inputs = {n: dec[0] for n, _, _, _, dec in joins}
    bottleneck = _bottleneck(nodes, derived, scale, deepest, scope, join_inputs)
    return TraceResult(SkipMap(levels, "torch.export", bottleneck, list(size)), multiple, num_classes)


def _content_inputs(n, ins):
    """The inputs whose content a node carries: a product with a one-channel map (an attention
    gate, broadcast over the channels) carries the other factor's content, not the gate's."""
    if str(n.target) in ("aten.mul.Tensor", "aten.mul_.Tensor") and len(ins) == 2:
        va, vb = _val(ins[0]), _val(ins[1])
        if va is not None and vb is not None and va.ndim == vb.ndim and va.ndim > 2:
            if vb.shape[1] == 1 and va.shape[1] > 1:
                return [ins[0]]
            if va.shape[1] == 1 and vb.shape[1] > 1:
                return [ins[1]]
    return ins


def _ancestor(a, b, derived) -> bool:
    """Whether node ``a`` is computed before, and used to compute, node ``b``."""
    seen, todo = set(), [b]
    while todo:
        n = todo.pop()
        for p in n.all_input_nodes:
            if p is a:
                return True
            if p in derived and p not in seen:
                seen.add(p)
                todo.append(p)
    return False


def _scale_of(v, size):
    if v is None or v.ndim != len(size) + 2:
        return None
    try:
        return tuple(float(s) / float(t) if int(t) > 0 else 1.0 for s, t in zip(size, v.shape[2:], strict=True))
    except (TypeError, RuntimeError):  # symbolic sizes
        return None


def _pow2_ceil(x: float) -> int:
    return 1 if x <= 1 else 2 ** math.ceil(math.log2(x - 1e-6))


def _join_kind(n, spatial_dims: int) -> str | None:
    target = str(n.target)
    if target.startswith("aten.cat"):
        dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
        return "cat" if dim in (1, 1 - (spatial_dims + 2)) else None
    if target in ("aten.add.Tensor", "aten.add_.Tensor"):
        a, b = (n.args + (None, None))[:2]
        va = _val(a) if isinstance(a, torch.fx.Node) else None
        vb = _val(b) if isinstance(b, torch.fx.Node) else None
        if va is not None and vb is not None and tuple(va.shape) == tuple(vb.shape) and va.ndim == spatial_dims + 2:
            return "add"
    return None


def _scopes(nodes) -> dict[str, set]:
    scope: dict[str, set] = {}
    for n in nodes:
        for path in _stack(n):
            scope.setdefault(path, set()).add(n)
    return scope


def _consumer_module(join) -> str | None:
    """The outermost module entered by the join's users (the module taking it as input)."""
    inside = set(_stack(join))
    entered = set()
    for user in join.users:
        new = [p for p in _stack(user) if p not in inside]
        if not new:
            return None  # used by an operation outside any new module
        entered.add(new[0])
    return entered.pop() if len(entered) == 1 else None


def _producer_module(node, join, scope) -> str | None:
    """The outermost module (not containing ``join``) whose only output is ``node``."""
    around_join = set(_stack(join))
    for path in _stack(node):
        if path in around_join:
            continue
        members = scope[path]
        outputs = [m for m in members if any(u not in members for u in m.users)]
        if outputs == [node]:
            return path
    return None


def _bottleneck(nodes, derived, scale, deepest, scope, join_inputs) -> str | None:
    """The module whose output is the deepest tensor handed upwards (the bottleneck); where
    that tensor is a skip join at the deepest scale (MONAI's UNet), its part from below."""
    target = math.prod(deepest)
    for n in reversed(nodes):
        s = scale.get(n)
        if n not in derived or s is None or abs(math.prod(s) - target) > 1e-6 * target:
            continue
        if any(scale.get(u) is not None and math.prod(scale[u]) < target for u in n.users):
            while n in join_inputs:
                n = join_inputs[n]
            for path in _stack(n):
                members = scope[path]
                outputs = [m for m in members if any(u not in members for u in m.users)]
                if outputs == [n]:
                    return path
            return None
    return None


def _probe_shapes(module, names, spatial_dims, in_channels, example_shape) -> dict:
    """Input/output shapes of the named modules in one forward pass on a small zero image."""
    shape = tuple(example_shape or (64,) * spatial_dims)
    named = dict(module.named_modules(remove_duplicate=False))
    found: dict = {"__input__": (1, in_channels, *shape)}
    handles = []

    def hook(name):
        def fn(mod, args, out):
            from ..model.foreign import first_tensor

            first = args[0] if args and isinstance(args[0], torch.Tensor) else None
            found[name] = {"in": tuple(first.shape) if first is not None else None,
                           "out": tuple(first_tensor(out).shape)}
        return fn

    for name in set(names):
        handles.append(named[name].register_forward_hook(hook(name)))
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            module(torch.zeros(found["__input__"]))
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SkipDiscoveryError(f"{type(module).__name__} fails on a {shape} image ({first[:200]})") from err
    finally:
        module.train(was)
        for h in handles:
            h.remove()
    missing = [n for n in names if n not in found]
    if missing:
        raise SkipDiscoveryError(f"module(s) {missing} did not run in forward()")
    return found


# -- tapping ---------------------------------------------------------------------------------------


class MappedFeatures(HookedFeatures):
    """Skip taps from a :class:`SkipMap`: removable forward hooks on the modules it names.

    Per level, a forward pre-hook on the ``fused`` module reads the crossing tensor out of
    its input (the join) and, for ablation, rewrites it (``"zero"``/``"mean"``); a forward
    hook keeps the fused output; a hook on the ``encoder`` module (where known) keeps the
    encoder stage output for gradient flow. Hooks live for one forward pass
    (:meth:`run` attaches and removes them).
    """

    def __init__(self, module: nn.Module, skip_map: SkipMap, *, normalization: dict | None = None,
                 class_names: list[str] | None = None, name: str | None = None, output: str = "semantic",
                 spatial_dims: int, in_channels: int, size_multiple: tuple[int, ...] | None = None,
                 default_block: tuple[int, ...] | None = None) -> None:
        if not skip_map.levels:
            raise SkipDiscoveryError("the skip map has no level")
        named = dict(module.named_modules(remove_duplicate=False))
        levels = skip_map.levels
        names = [lv.fused for lv in levels] + [lv.encoder for lv in levels if lv.encoder]
        if skip_map.bottleneck:
            names.append(skip_map.bottleneck)
        for key in names:
            if key not in named:
                raise SkipDiscoveryError(f"{type(module).__name__} has no submodule named {key!r} "
                                         "(the skip map is for another network?)")
        self.module = module
        self.skip_map = skip_map
        self._named = named
        self.encoder_names = [lv.encoder or f"{lv.fused} (input channels {lv.offset}..{lv.offset + lv.channels})"
                              for lv in levels]
        self.decoder_names = [lv.decoder or f"{lv.fused} (other input channels)" for lv in levels]
        self.fused_names = [lv.fused for lv in levels]
        self.bottleneck_name = skip_map.bottleneck
        self.spatial_dims, self.in_channels = int(spatial_dims), int(in_channels)
        self.depth = len(levels)
        mult = size_multiple or skip_map.size_multiple(self.spatial_dims)
        self.size_multiple = tuple(int(m) for m in mult)
        from .taps import DEFAULT_NORMALIZATION

        self.normalization = dict(normalization or DEFAULT_NORMALIZATION)
        self.skip_first = True
        self.name = name or type(module).__name__
        self.output = output
        self._class_names = list(class_names or [])
        self.num_classes = len(self._class_names) or None
        self.default_block = tuple(default_block) if default_block else (
            (64, 128, 128) if self.spatial_dims == 3 else (1024, 1024))
        self._handles = []
        self._state = None

    def stage_names(self) -> list[str]:
        """Encoder stages for gradient flow: the levels' encoder modules, then the bottleneck."""
        return [lv.encoder for lv in self.skip_map.levels] + ([self.bottleneck_name] if self.bottleneck_name else [])

    def __repr__(self) -> str:
        return f"MappedFeatures({self.name}, {len(self.skip_map.levels)} levels, fused={self.fused_names})"

    def attach(self, ablate: dict | None = None) -> MappedFeatures:
        if self._handles:
            raise RuntimeError("hooks are already attached; call remove() first")
        ablate = _check_ablate(ablate, self.depth)
        state: dict = {"encoder": {}, "decoder": {}, "fused": {}, "stages": {}, "skip": {}, "calls": {}}
        self._state = state

        def keep(kind: str, key):
            def hook(mod, args, out):
                from ..model.foreign import first_tensor

                state[kind][key] = first_tensor(out)
            return hook

        for lv in self.skip_map.levels:
            if lv.encoder:
                self._handles.append(self._named[lv.encoder].register_forward_hook(keep("encoder", lv.level)))
            self._handles.append(self._named[lv.fused].register_forward_pre_hook(self._pre_join(lv, ablate)))
            self._handles.append(self._named[lv.fused].register_forward_hook(keep("fused", lv.level)))
        if self.bottleneck_name:
            self._handles.append(self._named[self.bottleneck_name].register_forward_hook(keep("stages", self.depth)))
        return self

    def _pre_join(self, lv: SkipLevel, ablate: dict[int, str]):
        def hook(mod, args):
            state = self._state
            state["calls"][lv.level] = state["calls"].get(lv.level, 0) + 1
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or x.shape[1] != lv.join_channels:
                got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
                raise RuntimeError(f"{lv.fused!r} was expected to take the skip join of {lv.join_channels} "
                                   f"channels at level {lv.level}, got {got}: the skip map does not fit this network")
            how = ablate.get(lv.level)
            if lv.kind == "cat":
                a, b = lv.offset, lv.offset + lv.channels
                skip = x[:, a:b]
                state["decoder"][lv.level] = torch.cat([x[:, :a], x[:, b:]], dim=1)
                if how is None:
                    state["skip"][lv.level] = skip
                    return None
                new = _replace(skip, how)
                state["skip"][lv.level] = new
                return (torch.cat([x[:, :a], new, x[:, b:]], dim=1), *args[1:])
            skip = state["encoder"].get(lv.level)
            if skip is None or skip.shape != x.shape:
                raise RuntimeError(f"level {lv.level}: the output of {lv.encoder!r} is not what is added at the join")
            rest = x - skip
            state["decoder"][lv.level] = rest
            if how is None:
                state["skip"][lv.level] = skip
                return None
            new = _replace(skip, how)
            state["skip"][lv.level] = new
            return (rest + new, *args[1:])
        return hook

    def run(self, x: torch.Tensor, *, capture: bool = True, ablate: dict | None = None, stages: bool = False):
        if stages:
            missing = [lv.level for lv in self.skip_map.levels if not lv.encoder]
            if missing:
                from .capture import FeatureError

                raise FeatureError(f"{self.name}: no single encoder module is known at level(s) {missing}, "
                                   "so gradients cannot be measured there")
        return super().run(x, capture=capture, ablate=ablate, stages=stages)

