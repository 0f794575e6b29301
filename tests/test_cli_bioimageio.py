"""``skipseg export`` and ``skipseg import-model`` of bioimage.io packages, ``skipseg models -v``
licences, run in-process."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import tifffile
import yaml

from napari_skipseg.cli import main


def _nuclei(path, shape=(72, 64)):
    from napari_skipseg._sample_data import synthetic_nuclei

    tifffile.imwrite(path, synthetic_nuclei(shape, radius=5.0, seed=2)[0])
    return path


def test_export_then_import_model_round_trip(model_home, tmp_path, capsys):
    pytest.importorskip("bioimageio.spec")
    import torch

    from napari_skipseg.model.store import load_model

    sample = _nuclei(tmp_path / "sample.tif")
    out = tmp_path / "tiny_package"  # .zip is added
    assert main(["export", "tiny", "-o", str(out), "--sample", str(sample), "--author", "A. Person", "-q"]) == 0
    package = tmp_path / "tiny_package.zip"
    assert package.is_file()
    with zipfile.ZipFile(package) as z:
        rdf = yaml.safe_load(z.read("rdf.yaml"))
    assert rdf["authors"] == [{"name": "A. Person"}]
    # exporting again without --overwrite: one line, exit 2, the package stays
    assert main(["export", "tiny", "-o", str(package)]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["import-model", str(package), "-o", "tiny_again"]) == 0
    assert "tiny_again" in capsys.readouterr().out
    a, b = load_model("tiny").state_dict(), load_model("tiny_again").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and a.keys() == b.keys()
    image = tmp_path / "image.tif"
    _nuclei(image, (80, 80))
    for name in ("tiny", "tiny_again"):
        assert main(["segment", str(image), "-o", str(tmp_path / f"{name}.tif"), "--model", name, "-q"]) == 0
    assert np.array_equal(tifffile.imread(tmp_path / "tiny.tif"), tifffile.imread(tmp_path / "tiny_again.tif"))
    # the same name again: refused, nothing overwritten
    assert main(["import-model", str(package), "-o", "tiny_again"]) == 2
    assert "exists already" in capsys.readouterr().err


def test_import_model_of_a_checkpoint_still_needs_config(model_home, tmp_path, capsys):
    import torch

    from napari_skipseg.model.store import load_model

    ckpt = tmp_path / "w.pt"
    torch.save(load_model("tiny").state_dict(), ckpt)
    assert main(["import-model", str(ckpt), "-o", "x"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--config" in err and len(err.splitlines()) == 1


def test_import_model_refuses_a_package_it_cannot_run(model_home, tmp_path, capsys):
    pkg = tmp_path / "keras"
    pkg.mkdir()
    (pkg / "rdf.yaml").write_text(yaml.safe_dump({
        "type": "model", "format_version": "0.5.3", "name": "kerasnet",
        "weights": {"keras_hdf5": {"source": "w.h5", "tensorflow_version": "2.10"}},
    }))
    assert main(["import-model", str(pkg), "-o", "k"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "keras_hdf5" in err and "torchscript" in err


def test_export_errors_are_one_line(model_home, tmp_path, capsys):
    pytest.importorskip("bioimageio.spec")
    rgb = tmp_path / "rgb.tif"
    tifffile.imwrite(rgb, np.zeros((3, 4, 32, 32), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    assert main(["export", "tiny", "-o", str(tmp_path / "x.zip"), "--sample", str(rgb)]) == 2
    assert main(["export", "no-such-model", "-o", str(tmp_path / "y.zip")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("skipseg: error:") for line in err)
    assert not (tmp_path / "x.zip").exists() and not (tmp_path / "y.zip").exists()


def test_models_verbose_shows_each_bundled_models_licence(capsys):
    assert main(["models", "-v"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln and not ln.startswith(" ")}
    licences = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("licence:")]
    assert {"nuclei2d", "em2d", "hippocampus3d", "nuclei3d"} <= set(lines)
    text = "\n".join(licences)
    for expected in ("weights CC0-1.0", "research-use", "weights CC-BY-SA-4.0", "weights CC-BY-3.0", "weights MIT"):
        assert expected in text


def test_import_model_of_a_zip_that_is_no_package(model_home, tmp_path, capsys):
    import zipfile

    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"PK\x03\x04 not really a zip")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as z:
        z.writestr("weights.pt", b"x")
    for path in (junk, other):
        assert main(["import-model", str(path), "-o", "x"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"skipseg: error: {path}: not a bioimage.io model package (a zip archive holding rdf.yaml)"
