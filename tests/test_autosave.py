"""Autosaves of corrected labels (no Qt): round trip, rotation, and what an interrupted or
damaged autosave leaves is never listed or loaded."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from napari_skipseg import autosave
from napari_skipseg.autosave import (
    AutosaveError,
    autosave_dir,
    list_autosaves,
    load_autosave,
    load_newest,
    newest_autosave,
    save_autosave,
)


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPSEG_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _labels(seed: int, shape=(3, 40, 50), dtype=np.int32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, dtype)
    for i in range(1, 6):  # squares of 8 x 8 in the last two axes
        lead = tuple(int(rng.integers(0, n)) for n in shape[:-2])
        y, x = (int(rng.integers(0, n - 8)) for n in shape[-2:])
        labels[(*lead, slice(y, y + 8), slice(x, x + 8))] = i
    return labels


def test_round_trip_in_the_store_home(home):
    labels = _labels(0)
    entry = save_autosave(labels, "corrected", source="img", scale=(2.0, 0.5, 0.5), translate=(0, 1, 2),
                          metadata={"skipseg_reviewed": [np.int64(0), 2]})
    assert autosave_dir() == home / "autosave" and entry.path.parent == home / "autosave"
    assert entry.path.suffix == ".npz" and entry.sidecar.suffix == ".json" and entry.path.is_file()
    side = json.loads(entry.sidecar.read_text())
    assert side["layer"] == "corrected" and side["source"] == "img"
    assert side["shape"] == [3, 40, 50] and side["dtype"] == "int32" and side["scale"] == [2.0, 0.5, 0.5]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d.*", side["time"])
    assert re.fullmatch(r"\d\d:\d\d:\d\d", entry.clock)
    assert entry.path.stat().st_size < labels.nbytes / 10  # compressed
    assert list_autosaves() == [entry] and list_autosaves("corrected") == [entry]
    assert list_autosaves("other") == [] and newest_autosave("other") is None
    back, again = load_autosave(entry)
    assert again == entry and back.dtype == labels.dtype and np.array_equal(back, labels)
    assert entry.metadata == {"skipseg_reviewed": [0, 2]} and entry.translate == (0.0, 1.0, 2.0)
    # by path, of either file
    for path in (entry.path, entry.sidecar):
        assert np.array_equal(load_autosave(path)[0], labels)
    # an unchanged array (of the same source and layer) is not written again; a changed one is
    assert save_autosave(labels.copy(), "corrected", source="img") == entry and len(list_autosaves()) == 1
    labels[0, 0, 0] = 9
    newer = save_autosave(labels, "corrected", source="img")
    assert newer != entry and newest_autosave("corrected") == newer
    assert np.array_equal(load_newest("corrected")[0], labels)
    # other kinds of labels; odd layer names make safe file names
    for arr, name in ((_labels(1, (30, 20), np.uint8), "a/b: c"), (_labels(2, (30, 20)) > 0, "..hidden?"),
                      (_labels(3, (2, 3, 16, 16), np.int64), "ünï code")):
        e = save_autosave(arr, name)
        assert not e.path.name.startswith(".") and "/" not in e.path.name
        back, _ = load_autosave(e)
        assert back.dtype == arr.dtype and np.array_equal(back, arr) and e.layer == name
    with pytest.raises(ValueError, match="integers or booleans"):
        save_autosave(np.zeros((4, 4), np.float32), "float")


def test_rotation_keeps_the_newest_few_per_layer(home):
    other = save_autosave(_labels(99), "other")
    saved = [save_autosave(_labels(seed), "corrected", keep=3) for seed in range(6)]
    entries = list_autosaves("corrected")
    assert entries == saved[-3:]  # oldest first
    for seed, entry in zip(range(3, 6), entries, strict=True):
        assert np.array_equal(load_autosave(entry)[0], _labels(seed))
    assert not any(e.path.exists() or e.sidecar.exists() for e in saved[:3])
    assert list_autosaves("other") == [other]  # another layer's autosaves are not touched
    save_autosave(_labels(7), "corrected", keep=1)
    assert [np.array_equal(load_autosave(e)[0], _labels(7)) for e in list_autosaves("corrected")] == [True]
    with pytest.raises(ValueError, match="keep must be at least 1"):
        save_autosave(_labels(8), "corrected", keep=0)
    assert len(list_autosaves("corrected")) == 1


def test_rotation_is_per_source_image_and_layer(home, tmp_path):
    """S3: image A's "Labels" saved once, then image B's "Labels" 3 times: A's autosave stays."""
    a_id = autosave.source_id_of(tmp_path / "a.tif")
    b_id = autosave.source_id_of(tmp_path / "b.tif")
    assert a_id != b_id and a_id == autosave.source_id_of(str(tmp_path / "x" / ".." / "a.tif"))
    a = save_autosave(_labels(0), "Labels", source="a", source_id=a_id)
    b = [save_autosave(_labels(seed), "Labels", source="b", source_id=b_id) for seed in range(1, 5)]
    assert list_autosaves("Labels", source_id=a_id) == [a] and a.path.exists()
    assert list_autosaves("Labels", source_id=b_id) == b[-3:]
    assert np.array_equal(load_newest("Labels", source_id=a_id)[0], _labels(0))
    assert newest_autosave("Labels") == b[-1]  # any source: the newest of all
    # unchanged labels are compared within their own source: the same array for A is written
    same = save_autosave(_labels(4), "Labels", source="a", source_id=a_id)
    assert same != b[-1] and list_autosaves("Labels", source_id=a_id) == [a, same]
    # an in-memory image: its id follows its data and name, the same in every session
    img = np.arange(10_000, dtype=np.uint16).reshape(100, 100)
    assert autosave.source_id_of(data=img, name="i") == autosave.source_id_of(data=img.copy(), name="i")
    assert autosave.source_id_of(data=img, name="i") != autosave.source_id_of(data=img + 1, name="i")
    assert autosave.source_id_of(sample=("napari-skipseg", "nuclei2d")) == "sample:napari-skipseg/nuclei2d"


def test_format_1_autosaves_stay_readable_and_keyed_by_their_source_name(home):
    """Autosaves written before source ids (format 1, no ``source_id``) are listed, loaded
    and rotated with their source name as the key; they never rotate out new ones."""
    old = save_autosave(_labels(0), "Labels", source="img")
    side = json.loads(old.sidecar.read_text())
    side["format"] = 1
    del side["source_id"]
    old.sidecar.write_text(json.dumps(side))
    (entry,) = list_autosaves()
    assert entry.source_id is None and entry.source_key == "img" and entry.key == ("img", "Labels")
    assert np.array_equal(load_autosave(entry)[0], _labels(0))
    assert np.array_equal(load_newest("Labels", source_id="img")[0], _labels(0))
    new = [save_autosave(_labels(s), "Labels", source="img", source_id="file:/data/img.tif") for s in (1, 2, 3)]
    assert list_autosaves("Labels", source_id="img") == [entry]  # not rotated out by another key
    assert list_autosaves("Labels", source_id="file:/data/img.tif") == new


def test_partial_or_damaged_autosaves_are_not_listed_or_loaded(home, monkeypatch):
    first = save_autosave(_labels(0), "corrected", keep=10)
    second = save_autosave(_labels(1), "corrected", keep=10)
    folder = autosave_dir()
    # what a save killed half-way can leave: a temporary file, a data file without its sidecar
    (folder / ".corrected.123-abc.json.xyz.tmp").write_text('{"format": 1')
    (folder / ".corrected.123-abc.npz.xyz.tmp").write_bytes(b"PK\x03\x04 cut")
    (folder / "corrected.9999999999999999999-aaaaaa.npz").write_bytes(second.path.read_bytes())
    # damaged sidecars: cut short, not JSON, another format, missing fields
    text = second.sidecar.read_text()
    for i, content in enumerate((text[: len(text) // 2], "not json", json.dumps({**json.loads(text), "format": 99}),
                                 json.dumps({"format": 1, "layer": "corrected"}), "[]")):
        stem = f"corrected.99999999999999999{i}-bbbbbb"
        (folder / f"{stem}.npz").write_bytes(second.path.read_bytes())
        (folder / f"{stem}.json").write_text(content)
    assert list_autosaves("corrected") == [first, second]
    # a sidecar whose data file is cut short or missing: not listed; the previous one is newest
    third = save_autosave(_labels(2), "corrected", keep=10)
    data = third.path.read_bytes()
    third.path.write_bytes(data[: len(data) // 2])
    assert list_autosaves("corrected") == [first, second]
    third.path.unlink()
    assert list_autosaves("corrected") == [first, second]
    # same size, other bytes: listed (the listing reads no data), but it does not load, and
    # load_newest falls back to the one before
    damaged = bytearray(second.path.read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    second.path.write_bytes(bytes(damaged))
    assert list_autosaves("corrected") == [first, second]
    with pytest.raises(AutosaveError, match="damaged"):
        load_autosave(second)
    back, entry = load_newest("corrected")
    assert entry == first and np.array_equal(back, _labels(0))
    # a sidecar that lies about the array: refused on load
    fourth = save_autosave(_labels(4), "corrected", keep=10)
    meta = json.loads(fourth.sidecar.read_text())
    fourth.sidecar.write_text(json.dumps({**meta, "shape": [1, 2, 3]}))
    with pytest.raises(AutosaveError, match="its sidecar says"):
        load_autosave(fourth.path)
    assert load_newest("corrected")[1] == first
    # stale leftovers of interrupted saves are removed by the next save; fresh ones (maybe a
    # save in progress in another process) are not
    old = time.time() - 2 * autosave.STALE_SECONDS
    for name in (".corrected.123-abc.json.xyz.tmp", "corrected.9999999999999999999-aaaaaa.npz"):
        os.utime(folder / name, (old, old))
    (folder / "corrected.8888888888888888888-cccccc.npz").write_bytes(b"in progress")
    save_autosave(_labels(5), "corrected", keep=10)
    names = {p.name for p in folder.iterdir()}
    assert ".corrected.123-abc.json.xyz.tmp" not in names and "corrected.9999999999999999999-aaaaaa.npz" not in names
    assert ".corrected.123-abc.npz.xyz.tmp" in names and "corrected.8888888888888888888-cccccc.npz" in names


def test_rotation_never_deletes_the_newest_complete_one(home):
    """Damaged autosaves are not counted: rotation deletes only complete ones older than the
    newest ``keep`` complete ones."""
    good = save_autosave(_labels(0), "corrected", keep=2)
    broken = save_autosave(_labels(1), "corrected", keep=2)
    broken.path.write_bytes(b"cut")
    newest = save_autosave(_labels(2), "corrected", keep=2)
    assert list_autosaves("corrected") == [good, newest]
    assert np.array_equal(load_newest("corrected")[0], _labels(2))


def test_no_torch_qt_or_napari_import():
    code = ("import sys, numpy as np, napari_skipseg.autosave as a; "
            "print(sorted(m for m in ('torch', 'napari', 'qtpy', 'PyQt5', 'PyQt6', 'PySide6') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
