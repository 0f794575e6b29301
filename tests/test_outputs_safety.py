"""Nothing the user made is lost to an output: no command writes over, replaces or writes
inside its input, the napari writers replace only what they wrote, and a write killed
half-way leaves a temporary that the next write cleans away."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_skipseg._writer import WriteRefused, write_image, write_labels
from napari_skipseg.batch import BatchError, FileJob, check_output
from napari_skipseg.cli import main
from napari_skipseg.io import read_image
from napari_skipseg.io import write_image as io_write
from napari_skipseg.io.zarr_io import (
    MARKER,
    clean_stale_temporaries,
    create_ome_zarr,
    temporary_name,
    written_by_us,
)

REPO = Path(__file__).resolve().parents[1]


def _segment(src, dst, *extra):
    return main(["segment", str(src), "-o", str(dst), "--model", "tiny", "-q", "--device", "cpu", "--no-flips",
                 *extra])


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# --- S1: an output never holds, is, or lies inside an input ---------------------------------------


def test_input_inside_the_output_store_is_refused_and_kept(model_home, tmp_path, capsys, monkeypatch):
    """S1: the input lives inside the output .zarr; --overwrite must not delete it."""
    monkeypatch.chdir(tmp_path)
    io_write("p.zarr", np.zeros((4, 4), np.uint8))
    io_write("p.zarr/raw.zarr", np.ones((64, 64), np.uint16))
    assert _segment("p.zarr/raw.zarr", "p.zarr", "--overwrite") == 2
    line = _one_error_line(capsys)
    assert "p.zarr: the output holds the input p.zarr/raw.zarr" in line
    back, _ = read_image("p.zarr/raw.zarr")
    assert np.array_equal(back, np.ones((64, 64), np.uint16))


def test_outputs_inside_or_through_links_to_inputs_are_refused(model_home, tmp_path, capsys):
    img = tmp_path / "img.zarr"
    io_write(img, np.ones((64, 64), np.uint16))
    (tmp_path / "link.zarr").symlink_to(img)
    # inside the input store (not as its labels)
    assert _segment(img, img / "labels" / "x.zarr") == 2
    assert "lies inside the input" in _one_error_line(capsys)
    # the input through a symlink, replaced with --overwrite
    tif = tmp_path / "img.tif"
    tifffile.imwrite(tif, np.ones((64, 64), np.uint16))
    (tmp_path / "link.tif").symlink_to(tif)
    assert _segment(tmp_path / "link.tif", tif, "--overwrite") == 2
    assert "the output is the input" in _one_error_line(capsys)
    # the store holding the linked-to input
    io_write(tmp_path / "p.zarr", np.zeros((4, 4), np.uint8))
    io_write(tmp_path / "p.zarr" / "raw.zarr", np.ones((64, 64), np.uint16))
    (tmp_path / "raw-link.zarr").symlink_to(tmp_path / "p.zarr" / "raw.zarr")
    assert _segment(tmp_path / "raw-link.zarr", tmp_path / "p.zarr", "--overwrite") == 2
    assert "holds the input" in _one_error_line(capsys)
    assert (tmp_path / "p.zarr" / "raw.zarr" / "zarr.json").is_file()
    # a folder of inputs: an output folder inside it is refused (the outputs would be read
    # as inputs next time); outputs into the same folder would replace the inputs
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(folder / name, np.ones((64, 64), np.uint16))
    assert _segment(folder, folder / "out") == 2
    assert "lies inside the input" in _one_error_line(capsys)
    assert _segment(folder, folder, "--overwrite") == 2
    assert "the output is the input" in _one_error_line(capsys)
    assert sorted(p.name for p in folder.iterdir()) == ["a.tif", "b.tif"]
    assert np.array_equal(tifffile.imread(folder / "a.tif"), np.ones((64, 64), np.uint16))


def test_labels_into_an_ome_zarr_never_replace_an_input_labels_image(model_home, tmp_path, capsys):
    """Labels written next to the image (-o the input itself) must not replace a labels
    image that is itself an input of the same run."""
    img = tmp_path / "img.zarr"
    io_write(img, np.ones((64, 64), np.uint16))
    assert _segment(img, img, "--labels-name", "mine") == 0
    capsys.readouterr()
    labels = img / "labels" / "mine"
    before = np.asarray(read_image(labels)[0])
    rc = main(["segment", str(img), str(labels), "-o", str(img), "--labels-name", "mine", "--model", "tiny",
               "-q", "--overwrite"])  # two inputs: the image and its labels
    assert rc == 2 and _one_error_line(capsys).startswith("skipseg: error:")
    # the same through the library: a job whose labels are an input
    job = FileJob(img, img, labels_name="mine")
    with pytest.raises(BatchError, match="the output is the input"):
        job.check([labels])
    assert np.array_equal(np.asarray(read_image(labels)[0]), before)


def test_check_output_cases(tmp_path):
    a = tmp_path / "a.zarr"
    a.mkdir()
    check_output(tmp_path / "b.zarr", [a])  # beside: fine
    check_output(a / "labels" / "x", [a], may_be_inside=a)  # its own labels: fine
    for dst, match in ((a, "is the input"), (tmp_path, "holds the input"), (a / "x.zarr", "inside the input")):
        with pytest.raises(BatchError, match=match):
            check_output(dst, [a])
    # a path that does not exist yet, under a symlinked folder, is compared by its real path
    (tmp_path / "via").symlink_to(a)
    with pytest.raises(BatchError, match="inside the input"):
        check_output(tmp_path / "via" / "new" / "out.tif", [a])


def test_features_and_evaluate_outputs_never_replace_their_inputs(model_home, tmp_path, capsys):
    img = tmp_path / "L0_encoder.ome.tif"  # named as a feature file, in the output folder
    tifffile.imwrite(img, np.ones((64, 64), np.uint16))
    rc = main(["features", str(img), "-o", str(tmp_path), "--model", "tiny", "--overwrite", "-q"])
    assert rc == 2 and "would replace the input" in _one_error_line(capsys)
    assert np.array_equal(tifffile.imread(img), np.ones((64, 64), np.uint16))
    mask = tmp_path / "mask.tif"
    tifffile.imwrite(mask, np.zeros((64, 64), np.uint16))
    rc = main(["evaluate", str(img), str(mask), "--model", "tiny", "--json", str(mask), "-q"])
    assert rc == 2 and "the output is the input" in _one_error_line(capsys)
    assert np.array_equal(tifffile.imread(mask), np.zeros((64, 64), np.uint16))


# --- S2: the napari writers replace only what they wrote --------------------------------------------


def test_writer_never_replaces_a_plain_zarr_image(tmp_path):
    """S2: saving a Labels layer onto the raw image (a plain zarr array) raises, the raw stays."""
    import zarr

    raw = tmp_path / "raw.zarr"
    zarr.create_array(str(raw), shape=(32, 32), dtype="u2", fill_value=0)[:] = 7
    labels = np.ones((32, 32), np.uint32)
    with pytest.raises(WriteRefused, match="not written by napari-skipseg"):
        write_labels(str(raw), labels, {"name": "Labels"})
    with pytest.raises(WriteRefused, match="not written by napari-skipseg"):
        write_image(str(raw), labels, {"name": "Image"})
    assert np.all(zarr.open_array(str(raw), mode="r")[...] == 7)


def test_writer_replaces_its_own_labels_and_adds_labels_next_to_images(tmp_path):
    import zarr

    own = tmp_path / "labels.zarr"
    assert write_labels(str(own), np.ones((16, 16), np.uint32), {"name": "L"}) == [str(own)]
    assert written_by_us(own)
    write_labels(str(own), np.full((16, 16), 2, np.uint32), {"name": "L"})  # saved again: replaced
    assert np.all(np.asarray(read_image(own)[0]) == 2) and not (own / "labels").exists()

    img = tmp_path / "img.zarr"
    io_write(img, np.ones((16, 16), np.uint16))
    (path,) = write_labels(str(img), np.ones((16, 16), np.uint32), {"name": "cells"})
    assert path == str(img / "labels" / "cells") and written_by_us(path)
    write_labels(str(img), np.full((16, 16), 3, np.uint32), {"name": "cells"})  # ours: replaced
    assert np.all(np.asarray(read_image(path)[0]) == 3)
    # labels another tool put there are kept
    foreign = zarr.open_group(str(img / "labels" / "theirs"), mode="w", zarr_format=3)
    foreign.attrs["ome"] = {"version": "0.5", "image-label": {"version": "0.5"}}
    foreign.create_array("0", shape=(16, 16), dtype="u4", fill_value=0)[:] = 5
    with pytest.raises(WriteRefused, match="labels there were not written by napari-skipseg"):
        write_labels(str(img), np.ones((16, 16), np.uint32), {"name": "theirs"})
    assert np.all(zarr.open_array(str(img / "labels" / "theirs" / "0"), mode="r")[...] == 5)
    assert np.array_equal(np.asarray(read_image(img)[0]), np.ones((16, 16), np.uint16))
    # an OME-Zarr image made elsewhere (no marker) is never replaced by the image writer
    attrs = dict(zarr.open_group(str(img), mode="r").attrs)
    assert MARKER in attrs
    g = zarr.open_group(str(img), mode="r+")
    g.attrs.update({MARKER: None})
    with pytest.raises(WriteRefused):
        write_image(str(img), np.zeros((16, 16), np.uint16), {"name": "Image"})


# --- temporaries of interrupted writes ----------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _fake_tmp(path: str, with_store: bool = True) -> str:
    os.makedirs(path)
    if with_store:
        Path(path, "zarr.json").write_text("{}")
    return path


def test_stale_temporaries_of_dead_writers_are_cleaned_others_kept(tmp_path):
    folder = str(tmp_path)
    live = temporary_name(tmp_path / "a.zarr")  # this process: alive
    _fake_tmp(live)
    dead = _fake_tmp(live.replace(f"-{os.getpid()}.tmp", f"-{_dead_pid()}.tmp").replace(".a.zarr.", ".b.zarr."))
    young_old_style = _fake_tmp(os.path.join(folder, ".c.zarr.0123abcd.tmp"))
    aged_old_style = _fake_tmp(os.path.join(folder, ".d.zarr.89abcdef.tmp"))
    os.utime(aged_old_style, (time.time() - 2 * 86400,) * 2)
    not_ours = _fake_tmp(dead.replace(".b.zarr.", ".e.zarr."), with_store=False)
    Path(not_ours, "notes.txt").write_text("the user's")
    # a store being swapped in when the writer died: the old result goes back in place
    swapped = _fake_tmp(dead.replace(".b.zarr.", ".f.zarr.") + ".old")
    removed = clean_stale_temporaries(folder)
    assert sorted(removed) == sorted([dead, aged_old_style, swapped])
    assert os.path.isdir(live) and os.path.isdir(young_old_style) and os.path.isdir(not_ours)
    assert not os.path.exists(dead) and not os.path.exists(aged_old_style)
    assert os.path.isfile(os.path.join(folder, "f.zarr", "zarr.json"))
    # a new store in the folder cleans what is stale there
    dead2 = _fake_tmp(dead)
    with create_ome_zarr(tmp_path / "g.zarr", (8, 8), np.uint8):
        pass
    assert not os.path.exists(dead2)


@pytest.mark.slow
def test_kill_9_during_segment_leaves_a_temporary_the_next_run_cleans(model_home, tmp_path):
    """kill -9 while ``segment -o out.zarr`` writes; the next run removes the leftover and succeeds."""
    src = tmp_path / "stack.tif"
    rng = np.random.default_rng(0)
    tifffile.imwrite(src, rng.integers(0, 1000, (2000, 64, 64)).astype(np.uint16), metadata={"axes": "ZYX"})
    out = tmp_path / "out.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "SKIPSEG_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "napari_skipseg.cli", "segment", str(src), "-o", str(out), "--model", "tiny",
           "--mode", "2d", "--device", "cpu", "--no-flips", "-q"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not any(p.name.startswith(".out.zarr.") for p in tmp_path.iterdir()):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no temporary store appeared"
            time.sleep(0.05)
        time.sleep(0.2)  # a few slices written
        assert proc.poll() is None, "finished before it could be killed: make the stack larger"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.zarr.")]
    assert left and not out.exists()
    small = tmp_path / "small.tif"
    tifffile.imwrite(small, rng.integers(0, 1000, (2, 64, 64)).astype(np.uint16), metadata={"axes": "ZYX"})
    done = subprocess.run([*cmd[:4], str(small), *cmd[5:]], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.zarr.")] == []
    assert read_image(out)[0].shape == (2, 64, 64)


# --- numbers on the command line -----------------------------------------------------------------

NUMBER_OPTIONS = [
    ("segment", "--tile"), ("segment", "--overlap"), ("segment", "--batch-size"), ("segment", "--block"),
    ("segment", "--workers"), ("segment", "--channel"),
    ("features", "--slice"), ("features", "--time"), ("features", "--center"), ("features", "--block"),
    ("evaluate", "--tile"), ("evaluate", "--overlap"),
]
BAD_VALUES = {"--overlap": ["nan", "inf", "-inf", "-0.1", "0.6"], "--center": ["nan", "inf", "-inf"],
              "--tile": ["nan", "0", "-64", "1", "7", "100000"]}


def _command(command: str, option: str, value: str) -> list[str]:
    head = {"segment": ["segment", "in.tif", "-o", "out.tif"], "features": ["features", "in.tif", "-o", "f",
            "--model", "tiny"], "evaluate": ["evaluate", "in.tif", "mask.tif", "--model", "tiny"]}[command]
    return [*head, option, value]


@pytest.mark.parametrize(("command", "option"), NUMBER_OPTIONS)
def test_every_number_option_refuses_nonsense_in_one_line(command, option, capsys):
    values = BAD_VALUES.get(option, ["nan", "inf", "-1", "1.5", "x", *([] if option in (
        "--channel", "--slice", "--time") else ["0"])])
    for value in values:
        with pytest.raises(SystemExit) as exc:
            main(_command(command, option, value))
        assert exc.value.code == 2, value
        line = _one_error_line(capsys)
        assert line.startswith(f"skipseg {command}: error: argument {option}"), line
        assert "Traceback" not in line


def test_good_numbers_still_parse():
    from napari_skipseg.cli import build_parser

    args = build_parser().parse_args(["segment", "a.tif", "-o", "b.tif", "--tile", "64", "--overlap", "0",
                                      "--block", "8", "256", "256", "--batch-size", "1", "--channel", "0"])
    assert (args.tile, args.overlap, args.block, args.batch_size, args.channel) == (64, 0.0, [8, 256, 256], 1, 0)
