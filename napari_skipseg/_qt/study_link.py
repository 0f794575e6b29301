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


def study_label(viewer=None) -> QLabel:
    """A word-wrapped label with :func:`study_note`; the link opens in the browser and takes
    the text colour of the ``viewer``'s napari theme (and follows theme changes)."""
    label = QLabel()
    label.setTextFormat(Qt.TextFormat.RichText)
    label.setOpenExternalLinks(True)
    label.setWordWrap(True)
    label.setObjectName("skipStudyNote")

    def refresh(event=None) -> None:
        colour = None
        if viewer is not None:
            from napari.utils.theme import get_theme

            try:
                colour = get_theme(viewer.theme).text.as_hex()
            except (KeyError, ValueError):  # a theme napari does not know: Qt's colours
                colour = None
        label.setText(study_note(colour))

    refresh()
    if viewer is not None:
        viewer.events.theme.connect(refresh)

        def forget(*_) -> None:
            viewer.events.theme.disconnect(refresh)

        label.destroyed.connect(forget)
    return label
