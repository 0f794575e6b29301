"""Finding, loading, importing and saving models: a folder with config.json + model.safetensors
+ card.md.

Loading never unpickles anything: weights are safetensors, the config is JSON. A PyTorch
checkpoint (``.pt``/``.pth``) is only read by :func:`import_checkpoint`, with
``torch.load(weights_only=True)``, and converted into a model folder.

Saving is atomic for the folder as a whole: a new version is written into a hidden
temporary folder next to the target and swapped in with one rename, so a crash at any
moment leaves the previous complete version or the new one, never a mix (see
:func:`save_model`).

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
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from .config import ModelConfig, ModelConfigError

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "card.md"
#: Suffixes of pickled PyTorch/pickle files: never loaded as models, only imported.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".bin", ".tar")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# hidden folders a save leaves behind when it is killed: ".<name>.tmp-<pid>-<hex>" (the new
# version being written) and ".<name>.old-<pid>-<hex>" (the previous one, moved aside)
_HIDDEN = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


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
            if source == "user":
                recover_interrupted_saves(root)
            for path in sorted(
                p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir() and is_model_dir(p)
            ):
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
    except (ModelConfigError, OSError, UnicodeDecodeError) as err:
        raise ModelLoadError(str(err) if isinstance(err, ModelConfigError) else f"{path / CONFIG_FILE}: {err}") from err


def load_model(name_or_path: str | os.PathLike, device: str = "cpu"):
    """Build the network of a stored model and load its weights (float32, eval mode).

    Raises :class:`ModelLoadError` if the folder is incomplete, the weights file is
    damaged or truncated, the weights do not match the config (naming the tensors that
    differ; checked from the file's header before the network is built), or they hold
    NaN or infinite values.
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from .unet import SkipUNet

    path = resolve_model(name_or_path)
    cfg = load_config(path)
    weights = path / WEIGHTS_FILE
    damaged = (SafetensorError, OSError, ValueError, RuntimeError)
    try:
        shapes = _safetensors_shapes(weights)
    except damaged as err:
        raise ModelLoadError(f"{weights}: damaged or not a safetensors file ({err})") from err
    check_shapes(cfg, shapes, source=str(path))  # before allocating a network the file may not fit
    model = SkipUNet(cfg)
    try:
        state = load_file(str(weights))
    except damaged as err:
        raise ModelLoadError(f"{weights}: damaged or not a safetensors file ({err})") from err
    load_state(model, state, source=str(path))
    model.source_path = path
    return model.to(device=device, dtype=torch.float32).eval()


def _safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors header, without reading the data."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return {key: tuple(fh.get_slice(key).get_shape()) for key in fh.keys()}  # noqa: SIM118


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
    if not _NAME.match(text):
        raise ModelLoadError(
            f"{text!r} is not a usable model name (letters, digits, '.', '_', '+', '-'; "
            "give a folder path to store it elsewhere)"
        )
    return user_model_dir() / text, True


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
        try:
            cfg = ModelConfig.from_json(config)
        except OSError as err:
            raise ModelLoadError(f"{config}: cannot read the config ({err.strerror or err})") from err
        except UnicodeDecodeError as err:
            raise ModelLoadError(f"{config}: not a JSON config file ({err})") from err
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
    return save_model(model.eval(), folder, half=half)


# -- saving -------------------------------------------------------------------------------------


def save_model(
    model,
    folder: str | os.PathLike,
    half: bool = True,
    extra_files: Mapping[str, str | bytes] | None = None,
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

    Float weights are stored as float16 when ``half``. ``extra_files`` (name -> text or
    bytes) are written as part of the same version, e.g. a training history.
    """
    import torch
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.is_symlink():
        folder = folder.resolve()
    folder.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, tensor in model.state_dict().items():
        t = tensor.detach().cpu()
        if half and t.is_floating_point() and "running_var" not in key:
            t = t.to(torch.float16)
        state[key] = t.contiguous()
    cfg: ModelConfig = model.config
    config_text = json.dumps(cfg.to_dict(), indent=2) + "\n"  # fails early if not JSON
    files: dict[str, object] = {
        WEIGHTS_FILE: lambda p: save_file(state, str(p), metadata={"name": cfg.name}),
        CARD_FILE: render_card(cfg),
    }
    for name, content in (extra_files or {}).items():
        if Path(name).name != name or name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE) or name.startswith("."):
            raise ValueError(f"extra file name {name!r} is not allowed")
        files[name] = content
    files[CONFIG_FILE] = config_text  # last: a folder without its config is not a model

    recover_interrupted_saves(folder.parent, folder.name)
    if folder.exists() and not is_model_dir(folder):
        if not folder.is_dir():
            raise FileExistsError(f"{folder}: exists and is not a folder")
        for name, content in files.items():
            _atomic_write(folder / name, _writer(content))
        _fsync_dir(folder)
        return folder

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
    return folder


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
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
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
        if entry.name in skip or _HIDDEN.match(entry.name) or entry.name.endswith(".tmp"):
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
    its place; leftovers of dead processes are removed. Saves still running in another
    process are left alone. Errors (e.g. a read-only folder) are ignored.
    """
    root = Path(root)
    try:
        pattern = f".{_glob_escape(name)}.*-*" if name else ".*"
        hidden = sorted(root.glob(pattern))
    except OSError:
        return
    for path in hidden:
        match = _HIDDEN.match(path.name)
        if not match or (name and match["name"] != name) or _pid_alive(int(match["pid"])):
            continue
        target = root / match["name"]
        with contextlib.suppress(OSError):
            if match["kind"] == "old" and not target.exists() and is_model_dir(path):
                os.rename(path, target)
            else:
                shutil.rmtree(path)


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
        f"| network | SkipUNet {cfg.spatial_dims}D, depth {cfg.depth}, base width {cfg.base_channels}, {cfg.block} blocks |",
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
    for key in ("axes", "data", "split", "training", "training_scale", "hardware", "parameters", "speed", "licence"):
        if key in card:
            lines.append(f"| {key} | {card[key]} |")
    metrics = card.get("metrics")
    if metrics:
        lines += ["", "## Validation metrics", ""]
        lines += [f"- {k}: {v}" for k, v in metrics.items()]
    if card.get("notes"):
        lines += ["", card["notes"]]
    return "\n".join(lines) + "\n"


# -- the active model and fine-tuned versions ---------------------------------------------------
#
# The "active" model is the one the Segment widget uses and the Fine-tune widget starts
# from. It is kept per user store, in memory and (when persisted) in ``active.json`` next to
# the user's ``models/`` folder, so a new session starts with the last model made active.
# Widgets subscribe with :func:`on_active_changed` (held weakly: a closed widget is dropped).

ACTIVE_FILE = "active.json"
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
    try:
        name = json.loads(path.read_text()).get("model")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(name, str):
        return None
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


def reserve_version(base: str) -> Path:
    """Create (exclusively) the empty folder of the next version ``<base>-ft-<N>`` and return it.

    The folder is made with one ``mkdir``, so two fine-tunes finishing at once get different
    numbers and no version is ever overwritten; :func:`save_model` then fills it.
    """
    base = version_base(base)
    root = user_model_dir()
    root.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(rf"^\.?{re.escape(base)}-ft-(\d+)(\..*)?$")
    taken = [int(m[1]) for p in root.iterdir() if (m := pattern.match(p.name))]
    n = max(taken, default=0) + 1
    while True:
        folder = root / f"{base}-ft-{n}"
        try:
            os.mkdir(folder)
            return folder
        except FileExistsError:
            n += 1
