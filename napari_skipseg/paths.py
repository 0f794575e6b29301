"""The user's folders for napari-skipseg, from :mod:`platformdirs` (no Qt, no napari).

- :func:`data_home`: models (``models/``), autosaves (``autosave/``), saved results and the
  active model. ``$SKIPSEG_HOME`` when set; else the platform's data folder
  (``~/.local/share/napari-skipseg`` or ``$XDG_DATA_HOME/napari-skipseg`` on Linux,
  ``~/Library/Application Support/napari-skipseg`` on macOS,
  ``%LOCALAPPDATA%\\napari-skipseg`` on Windows).
- :func:`cache_home`: networks exported for faster inference. ``$SKIPSEG_CACHE``, else
  ``$SKIPSEG_HOME/cache``, else the platform's cache folder.
- :func:`config_home`: the widgets' remembered values. ``$SKIPSEG_CONFIG``, else
  ``$SKIPSEG_HOME/config``, else the platform's config folder.

Versions before 0.2 kept the data in ``$XDG_DATA_HOME/napari-skipseg`` (default
``~/.local/share/napari-skipseg``) on every system. Where that folder holds something and the
platform's folder does not exist yet (macOS, Windows), :func:`data_home` goes on using the old
folder, so the user's models and autosaves are neither split over two folders nor lost.
"""

from __future__ import annotations

import os
from pathlib import Path

APP = "napari-skipseg"


def _platformdirs():
    import platformdirs

    return platformdirs


def legacy_data_home() -> Path:
    """Where versions before 0.2 kept models and autosaves on every system."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / APP


def _has_content(folder: Path) -> bool:
    try:
        return folder.is_dir() and any(folder.iterdir())
    except OSError:
        return False


def data_home() -> Path:
    """The folder of the user's models, autosaves and results (see the module's docstring)."""
    home = os.environ.get("SKIPSEG_HOME")
    if home:
        return Path(home)
    new = Path(_platformdirs().user_data_dir(APP, appauthor=False))
    old = legacy_data_home()
    if old != new and not new.exists() and _has_content(old):
        return old
    return new


def _env_or_platform(env: str, sub: str, platform_dir: str) -> Path:
    """``$env``, else ``$SKIPSEG_HOME/sub``, else platformdirs' ``platform_dir`` for the app."""
    value = os.environ.get(env)
    if value:
        return Path(value)
    home = os.environ.get("SKIPSEG_HOME")
    if home:
        return Path(home) / sub
    return Path(getattr(_platformdirs(), platform_dir)(APP, appauthor=False))


def cache_home() -> Path:
    """The folder for caches that may be deleted at any time (exported networks)."""
    return _env_or_platform("SKIPSEG_CACHE", "cache", "user_cache_dir")


def config_home() -> Path:
    """The folder of the user's settings (the widgets' remembered values)."""
    return _env_or_platform("SKIPSEG_CONFIG", "config", "user_config_dir")
