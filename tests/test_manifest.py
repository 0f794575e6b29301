"""The npe2 manifest: valid, every python_name imports, every sample opens, no torch at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _manifest():
    from npe2 import PluginManifest

    return PluginManifest.from_distribution("napari-skipseg")


def test_manifest_is_valid_and_found_by_napari():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    assert "napari-skipseg" in pm.iter_manifests() or pm.get_manifest("napari-skipseg")
    result = subprocess.run(
        [sys.executable, "-m", "npe2", "validate", "napari-skipseg"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (ROOT / "napari.yaml").resolve() == (ROOT / "napari_skipseg" / "napari.yaml").resolve()


@pytest.mark.parametrize("command", _manifest().contributions.commands, ids=lambda c: c.id)
def test_every_python_name_imports(command):
    from npe2.manifest.utils import import_python_name

    assert callable(import_python_name(command.python_name))


@pytest.mark.parametrize("sample", [s.key for s in _manifest().contributions.sample_data])
def test_every_sample_opens(make_napari_viewer, sample):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-skipseg", sample)
    assert len(viewer.layers) == 1
    layer = viewer.layers[0]
    assert layer.data.ndim in (2, 3) and layer.data.std() > 0


def test_plugin_start_does_not_import_torch():
    code = (
        "import sys, napari_skipseg, napari_skipseg._reader, napari_skipseg._writer, "
        "napari_skipseg._sample_data, napari_skipseg._qt.segment_widget, napari_skipseg._qt.skip_widget, "
        "napari_skipseg.feature_layers, napari_skipseg.features, napari_skipseg.cli;"
        "from napari_skipseg.model import list_models; list_models();"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_no_manifest_module_imports_torch():
    """Every module napari may import for the plugin (all python_names of the manifest: reader,
    writers, widgets, samples), in a fresh interpreter, leaves torch unimported."""
    modules = sorted({c.python_name.split(":")[0] for c in _manifest().contributions.commands})
    assert any(m.startswith("napari_skipseg._qt.") for m in modules)
    code = "import sys, napari_skipseg\n" + "".join(f"import {m}\n" for m in modules) + (
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not bad, bad[:5]\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_widget_docks_from_the_manifest(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-skipseg", "Segment")
    assert type(widget).__name__ == "SegmentWidget"
