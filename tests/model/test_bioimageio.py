"""bioimage.io packages: export of a stored model, import back (bit for bit), import of
torchscript/onnx-only and foreign packages, refusal of what cannot run safely."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from napari_skipseg.inference.engine import predict, run
from napari_skipseg.model.bioimageio import (
    NETWORK_WEIGHTS,
    PackagedNetwork,
    PackageError,
    export_package,
    import_package,
    is_package,
)
from napari_skipseg.model.store import ModelLoadError, load_model, save_model
from tests.conftest import make_tiny_model

pytest.importorskip("bioimageio.spec", reason="exporting needs bioimageio.spec (extra 'bioimageio')")


def _image(shape=(64, 64), seed=3):
    from napari_skipseg._sample_data import synthetic_nuclei

    return synthetic_nuclei(shape, radius=5.0, seed=seed)[0]


def _trained(model):
    """Non-default batch-norm statistics, so that they travel too."""
    model.train()
    shape = (2, 1, 32, 32) if model.config.spatial_dims == 2 else (2, 1, 8, 16, 16)
    with torch.no_grad():
        model(torch.randn(shape) * 2 + 1)
    return model.eval()


@pytest.fixture
def exported(model_home, tmp_path):
    """The tiny 2D instance model with a licence and a citation, stored and exported."""
    model = _trained(make_tiny_model("tinylic"))
    model.config.card.update({"licence": "training data: synthetic, CC0", "weights_licence": "CC0-1.0",
                              "cite": [{"text": "A data set.", "doi": "10.1000/xyz123"}]})
    save_model(model, model_home / "models" / "tinylic", half=True)
    out = run(export_package("tinylic", tmp_path / "tiny.zip", sample=_image((80, 72))))
    return out


def _rdf(path: Path) -> dict:
    with zipfile.ZipFile(path) as z:
        return yaml.safe_load(z.read("rdf.yaml"))


def _repack(src: Path, dst: Path, edit, replace: dict[str, bytes] | None = None) -> Path:
    """A copy of the package ``src`` with its rdf edited by ``edit(rdf)`` and files replaced."""
    import hashlib

    rdf = _rdf(src)
    edit(rdf)
    replace = replace or {}

    def rehash(node):  # replaced files get their new sha256, as a packager would write
        if isinstance(node, dict):
            if node.get("source") in replace and "sha256" in node:
                node["sha256"] = hashlib.sha256(replace[node["source"]]).hexdigest()
            for v in node.values():
                rehash(v)
        elif isinstance(node, list):
            for v in node:
                rehash(v)

    rehash(rdf)
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            if name != "rdf.yaml":
                zout.writestr(name, replace.get(name, zin.read(name)))
        zout.writestr("rdf.yaml", yaml.safe_dump(rdf))
    return dst


def test_export_writes_a_spec_0_5_package_with_card_cover_licence_and_three_weights(exported):
    rdf = _rdf(exported)
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    arch = rdf["weights"]["pytorch_state_dict"]["architecture"]
    assert (arch["callable"], arch["import_from"]) == ("SkipUNet", "napari_skipseg.model.unet")
    assert arch["kwargs"]["base_channels"] == 4 and "card" not in arch["kwargs"]
    assert rdf["license"] == "CC0-1.0"
    assert any(c.get("doi") == "10.1000/xyz123" for c in rdf["cite"])
    assert any("U-Net" in c["text"] for c in rdf["cite"])
    pre = rdf["inputs"][0]["preprocessing"]
    scale = next(p for p in pre if p["id"] == "scale_range")["kwargs"]
    assert (scale["min_percentile"], scale["max_percentile"]) == (1.0, 99.8)
    assert rdf["outputs"][0]["postprocessing"][0]["id"] == "softmax"
    with zipfile.ZipFile(exported) as z:
        names = set(z.namelist())
        doc = z.read(rdf["documentation"]["source"]).decode()
        cover = z.read(rdf["covers"][0]["source"])
        x = np.load(io.BytesIO(z.read("test_input.npy")))
        y = np.load(io.BytesIO(z.read("test_output.npy")))
    assert {"weights.pt", "model.torchscript", "model.onnx", "skipseg_config.json"} <= names
    assert "# tinylic" in doc and "## Validation" in doc and "seeded watershed" in doc
    assert cover[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    w, h = Image.open(io.BytesIO(cover)).size
    assert w == 2 * h
    # the test input is a valid size (multiple of 4 for depth 2), cut from the 80 x 72 sample
    assert x.shape == (1, 1, 80, 72) and y.shape == (1, 3, 80, 72)
    assert np.allclose(y.sum(axis=1), 1.0, atol=1e-5)
    assert is_package(exported)


def test_export_import_round_trip_is_bit_for_bit(exported, model_home):
    folder = import_package(exported, "tiny_back")
    original, back = load_model("tinylic"), load_model(folder)
    a, b = original.state_dict(), back.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert torch.equal(a[key], b[key]), key
        assert a[key].numpy().tobytes() == b[key].numpy().tobytes(), key
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as f:  # stored as compactly as before
        assert f.get_slice("head.weight").get_dtype() == "F16"
    assert back.config.card["weights_licence"] == "CC0-1.0"  # the card came back whole
    assert (folder / "LICENSE.md").read_text().count("CC0-1.0") >= 1
    image = _image((96, 96), seed=5)
    one = run(predict(original, image, output="probabilities", backend="torch"))
    two = run(predict(back, image, output="probabilities", backend="torch"))
    assert np.array_equal(one.probabilities, two.probabilities)
    assert np.array_equal(run(predict(original, image)).labels, run(predict(back, image)).labels)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_package_with_only_torchscript_or_onnx_weights_segments(exported, model_home, tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")

    def keep_only(rdf):
        entry = rdf["weights"][fmt]
        entry.pop("parent", None)
        rdf["weights"] = {fmt: entry}

    only = _repack(exported, tmp_path / f"{fmt}.zip", keep_only)
    folder = import_package(only, f"tiny_{fmt}")
    assert (folder / NETWORK_WEIGHTS[fmt]).is_file() and not (folder / "model.safetensors").exists()
    net = load_model(f"tiny_{fmt}")
    assert isinstance(net, PackagedNetwork) and net.format == fmt
    image = _image((100, 90), seed=6)  # not a multiple of 4: the wrapper pads and crops
    same = {"output": "probabilities", "backend": "torch", "tile": (64, 64)}  # same tiles, same borders
    ref = run(predict(load_model("tinylic"), image, **same))
    got = run(predict(net, image, **same))
    assert got.probabilities.shape == ref.probabilities.shape
    assert np.abs(got.probabilities - ref.probabilities).max() < 1e-4
    assert np.array_equal(got.probabilities.argmax(0), ref.probabilities.argmax(0))
    with pytest.raises(ModelLoadError, match="cannot be fine-tuned"):
        net.train()
    from napari_skipseg.model.store import list_models

    assert f"tiny_{fmt}" in {e.name for e in list_models()}
    with pytest.raises(PackageError, match="exists already"):
        import_package(only, f"tiny_{fmt}")
    assert import_package(only, f"tiny_{fmt}", overwrite=True) == folder
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(".")) == []  # no leftovers


def test_foreign_torchscript_package_with_sigmoid_output_segments(model_home, tmp_path):
    """A package not made by us: (b, c, y, x) in, one sigmoid channel out, zero-mean scaling."""

    class Net(torch.nn.Module):
        def forward(self, x):
            return 4.0 * x  # logits; the package says sigmoid postprocessing

    ts = io.BytesIO()
    torch.jit.save(torch.jit.script(Net()), ts)
    rdf = {
        "format_version": "0.5.4", "type": "model", "name": "bright things", "description": "thresholds",
        "license": "MIT",
        "inputs": [{"id": "input", "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["c0"]},
                                            {"type": "space", "id": "y", "size": {"min": 16, "step": 16}},
                                            {"type": "space", "id": "x", "size": {"min": 16, "step": 16}}],
                    "preprocessing": [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}]},
        ],
        "outputs": [{"id": "mask", "axes": [{"type": "batch"}, {"type": "channel", "channel_names": ["fg"]},
                                            {"type": "space", "id": "y", "size": {"tensor_id": "input", "axis_id": "y"}},
                                            {"type": "space", "id": "x", "size": {"tensor_id": "input", "axis_id": "x"}}],
                     "postprocessing": [{"id": "sigmoid"}]}],
        "weights": {"torchscript": {"source": "net.pt", "pytorch_version": "2.0"}},
    }
    pkg = tmp_path / "foreign"
    pkg.mkdir()
    (pkg / "net.pt").write_bytes(ts.getvalue())
    (pkg / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    folder = import_package(pkg, "foreign")
    net = load_model(folder)
    assert net.config.num_classes == 2 and net.config.class_names == ["background", "foreground"]
    image = np.zeros((50, 40), np.float32)
    image[10:20, 5:30] = 100.0
    labels = run(predict(net, image, output="semantic")).labels
    assert labels.shape == image.shape
    assert labels[12:18, 8:28].all() and not labels[30:, :].any()


def test_spec_0_4_package_without_declared_class_count(model_home, tmp_path):
    """0.4 axes strings and a reference-sized output: the class count comes from running it."""

    class Net(torch.nn.Module):
        def forward(self, x):
            return torch.cat([0.5 - x, x - 0.5, torch.zeros_like(x) - 5.0], dim=1)

    rdf = {
        "format_version": "0.4.10", "type": "model", "name": "old style", "description": "three classes",
        "inputs": [{"name": "input0", "axes": "bcyx", "data_type": "float32",
                    "shape": {"min": [1, 1, 16, 16], "step": [0, 0, 8, 8]},
                    "preprocessing": [{"name": "scale_range", "kwargs": {"mode": "per_sample", "axes": "xy",
                                                                         "min_percentile": 1, "max_percentile": 99}}]}],
        "outputs": [{"name": "output0", "axes": "bcyx", "data_type": "float32",
                     "shape": {"reference_tensor": "input0", "scale": [1, 1, 1, 1], "offset": [0, 1, 0, 0]}}],
        "weights": {"torchscript": {"source": "net.pt"}},
    }
    pkg = tmp_path / "old"
    pkg.mkdir()
    torch.jit.save(torch.jit.script(Net()), str(pkg / "net.pt"))
    (pkg / "rdf.yaml").write_text(yaml.safe_dump(rdf))
    net = load_model(import_package(pkg / "rdf.yaml", "old"))
    assert net.config.num_classes == 3
    assert net.config.normalization == {"kind": "percentile", "low": 1.0, "high": 99.0}
    image = np.full((40, 44), 10.0, np.float32)
    image[5:20, 5:20] = 200.0
    labels = run(predict(net, image, output="semantic")).labels
    assert labels[8:17, 8:17].all() and not labels[25:, 25:].any()


def test_pickled_weights_are_refused_in_one_line(exported, model_home, tmp_path):
    import argparse

    state = load_model("tinylic").state_dict()
    buf = io.BytesIO()
    torch.save({"state_dict": state, "args": argparse.Namespace(evil=True)}, buf)

    def same(rdf):
        rdf["weights"] = {"pytorch_state_dict": rdf["weights"]["pytorch_state_dict"]}

    bad = _repack(exported, tmp_path / "pickled.zip", same, {"weights.pt": buf.getvalue()})
    with pytest.raises(ModelLoadError, match="refused") as err:
        import_package(bad, "evil")
    assert "\n" not in str(err.value)
    assert not (model_home / "models" / "evil").exists()


def test_foreign_state_dict_and_remote_files_are_refused(exported, model_home, tmp_path):
    def foreign(rdf):
        sd = rdf["weights"]["pytorch_state_dict"]
        sd["architecture"] = {"callable": "UNet", "import_from": "somebody.nets", "kwargs": {}}
        rdf["weights"] = {"pytorch_state_dict": sd}

    with pytest.raises(PackageError, match="somebody|UNet|imported and run"):
        import_package(_repack(exported, tmp_path / "foreign.zip", foreign), "x1")

    def remote(rdf):
        entry = rdf["weights"]["torchscript"]
        entry.pop("parent", None)
        entry["source"] = "https://example.org/model.pt"
        rdf["weights"] = {"torchscript": entry}

    with pytest.raises(PackageError, match="web"):
        import_package(_repack(exported, tmp_path / "remote.zip", remote), "x2")

    def escape(rdf):
        entry = rdf["weights"]["torchscript"]
        entry.pop("parent", None)
        entry["source"] = "../../etc/passwd"
        rdf["weights"] = {"torchscript": entry}

    with pytest.raises(PackageError, match="outside"):
        import_package(_repack(exported, tmp_path / "escape.zip", escape), "x3")
    assert not any((model_home / "models" / n).exists() for n in ("x1", "x2", "x3"))


def test_altered_weights_fail_their_sha256(exported, model_home, tmp_path):
    with zipfile.ZipFile(exported) as z:
        data = bytearray(z.read("weights.pt"))
    data[-100] ^= 0xFF
    rdf = _rdf(exported)
    altered = tmp_path / "altered.zip"
    with zipfile.ZipFile(exported) as zin, zipfile.ZipFile(altered, "w") as zout:
        for name in zin.namelist():
            zout.writestr(name, bytes(data) if name == "weights.pt" else zin.read(name))
    assert rdf["weights"]["pytorch_state_dict"]["sha256"]
    with pytest.raises(PackageError, match="sha256"):
        import_package(altered, "altered")


def test_not_a_package_and_damaged_yaml(tmp_path, model_home):
    plain = tmp_path / "plain.zip"
    with zipfile.ZipFile(plain, "w") as z:
        z.writestr("hello.txt", "hi")
    assert not is_package(plain)
    with pytest.raises(PackageError, match="not a bioimage.io package"):
        import_package(plain, "p")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "rdf.yaml").write_text("type: model\nweights: [unclosed\n")
    with pytest.raises(PackageError, match="not valid YAML"):
        import_package(broken, "p")
    (broken / "rdf.yaml").write_text(json.dumps({"type": "dataset"}))
    with pytest.raises(PackageError, match="not a model"):
        import_package(broken, "p")


@pytest.mark.slow
def test_bioimageio_core_passes_the_exported_package(exported):
    """bioimage.io's own test (bioimageio.core): every weight format reproduces the test output."""
    core = pytest.importorskip("bioimageio.core", reason="bioimageio.core is not installed "
                               "(pip install 'napari-skipseg[bioimageio]')")
    summary = core.test_model(exported)
    failed = [d.name for d in summary.details if d.status == "failed"]
    assert summary.status == "passed", failed
