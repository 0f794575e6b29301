"""The user's folders: platformdirs, the SKIPSEG_* overrides, and the pre-0.2 folder kept."""

from __future__ import annotations

from pathlib import Path

import platformdirs
import pytest

from napari_skipseg import paths
from napari_skipseg.autosave import autosave_dir
from napari_skipseg.inference.backends import cache_dir
from napari_skipseg.model.store import user_model_dir


@pytest.fixture
def clean_env(tmp_path, monkeypatch):
    for name in ("SKIPSEG_HOME", "SKIPSEG_CACHE", "SKIPSEG_CONFIG", "XDG_DATA_HOME", "XDG_CACHE_HOME",
                 "XDG_CONFIG_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_overrides_win(clean_env, monkeypatch):
    monkeypatch.setenv("SKIPSEG_HOME", str(clean_env / "h"))
    assert user_model_dir() == clean_env / "h" / "models"
    assert autosave_dir() == clean_env / "h" / "autosave"
    assert cache_dir() == clean_env / "h" / "cache"
    assert paths.config_home() == clean_env / "h" / "config"
    monkeypatch.setenv("SKIPSEG_CACHE", str(clean_env / "c"))
    monkeypatch.setenv("SKIPSEG_CONFIG", str(clean_env / "cfg"))
    assert cache_dir() == clean_env / "c" and paths.config_home() == clean_env / "cfg"


def test_platform_folders(clean_env):
    assert paths.data_home() == Path(platformdirs.user_data_dir("napari-skipseg", appauthor=False))
    assert user_model_dir() == paths.data_home() / "models"
    assert cache_dir() == Path(platformdirs.user_cache_dir("napari-skipseg", appauthor=False))
    assert paths.config_home() == Path(platformdirs.user_config_dir("napari-skipseg", appauthor=False))
    assert str(paths.data_home()).startswith(str(clean_env))  # under the (temporary) home


def _as_on_macos(monkeypatch):
    """platformdirs' own macOS rules (this test runs on Linux, where old and new coincide)."""
    from platformdirs.macos import MacOS

    monkeypatch.setattr(platformdirs, "user_data_dir",
                        lambda appname, appauthor=None: MacOS(appname, appauthor).user_data_dir)


def test_old_folder_used_while_it_holds_models(clean_env, monkeypatch):
    _as_on_macos(monkeypatch)
    new = clean_env / "Library" / "Application Support" / "napari-skipseg"
    old = clean_env / ".local" / "share" / "napari-skipseg"
    assert paths.data_home() == new  # nothing old: the platform's folder
    (old / "models" / "mine").mkdir(parents=True)
    assert paths.data_home() == old and user_model_dir() == old / "models"
    new.mkdir(parents=True)  # once the new folder exists it is used
    assert paths.data_home() == new
