"""A one-line pointer from the gradient-flow view to the skip study (docs/skip_connections.md)."""

from __future__ import annotations

from pathlib import Path

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QLabel

#: The study's write-up, present in a source checkout (not shipped in the wheel).
DOC = Path(__file__).resolve().parents[2] / "docs" / "skip_connections.md"
ANCHOR = "what-skips-buy-measured"


def study_note(link_colour: str | None = None) -> str:
    """Rich text: why the zeroed skips can show more gradient, and where the study is; the link
    underlined in ``link_colour`` (Qt's default link colour when None)."""
    if DOC.is_file():
        style = f' style="color: {link_colour};"' if link_colour else ""
        where = f'<a href="{DOC.as_uri()}#{ANCHOR}"{style}>what skips buy, measured</a>'
    else:
        where = "“What skips buy, measured” in docs/skip_connections.md of the napari-skipseg source"
    return f"More gradient with every skip zeroed is no contradiction on a trained network: {where}."


class StudyLabel(QLabel):
    """A word-wrapped label with :func:`study_note`; the link opens in the browser and takes
    the text colour of napari's theme through :meth:`set_palette` (called by
    :func:`.theme.follow_theme` on the widget that holds it, now and on theme changes)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setTextFormat(Qt.TextFormat.RichText)
        self.setOpenExternalLinks(True)
        self.setWordWrap(True)
        self.setObjectName("skipStudyNote")
        self.setText(study_note(None))

    def set_palette(self, palette) -> None:
        self.setText(study_note(palette.text))
