"""The model store under concurrency, with two real processes on real files.

- two processes saving the same fine-tuned version at the same moment: one saves, the other
  fails clearly (never both "saved" with one silently overwritten);
- a process loading a model in a loop while another re-saves it with another config: every
  load succeeds and gives one version's config with the same version's weights.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest


def _marked_model(version: int):
    """A tiny model whose config (card ``v``) and weights (head bias) both say ``version``;
    odd and even versions differ in width, so a mixed config and weights would not even load."""
    import torch

    from napari_skipseg.model.config import ModelConfig
    from napari_skipseg.model.unet import SkipUNet

    torch.set_num_threads(1)
    cfg = ModelConfig(name="raced", base_channels=2 if version % 2 else 4, depth=1, card={"v": version})
    model = SkipUNet(cfg).eval()
    with torch.no_grad():
        model.head.bias.fill_(float(version))
    return model


def _fake_result(model):
    from napari_skipseg.training.finetune import FinetuneResult

    return FinetuneResult(model=model, parent="raced", before={}, after={"score": 0.5}, accepted=False,
                          message="test", history=[], best_step=0, steps=0, seconds=0.0, stopped=False,
                          options={"train": "all", "lr": 1e-3, "augment": False, "batch_size": 1},
                          split={}, normalization={})


def _save_version_worker(home: str, folders: list[str], who: int, barrier, out) -> None:
    import os

    import numpy as np

    os.environ["SKIPSEG_HOME"] = home
    from napari_skipseg.training.finetune import Annotated, save_version

    data = [Annotated(np.zeros((8, 8), np.float32), np.zeros((8, 8), np.int32), None, name=f"p{who}")]
    for folder in folders:
        model = _marked_model(who)
        barrier.wait(timeout=60)
        try:
            save_version(_fake_result(model), data, Path(folder), activate=False)
            out.put((folder, who, "saved"))
        except (FileExistsError, OSError) as err:
            out.put((folder, who, f"refused: {err}"))


def test_two_processes_saving_the_same_version_never_both_succeed(tmp_path, monkeypatch):
    """This process and a spawned one save into the same folders, released by a barrier."""
    import queue

    from napari_skipseg.model.store import load_model

    ctx = mp.get_context("spawn")
    home = tmp_path / "home"
    monkeypatch.setenv("SKIPSEG_HOME", str(home))
    folders = [str(home / "models" / f"out-{i}") for i in range(5)]
    barrier, out = ctx.Barrier(2), ctx.Queue()
    child = ctx.Process(target=_save_version_worker, args=(str(home), folders, 2, barrier, out))
    child.start()
    mine: queue.SimpleQueue = queue.SimpleQueue()
    _save_version_worker(str(home), folders, 1, barrier, mine)
    results = [out.get(timeout=240) for _ in folders] + [mine.get() for _ in folders]
    child.join(timeout=60)
    assert child.exitcode == 0
    for folder in folders:
        outcome = {who: text for f, who, text in results if f == folder}
        saved = [who for who, text in outcome.items() if text == "saved"]
        assert len(saved) == 1, outcome  # one saves, the other is told why not
        loser = 3 - saved[0]
        assert "never overwritten" in outcome[loser] or "another process" in outcome[loser], outcome
        model = load_model(folder)  # what is stored is the winner's, whole
        assert model.config.card["v"] == saved[0] and float(model.head.bias[0]) == saved[0]


def _resave_worker(folder: str, rounds: int, started) -> None:
    from napari_skipseg.model.store import save_model

    started.set()
    for version in range(2, rounds + 2):
        save_model(_marked_model(version), folder)


def test_loading_while_another_process_resaves_never_mixes_versions(tmp_path):
    from napari_skipseg.model.store import ModelLoadError, load_model, save_model

    folder = tmp_path / "m"
    save_model(_marked_model(1), folder)
    ctx = mp.get_context("spawn")
    started = ctx.Event()
    writer = ctx.Process(target=_resave_worker, args=(str(folder), 60, started))
    writer.start()
    assert started.wait(120)
    loads, failures, seen = 0, [], set()
    t0 = time.monotonic()
    while (writer.is_alive() or loads < 20) and time.monotonic() - t0 < 240:
        try:
            model = load_model(folder)
        except ModelLoadError as err:
            failures.append(str(err))
            continue
        finally:
            loads += 1
        version = model.config.card["v"]
        seen.add(version)
        assert float(model.head.bias[0]) == version, "config of one version, weights of another"
        assert model.config.base_channels == (2 if version % 2 else 4)
    writer.join(timeout=60)
    assert writer.exitcode == 0
    assert not failures, f"{len(failures)} of {loads} loads failed, e.g. {failures[0]}"
    assert len(seen) > 2, seen  # the loads did overlap the re-saves


@pytest.mark.parametrize("exchange", [True, False])
@pytest.mark.parametrize("dir_fd", [True, False])
def test_reader_sees_one_version_across_a_swap(tmp_path, monkeypatch, exchange, dir_fd):
    """The same property without a second process, at the worst moment: the folder is swapped
    for a new version (and the old one deleted) between the reader's opening of the config and
    of the weights; the reader retries and gets the new version whole. Both swaps (atomic
    exchange, two renames) and both ways of reading (folder descriptor, identity check)."""
    from napari_skipseg.model import store

    if dir_fd and not store.DIR_FD_READS:
        pytest.skip("no openat on this system")
    monkeypatch.setattr(store, "USE_EXCHANGE", exchange)
    monkeypatch.setattr(store, "DIR_FD_READS", dir_fd)
    folder = tmp_path / "m"
    store.save_model(_marked_model(1), folder)
    real_open_in = store._open_in
    swapped = []

    def open_then_swap(where, name, fd):
        if name == store.WEIGHTS_FILE and not swapped:
            swapped.append(True)
            store.save_model(_marked_model(2), folder)
        return real_open_in(where, name, fd)

    monkeypatch.setattr(store, "_open_in", open_then_swap)
    model = store.load_model(folder)
    assert swapped
    assert model.config.card["v"] == 2 and float(model.head.bias[0]) == 2.0
