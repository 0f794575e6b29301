"""Colours from napari's theme: readable in the dark and light themes, and following a theme
change of the viewer."""

from __future__ import annotations

import pytest
from matplotlib.colors import to_hex

from napari_skipseg._qt.theme import palette_for


def _luminance(hex_color: str) -> float:
    def lin(c):
        c /= 255
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_color[i:i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * lin(r) + 0.7152 * lin(g) + 0.0722 * lin(b)


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


@pytest.mark.parametrize("theme", ["dark", "light"])
def test_palette_is_readable(theme):
    pal = palette_for(theme)
    assert pal.dark == (theme == "dark")
    assert _contrast(pal.text, pal.background) >= 7
    assert _contrast(pal.hint, pal.background) >= 3  # secondary text (WCAG large/graphics)
    for color in pal.series:
        assert _contrast(color, pal.background) >= 3, color


def test_unknown_theme_falls_back_to_dark():
    assert palette_for("no such theme") == palette_for("dark")


def test_widgets_follow_the_viewers_theme(make_napari_viewer, model_home, qtbot):
    from napari_skipseg._qt.finetune_widget import FinetuneWidget
    from napari_skipseg._qt.segment_widget import SegmentWidget
    from napari_skipseg._qt.skip_widget import SkipWidget

    viewer = make_napari_viewer()
    viewer.theme = "dark"
    seg, ft, skip = SegmentWidget(viewer), FinetuneWidget(viewer), SkipWidget(viewer)
    for w in (seg, ft, skip):
        qtbot.addWidget(w)
    skip.gradient_plot.plot(["0", "1"], [1e-2, 1e-3], [1e-4, 1e-3], "t")
    updates = skip.gradient_plot.updates
    for theme in ("light", "dark", "light"):
        viewer.theme = theme
        pal = palette_for(theme)
        assert ft.plot.palette_ == pal and skip.gradient_plot.palette_ == pal
        assert to_hex(ft.plot.figure.get_facecolor()) == pal.background
        assert to_hex(skip.gradient_plot.figure.get_facecolor()) == pal.background
        assert to_hex(ft.plot.ax.get_facecolor()) == pal.background
        assert pal.hint in seg.model_info.styleSheet() and pal.hint in skip.model_info.styleSheet()
    assert skip.gradient_plot.updates == updates  # redrawn in new colours, not a new plot


def test_default_is_naparis_dark_theme():
    """Widgets start in these colours: the same as napari's dark theme, so following the
    default theme draws nothing again."""
    from napari_skipseg._qt.theme import DEFAULT

    assert palette_for("dark") == DEFAULT
