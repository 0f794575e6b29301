"""The built wheel: installs into a fresh virtual environment and napari finds the plugin there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

CHECK = r"""
import json, sys
from pathlib import Path
import napari_skipseg
from npe2 import PluginManager
from napari_skipseg.model.store import bundled_model_dirs
pm = PluginManager.instance(); pm.discover()
mf = pm.get_manifest("napari-skipseg")
print(json.dumps({
    "module": napari_skipseg.__file__,
    "manifest": str(mf.display_name),
    "widgets": [w.display_name for w in mf.contributions.widgets],
    "bundled": [str(d) for d in bundled_model_dirs()],
    "models": sorted(p.name for d in bundled_model_dirs() for p in d.iterdir() if p.is_dir()),
}))
"""


@pytest.mark.slow
def test_wheel_installs_into_fresh_venv_and_plugin_is_found(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist), str(ROOT)],
        check=True, capture_output=True,
    )
    wheel = next(dist.glob("napari_skipseg-*.whl"))
    import zipfile

    with zipfile.ZipFile(wheel) as z:  # the code's licence and each bundled model's
        names = set(z.namelist())
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names), "no LICENSE in the wheel"
        bundled = {n.split("/")[2] for n in names if n.startswith("napari_skipseg/bundled_models/") and n.count("/") == 3}
        for model in bundled:
            text = z.read(f"napari_skipseg/bundled_models/{model}/LICENSE.md").decode()
            assert "- weights: " in text and "- training data: " in text, model
    env_dir = tmp_path / "fresh"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-deps", str(wheel)], check=True)
    # dependencies come from the test environment (appended after the fresh venv's own
    # site-packages, so the wheel's copy of napari_skipseg is the one imported)
    deps = sysconfig.get_paths()["purelib"]
    env = {**os.environ, "PYTHONPATH": deps}
    out = subprocess.run(
        [str(py), "-c", CHECK], check=True, capture_output=True, text=True, env=env, cwd=tmp_path
    )
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["module"].startswith(str(env_dir)), info["module"]
    assert info["manifest"] == "SkipSeg" and "Segment" in info["widgets"]
    assert any(d.startswith(str(env_dir)) and d.endswith("bundled_models") for d in info["bundled"])
    expected = sorted(p.name for p in (ROOT / "models").iterdir() if (p / "config.json").exists())
    assert set(expected) <= set(info["models"])
    validate = subprocess.run([str(py), "-m", "npe2", "validate", "napari-skipseg"], capture_output=True,
                              text=True, env=env, cwd=tmp_path)
    assert validate.returncode == 0, validate.stdout + validate.stderr
