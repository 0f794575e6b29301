"""Colours from napari's theme, for the parts of our widgets napari's stylesheet does not
reach: hint labels (secondary text) and the plots (matplotlib, QPainter).

:func:`follow_theme` applies the viewer's theme to a widget now and again whenever the
viewer's theme changes: labels marked with :func:`hint` get the secondary text colour, and
every child with a ``set_palette(palette)`` method (the plots) gets the :class:`Palette`.
"""

from __future__ import annotations

from dataclasses import dataclass

_HINT = "skipseg_hint"


@dataclass(frozen=True)
class Palette:
    """Colours (``#rrggbb``) for plots and secondary text, from one napari theme."""

    background: str  # the dock's background (plots sit on it)
    text: str
    hint: str  # secondary text: between text and background
    axis: str  # plot spines and grid
    series: tuple[str, ...]  # data colours, readable on ``background``
    dark: bool


#: data colours: light tints on a dark background, deep ones on a light background
_SERIES_DARK = ("#4fc3f7", "#ffb74d", "#ff8a65")
_SERIES_LIGHT = ("#0277bd", "#c25e00", "#c62828")


def _hex(color) -> str:
    text = color.as_hex() if hasattr(color, "as_hex") else str(color)
    text = text.lstrip("#")
    if len(text) in (3, 4):
        text = "".join(c * 2 for c in text[:3])
    return "#" + text[:6].lower()


def _mix(a: str, b: str, t: float) -> str:
    """``a`` moved the fraction ``t`` towards ``b``."""
    ca = [int(a[i:i + 2], 16) for i in (1, 3, 5)]
    cb = [int(b[i:i + 2], 16) for i in (1, 3, 5)]
    return "#" + "".join(f"{round(x + (y - x) * t):02x}" for x, y in zip(ca, cb, strict=True))


def palette_for(theme_name: str) -> Palette:
    """The palette of the napari theme ``theme_name`` (napari's dark theme if it is unknown)."""
    from napari.utils.theme import get_theme

    try:
        theme = get_theme(theme_name)
    except (KeyError, ValueError):
        theme = get_theme("dark")
    background, text = _hex(theme.background), _hex(theme.text)
    dark = getattr(theme, "type", "dark") != "light"
    return Palette(background=background, text=text, hint=_mix(text, background, 0.38),
                   axis=_mix(text, background, 0.55), series=_SERIES_DARK if dark else _SERIES_LIGHT,
                   dark=dark)


#: until a widget follows a viewer: napari's default dark theme (palette_for("dark"), napari 0.9)
DEFAULT = Palette(background="#23242b", text="#f0f1f2", hint="#a2a3a6", axis="#7f8085",
                  series=_SERIES_DARK, dark=True)


def hint(label):
    """Mark ``label`` as secondary text (coloured by :func:`follow_theme`); returns it."""
    label.setProperty(_HINT, True)
    label.setStyleSheet(f"color: {DEFAULT.hint};")
    return label


def apply_palette(widget, palette: Palette) -> None:
    """Colour ``widget``'s hint labels and hand ``palette`` to its children that take one."""
    from qtpy.QtWidgets import QWidget

    for child in [widget, *widget.findChildren(QWidget)]:
        if child.property(_HINT):
            child.setStyleSheet(f"color: {palette.hint};")
        setter = getattr(child, "set_palette", None)
        if callable(setter):
            setter(palette)


class _Follower:
    """Re-applies the viewer's theme to one widget; stops when the widget is deleted."""

    def __init__(self, viewer, widget) -> None:
        self.viewer, self.widget = viewer, widget
        viewer.events.theme.connect(self.apply)
        widget.destroyed.connect(self.stop)
        self.apply()

    def apply(self, event=None) -> None:
        try:
            apply_palette(self.widget, palette_for(self.viewer.theme))
        except RuntimeError:  # the widget (or a plot in it) was deleted by Qt: nothing to colour
            self.stop()

    def stop(self, *_) -> None:
        self.viewer.events.theme.disconnect(self.apply)


def follow_theme(viewer, widget) -> None:
    """Colour ``widget`` from ``viewer``'s theme now and on every theme change."""
    widget._skipseg_theme = _Follower(viewer, widget)  # kept alive with the widget
