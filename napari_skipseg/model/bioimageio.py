"""bioimage.io model packages (spec 0.5): export a stored model, import a package.

**Export** (:func:`export_package`) writes a zip that the BioImage Model Zoo's tools
(``bioimageio test``, deepImageJ, ilastik, QuPath) read: ``rdf.yaml`` with the model card as
documentation, a cover made from a segmentation of a sample image, axes with the training
pixel size, ``scale_range`` preprocessing (our per-image percentiles) and ``softmax``
postprocessing, a test input and output, and the weights three ways: ``pytorch_state_dict``
(architecture: :class:`~napari_skipseg.model.unet.SkipUNet` built from its config as keyword
arguments), ``torchscript`` (traced) and ``onnx``. What the spec cannot say (the seeded
watershed that turns an instance model's probabilities into objects) is in the
documentation, and the full config travels as the attachment ``skipseg_config.json``.
Writing it needs ``bioimageio.spec`` (extra ``bioimageio``).

**Import** (:func:`import_package`) reads a package (zip, folder or its yaml) with plain
YAML, without bioimageio.spec, and never unpickles: ``pytorch_state_dict`` weights of our
architecture are read with ``torch.load(weights_only=True)`` and stored as an ordinary model
(safetensors, same tensors bit for bit); a package with ``torchscript`` or ``onnx`` weights is
stored with them as a *packaged network* (``network.json`` + the weights file) that the
engine runs through :class:`PackagedNetwork` (``torch.jit.load`` rebuilds TorchScript code
and tensors only, never arbitrary Python objects; ONNX is a graph, run by ONNX Runtime);
every file is read from inside the package (no URL, no path out of it), bounded in size and
checked against its sha256; anything else (a foreign architecture's state
dict, whose code would have to be imported and run; Keras, TensorFlow) is refused in one line.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import shutil
import tempfile
import zipfile
from collections.abc import Generator
from dataclasses import replace
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .config import ModelConfig, ModelConfigError
from .schema import Bool, Int, List, Nullable, Num, Obj, Str, check, read_json
from .store import (
    CARD_FILE,
    CONFIG_FILE,
    LICENCE_FILE,
    NETWORK_FILE,
    ModelLoadError,
    _import_destination,
    _swap_into_place,
    card_citations,
    is_model_dir,
    licence_text,
    render_card,
    weights_licence,
)

#: The attachment holding the full :class:`ModelConfig` (card included).
PACKAGE_CONFIG = "skipseg_config.json"
ARCH_MODULE = "napari_skipseg.model.unet"
ARCH_CALLABLE = "SkipUNet"
#: Files of a packaged network in a model folder (instead of ``model.safetensors``).
NETWORK_WEIGHTS = {"torchscript": "model.torchscript", "onnx": "model.onnx"}
ONNX_OPSET = 17
RDF_NAMES = ("rdf.yaml", "bioimageio.yaml")
MAX_RDF_BYTES = 4 * 1024 * 1024
#: Largest weights file taken from a package (a 2 GB network is far beyond what we run).
MAX_WEIGHTS_BYTES = 2 * 1024**3
SPACE_UNITS = {"um": "micrometer", "µm": "micrometer", "micron": "micrometer", "micrometer": "micrometer",
               "nm": "nanometer", "nanometer": "nanometer", "mm": "millimeter", "millimeter": "millimeter"}
#: Always cited: the network's family.
UNET_CITE = {"text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical "
                     "Image Segmentation. MICCAI 2015.", "doi": "10.1007/978-3-319-24574-4_28"}
#: Where axis ids of a package map to our (Z)YX order.
SPACE_AXES = ("z", "y", "x")


class PackageError(ModelLoadError):
    """A bioimage.io package cannot be exported or imported; the message says why in one line."""


# -- export ----------------------------------------------------------------------------------------


def export_package(model, output: str | os.PathLike, *, sample: np.ndarray | None = None,
                   authors: list[str] | None = None, overwrite: bool = False,
                   ) -> Generator[Any, None, Path]:
    """Write ``model`` (a stored model's name or folder, or a SkipUNet) as a bioimage.io
    model package (spec 0.5) zip at ``output``; a generator of
    :class:`~napari_skipseg.inference.engine.Progress` events returning the zip's path.

    Parameters
    ----------
    model : str, path or SkipUNet
        The model to export.
    output : path
        The zip to write (``.zip`` is added when missing). It is written next to its
        place under a temporary name and renamed when complete.
    sample : numpy array, optional
        A grey image like the training data (2D for a 2D model, 2D or 3D for a 3D one;
        a 3D stack for a 2D model gives its middle slice): the test input and the cover are
        cut from it. Default: synthetic nuclei (:mod:`napari_skipseg._sample_data`).
    authors : list of str, optional
        Authors named in the package (default: the package's developers).
    overwrite : bool
        Replace an existing ``output``.
    """
    import torch

    from ..inference.engine import Progress
    from .store import load_model
    from .unet import SkipUNet

    try:
        from bioimageio.spec import save_bioimageio_package  # noqa: F401
    except ImportError as err:
        raise PackageError("exporting a bioimage.io package needs bioimageio.spec "
                           "(pip install 'napari-skipseg[bioimageio]')") from err
    out = Path(output).expanduser()
    if out.suffix.lower() != ".zip":
        out = out.with_name(out.name + ".zip")
    if out.exists() and not overwrite:
        raise PackageError(f"{out}: exists already; pass --overwrite to replace it")
    if out.exists() and not out.is_file():
        raise PackageError(f"{out}: exists and is not a file")
    net = model if isinstance(model, SkipUNet) else load_model(model)
    net = net.float().eval()
    cfg: ModelConfig = net.config
    total = 6
    yield Progress(0, total, f"{cfg.name}: test tensors")
    raw = _sample_for(cfg, sample)
    raw = _fit_sample(raw, cfg)
    with tempfile.TemporaryDirectory(prefix="skipseg-bioimageio-") as tmp_name:
        tmp = Path(tmp_name)
        x = raw.astype(np.float32)[None, None]  # (batch, channel, *spatial)
        probs = _reference_output(net, x, cfg)
        np.save(tmp / "test_input.npy", x)
        np.save(tmp / "test_output.npy", probs)
        import tifffile  # sample tensors for people (imageio reads TIFF, not .npy)

        tifffile.imwrite(tmp / "sample_input.tif", x[0, 0], photometric="minisblack")
        tifffile.imwrite(tmp / "sample_output.tif", probs[0], photometric="minisblack")
        yield Progress(1, total, f"{cfg.name}: cover (segmenting the sample)")
        _write_cover(net, raw, tmp / "cover.png")
        yield Progress(2, total, f"{cfg.name}: weights (state dict, TorchScript)")
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        torch.save(state, tmp / "weights.pt")
        _write_torchscript(net, x, tmp / "model.torchscript")
        yield Progress(3, total, f"{cfg.name}: weights (ONNX)")
        _write_onnx(net, x, tmp / "model.onnx")
        (tmp / "README.md").write_text(package_documentation(cfg))
        (tmp / PACKAGE_CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        licence_file = None
        if not _is_spdx(weights_licence(cfg)):
            licence_file = tmp / "LICENSE.md"
            licence_file.write_text(licence_text(cfg))
        yield Progress(4, total, f"{cfg.name}: description")
        descr = _describe(cfg, tmp, authors or ["napari-skipseg developers"], licence_file,
                          torch_version=torch.__version__.split("+")[0])
        yield Progress(5, total, f"{cfg.name}: writing {out.name}")
        _save_zip(descr, out)
    yield Progress(total, total, f"{cfg.name}: {out}")
    return out


def _sample_for(cfg: ModelConfig, sample) -> np.ndarray:
    if sample is None:
        from .._sample_data import synthetic_nuclei

        shape = (256, 256) if cfg.spatial_dims == 2 else (32, 128, 128)
        image, _ = synthetic_nuclei(shape, radius=11.0 if cfg.spatial_dims == 2 else 9.0, seed=1)
        return image
    image = np.asarray(sample)
    from ..inference.preprocess import check_pixel_dtype

    check_pixel_dtype(image.dtype)
    if image.ndim == cfg.spatial_dims + 1 and cfg.spatial_dims == 2:
        image = image[image.shape[0] // 2]  # middle slice of a stack
    if image.ndim != cfg.spatial_dims:
        raise PackageError(f"the sample image has shape {image.shape}; {cfg.name} takes "
                           f"{'2D (Y, X)' if cfg.spatial_dims == 2 else '3D (Z, Y, X)'} grey images")
    if not np.isfinite(image.astype(np.float64, copy=False)).all():
        raise PackageError("the sample image holds NaN or infinite pixels")
    return image


def _fit_sample(image: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """A centred crop of ``image`` to a valid input size (a multiple of the network's size
    multiple, at most 256 px in 2D / the model's tile in 3D), reflect-padded where too small."""
    multiple = cfg.size_multiple()
    limit = (256, 256) if cfg.spatial_dims == 2 else tuple(min(t, 96) for t in cfg.default_tile())
    out = image
    for axis, (m, cap) in enumerate(zip(multiple, limit, strict=True)):
        size = out.shape[axis]
        want = max(m, min(size, cap) // m * m)
        if size < want:
            pad = [(0, 0)] * out.ndim
            pad[axis] = (0, want - size)
            out = np.pad(out, pad, mode="reflect" if want - size < size else "edge")
        else:
            start = (size - want) // 2
            out = np.take(out, range(start, start + want), axis=axis)
    return np.ascontiguousarray(out)


def scale_range(x: np.ndarray, low: float, high: float, eps: float = 1e-6) -> np.ndarray:
    """The spec's ``scale_range`` preprocessing over the spatial axes of ``(N, C, *spatial)``,
    per sample and channel: ``(x - p_low) / (p_high - p_low + eps)``."""
    axes = tuple(range(2, x.ndim))
    lo = np.percentile(x, low, axis=axes, keepdims=True)
    hi = np.percentile(x, high, axis=axes, keepdims=True)
    return ((x - lo) / (hi - lo + eps)).astype(np.float32)


def _reference_output(net, x: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Probabilities for the raw test input ``x``: scale_range, the network, softmax."""
    import torch

    norm = cfg.normalization
    if norm.get("kind", "percentile") == "percentile":
        xn = scale_range(x, norm.get("low", 1.0), norm.get("high", 99.8))
    else:
        xn = x
    with torch.inference_mode():
        logits = net(torch.from_numpy(xn))
    return torch.softmax(logits.float(), dim=1).numpy().astype(np.float32)


def _write_torchscript(net, x: np.ndarray, path: Path) -> None:
    import warnings

    import torch

    example = torch.from_numpy(x)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # TracerWarnings of the shape checks
        traced = torch.jit.trace(_Logits(net), example, check_trace=False)
    traced.save(str(path))


def _write_onnx(net, x: np.ndarray, path: Path) -> None:
    import warnings

    import torch

    dims = net.config.spatial_dims
    spatial = {i + 2: ("z", "y", "x")[3 - dims + i] for i in range(dims)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_Logits(net), (torch.from_numpy(x),), str(path), dynamo=False,
                          opset_version=ONNX_OPSET, input_names=["raw"], output_names=["probabilities"],
                          dynamic_axes={"raw": {0: "batch", **spatial}, "probabilities": {0: "batch", **spatial}})


def _Logits(net):  # noqa: N802 - a module factory
    """``net`` with a plain ``forward(x) -> logits`` (what tracing and ONNX export see)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self, inner) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    return Logits(net).eval()


def _write_cover(net, raw: np.ndarray, path: Path) -> None:
    """Image and segmentation side by side (2:1, the spec's recommended shape), as PNG."""
    from PIL import Image

    from ..inference.engine import predict, run

    kind = "instances" if net.config.output == "instances" else "semantic"
    seg = run(predict(net, raw, device="cpu", mode=f"{net.config.spatial_dims}d", output=kind))
    labels = seg.labels
    image = raw
    if raw.ndim == 3:  # the middle slice of a volume
        image, labels = raw[raw.shape[0] // 2], labels[labels.shape[0] // 2]
    lo, hi = np.percentile(image, [1, 99.8])
    grey = np.clip((image.astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    colours = _label_colours(int(labels.max()) + 1)
    overlay = rgb.copy()
    names = net.config.class_names
    background = net.config.output == "instances" or (names[:1] or [""])[0].lower() == "background"
    on = labels > 0 if background else np.ones(labels.shape, bool)  # em2d's class 0 is membrane
    overlay[on] = 0.45 * rgb[on] + 0.55 * colours[labels[on]]
    if net.config.output == "instances":  # outlines, so touching objects stay apart
        from skimage.segmentation import find_boundaries

        overlay[find_boundaries(labels, mode="inner")] = (1.0, 1.0, 1.0)
    both = np.concatenate([rgb, overlay], axis=1)
    tile = Image.fromarray((both * 255).astype(np.uint8))
    scale = max(1, 512 // max(both.shape[:2]))
    if scale > 1:
        tile = tile.resize((both.shape[1] * scale, both.shape[0] * scale), Image.NEAREST)
    if tile.width != 2 * tile.height:  # pad to 2:1
        w, h = max(tile.width, 2 * tile.height), max(tile.height, (tile.width + 1) // 2)
        canvas = Image.new("RGB", (w, h))
        canvas.paste(tile, ((w - tile.width) // 2, (h - tile.height) // 2))
        tile = canvas
    tile.save(path)


def _label_colours(n: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    colours = rng.uniform(0.2, 1.0, (max(n, 1), 3)).astype(np.float32)
    fixed = [(0.2, 0.4, 1.0), (1.0, 0.8, 0.1), (0.1, 0.9, 0.4), (1.0, 0.3, 0.3)]
    colours[: min(n, 4)] = fixed[: min(n, 4)]
    return colours


# -- licences and citations ----------------------------------------------------------------------


def _is_spdx(licence: str) -> bool:
    try:
        from bioimageio.spec._internal.license_id import LicenseId
    except ImportError:  # pragma: no cover - only reached while exporting, which needs the spec
        return not licence.startswith("LicenseRef-")
    try:
        LicenseId(licence)
    except ValueError:
        return False
    return True


def citations(cfg: ModelConfig) -> list[dict[str, str]]:
    """What to cite for a model: the U-Net, then the card's ``cite`` entries (data sets)."""
    return [dict(UNET_CITE), *card_citations(cfg)]


def package_documentation(cfg: ModelConfig) -> str:
    """The package's README.md: the model card, how its output becomes labels, validation,
    licence."""
    text = render_card(cfg)
    text += "\n## Use\n\n"
    text += ("The network takes a grey image scaled per image to its "
             f"{cfg.normalization.get('low', 1.0)}th and {cfg.normalization.get('high', 99.8)}th "
             "percentiles (`scale_range`) and returns one probability per class (`softmax`): "
             f"{', '.join(cfg.class_names) or cfg.num_classes}. Any size works (it pads to a "
             f"multiple of {' x '.join(map(str, cfg.size_multiple()))} internally).\n")
    text += ("\nWeights: `torchscript` and `onnx` run anywhere; `pytorch_state_dict` builds "
             f"`{ARCH_MODULE}.{ARCH_CALLABLE}` from its keyword arguments and so needs napari-skipseg "
             "installed (`pip install .` in a clone of its repository).\n")
    if cfg.output == "instances":
        pp = cfg.postprocess
        text += ("\nObjects come from a seeded watershed that the bioimage.io spec cannot express: "
                 f"seeds where P(interior) > {pp.get('seed')} (at least {pp.get('min_seed_size')} px), "
                 f"objects where P(interior) + P(boundary) > {pp.get('mask')} (at least "
                 f"{pp.get('min_size')} px), flooded over 1 - P(interior). napari-skipseg does this "
                 "(`skipseg segment`, or its Segment widget after `skipseg import-model` of this package).\n")
    else:
        text += "\nThe label of a pixel is the class of highest probability.\n"
    text += "\n## Validation\n\n"
    metrics = cfg.card.get("metrics") or {}
    if metrics:
        text += f"On the held-out validation split ({cfg.card.get('split', 'see the card')}):\n\n"
        text += "".join(f"- {k}: {v}\n" for k, v in metrics.items())
    else:
        text += "No validation metrics recorded.\n"
    text += "\n" + licence_text(cfg).replace("# Licence of", "## Licence of", 1)
    return text


# -- the description -----------------------------------------------------------------------------


def _identifier(text: str, fallback: str) -> str:
    ident = re.sub(r"\W+", "_", str(text)).strip("_")
    if not ident or not (ident[0].isalpha() or ident[0] == "_"):
        ident = f"{fallback}_{ident}" if ident else fallback
    return ident


def _describe(cfg: ModelConfig, folder: Path, authors: list[str], licence_file: Path | None,
              torch_version: str):
    from bioimageio.spec.model import v0_5 as s

    dims = cfg.spatial_dims
    axis_ids = SPACE_AXES[3 - dims:]
    unit, sizes = _axis_scales(cfg, np.load(folder / "test_input.npy").shape[2:])
    multiple = cfg.size_multiple()
    in_axes: list = [s.BatchAxis(), s.ChannelAxis(channel_names=[s.Identifier(f"channel{i}")
                                                                 for i in range(cfg.in_channels)])]
    out_axes: list = [s.BatchAxis(), s.ChannelAxis(channel_names=[
        s.Identifier(_identifier(n, f"class{i}")) for i, n in enumerate(cfg.class_names)
    ] if cfg.class_names else [s.Identifier(f"class{i}") for i in range(cfg.num_classes)])]
    for i, a in enumerate(axis_ids):
        kw = {"scale": float(sizes[i]), "unit": unit} if sizes else {}
        in_axes.append(s.SpaceInputAxis(id=s.AxisId(a), size=s.ParameterizedSize(min=multiple[i], step=multiple[i]),
                                        **kw))
        out_axes.append(s.SpaceOutputAxis(id=s.AxisId(a), size=s.SizeReference(
            tensor_id=s.TensorId("raw"), axis_id=s.AxisId(a)), **kw))
    norm = cfg.normalization
    pre = [s.EnsureDtypeDescr(kwargs=s.EnsureDtypeKwargs(dtype="float32"))]
    if norm.get("kind", "percentile") == "percentile":
        pre.append(s.ScaleRangeDescr(kwargs=s.ScaleRangeKwargs(
            axes=[s.AxisId(a) for a in axis_ids], min_percentile=float(norm.get("low", 1.0)),
            max_percentile=float(norm.get("high", 99.8)), eps=1e-6)))
    inputs = [s.InputTensorDescr(
        id=s.TensorId("raw"), description="grey image (raw intensities)", axes=in_axes,
        test_tensor=s.FileDescr(source=folder / "test_input.npy"),
        sample_tensor=s.FileDescr(source=folder / "sample_input.tif"),
        data=s.IntervalOrRatioDataDescr(type="float32"), preprocessing=pre)]
    outputs = [s.OutputTensorDescr(
        id=s.TensorId("probabilities"), description="probability of each class: "
        + ", ".join(cfg.class_names or [str(i) for i in range(cfg.num_classes)]), axes=out_axes,
        test_tensor=s.FileDescr(source=folder / "test_output.npy"),
        sample_tensor=s.FileDescr(source=folder / "sample_output.tif"),
        data=s.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
        postprocessing=[s.SoftmaxDescr(kwargs=s.SoftmaxKwargs(axis=s.AxisId("channel")))])]
    arch_kwargs = {k: v for k, v in cfg.to_dict().items() if k != "card"}
    weights = s.WeightsDescr(
        pytorch_state_dict=s.PytorchStateDictWeightsDescr(
            source=folder / "weights.pt", pytorch_version=s.Version(torch_version),
            architecture=s.ArchitectureFromLibraryDescr(
                callable=s.Identifier(ARCH_CALLABLE), import_from=ARCH_MODULE, kwargs=arch_kwargs)),
        torchscript=s.TorchscriptWeightsDescr(
            source=folder / "model.torchscript", pytorch_version=s.Version(torch_version),
            parent="pytorch_state_dict"),
        onnx=s.OnnxWeightsDescr(source=folder / "model.onnx", opset_version=ONNX_OPSET,
                                parent="pytorch_state_dict"),
    )
    task = cfg.card.get("task") or f"{cfg.name}: {cfg.spatial_dims}D {cfg.output} segmentation"
    tags = ["unet", "segmentation", "pytorch", "napari-skipseg", f"{dims}d",
            "instance-segmentation" if cfg.output == "instances" else "semantic-segmentation"]
    licence: Any = weights_licence(cfg)
    if licence_file is not None:
        licence = s.FileDescr(source=licence_file)
    return s.ModelDescr(
        name=_package_name(cfg.name),
        description=str(task)[:1024],
        authors=[s.Author(name=a) for a in authors],
        cite=[s.CiteEntry(**c) for c in citations(cfg)],
        license=licence,
        documentation=s.FileDescr(source=folder / "README.md"),
        covers=[s.FileDescr(source=folder / "cover.png")],
        tags=tags,
        version=s.Version("0.1.0"),
        inputs=inputs,
        outputs=outputs,
        weights=weights,
        attachments=[s.FileDescr(source=folder / PACKAGE_CONFIG)],
    )


def _axis_scales(cfg: ModelConfig, shape: tuple[int, ...]) -> tuple[str | None, list[float] | None]:
    """``(unit, pixel size per spatial axis)`` of the training data for the axes, or
    ``(None, None)`` where unknown.

    The spec computes an output axis's size as ``size * input scale / output scale``; with
    scales like 0.8 (micrometres) that is not exactly the size in floating point (96 * 0.8 /
    0.8 = 96.00000000000001) and validation fails, so micrometres that are not whole are
    given in nanometres (800), where it is exact. Where even that is not exact, the pixel
    size is left to the documentation.
    """
    ts = cfg.training_scale
    unit = SPACE_UNITS.get(str(ts.get("unit", "")).lower()) if ts.get("pixel_size") else None
    if unit is None:
        return None, None
    sizes = [float(v) for v in ts["pixel_size"]]
    if unit == "micrometer" and any(v != int(v) for v in sizes):
        unit, sizes = "nanometer", [round(v * 1000, 6) for v in sizes]
    if all(n * v / v == n for n, v in zip(shape, sizes, strict=True)):
        return unit, sizes
    return None, None


def _package_name(name: str) -> str:
    """A model name the spec takes (letters, digits, ``_- ()``, at least 5 characters)."""
    text = re.sub(r"[^A-Za-z0-9_\- ()]", "_", name)
    return text if len(text) >= 5 else f"{text} (napari-skipseg)"


def _save_zip(descr, out: Path) -> None:
    from bioimageio.spec import save_bioimageio_package

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp.zip")
    try:
        save_bioimageio_package(descr, output_path=tmp)
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# -- import --------------------------------------------------------------------------------------


def is_package(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a bioimage.io package: a zip holding ``rdf.yaml`` (or
    ``bioimageio.yaml``), a folder holding one, or that yaml file itself."""
    p = Path(path).expanduser()
    if p.is_dir():
        return any((p / n).is_file() for n in RDF_NAMES)
    if p.is_file() and p.name.lower().endswith(tuple(RDF_NAMES)):
        return True
    if p.is_file() and zipfile.is_zipfile(p):
        try:
            with zipfile.ZipFile(p) as z:
                return any(Path(n).name in RDF_NAMES for n in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


class _Package:
    """The files of a package (zip or folder), read with size bounds and safe names only."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_file() and not path.name.lower().endswith(RDF_NAMES):
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as err:
                raise PackageError(f"{path}: not a zip file ({err})") from err
            names = [n for n in self.zip.namelist() if Path(n).name in RDF_NAMES]
            if not names:
                raise PackageError(f"{path}: a zip without rdf.yaml or bioimageio.yaml: not a bioimage.io package")
            self.rdf_name = min(names, key=len)
            parent = str(PurePosixPath(self.rdf_name).parent)
            self.root = "" if parent in (".", "") else parent  # a package zipped inside a folder
        else:
            folder = path if path.is_dir() else path.parent
            self.folder = folder
            self.rdf_name = next((n for n in ((path.name,) if path.is_file() else RDF_NAMES)
                                  if (folder / n).is_file()), None)
            if self.rdf_name is None:
                raise PackageError(f"{path}: no rdf.yaml or bioimageio.yaml: not a bioimage.io package")

    def read(self, name: str, limit: int) -> bytes:
        name = str(name)
        if re.match(r"^[a-z][a-z0-9+.-]*://", name):
            raise PackageError(f"{self.path}: {name} lies on the web; only files inside the package are read")
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts:
            raise PackageError(f"{self.path}: the file name {name[:80]!r} points outside the package")
        try:
            if self.zip is not None:
                member = f"{self.root}/{name}" if self.root else name
                try:
                    info = self.zip.getinfo(member)
                except KeyError:
                    raise PackageError(f"{self.path}: {name} is named in the description but missing") from None
                if info.file_size > limit:
                    raise PackageError(f"{self.path}: {name} is {info.file_size} bytes, more than {limit}; refused")
                with self.zip.open(info) as fh:
                    data = fh.read(limit + 1)
            else:
                target = self.folder / name
                if not target.is_file():
                    raise PackageError(f"{self.path}: {name} is named in the description but missing")
                with open(target, "rb") as fh:
                    data = fh.read(limit + 1)
        except (OSError, zipfile.BadZipFile, EOFError) as err:
            raise PackageError(f"{self.path}: cannot read {name} ({err})") from err
        if len(data) > limit:
            raise PackageError(f"{self.path}: {name} is more than {limit} bytes; refused")
        return data

    def rdf(self) -> dict:
        import yaml

        raw = self.read(self.rdf_name if self.zip is None else Path(self.rdf_name).name, MAX_RDF_BYTES)
        try:
            data = yaml.safe_load(raw.decode("utf-8"))
        except (UnicodeDecodeError, yaml.YAMLError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PackageError(f"{self.path}: {self.rdf_name} is not valid YAML ({first})") from err
        if not isinstance(data, dict):
            raise PackageError(f"{self.path}: {self.rdf_name} does not describe a resource (not a mapping)")
        if data.get("type") != "model":
            raise PackageError(f"{self.path}: a bioimage.io {data.get('type', 'resource')!r}, not a model")
        return data

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def _source(entry: Any) -> str:
    if isinstance(entry, dict):
        entry = entry.get("source")
    if not isinstance(entry, str) or not entry:
        raise PackageError("a weights entry without a source file")
    return entry


def _read_entry(pkg: _Package, entry: Any, limit: int) -> bytes:
    """The bytes of a file entry (``{source, sha256}`` or a name), checked against its sha256."""
    import hashlib

    name = _source(entry)
    data = pkg.read(name, limit)
    digest = entry.get("sha256") if isinstance(entry, dict) else None
    if isinstance(digest, str) and hashlib.sha256(data).hexdigest() != digest.lower():
        raise PackageError(f"{pkg.path}: {name} does not match the sha256 in the description (damaged or altered)")
    return data


def _ours(entry: dict) -> dict | None:
    """Architecture keyword arguments when a ``pytorch_state_dict`` entry is our SkipUNet."""
    arch = entry.get("architecture")
    if isinstance(arch, dict):  # spec 0.5
        if arch.get("callable") == ARCH_CALLABLE and arch.get("import_from") == ARCH_MODULE:
            return dict(arch.get("kwargs") or {})
        return None
    if isinstance(arch, str) and arch.replace(":", ".") == f"{ARCH_MODULE}.{ARCH_CALLABLE}":  # 0.4
        return dict(entry.get("kwargs") or {})
    return None


def import_package(package: str | os.PathLike, dest: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Store the bioimage.io model ``package`` (zip, folder or yaml) as the model ``dest``
    (a name in the user store, or a folder path); returns the model folder.

    Weights are taken in this order: ``pytorch_state_dict`` of a SkipUNet (tensors only,
    stored as safetensors, bit for bit), ``torchscript``, ``onnx`` (with ONNX Runtime
    installed). Raises :class:`PackageError` (one line) for anything else.
    """
    path = Path(package).expanduser()
    if not path.exists():
        raise PackageError(f"{path}: no such file or folder")
    pkg = _Package(path)
    try:
        rdf = pkg.rdf()
        weights = rdf.get("weights")
        if not isinstance(weights, dict) or not weights:
            raise PackageError(f"{path}: the description lists no weights")
        sd = weights.get("pytorch_state_dict")
        kwargs = _ours(sd) if isinstance(sd, dict) else None
        if kwargs is not None:
            return _import_ours(pkg, rdf, kwargs, sd, dest, overwrite)
        from ..inference.backends import ort_available

        for fmt in ("torchscript", "onnx"):
            if isinstance(weights.get(fmt), dict) and (fmt != "onnx" or ort_available()):
                return _import_network(pkg, rdf, fmt, dest, overwrite)
        have = ", ".join(sorted(weights))
        why = ""
        if isinstance(sd, dict):
            arch = sd.get("architecture")
            name = arch.get("callable") if isinstance(arch, dict) else arch
            why = (f" (its pytorch_state_dict needs the architecture {str(name)[:80]!r}, whose code would "
                   "have to be imported and run)")
        if isinstance(weights.get("onnx"), dict):
            why += "; onnx weights need onnx and onnxruntime (pip install 'napari-skipseg[fast]')"
        raise PackageError(f"{path}: cannot run its weights ({have}){why}; importable are torchscript, "
                           "onnx, or a state dict of napari-skipseg's SkipUNet")
    finally:
        pkg.close()


def _import_ours(pkg: _Package, rdf: dict, kwargs: dict, entry: dict, dest, overwrite: bool) -> Path:
    from .store import import_checkpoint

    cfg = _config_from_kwargs(pkg, rdf, kwargs)
    data = _read_entry(pkg, entry, MAX_WEIGHTS_BYTES)
    with tempfile.TemporaryDirectory(prefix="skipseg-import-") as tmp:
        weights = Path(tmp) / "weights.pt"
        weights.write_bytes(data)
        del data
        cfg.card["source"] = f"imported from the bioimage.io package {pkg.path.name}"
        # torch.load(weights_only=True): tensors only. Stored as float16 (as we store models)
        # when that is exact, as for a model of ours exported from float16, else as float32:
        # bit for bit either way
        return import_checkpoint(weights, cfg, dest, overwrite=overwrite, half=_half_is_exact(weights))


def _half_is_exact(weights: Path) -> bool:
    """Whether storing these weights as :func:`~.store.save_model` does with ``half`` (float16,
    batch-norm variances kept) loses nothing."""
    import torch

    from .store import read_checkpoint

    for key, t in read_checkpoint(weights).items():
        if t.is_floating_point() and "running_var" not in key:
            if t.dtype != torch.float32 or not torch.equal(t.to(torch.float16).to(torch.float32), t):
                return False
    return True


def _config_from_kwargs(pkg: _Package, rdf: dict, kwargs: dict) -> ModelConfig:
    """The config of a package of ours: the attachment (card included) when it agrees with the
    architecture's keyword arguments, else the keyword arguments with a card from the rdf."""
    try:
        arch = ModelConfig.from_dict({k: v for k, v in kwargs.items() if k != "card"})
    except ModelConfigError as err:
        raise PackageError(f"{pkg.path}: the SkipUNet arguments are invalid: {err}") from err
    attached = None
    names = [a.get("source") if isinstance(a, dict) else a for a in (rdf.get("attachments") or [])]
    if isinstance(rdf.get("attachments"), dict):  # spec 0.4: {"files": [...]}
        names = list(rdf["attachments"].get("files") or [])
    if any(isinstance(n, str) and Path(n).name == PACKAGE_CONFIG for n in names):
        name = next(n for n in names if isinstance(n, str) and Path(n).name == PACKAGE_CONFIG)
        try:
            attached = ModelConfig.from_bytes(pkg.read(name, 4 * 1024 * 1024), f"{pkg.path}:{name}")
        except ModelConfigError:
            attached = None
    if attached is not None:
        same = {k: v for k, v in attached.to_dict().items() if k != "card"} == arch.to_dict() | {"card": None} \
            or all(getattr(attached, k) == getattr(arch, k) for k in kwargs if k != "card")
        if same:
            return attached
    card = {"task": str(rdf.get("description", ""))[:2000]}
    if rdf.get("license"):
        card["weights_licence"] = str(rdf["license"]) if not isinstance(rdf["license"], dict) else "LicenseRef-file"
    return replace(arch, card=card)


# -- packaged networks (torchscript / onnx weights) -----------------------------------------------

_AXIS = Obj({"id": Str(16), "type": Str(choices=("batch", "channel", "space")), "size": Int(1, 1 << 20),
             "step": Int(0, 1 << 20)}, required=("id", "type"))
NETWORK_SCHEMA = Obj({
    "format": Str(choices=tuple(NETWORK_WEIGHTS)),
    "weights": Str(64),
    "input_axes": List(_AXIS, 1, 6),
    "output_axes": List(_AXIS, 1, 6),
    "input_name": Nullable(Str(256)),
    "output": Str(choices=("softmax", "sigmoid", "final")),
    "zero_mean_unit_variance": Bool(),
    "min_std": Num(0, 1),
}, required=("format", "weights", "input_axes", "output_axes", "output"))


def _axes_of(tensor: dict, where: str) -> list[dict]:
    """Axes of a tensor description as ``[{id, type, size, step}]``, spec 0.5 or 0.4."""
    axes = tensor.get("axes")
    out = []
    if isinstance(axes, str):  # 0.4: "bcyx"
        shape = tensor.get("shape")
        mins = steps = None
        if isinstance(shape, dict):
            mins, steps = shape.get("min"), shape.get("step")
        elif isinstance(shape, list):
            mins, steps = shape, [0] * len(shape)
        for i, a in enumerate(axes):
            kind = {"b": "batch", "c": "channel"}.get(a, "space" if a in "zyx" else a)
            size = int(mins[i]) if isinstance(mins, list) and i < len(mins) and isinstance(mins[i], int) else 1
            step = int(steps[i]) if isinstance(steps, list) and i < len(steps) and isinstance(steps[i], int) else 0
            out.append({"id": {"b": "batch", "c": "channel"}.get(a, a), "type": kind, "size": max(size, 1),
                        "step": step})
    elif isinstance(axes, list):
        for a in axes:
            if not isinstance(a, dict):
                raise PackageError(f"{where}: an axis is not described as a mapping")
            kind = a.get("type")
            size, step = a.get("size"), 0
            if isinstance(size, dict):
                size, step = size.get("min", 1), size.get("step", 0)
            if kind == "channel":
                names = a.get("channel_names")
                size = len(names) if isinstance(names, list) else (size if isinstance(size, int) else 1)
            out.append({"id": str(a.get("id", kind)), "type": kind,
                        "size": int(size) if isinstance(size, int) and size > 0 else 1,
                        "step": int(step) if isinstance(step, int) and step > 0 else 0})
    else:
        raise PackageError(f"{where}: its axes are not described")
    for a in out:
        if a["type"] not in ("batch", "channel", "space") or (a["type"] == "space" and a["id"] not in SPACE_AXES):
            raise PackageError(f"{where}: axis {a['id']!r} ({a['type']}) is not supported; importable "
                               "models take (batch,) (channel,) and z/y/x space axes")
    return out


def _proc_ids(items) -> list[tuple[str, dict]]:
    out = []
    for p in items or []:
        if isinstance(p, dict):
            out.append((str(p.get("id", p.get("name", ""))), p.get("kwargs") or {}))
    return out


def _import_network(pkg: _Package, rdf: dict, fmt: str, dest, overwrite: bool) -> Path:
    """Store torchscript/onnx weights with a network.json and a config the engine can use."""
    inputs, outputs = rdf.get("inputs"), rdf.get("outputs")
    if not (isinstance(inputs, list) and len(inputs) == 1 and isinstance(outputs, list) and outputs):
        raise PackageError(f"{pkg.path}: importable models take one input tensor and give at least one output")
    ipt, opt = inputs[0], outputs[0]
    in_axes = _axes_of(ipt, f"{pkg.path}: input")
    out_axes = _axes_of(opt, f"{pkg.path}: output")
    space_in = [a["id"] for a in in_axes if a["type"] == "space"]
    space_out = [a["id"] for a in out_axes if a["type"] == "space"]
    if sorted(space_in) != sorted(space_out) or len(space_in) not in (2, 3):
        raise PackageError(f"{pkg.path}: input space axes {space_in} and output space axes {space_out} "
                           "must be the same 2 or 3 (y, x or z, y, x)")
    in_ch = next((a["size"] for a in in_axes if a["type"] == "channel"), 1)
    out_ch = next((a["size"] for a in out_axes if a["type"] == "channel"), 1)
    pre = _proc_ids(ipt.get("preprocessing"))
    post = _proc_ids(opt.get("postprocessing"))
    post_ids = [p for p, _ in post]
    notes: list[str] = []
    # what the network's raw output is: softmax logits, sigmoid logits, or final values
    output = "softmax" if "softmax" in post_ids else "sigmoid" if "sigmoid" in post_ids else "final"
    notes += [f"postprocessing {p!r} is not reproduced" for p in post_ids
              if p not in ("softmax", "sigmoid", "ensure_dtype")]
    num_classes = 2 if out_ch == 1 else out_ch
    normalization: dict[str, Any] = {"kind": "none"}
    zmuv = False
    for pid, kw in pre:
        if pid == "scale_range":
            low, high = float(kw.get("min_percentile", 0.0)), float(kw.get("max_percentile", 100.0))
            if not 0 <= low < high <= 100:
                raise PackageError(f"{pkg.path}: scale_range percentiles {low}, {high} are out of order")
            normalization = {"kind": "percentile", "low": low, "high": high}
        elif pid == "zero_mean_unit_variance":
            zmuv = True
            notes.append("zero_mean_unit_variance is applied per tile")
        elif pid not in ("ensure_dtype", "clip"):
            notes.append(f"preprocessing {pid!r} is not reproduced")
    names = None
    for a in opt.get("axes") if isinstance(opt.get("axes"), list) else []:
        if isinstance(a, dict) and a.get("type") == "channel" and isinstance(a.get("channel_names"), list):
            names = [str(n)[:128] for n in a["channel_names"]]
    class_names = (["background", "foreground"] if out_ch == 1 else names) or []
    dims = len(space_in)
    steps = [next(a for a in in_axes if a["id"] == i) for i in SPACE_AXES[3 - dims:]]
    tile = [max(a["size"], 64 if dims == 3 else 256) for a in steps]
    tile = [t if a["step"] <= 0 else a["size"] + max(0, -(-(t - a["size"]) // a["step"])) * a["step"]
            for t, a in zip(tile, steps, strict=True)]
    folder, is_name = _import_destination(dest)
    name = folder.name if is_name else _identifier(rdf.get("name", "imported"), "imported")[:100]
    licence = rdf.get("license")
    card = {
        "task": str(rdf.get("description", ""))[:2000],
        "source": f"imported from the bioimage.io package {pkg.path.name} ({fmt} weights)",
        "weights_licence": str(licence) if isinstance(licence, str) else "see the package",
        "notes": ("Runs the package's network as it is; it cannot be fine-tuned and shows no skip "
                  "connections. " + "; ".join(notes)).strip(),
    }
    try:
        cfg = ModelConfig(name=_identifier(name, "imported")[:128], spatial_dims=dims, in_channels=in_ch,
                          num_classes=num_classes, base_channels=1, depth=1, output="semantic",
                          class_names=class_names if len(class_names) == num_classes else [],
                          normalization=normalization, tile=tile, card=card)
    except ModelConfigError as err:
        raise PackageError(f"{pkg.path}: cannot describe it as a model: {err}") from err
    network = {
        "format": fmt, "weights": NETWORK_WEIGHTS[fmt], "input_axes": in_axes, "output_axes": out_axes,
        "input_name": str(ipt.get("id", ipt.get("name", ""))) or None, "output": output,
        "zero_mean_unit_variance": zmuv, "min_std": 1e-6,
    }
    check(NETWORK_SCHEMA, network, "network", PackageError)
    data = _read_entry(pkg, rdf["weights"][fmt], MAX_WEIGHTS_BYTES)
    if folder.is_dir() and any(folder.iterdir()):
        if not overwrite:
            raise PackageError(f"{folder}: exists already; pass --overwrite to replace it")
        if not is_model_dir(folder):
            raise PackageError(f"{folder}: exists and is not a model folder; choose another destination")
    elif folder.exists() and not folder.is_dir():
        raise PackageError(f"{folder}: exists and is a file")
    # written into a hidden folder the store cleans up after a crash, then swapped in at once
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(parents=True)
    try:
        (tmp / NETWORK_WEIGHTS[fmt]).write_bytes(data)
        (tmp / NETWORK_FILE).write_text(json.dumps(network, indent=2) + "\n")
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        # it must run before it is stored; its output says how many classes it has
        classes = int(load_packaged(tmp)(_probe(cfg, in_axes)).shape[1])
        if classes != cfg.num_classes:
            cfg = replace(cfg, num_classes=classes, class_names=names if names and len(names) == classes else [])
            (tmp / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        (tmp / CARD_FILE).write_text(render_card(cfg))
        (tmp / LICENCE_FILE).write_text(licence_text(cfg))
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
        _swap_into_place(tmp, folder)
    except PackageError:
        raise
    except ModelConfigError as err:
        raise PackageError(f"{pkg.path}: cannot describe it as a model: {err}") from err
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PackageError(f"{pkg.path}: its {fmt} weights do not run here ({first[:300]})") from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the old version after a swap, or the failed new one
    return folder


def _probe(cfg: ModelConfig, in_axes: list[dict]):
    import torch

    dims = cfg.spatial_dims
    sizes = [next(a for a in in_axes if a["id"] == i)["size"] for i in SPACE_AXES[3 - dims:]]
    return torch.rand((1, cfg.in_channels, *sizes))


def is_packaged_network(folder: Path) -> bool:
    return (folder / CONFIG_FILE).is_file() and (folder / NETWORK_FILE).is_file()


def load_packaged(folder: str | os.PathLike, device: str = "cpu"):
    """The :class:`PackagedNetwork` stored in ``folder`` (config.json + network.json + weights)."""
    folder = Path(folder)
    try:
        cfg = ModelConfig.from_json(folder / CONFIG_FILE)
    except ModelConfigError as err:
        raise ModelLoadError(str(err)) from err
    spec = read_json(folder / NETWORK_FILE, ModelLoadError, max_bytes=256 * 1024, what="network description")
    check(NETWORK_SCHEMA, spec, "", lambda m: ModelLoadError(f"{folder / NETWORK_FILE}: {m}"))
    if spec["weights"] != NETWORK_WEIGHTS[spec["format"]]:
        raise ModelLoadError(f"{folder / NETWORK_FILE}: weights file {spec['weights']!r} is not "
                             f"{NETWORK_WEIGHTS[spec['format']]!r}")
    net = PackagedNetwork(cfg, spec, folder / spec["weights"])
    net.source_path = folder
    return net.to(device).eval()


def _packaged_base():
    import torch

    return torch.nn.Module


class PackagedNetwork(_packaged_base()):  # type: ignore[misc]
    """A network imported from torchscript or onnx weights, with a SkipUNet's calling
    convention: ``(N, C, *spatial)`` normalised float32 in, class *logits* out (the log of
    the package's probabilities), so the engine treats it like its own networks.

    It pads each input to a size the package accepts and crops the result back, and
    reorders axes to the package's. It runs only: it has no skip connections to show and
    cannot be fine-tuned (``train()`` raises :class:`ModelLoadError`).
    """

    def __init__(self, config: ModelConfig, spec: dict, weights: Path) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        self.format = spec["format"]
        self._weights = weights
        self._session = None
        self.scripted = None
        if self.format == "torchscript":
            import torch

            try:
                self.scripted = torch.jit.load(str(weights), map_location="cpu")
            except Exception as err:  # damaged or not torchscript
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ModelLoadError(f"{weights}: damaged or not a TorchScript file ({first[:200]})") from err
            self.scripted.eval()
        else:
            self._onnx_bytes = weights.read_bytes()
        self._skipseg_fused = True  # nothing to fold: the engine runs it as it is

    def __deepcopy__(self, memo):
        return self  # no state that changes: a copy for another device is this network moved

    def train(self, mode: bool = True):
        if mode:
            raise ModelLoadError(f"{self.config.name}: a model imported from {self.format} weights only runs; "
                                 "it cannot be fine-tuned")
        return super().train(False)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _run(self, x):
        import torch

        if self.format == "torchscript":
            out = self.scripted(x)
            if isinstance(out, list | tuple):
                out = out[0]
            return out
        if self._session is None:
            from ..inference.backends import _new_session

            self._session = _new_session(self._onnx_bytes, 1)
        name = self._session.get_inputs()[0].name
        out = self._session.run(None, {name: x.detach().cpu().numpy().astype(np.float32)})[0]
        return torch.from_numpy(np.asarray(out)).to(x.device)

    def forward(self, x, return_features: bool = False, ablate=None):
        import torch
        import torch.nn.functional as F

        if return_features or ablate:
            raise ValueError(f"{self.config.name}: a model imported from {self.format} weights shows no "
                             "skip connections")
        spec = self.spec
        dims = self.config.spatial_dims
        ids = SPACE_AXES[3 - dims:]
        size = tuple(x.shape[2:])
        x = x.float()
        if spec.get("zero_mean_unit_variance"):
            axes = tuple(range(2, x.ndim))
            x = (x - x.mean(dim=axes, keepdim=True)) / (x.std(dim=axes, keepdim=True) + spec["min_std"])
        # pad each space axis to min + n * step (the package's valid sizes)
        by_id = {a["id"]: a for a in spec["input_axes"]}
        pad = []
        for i, a in enumerate(ids):
            s, ax = size[i], by_id[a]
            want = max(s, ax["size"])
            if ax["step"] > 0:
                want = ax["size"] + max(0, math.ceil((want - ax["size"]) / ax["step"])) * ax["step"]
            elif want != s and ax["size"] != s:
                want = ax["size"]
            pad.append(want - s)
        if any(pad):
            flat = []
            for p in reversed(pad):
                flat += [0, p]
            mode = "reflect" if all(p < s for p, s in zip(pad, size, strict=True)) else "replicate"
            x = F.pad(x, flat, mode=mode)
        # (N, C, *ids) -> the package's axis order (a package without a batch axis: one at a time)
        ours = ["batch", "channel", *ids]
        theirs = ["batch" if a["type"] == "batch" else "channel" if a["type"] == "channel" else a["id"]
                  for a in spec["input_axes"]]
        if "batch" not in theirs and x.shape[0] != 1:
            return torch.cat([self.forward(x[i : i + 1])[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]
                              for i in range(x.shape[0])])
        dropped = [a for a in ours if a not in theirs]  # batch/channel of size 1 the package lacks
        t = x.permute([ours.index(a) for a in theirs] + [ours.index(a) for a in dropped])
        for _ in dropped:
            t = t.squeeze(-1)
        out = self._run(t.contiguous())
        out_ids = ["batch" if a["type"] == "batch" else "channel" if a["type"] == "channel" else a["id"]
                   for a in spec["output_axes"]]
        for missing in ("batch", "channel"):
            if missing not in out_ids:
                out = out.unsqueeze(0 if missing == "batch" else 1 if "batch" in out_ids else 0)
                out_ids.insert(0 if missing == "batch" else (1 if "batch" in out_ids else 0), missing)
        out = out.permute([out_ids.index(a) for a in ours]).float()
        out = out[(slice(None), slice(None)) + tuple(slice(0, s) for s in size)]
        return _as_logits(out, spec["output"])


def _as_logits(out, kind: str):
    """Class logits from a package network's raw output ``(N, C, *spatial)``: softmax
    logits as they are; sigmoid logits and final values as the log of probabilities (one
    channel ``p`` becomes the two classes ``1 - p`` and ``p``)."""
    import torch

    if kind == "softmax" and out.shape[1] > 1:
        return out
    if kind == "sigmoid" or (kind == "softmax" and out.shape[1] == 1):
        p = torch.sigmoid(out)
    else:  # final values: probabilities when they look like them, else logits
        in_unit = bool(((out >= 0) & (out <= 1)).all())
        if out.shape[1] > 1 and not (in_unit and torch.allclose(out.sum(1), torch.ones_like(out[:, 0]), atol=1e-3)):
            return out
        p = out if in_unit else torch.sigmoid(out)
    if p.shape[1] == 1:
        p = torch.cat([1 - p, p], dim=1)
    return torch.log(p.clamp_min(1e-12))


def describe_package(path: str | os.PathLike) -> str:
    """One line naming a package's model and weight formats (for messages)."""
    pkg = _Package(Path(path).expanduser())
    try:
        rdf = pkg.rdf()
    finally:
        pkg.close()
    return f"{rdf.get('name', '?')} ({', '.join(sorted(rdf.get('weights') or {}))})"


__all__ = ["PackageError", "PackagedNetwork", "citations", "describe_package", "export_package",
           "import_package", "is_package", "is_packaged_network", "licence_text", "load_packaged",
           "package_documentation", "weights_licence"]
