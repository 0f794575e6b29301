"""The settings file: in the config folder, atomic, plain values only, damage tolerated."""

from __future__ import annotations

import pytest

from napari_skipseg import settings


def test_round_trip_and_location(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEG_CONFIG", str(tmp_path / "cfg"))
    assert settings.load() == {} and settings.section("segment") == {}
    settings.update("segment", {"device": "cpu", "tile": 256})
    settings.update("segment", {"mode": "3d"})
    settings.update("skip", {"k": 8, "flag": None, "on": True, "rate": 0.5})
    assert settings.settings_path() == tmp_path / "cfg" / "settings.json"
    assert settings.section("segment") == {"device": "cpu", "tile": 256, "mode": "3d"}
    assert settings.section("skip") == {"k": 8, "flag": None, "on": True, "rate": 0.5}
    assert [p.name for p in (tmp_path / "cfg").iterdir()] == ["settings.json"]  # no temporary left


def test_only_plain_values(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEG_CONFIG", str(tmp_path))
    with pytest.raises(TypeError, match="bad"):
        settings.update("s", {"good": 1, "bad": [1, 2]})
    assert settings.load() == {}


@pytest.mark.parametrize("text", ["", "{", "[1, 2]", '{"s": 3}', '{"s": {"a": [1], "b": 2}}', "\xff\xfe"])
def test_damaged_file_counts_as_empty_and_is_replaced(tmp_path, monkeypatch, text):
    monkeypatch.setenv("SKIPSEG_CONFIG", str(tmp_path))
    (tmp_path / "settings.json").write_bytes(text.encode("latin-1"))
    loaded = settings.load()
    assert loaded in ({}, {"s": {"b": 2}})
    settings.update("s", {"c": 1})
    assert settings.section("s")["c"] == 1


def test_unwritable_folder_is_not_an_error(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("SKIPSEG_CONFIG", str(blocker / "cfg"))  # a folder inside a file
    settings.update("s", {"a": 1})
    assert settings.load() == {}
