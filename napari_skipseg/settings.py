"""The user's settings: values the widgets remember between sessions (no Qt, no napari).

One JSON file, ``settings.json`` in :func:`napari_skipseg.paths.config_home` (the platform's
config folder, ``$SKIPSEG_CONFIG`` or ``$SKIPSEG_HOME/config``), holding one object per
section (a widget): ``{"segment": {"device": "cpu", ...}, ...}``. Only plain JSON values
(strings, numbers, booleans, null) are kept. The file is written atomically (temporary file,
then rename); a damaged or unreadable file counts as empty (the widgets start with their
defaults) and is replaced at the next change.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

FILE = "settings.json"
_PLAIN = (str, int, float, bool, type(None))


def settings_path() -> Path:
    """The settings file."""
    from .paths import config_home

    return config_home() / FILE


def load() -> dict[str, dict]:
    """All sections; ``{}`` when the file is missing, unreadable or not what we write."""
    try:
        data = json.loads(settings_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: {n: v for n, v in s.items() if isinstance(v, _PLAIN)}
            for k, s in data.items() if isinstance(k, str) and isinstance(s, dict)}


def section(name: str) -> dict:
    """The stored values of one section (a copy)."""
    return dict(load().get(name, {}))


def update(name: str, values: dict) -> None:
    """Store ``values`` in section ``name`` (other keys and sections are kept). Values that are
    not plain JSON scalars are refused (``TypeError``); a folder that cannot be written is
    ignored (the setting is simply not remembered)."""
    bad = [k for k, v in values.items() if not isinstance(v, _PLAIN)]
    if bad:
        raise TypeError(f"settings must be strings, numbers, booleans or None: {', '.join(bad)}")
    data = load()
    data.setdefault(name, {}).update(values)
    path = settings_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".settings-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError:
        return
