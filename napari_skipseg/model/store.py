"""Finding, loading, importing and saving models: a folder with config.json + model.safetensors
+ card.md (+ LICENSE.md, the licence of the weights and of their training data, when the card
names it). A model imported from a bioimage.io package's TorchScript or ONNX weights holds
``network.json`` and that weights file instead of model.safetensors (:mod:`.bioimageio`).

Loading never unpickles anything: weights are safetensors, the config is JSON. A PyTorch
checkpoint (``.pt``/``.pth``) is only read by :func:`import_checkpoint`, with
``torch.load(weights_only=True)``, and converted into a model folder.

Saving is atomic for the folder as a whole: a new version is written into a hidden
temporary folder next to the target and swapped in with one rename, so a crash at any
moment leaves the previous complete version or the new one, never a mix (see
:func:`save_model`). A version that must not exist yet (a fine-tuned ``<base>-ft-<N>``, an
import without ``overwrite``) is claimed exclusively (``mkdir`` for a new number, an
``O_EXCL`` claim file for a given folder): of two processes saving it at once, one saves and
the other fails with :class:`FileExistsError`, never a silent overwrite. A save that fails
(disk full included) raises :class:`ModelSaveError` in one line, removes what it wrote and
leaves the previous version intact.

Reading is consistent with re-saving: :func:`load_model` reads the config and the weights
from one snapshot of the folder. On POSIX both files are opened relative to one open
descriptor of the folder (``openat``); the swap replaces the folder as a whole, so both come
from the same version, and if the old version is deleted between the two opens the read is
retried on the new one. Elsewhere the folder's identity is compared before and after reading
(retried when it changed). So a reader sees the old version or the new one, never a config
of one and weights of the other.

Names are never paths: a model name that becomes a folder of the store (an import, a
fine-tuned ``<base>-ft-<N>``) is checked (:func:`store_path`): safe characters only, no
separator, no ``..``, and the resolved folder must lie inside the store. A broken user model
(a config that is not UTF-8, not JSON, or of wrong types or sizes) is skipped in listings with
a :class:`BrokenModelWarning` naming its folder; it never stops other models from loading, and
loading it says what is wrong in one line naming the file (damaged weights included).
Leftovers of killed saves (hidden ``.<name>.tmp-<pid>-*`` folders, ``.<file>.<pid>-*.tmp``
files) are removed when their writer is dead or they are older than :data:`STALE_SECONDS`.

Bundled models live in the repository's ``models/`` folder (shipped inside the wheel as
``napari_skipseg/bundled_models``); the user's models live in :func:`user_model_dir`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .config import ModelConfig, ModelConfigError
from .schema import Obj, Str, check, parse_json, read_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.md"
#: The licence of a model's weights and training data (written from the card when it has one).
LICENCE_FILE = "LICENSE.md"
#: Suffixes of pickled PyTorch/pickle files: never loaded as models, only imported.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".tar")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# hidden folders a save leaves behind when it is killed: ".<name>.tmp-<pid>-<hex>" (the new
# version being written) and ".<name>.old-<pid>-<hex>" (the previous one, moved aside)
_HIDDEN = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")
# temporary files of _atomic_write: ".<file>.<pid>-<random>.tmp"
_TMP_FILE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")
#: claim file of an exclusive save into a given folder (holds the writer's pid)
CLAIM_FILE = ".skipseg-save.claim"
#: A leftover whose writer pid still runs (or was reused) is removed after this many seconds.
STALE_SECONDS = 3600.0
#: Weight dtypes a stored model may hold (safetensors names); int64 only for BatchNorm's
#: ``num_batches_tracked`` counters.
WEIGHT_DTYPES = {"F16": "float16", "F32": "float32", "BF16": "bfloat16"}
COUNTER_DTYPES = {"I64": "int64"}
MAX_HEADER_BYTES = 16 * 1024 * 1024


class ModelLoadError(RuntimeError):
    """A model could not be found or does not load; the message says why."""


class ModelSaveError(ModelLoadError):
    """A model could not be saved (e.g. the disk is full); the previous version is intact."""


class BrokenModelWarning(UserWarning):
    """A folder of the user store holds a model that does not load; it is skipped."""


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
    """Where fine-tuned and user-imported models are kept: ``models/`` in
    :func:`napari_skipseg.paths.data_home` (``$SKIPSEG_HOME``, else the platform's data folder)."""
    from ..paths import data_home

    return data_home() / "models"


#: A model imported from a bioimage.io package's torchscript/onnx weights holds this file
#: (and that weights file) instead of model.safetensors (see :mod:`.bioimageio`).
NETWORK_FILE = "network.json"


def is_model_dir(path: Path) -> bool:
    return (path / CONFIG_FILE).is_file() and ((path / WEIGHTS_FILE).is_file() or (path / NETWORK_FILE).is_file())


def list_models() -> list[ModelEntry]:
    """All usable models: bundled first, then the user's (newest last)."""
    found: list[ModelEntry] = []
    seen: set[str] = set()
    for source, roots in (("bundled", bundled_model_dirs()), ("user", [user_model_dir()])):
        for root in roots:
            if not root.is_dir():
                continue
            if source == "user":
                recover_interrupted_saves(root)
            for path in sorted(
                p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir() and is_model_dir(p)
            ):
                try:
                    cfg = ModelConfig.from_json(path / CONFIG_FILE)
                except ModelConfigError as err:  # skipped in listings; loading it says why
                    warnings.warn(f"skipping the broken model in {path}: {err}", BrokenModelWarning,
                                  stacklevel=2)
                    continue
                name = path.name
                if name in seen:
                    continue
                seen.add(name)
                found.append(ModelEntry(name, path, source, cfg))
    return found


def _pickle_refusal(path: Path) -> ModelLoadError:
    return ModelLoadError(
        f"{path}: pickled checkpoints are not loaded (they can run code); convert it with "
        f"`skipseg import-model {path.name} --config CONFIG.json -o NAME`, which reads tensors only"
    )


def _looks_pickled(path: Path) -> bool:
    """Whether ``path`` starts like a pickle (protocol 2+) or a zip (``torch.save``)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head[:1] == b"\x80" or head == b"PK\x03\x04"


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """Folder of the model called ``name_or_path`` (a model name or a folder path).

    A pickled file (by suffix or content) is refused without being opened as a model.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.name and candidate.name not in (".", ".."):
        recover_interrupted_saves(candidate.parent, candidate.name)
    if candidate.is_dir():
        if not is_model_dir(candidate):
            raise ModelLoadError(
                f"{candidate}: not a model folder (needs {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
        return candidate
    if candidate.suffix.lower() in PICKLE_SUFFIXES:
        raise _pickle_refusal(candidate)
    entries = list_models()
    for entry in entries:
        if entry.name == str(name_or_path):
            return entry.path
    if candidate.is_file():
        if _looks_pickled(candidate):
            raise _pickle_refusal(candidate)
        if candidate.name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE) and is_model_dir(candidate.parent):
            return candidate.parent
        raise ModelLoadError(
            f"{candidate}: a file, not a model; a model is a folder holding {CONFIG_FILE} and "
            f"{WEIGHTS_FILE} (convert weights with `skipseg import-model FILE --config CONFIG.json -o NAME`)"
        )
    names = ", ".join(e.name for e in entries) or "none"
    raise ModelLoadError(f"no model named {str(name_or_path)!r} (available: {names})")


def load_config(name_or_path: str | os.PathLike) -> ModelConfig:
    path = resolve_model(name_or_path)
    try:
        return ModelConfig.from_json(path / CONFIG_FILE)
    except ModelConfigError as err:
        raise ModelLoadError(str(err)) from err


def load_model(name_or_path: str | os.PathLike, device: str = "cpu"):
    """Build the network of a stored model and load its weights (float32, eval mode).

    The config and the weights are read from one snapshot of the folder (see the module's
    docstring), so a model re-saved meanwhile gives the old version or the new one.

    Raises :class:`ModelLoadError` if the folder is incomplete, the weights file is
    damaged or truncated, holds a dtype other than float16/float32/bfloat16, the weights do
    not match the config (naming the tensors that differ; checked from the file's header
    before the network is built), or they hold NaN or infinite values.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    from .unet import SkipUNet

    path = resolve_model(name_or_path)
    if not (path / WEIGHTS_FILE).is_file() and (path / NETWORK_FILE).is_file():
        from .bioimageio import load_packaged  # torchscript/onnx weights of a bioimage.io package

        return load_packaged(path, device=device)
    parsed: dict[str, ModelConfig] = {}

    def weights_limit(config_raw: bytes) -> int:
        try:
            parsed["cfg"] = ModelConfig.from_bytes(config_raw, path / CONFIG_FILE)
        except ModelConfigError as err:
            raise ModelLoadError(str(err)) from err
        return max_weights_bytes(parsed["cfg"])

    _, weights_raw = read_version(path, weights_limit)
    cfg = parsed["cfg"]
    weights = path / WEIGHTS_FILE
    shapes = safetensors_header(weights_raw, weights)
    if cfg.arch:  # a network imported from another package (model/foreign.py)
        from .foreign import ImportedNet, network_for

        net = network_for(cfg, path)
        state = _load_safetensors(weights_raw, weights)
        load_state(net, state, source=str(path))
        model = ImportedNet(net, cfg)
        model.source_path = path
        return model.to(device=device, dtype=torch.float32).eval()
    check_shapes(cfg, shapes, source=str(path))  # before allocating a network the file may not fit
    model = SkipUNet(cfg)
    try:
        state = load_bytes(weights_raw)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"{weights}: damaged or not a safetensors file ({err})") from err
    del weights_raw
    load_state(model, state, source=str(path))
    model.source_path = path
    return model.to(device=device, dtype=torch.float32).eval()


def _load_safetensors(raw: bytes, source: Path) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_bytes

    try:
        return load_bytes(raw)
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(f"{source}: damaged or not a safetensors file ({err})") from err


def max_weights_bytes(cfg: ModelConfig) -> int:
    """The largest weights file a network of ``cfg`` can have (float32 parameters and batch-norm
    statistics, with room for the header): a larger file is not read into memory."""
    return cfg.parameter_count() * 8 + MAX_HEADER_BYTES + 2**20


def read_version(folder: Path, weights_limit=None, attempts: int = 50) -> tuple[bytes, bytes]:
    """``(config bytes, weights bytes)`` of the model in ``folder``, both of one version.

    ``weights_limit(config bytes)`` (optional) returns the largest weights file to read; a
    larger one raises :class:`ModelLoadError` before it is read.

    POSIX: both files are opened relative to one descriptor of the folder; a version swapped
    in meanwhile leaves that descriptor on the old folder, whose files both open or (once it
    is deleted) fail to open, and then the read is retried. Elsewhere the folder's identity
    (inode, change time) is compared around the read.
    """
    folder = Path(folder)
    last: OSError | None = None
    for attempt in range(attempts):
        try:
            if DIR_FD_READS:
                dfd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
                try:
                    cfd = _open_in(folder, CONFIG_FILE, dfd)
                    try:
                        wfd = _open_in(folder, WEIGHTS_FILE, dfd)
                    except BaseException:
                        os.close(cfd)
                        raise
                finally:
                    os.close(dfd)
                with open(cfd, "rb") as cfh, open(wfd, "rb") as wfh:
                    config_raw = _read_bounded(cfh, folder / CONFIG_FILE)
                    return config_raw, _read_weights(wfh, folder, config_raw, weights_limit)
            before = os.stat(folder)
            with open(_open_in(folder, CONFIG_FILE, None), "rb") as cfh:
                config_raw = _read_bounded(cfh, folder / CONFIG_FILE)
            with open(_open_in(folder, WEIGHTS_FILE, None), "rb") as wfh:
                weights_raw = _read_weights(wfh, folder, config_raw, weights_limit)
            after = os.stat(folder)
            if (before.st_ino, before.st_ctime_ns) == (after.st_ino, after.st_ctime_ns):
                return config_raw, weights_raw
        except FileNotFoundError as err:  # deleted under us: a newer version took its place
            last = err
        except OSError as err:
            raise ModelLoadError(f"{folder}: cannot read the model ({err.strerror or err})") from err
        time.sleep(min(0.002 * 2**attempt, 0.1))
    raise ModelLoadError(f"{folder}: the model kept changing while it was read, or is incomplete ({last})")


#: Whether :func:`read_version` opens both files relative to one folder descriptor (POSIX).
DIR_FD_READS = os.open in os.supports_dir_fd and hasattr(os, "O_DIRECTORY")


def _open_in(folder: Path, name: str, dir_fd: int | None) -> int:
    """A read descriptor of ``name`` in the folder (relative to ``dir_fd`` when given)."""
    if dir_fd is not None:
        return os.open(name, os.O_RDONLY, dir_fd=dir_fd)
    return os.open(folder / name, os.O_RDONLY | getattr(os, "O_BINARY", 0))


def _read_weights(fh, folder: Path, config_raw: bytes, weights_limit) -> bytes:
    if weights_limit is not None:
        limit, size = weights_limit(config_raw), os.fstat(fh.fileno()).st_size
        if size > limit:
            raise ModelLoadError(f"{folder / WEIGHTS_FILE}: {size} bytes, more than the network of its config "
                                 f"can hold ({limit}); damaged, or not this model's weights")
    return fh.read()


def _read_bounded(fh, path: Path) -> bytes:
    from .schema import MAX_JSON_BYTES

    raw = fh.read(MAX_JSON_BYTES + 1)
    if len(raw) > MAX_JSON_BYTES:
        raise ModelLoadError(f"{path}: the model config is larger than {MAX_JSON_BYTES // 1024} kB; refused")
    return raw


def safetensors_header(raw: bytes, source: Path | str, dtypes: Mapping[str, str] | None = None,
                       ) -> dict[str, tuple[int, ...]]:
    """``{tensor: shape}`` from the header of safetensors bytes, checked without loading them.

    The header must be plain JSON within the file, each tensor's dtype in ``dtypes``
    (default :data:`WEIGHT_DTYPES`, plus int64 for BatchNorm counters) and its byte range in
    the file; else :class:`ModelLoadError` with one line naming ``source``.
    """
    allowed = dict(WEIGHT_DTYPES if dtypes is None else dtypes)

    def bad(why: str) -> ModelLoadError:
        return ModelLoadError(f"{source}: damaged or not a safetensors file ({why})")

    if len(raw) < 8:
        raise bad("shorter than its 8-byte header length")
    n = int.from_bytes(raw[:8], "little")
    if n > min(len(raw) - 8, MAX_HEADER_BYTES):
        raise bad(f"header of {n} bytes in a file of {len(raw)}")
    header = parse_json(raw[8 : 8 + n], source, lambda m: bad(m.split(": ", 1)[-1]),
                        max_bytes=MAX_HEADER_BYTES, what="header")
    if not isinstance(header, dict):
        raise bad("the header is not a JSON object")
    data_len = len(raw) - 8 - n
    shapes = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if not (isinstance(info, dict) and isinstance(info.get("dtype"), str)
                and isinstance(info.get("shape"), list) and isinstance(info.get("data_offsets"), list)
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in info["shape"])
                and len(info["data_offsets"]) == 2
                and all(isinstance(d, int) and not isinstance(d, bool) for d in info["data_offsets"])):
            raise bad(f"tensor {key[:80]!r} is described wrongly")
        dtype = info["dtype"]
        counter = key.endswith("num_batches_tracked") and dtype in COUNTER_DTYPES
        if dtype not in allowed and not counter:
            raise ModelLoadError(
                f"{source}: tensor {key[:80]} is stored as {dtype}; models hold float16, float32 or "
                "bfloat16 weights (convert the checkpoint to one of these and import it again)"
            )
        start, stop = info["data_offsets"]
        if not 0 <= start <= stop <= data_len:
            raise bad(f"tensor {key[:80]!r} lies outside the file (truncated?)")
        shapes[key] = tuple(info["shape"])
    return shapes


def check_shapes(cfg: ModelConfig, shapes: Mapping[str, tuple[int, ...]], source: str = "weights") -> None:
    """Raise :class:`ModelLoadError` if tensors of ``shapes`` do not fit the network of ``cfg``.

    The network is built on torch's ``meta`` device (no memory), so a config that asks for a
    huge network is refused before anything is allocated.
    """
    import torch

    from .unet import SkipUNet

    with torch.device("meta"):
        own = {k: tuple(v.shape) for k, v in SkipUNet(cfg).state_dict().items()}
    problems = _mismatch(own, {k: tuple(s) for k, s in shapes.items()})
    if problems:
        raise ModelLoadError(f"{source}: weights do not match the config: {problems}")


def _mismatch(own: Mapping[str, tuple], theirs: Mapping[str, tuple]) -> str:
    """One line listing the differences between two ``{name: shape}`` maps, or ``""``."""
    missing = sorted(set(own) - set(theirs))
    unexpected = sorted(set(theirs) - set(own))
    wrong = sorted(
        f"{k}: file {theirs[k]} vs config {own[k]}" for k in set(own) & set(theirs) if own[k] != theirs[k]
    )
    parts = _hints(own, theirs)
    if wrong:
        parts.append("shape mismatch: " + "; ".join(wrong[:5]) + (" ..." if len(wrong) > 5 else ""))
    if missing:
        parts.append(f"missing {len(missing)} tensor(s), e.g. {missing[0]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensor(s), e.g. {unexpected[0]}")
    return "; ".join(parts)


def _hints(own: Mapping[str, tuple], theirs: Mapping[str, tuple]) -> list[str]:
    """What a shape mismatch most likely means, in the config's terms."""
    hints = []
    common = [k for k in own if k in theirs and len(own[k]) >= 3]
    if common and len(theirs[common[0]]) != len(own[common[0]]):
        d_file, d_cfg = len(theirs[common[0]]) - 2, len(own[common[0]]) - 2
        hints.append(f"the weights are for a {d_file}D network, the config says spatial_dims={d_cfg}")
    first, head = "encoder.stages.0.conv1.weight", "head.weight"
    if first in own and first in theirs and len(theirs[first]) > 1 and theirs[first][1] != own[first][1]:
        hints.append(f"the weights take {theirs[first][1]} input channel(s), the config says in_channels={own[first][1]}")
    if head in own and head in theirs and theirs[head][:1] != own[head][:1]:
        hints.append(f"the weights predict {theirs[head][0]} class(es), the config says num_classes={own[head][0]}")
    return hints


def load_state(model, state: dict, source: str = "weights") -> None:
    """Load ``state`` into ``model``; on any mismatch raise one error listing all of them.

    Tensors whose values are NaN or infinite are refused too (such a network gives NaN
    everywhere).
    """
    import torch

    own = model.state_dict()
    problems = _mismatch(
        {k: tuple(v.shape) for k, v in own.items()}, {k: tuple(v.shape) for k, v in state.items()}
    )
    if problems:
        raise ModelLoadError(f"{source}: weights do not match the config: {problems}")
    floats = (torch.float16, torch.float32, torch.bfloat16, torch.float64)
    for key, value in state.items():
        counter = key.endswith("num_batches_tracked") and not value.is_floating_point()
        if value.dtype not in floats and not counter:
            raise ModelLoadError(
                f"{source}: tensor {key} is stored as {str(value.dtype).replace('torch.', '')}; models "
                "take float16, float32, bfloat16 (or float64, converted) weights"
            )
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ModelLoadError(
            f"{source}: {len(bad)} weight tensor(s) hold NaN or infinite values, e.g. {bad[0]} "
            "(a diverged training run?)"
        )
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})


# -- importing PyTorch checkpoints --------------------------------------------------------------


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The state dict in a ``.pt``/``.pth``/``.ckpt`` (or ``.safetensors``) file, read safely.

    Pickled files are read with ``torch.load(weights_only=True)``: only tensors and plain
    containers are rebuilt; a file that names any other Python object (which an ordinary
    unpickler would import and call) is refused with :class:`ModelLoadError`. A state dict
    nested under ``state_dict``/``model_state_dict``/``model``/``net`` is found, and a
    ``module.`` prefix (DataParallel) is dropped.
    """
    import pickle
    import zipfile

    import torch

    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise ModelLoadError(f"{path}: the file is empty")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise ModelLoadError(f"{path}: damaged or not a safetensors file ({err})") from err
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            why = next((ln.strip() for ln in str(err).splitlines() if "Unsupported" in ln), "")
            why = why.replace("WeightsUnpickler error: ", "").split(". Please")[0]
            raise ModelLoadError(
                f"{path}: refused: the file holds Python objects besides tensors, and loading them "
                f"could run code{f' ({why})' if why else ''}; save a plain state dict "
                "(torch.save(model.state_dict(), path)) and import that"
            ) from err
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, TypeError,
                AttributeError, IndexError, KeyError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ModelLoadError(f"{path}: damaged, truncated or not a PyTorch checkpoint ({first})") from err
    return _state_dict_from(obj, path)


def _state_dict_from(obj, path: Path) -> dict:
    import torch

    def tensors(d) -> bool:
        return isinstance(d, Mapping) and bool(d) and all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in d.items()
        )

    if not isinstance(obj, Mapping):
        raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a state dict of tensors")
    if tensors(obj):
        state = dict(obj)
    else:
        key = next((k for k in ("state_dict", "model_state_dict", "model", "net", "weights")
                    if tensors(obj.get(k))), None)
        if key is None:
            keys = ", ".join(map(str, list(obj)[:6])) or "none"
            raise ModelLoadError(f"{path}: no state dict of tensors found (top-level keys: {keys})")
        state = dict(obj[key])
    for prefix in ("module.", "model."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _import_destination(dest: str | os.PathLike) -> tuple[Path, bool]:
    """``(folder, is_name)``: a bare name goes into the user store, anything else is a path."""
    text = os.fspath(dest)
    if isinstance(dest, os.PathLike) or any(sep in text for sep in ("/", os.sep)) or text.startswith("~"):
        return Path(text).expanduser(), False
    if not _NAME.match(text) or len(text) > 128:
        raise ModelLoadError(
            f"{text[:80]!r} is not a usable model name (letters, digits, '.', '_', '+', '-'; "
            "give a folder path to store it elsewhere)"
        )
    return store_path(text), True


def import_checkpoint(
    checkpoint: str | os.PathLike,
    config: ModelConfig | Mapping | str | os.PathLike,
    dest: str | os.PathLike,
    *,
    overwrite: bool = False,
    half: bool = False,
) -> Path:
    """Convert a PyTorch checkpoint into a model folder (safetensors + JSON), safely.

    Parameters
    ----------
    checkpoint : path
        ``.pt``/``.pth``/``.ckpt`` file holding a state dict (read with
        ``torch.load(weights_only=True)``, never unpickled otherwise), or ``.safetensors``.
    config : ModelConfig, dict or path
        The network the weights belong to (a ``config.json`` path, its dict, or a config).
    dest : str or path
        A model name (saved into :func:`user_model_dir`, the config's name becomes it) or a
        folder path.
    overwrite : bool
        Replace a model already stored at ``dest``.
    half : bool
        Store float weights as float16 (half the size).

    Returns
    -------
    Path
        The model folder, loadable with :func:`load_model`.

    Raises
    ------
    ModelLoadError
        If the file is pickled with anything besides tensors, damaged, or its tensors do
        not match ``config`` (all mismatches named), or ``dest`` holds a model already.
    """
    from .unet import SkipUNet

    if isinstance(config, ModelConfig):
        cfg = ModelConfig.from_dict(config.to_dict())
    elif isinstance(config, Mapping):
        cfg = ModelConfig.from_dict(dict(config))
    else:
        from .schema import MAX_JSON_BYTES

        try:
            with open(config, "rb") as fh:
                raw = fh.read(MAX_JSON_BYTES + 1)
        except OSError as err:
            raise ModelLoadError(f"{config}: cannot read the config ({err.strerror or err})") from err
        cfg = ModelConfig.from_bytes(raw, config)
    folder, is_name = _import_destination(dest)
    if is_name:
        cfg = replace(cfg, name=folder.name)
    if folder.exists() and (is_model_dir(folder) or (folder.is_dir() and any(folder.iterdir()))):
        if not overwrite:
            raise ModelLoadError(f"{folder}: exists already; pass overwrite=True (--overwrite) to replace it")
        if not is_model_dir(folder):
            raise ModelLoadError(f"{folder}: exists and is not a model folder; choose another destination")
    elif folder.exists() and not folder.is_dir():
        raise ModelLoadError(f"{folder}: exists and is a file")
    state = read_checkpoint(checkpoint)
    check_shapes(cfg, {k: tuple(v.shape) for k, v in state.items()}, source=str(checkpoint))
    model = SkipUNet(cfg)
    load_state(model, state, source=str(checkpoint))
    cfg.card.setdefault("source", f"imported from {Path(checkpoint).name}")
    return save_model(model.eval(), folder, half=half, exclusive=not overwrite)


# -- saving -------------------------------------------------------------------------------------


def save_model(
    model,
    folder: str | os.PathLike,
    half: bool = True,
    extra_files: Mapping[str, str | bytes] | None = None,
    *,
    exclusive: bool = False,
) -> Path:
    """Write ``model`` (a SkipUNet) as config.json + model.safetensors + card.md (+ extras).

    The folder changes all at once. A new version is written, flushed to disk, into a
    hidden folder ``.<name>.tmp-*`` next to ``folder`` and then swapped with the old one in
    a single atomic rename (``renameat2(RENAME_EXCHANGE)`` on Linux, ``renamex_np`` on
    macOS; elsewhere two renames, undone on the next load if a crash falls between them).
    So a crash at any moment leaves the previous complete version or the new one, never a
    mix. Other files the old folder holds are carried over (hard links). Into an existing
    folder that is not a model, the files are written one by one with the config last, so
    the folder is not a model until it is complete.

    ``exclusive``: ``folder`` must not hold a model, now or by the time this one is complete.
    The folder is claimed with an ``O_EXCL`` file first; a second process saving into it at
    the same moment gets :class:`FileExistsError` (as does any save into a folder holding a
    model), so a version is never silently overwritten.

    Float weights are stored as float16 when ``half``. ``extra_files`` (name -> text or
    bytes) are written as part of the same version, e.g. a training history.

    Raises
    ------
    ModelSaveError
        If the weights hold NaN or infinite values (nothing is written), or writing fails
        (e.g. the disk is full): what was written is removed and the previous version stays.
    """
    import torch

    folder = Path(folder)
    if folder.is_symlink():
        folder = folder.resolve()
    cfg: ModelConfig = model.config
    try:
        cfg.validate()
    except ModelConfigError as err:
        raise ModelSaveError(f"{folder}: not saved, the config is invalid: {err}") from err
    state = {}
    weights_of = getattr(model, "net", model) if cfg.arch else model  # an ImportedNet stores its network's
    for key, tensor in weights_of.state_dict().items():
        t = tensor.detach().cpu()
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ModelSaveError(f"{folder}: not saved: weight tensor {key} holds NaN or infinite values "
                                 "(a diverged training run?)")
        if half and t.is_floating_point() and "running_var" not in key:
            t = t.to(torch.float16)
        # an imported network may share one tensor under several names (MONAI DynUNet): each
        # name gets its own copy, as safetensors stores no aliases
        state[key] = t.clone() if cfg.arch else t.contiguous()
    config_text = json.dumps(cfg.to_dict(), indent=2) + "\n"  # fails early if not JSON
    files: dict[str, object] = {
        WEIGHTS_FILE: lambda p: _save_safetensors(state, p, cfg.name),
        CARD_FILE: render_card(cfg),
    }
    if "licence" in cfg.card or "weights_licence" in cfg.card:  # the licence travels with the weights
        files[LICENCE_FILE] = licence_text(cfg)
    extra_files = dict(extra_files or {})
    if cfg.arch and cfg.arch["format"] != "state_dict":  # a program's structure goes with each version
        from .foreign import PROGRAM_FILES

        program = PROGRAM_FILES[cfg.arch["format"]]
        source = getattr(model, "source_path", None)
        if program not in extra_files:
            if source is None or not (Path(source) / program).is_file():
                raise ModelSaveError(f"{folder}: not saved: the {program} of {cfg.name} is not found")
            extra_files[program] = (Path(source) / program).read_bytes()
    for name, content in extra_files.items():
        if Path(name).name != name or name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, LICENCE_FILE) or name.startswith("."):
            raise ValueError(f"extra file name {name!r} is not allowed")
        files[name] = content
    files[CONFIG_FILE] = config_text  # last: a folder without its config is not a model

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        recover_interrupted_saves(folder.parent, folder.name)
        if exclusive:
            _save_exclusive(folder, files)
        elif folder.exists() and not is_model_dir(folder):
            if not folder.is_dir():
                raise FileExistsError(f"{folder}: exists and is not a folder")
            _write_in_place(folder, files)
        else:
            _save_swapped(folder, files)
    except FileExistsError:
        raise
    except _save_errors() as err:
        raise _save_error(folder, err) from err
    return folder


def _save_errors() -> tuple[type[BaseException], ...]:
    from safetensors import SafetensorError

    return (OSError, SafetensorError)


def _save_error(folder: Path, err: BaseException) -> ModelSaveError:
    """One line for a failed save; the disk-full case said plainly."""
    text = str(err)
    if getattr(err, "errno", None) == errno.ENOSPC or "No space left" in text or "ENOSPC" in text:
        why = "no space left on the device"
    elif isinstance(err, OSError):
        why = err.strerror or text
    else:
        why = text.splitlines()[0] if text else type(err).__name__
    return ModelSaveError(f"{folder}: the model could not be saved ({why}); nothing was changed there")


def _save_safetensors(state: dict, path: Path, name: str) -> None:
    from safetensors.torch import save_file

    save_file(state, str(path), metadata={"name": name})


def _save_swapped(folder: Path, files: dict) -> None:
    tmp = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    os.mkdir(tmp)
    try:
        for name, content in files.items():
            _write_synced(tmp / name, _writer(content))
        if folder.exists():
            _carry_over(folder, tmp, skip=set(files))
        _fsync_dir(tmp)
        _swap_into_place(tmp, folder)
    finally:
        if tmp.exists():  # the old version after a swap, or the new one after a failure
            shutil.rmtree(tmp, ignore_errors=True)
    _fsync_dir(folder.parent)


def _write_in_place(folder: Path, files: dict) -> None:
    """Write ``files`` into the existing non-model ``folder``, the config last; on failure
    remove the model files this call made (other files there are left alone)."""
    made = []
    try:
        for name, content in files.items():
            existed = (folder / name).exists()
            _atomic_write(folder / name, _writer(content))
            if not existed:
                made.append(folder / name)
        _fsync_dir(folder)
    except BaseException:
        for path in made:
            with contextlib.suppress(OSError):
                path.unlink()
        raise


def _save_exclusive(folder: Path, files: dict) -> None:
    """Write a new model into ``folder`` (made if missing) that must not hold one, under an
    exclusive claim file."""
    created = False
    with contextlib.suppress(FileExistsError):
        os.mkdir(folder)
        created = True
    if not folder.is_dir() or folder.is_symlink():
        raise FileExistsError(f"{folder}: exists and is not a folder")
    claim = _claim(folder)
    try:
        if is_model_dir(folder):
            raise FileExistsError(f"{folder}: holds a model already; versions are never overwritten")
        _write_in_place(folder, files)
    except BaseException:
        _release(folder, claim)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if it is still empty: nothing else of anyone's is removed
        raise
    _release(folder, claim)


def _release(folder: Path, claim: int) -> None:
    with contextlib.suppress(OSError):
        os.close(claim)
    with contextlib.suppress(OSError):
        (folder / CLAIM_FILE).unlink()


def _claim(folder: Path) -> int:
    """Create ``folder/CLAIM_FILE`` exclusively (with our pid); a claim of a dead process is
    taken over. Another live claim: :class:`FileExistsError`."""
    path = folder / CLAIM_FILE
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(path.read_text().strip() or "0")
            except (OSError, ValueError):
                pid = 0
            age = time.time() - path.stat().st_mtime if path.exists() else 0.0
            if (pid and not _pid_alive(pid)) or age > STALE_SECONDS:
                with contextlib.suppress(OSError):
                    path.unlink()
                continue
            raise FileExistsError(
                f"{folder}: another process (pid {pid or '?'}) is saving a model there right now; "
                "versions are never overwritten, choose another name"
            ) from None
        os.write(fd, str(os.getpid()).encode())
        return fd
    raise FileExistsError(f"{folder}: another process is saving a model there right now")


def discard_model(folder: str | os.PathLike) -> None:
    """Remove the model folder ``folder`` all at once (undoing a save; a no-op if it is gone).

    The folder is first renamed to a hidden leftover name (``.<name>.tmp-<pid>-*``), so it
    stops being a model in one step, and then deleted. A crash during the deletion leaves
    only that hidden folder, which the next listing or save removes
    (:func:`recover_interrupted_saves`).
    """
    folder = Path(folder)
    if not folder.exists() and not folder.is_symlink():
        return
    hidden = folder.parent / f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(folder, hidden)
    _fsync_dir(folder.parent)
    if hidden.is_symlink() or not hidden.is_dir():
        hidden.unlink(missing_ok=True)
    else:
        shutil.rmtree(hidden, ignore_errors=True)


def _writer(content):
    if callable(content):
        return content
    if isinstance(content, bytes):
        return lambda p: Path(p).write_bytes(content)
    return lambda p: Path(p).write_text(str(content))


def _write_synced(target: Path, write) -> None:
    write(target)
    os.chmod(target, 0o644)  # mkstemp and safetensors make 0600 files; models are meant to be shared
    with open(target, "rb+") as fh:
        os.fsync(fh.fileno())


def _atomic_write(target: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp")
    os.close(fd)
    try:
        _write_synced(Path(tmp), write)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(path: Path) -> None:
    """Make renames inside ``path`` durable (POSIX; a no-op where directories cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _carry_over(old: Path, new: Path, skip: set[str]) -> None:
    """Hard-link (else copy) into ``new`` what ``old`` holds besides the files being written."""

    def link(src, dst):
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for entry in old.iterdir():
        if entry.name in skip or entry.name == CLAIM_FILE or _HIDDEN.match(entry.name) or entry.name.endswith(".tmp"):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=link)
        elif entry.is_symlink():
            os.symlink(os.readlink(entry), new / entry.name)
        else:
            link(entry, new / entry.name)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths; False where the system or file system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    if sys.platform.startswith("linux"):
        func = getattr(libc, "renameat2", None)
        if func is None:
            return False
        at_fdcwd, rename_exchange = -100, 2
        result = func(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    elif sys.platform == "darwin":
        func = getattr(libc, "renamex_np", None)
        if func is None:
            return False
        rename_swap = 0x2
        result = func(os.fsencode(a), os.fsencode(b), rename_swap)
    else:
        return False
    if result == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


#: Set to False to always use the two-rename fallback (tests use this to exercise it).
USE_EXCHANGE = True


def _swap_into_place(new: Path, target: Path) -> None:
    """Put the complete folder ``new`` at ``target``; afterwards ``new`` holds the old one."""
    if not target.exists():
        os.rename(new, target)
        return
    if USE_EXCHANGE and _exchange(new, target):
        return
    # fallback: move the old version aside, then the new one in; a crash in between leaves
    # no folder at ``target`` and a complete ".<name>.old-<pid>-*", which the next load or
    # save puts back (recover_interrupted_saves)
    old = target.parent / f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)
        raise
    os.rename(old, new)  # so that the caller deletes it


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":
        try:
            import psutil
        except ImportError:
            return True  # cannot tell: leave it
        return psutil.pid_exists(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def recover_interrupted_saves(root: str | os.PathLike, name: str | None = None) -> None:
    """Finish what a save killed half-way left in ``root`` (for model ``name``, or all).

    A previous version moved aside (``.<name>.old-*``) goes back where it was if nothing took
    its place; leftovers of dead processes (hidden ``.<name>.tmp-<pid>-*`` folders and
    ``.<file>.<pid>-*.tmp`` files, in ``root`` and in the folder ``name``) are removed, and so
    are those older than :data:`STALE_SECONDS` (a writer pid since reused). Saves still running
    in another process are left alone. Only names of this store's own patterns are touched.
    Errors (e.g. a read-only folder) are ignored.
    """
    root = Path(root)
    try:
        pattern = f".{_glob_escape(name)}.*" if name else ".*"
        hidden = sorted(root.glob(pattern))
        if name and (root / name).is_dir() and not (root / name).is_symlink():
            hidden += sorted((root / name).glob(".*.tmp"))
    except OSError:
        return
    now = time.time()
    for path in hidden:
        match = _HIDDEN.match(path.name) or _TMP_FILE.match(path.name)
        if not match or (name and path.parent == root and match["name"] != name):
            continue
        try:
            stale = now - path.lstat().st_mtime > STALE_SECONDS
        except OSError:
            continue
        if _pid_alive(int(match["pid"])) and not stale:
            continue
        target = root / match["name"]
        with contextlib.suppress(OSError):
            if match.re is _HIDDEN and match["kind"] == "old" and not target.exists() and is_model_dir(path):
                os.rename(path, target)
            elif path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()


def _glob_escape(text: str) -> str:
    import glob

    return glob.escape(text)


def render_card(cfg: ModelConfig) -> str:
    """A Markdown model card from the config."""
    card = cfg.card
    lines = [f"# {cfg.name}", ""]
    if card.get("task"):
        lines += [card["task"], ""]
    lines += [
        "| | |",
        "|---|---|",
        (f"| network | {cfg.arch.get('class', cfg.arch['format'] + ' program')} {cfg.spatial_dims}D "
         f"({cfg.arch['parameters']} parameters), imported; {cfg.depth} skip level(s) |" if cfg.arch else
         f"| network | SkipUNet {cfg.spatial_dims}D, depth {cfg.depth}, base width {cfg.base_channels}, {cfg.block} blocks |"),
        f"| input | {cfg.in_channels} channel(s), normalisation {cfg.normalization} |",
        f"| output | {cfg.output}: {', '.join(cfg.class_names) or cfg.num_classes} |",
    ]
    if cfg.output == "instances" and cfg.postprocess:
        pp = cfg.postprocess
        text = (f"seeded watershed: seeds where interior > {pp.get('seed')}, objects where foreground > "
                f"{pp.get('mask')}, at least {pp.get('min_size')} px")
        if card.get("postprocess_tuning"):
            text += f" ({card['postprocess_tuning']})"
        lines.append(f"| post-processing | {text} |")
    if cfg.inference.get("flips"):
        n = 2**cfg.spatial_dims
        text = f"test-time flips on by default: the mean of {n} flipped passes ({n}x the time of one)"
        if card.get("flips_effect"):
            text += f"; {card['flips_effect']}"
        lines.append(f"| inference | {text} |")
    for key in ("axes", "data", "split", "training", "training_scale", "hardware", "parameters", "speed", "licence",
                "weights_licence", "licence_notes"):
        if key in card:
            lines.append(f"| {key} | {card[key]} |")
    metrics = card.get("metrics")
    if metrics:
        on = card.get("metrics_on")
        lines += ["", f"## Metrics on {on}" if on else "## Validation metrics", ""]
        lines += [f"- {k}: {v}" for k, v in metrics.items()]
    gain = card.get("gain")
    if isinstance(gain, dict) and gain:
        lines += ["", "Gain over the starting model on the same data: "
                  + ", ".join(f"{k} {v:+.4f}" for k, v in gain.items() if isinstance(v, (int, float)))
                  + f" (starting weights with re-tuned post-processing: {card.get('metrics_retuned', {})})"]
    compared = card.get("compared")
    if isinstance(compared, dict) and isinstance(compared.get("scores"), dict) and compared["scores"]:
        lines += ["", f"## All versions on {compared.get('on') or 'the same held-out data'}", ""]
        for name, m in compared["scores"].items():
            shown = ", ".join(f"{k} {v}" for k, v in m.items() if k != "score") if isinstance(m, dict) else m
            lines.append(f"- {name}: {shown}")
    if card.get("notes"):
        lines += ["", card["notes"]]
    return "\n".join(lines) + "\n"


def weights_licence(cfg: ModelConfig) -> str:
    """The licence of a model's weights (``card.weights_licence``: an SPDX id, or
    ``LicenseRef-...`` for other terms)."""
    return str(cfg.card.get("weights_licence", "") or "LicenseRef-unknown")


def data_licence(cfg: ModelConfig) -> str:
    """The licence of a model's training data (``card.licence``, without a leading
    "training data:")."""
    return re.sub(r"^training data:?\s*", "", str(cfg.card.get("licence", "") or "not recorded"))


def card_citations(cfg: ModelConfig) -> list[dict[str, str]]:
    """The card's ``cite`` entries (``{text, doi | url}``; the data sets a model learnt from)."""
    out = []
    for entry in cfg.card.get("cite", []) or []:
        if isinstance(entry, dict) and entry.get("text") and (entry.get("doi") or entry.get("url")):
            out.append({k: str(entry[k]) for k in ("text", "doi", "url") if entry.get(k)})
    return out


def licence_text(cfg: ModelConfig) -> str:
    """The licence of a model's weights and training data, in Markdown (``LICENSE.md`` of a
    model folder and of its bioimage.io package)."""
    lines = [f"# Licence of the {cfg.name} model", "",
             f"- weights: {weights_licence(cfg)}",
             f"- training data: {data_licence(cfg)}"]
    if cfg.card.get("licence_notes"):
        lines += ["", str(cfg.card["licence_notes"])]
    cites = card_citations(cfg)
    if cites:
        lines += ["", "Cite the data's authors:", ""]
        lines += [f"- {c['text']}" + (f" doi:{c['doi']}" if c.get("doi") else f" {c.get('url', '')}")
                  for c in cites]
    lines += ["", "The code of napari-skipseg (the network's definition) is under the BSD-3-Clause licence."]
    return "\n".join(lines) + "\n"


# -- the active model and fine-tuned versions ---------------------------------------------------
#
# The "active" model is the one the Segment widget uses and the Fine-tune widget starts
# from. It is kept per user store, in memory and (when persisted) in ``active.json`` next to
# the user's ``models/`` folder, so a new session starts with the last model made active.
# Widgets subscribe with :func:`on_active_changed` (held weakly: a closed widget is dropped).

ACTIVE_FILE = "active.json"
ACTIVE_SCHEMA = Obj({"model": Str(4096, min_len=1)}, required=("model",))
_active: dict[str, str] = {}
_active_listeners: list = []


def _active_key() -> str:
    return str(user_model_dir())


def active_model() -> str | None:
    """Name (or folder) of the active model, or None when none was made active."""
    key = _active_key()
    if key in _active:
        return _active[key]
    path = user_model_dir().parent / ACTIVE_FILE
    if not path.exists():
        return None
    try:
        data = read_json(path, ValueError, max_bytes=64 * 1024, what="active-model file")
        check(ACTIVE_SCHEMA, data, "", ValueError)
    except ValueError as err:
        warnings.warn(f"ignoring {err}", BrokenModelWarning, stacklevel=2)
        return None
    name = data["model"]
    try:
        resolve_model(name)
    except ModelLoadError:
        return None  # deleted since: no active model
    _active[key] = name
    return name


def set_active_model(name: str, persist: bool = True) -> None:
    """Make the model ``name`` (a stored model's name, or a model folder) the active one.

    ``persist`` also writes it to ``active.json`` in the user store. Listeners registered with
    :func:`on_active_changed` are called with the name when it changes.
    """
    resolve_model(name)  # ModelLoadError if there is no such model
    key = _active_key()
    changed = _active.get(key) != name
    _active[key] = name
    if persist:
        path = user_model_dir().parent / ACTIVE_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(path, lambda p: Path(p).write_text(json.dumps({"model": name}) + "\n"))
    if changed:
        for ref in list(_active_listeners):
            callback = ref()
            if callback is None:
                _active_listeners.remove(ref)
                continue
            try:
                callback(name)
            except RuntimeError as err:  # e.g. a widget whose Qt object was deleted
                if "deleted" in str(err):
                    _active_listeners.remove(ref)
                else:
                    raise


def on_active_changed(callback) -> None:
    """Call ``callback(name)`` whenever the active model changes (held by weak reference)."""
    import weakref

    ref = weakref.WeakMethod(callback) if hasattr(callback, "__self__") else weakref.ref(callback)
    _active_listeners.append(ref)


def version_base(name: str) -> str:
    """The model a version descends from: ``nuclei2d-ft-3`` -> ``nuclei2d``."""
    return re.sub(r"-ft-\d+$", "", name)


def list_versions(base: str) -> list[ModelEntry]:
    """``base`` and its fine-tuned versions ``<base>-ft-<N>`` in the user store, oldest first."""
    base = version_base(base)
    pattern = re.compile(rf"^{re.escape(base)}-ft-(\d+)$")
    out = [e for e in list_models() if e.name == base]
    versions = [(int(m[1]), e) for e in list_models() if (m := pattern.match(e.name))]
    return out + [e for _, e in sorted(versions, key=lambda t: t[0])]


def safe_model_name(name: object, fallback: str = "model") -> str:
    """``name`` made a safe store name: characters other than letters, digits, ``.``, ``_``,
    ``+`` and ``-`` become ``_``, leading ``.``/``_``/``-`` go, at most 100 characters.
    A name is never a path: ``"../../tmp/x"`` becomes ``"tmp_x"``."""
    text = re.sub(r"[^A-Za-z0-9._+-]", "_", str(name))[-100:].lstrip("._-+")
    return text if _NAME.match(text) else fallback


def store_path(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder of the model ``name`` in the store ``root`` (default :func:`user_model_dir`).

    ``name`` must be a plain name (see :func:`safe_model_name`); the folder, once symbolic
    links are resolved, must lie directly inside the store (a link in the store pointing
    elsewhere is not written through). Anything else raises :class:`ModelLoadError`.
    """
    root = Path(root) if root is not None else user_model_dir()
    if not isinstance(name, str) or len(name) > 128 or not _NAME.match(name):
        raise ModelLoadError(
            f"{str(name)[:80]!r} is not a usable model name in the store (letters, digits, '.', '_', "
            "'+', '-', starting with a letter or digit, at most 128 characters); a name is never a path"
        )
    folder = root / name
    if Path(os.path.realpath(folder)).parent != Path(os.path.realpath(root)):  # e.g. a link out of it
        raise ModelLoadError(f"{name!r}: the folder {folder} would lie outside the model store {root}")
    return folder


def reserve_version(base: str) -> Path:
    """Create (exclusively) the empty folder of the next version ``<base>-ft-<N>`` and return it.

    The folder is made with one ``mkdir``, so two fine-tunes finishing at once get different
    numbers and no version is ever overwritten; :func:`save_model` then fills it. ``base`` is
    a model name, never a path: it is reduced to a safe name (:func:`safe_model_name`) and the
    folder checked to lie inside the store (:func:`store_path`).
    """
    base = safe_model_name(version_base(str(base)))
    root = user_model_dir()
    root.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^\.?{re.escape(base)}-ft-(\d+)(\..*)?$")
    taken = [int(m[1]) for p in root.iterdir() if (m := pattern.match(p.name))]
    n = max(taken, default=0) + 1
    for _ in range(10_000):
        folder = store_path(f"{base}-ft-{n}", root)
        try:
            os.mkdir(folder)
            return folder
        except FileExistsError:
            n += 1
    raise ModelSaveError(f"{root}: no free version number for {base} (10000 tried)")
