"""A one-line pointer from the gradient-flow view to the skip study (docs/skip_connections.md)."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel

#: The study's write-up, present in a source checkout (not shipped in the wheel).
DOC = Path(__file__).resolve().parents[2] / "docs" / "skip_connections.md"
ANCHOR = "what-skips-buy-measured"


def study_note() -> str:
    """Rich text: why the zeroed skips can show more gradient, and where the study is."""
    if DOC.is_file():
        where = f'<a href="{DOC.as_uri()}#{ANCHOR}">what skips buy, measured</a>'
    else:
        where = "“What skips buy, measured” in docs/skip_connections.md of the napari-skipseg source"
    return f"More gradient with every skip zeroed is no contradiction on a trained network: {where}."


def study_label() -> QLabel:
    """A word-wrapped label with :func:`study_note`; the link opens in the browser."""
    label = QLabel(study_note())
    label.setTextFormat(Qt.TextFormat.RichText)
    label.setOpenExternalLinks(True)
    label.setWordWrap(True)
    label.setObjectName("skipStudyNote")
    return label
