"""Hostile files for safety tests: pickles that run code when unpickled, damaged files."""

from __future__ import annotations

import pickle
from pathlib import Path


class Payload:
    """Unpickling this calls ``exec``, which creates ``marker``: proof that code ran."""

    def __init__(self, marker: str | Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def evil_checkpoint(path: str | Path, marker: str | Path, kind: str = "torch") -> Path:
    """Write a checkpoint at ``path`` whose unpickling creates ``marker``.

    ``kind``: ``"torch"`` (``torch.save`` zip format, looks like a state dict with one real
    tensor) or ``"pickle"`` (a bare pickle stream).
    """
    import torch

    path = Path(path)
    if kind == "torch":
        torch.save({"encoder.stages.0.conv1.weight": torch.zeros(4, 1, 3, 3), "payload": Payload(marker)}, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump({"encoder.stages.0.conv1.weight": [[0.0]], "payload": Payload(marker)}, fh, protocol=2)
    return path


def unsafe_load(path: str | Path) -> None:
    """Load ``path`` the way a careless program would (to prove the payload works)."""
    import torch

    path = Path(path)
    with open(path, "rb") as fh:
        zipped = fh.read(4) == b"PK\x03\x04"
    if zipped:
        torch.load(path, weights_only=False)
    else:
        with open(path, "rb") as fh:
            pickle.load(fh)  # noqa: S301 - deliberately unsafe, on a file made by the test
