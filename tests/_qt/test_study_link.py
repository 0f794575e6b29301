"""The gradient-flow view points to the skip study."""

from __future__ import annotations

import re

from qtpy.QtWidgets import QLabel

from napari_skipseg._qt.skip_widget import SkipWidget
from napari_skipseg._qt.study_link import ANCHOR, DOC


def test_gradient_section_links_to_the_study(make_napari_viewer, qtbot):
    from napari.utils.theme import get_theme

    viewer = make_napari_viewer()
    w = SkipWidget(viewer)
    qtbot.addWidget(w)
    label = w.findChild(QLabel, "skipStudyNote")
    assert label is not None and label.openExternalLinks()
    href = re.search(r'href="([^"]+)"', label.text())
    assert href is not None, label.text()  # this is a source checkout: the document is here
    assert href.group(1) == f"{DOC.as_uri()}#{ANCHOR}"
    headings = [line[3:].strip() for line in DOC.read_text().splitlines() if line.startswith("## ")]
    anchors = [re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in headings]
    assert ANCHOR in anchors
    # the link takes the theme's text colour, also after a theme change
    for theme in ("light", "dark"):
        viewer.theme = theme
        assert f"color: {get_theme(theme).text.as_hex()}" in label.text()
