"""Shared fixtures: a tiny real model saved in a temporary user model store, and the Segment widget in a real viewer."""

from __future__ import annotations

import pytest


def pytest_sessionstart(session):
    """Import the heavy libraries once and move what they allocate out of the garbage collector's
    sight (``gc.freeze``): napari runs full collections whenever a viewer closes, and without this
    each one walks torch's and napari's ~0.4 M module-level objects again (about half of every GUI
    test's teardown on this CPU)."""
    import gc

    import napari  # noqa: F401
    import torch  # noqa: F401

    gc.collect()
    gc.freeze()


def make_tiny_model(name: str = "tiny", spatial_dims: int = 2, output: str = "instances", seed: int = 0):
    import torch

    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.unet import SkipUNet

    torch.manual_seed(seed)
    cfg = ModelConfig(
        name=name,
        spatial_dims=spatial_dims,
        num_classes=3 if output == "instances" else 2,
        base_channels=4,
        depth=2,
        output=output,
        class_names=["background", "interior", "boundary"] if output == "instances" else ["background", "object"],
        tile=[64, 64] if spatial_dims == 2 else [16, 32, 32],
        card={"task": f"tiny untrained {spatial_dims}D test model"},
    )
    return SkipUNet(cfg).eval()


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny test models run fastest on one thread, and several threads thrash on a busy machine."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _settings_folder(tmp_path, monkeypatch):
    """The widgets' remembered values go to a folder of the test's own, never the user's."""
    monkeypatch.setenv("SKIPSEG_CONFIG", str(tmp_path / "skipseg_config"))


@pytest.fixture
def model_home(tmp_path, monkeypatch):
    """``SKIPSEG_HOME`` pointing at a fresh store holding ``tiny`` (2D) and ``tiny3d``."""
    from napari_skipseg.model.store import save_model

    home = tmp_path / "skipseg_home"
    monkeypatch.setenv("SKIPSEG_HOME", str(home))
    save_model(make_tiny_model("tiny"), home / "models" / "tiny")
    save_model(make_tiny_model("tiny3d", spatial_dims=3, output="semantic"), home / "models" / "tiny3d")
    return home


@pytest.fixture(autouse=True, scope="session")
def _skipseg_cache(tmp_path_factory):
    """Networks the engine exports (ONNX) go to a temporary cache, not the user's."""
    import os

    before = os.environ.get("SKIPSEG_CACHE")
    os.environ["SKIPSEG_CACHE"] = str(tmp_path_factory.mktemp("skipseg-cache"))
    yield
    if before is None:
        os.environ.pop("SKIPSEG_CACHE", None)
    else:
        os.environ["SKIPSEG_CACHE"] = before


@pytest.fixture
def widget(make_napari_viewer, model_home, qtbot):
    """A real napari viewer with the Segment widget (models from the test's model home)."""
    from napari_skipseg._qt.segment_widget import SegmentWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    qtbot.addWidget(w)
    return viewer, w
