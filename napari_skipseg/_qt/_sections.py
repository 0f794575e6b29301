"""Small layout helpers for tall dock widgets: foldable sections and a vertical scroll area.

A dock widget that is taller than the space napari gives it makes the main window grow past
the screen (napari does not scroll dock widgets). Put the widget's content in
:func:`vertical_scroll` and fold what is seldom needed into a :class:`Section`.
"""

from __future__ import annotations

from qtpy.QtCore import QEvent, QObject, QSize, Qt
from qtpy.QtWidgets import (
    QAbstractScrollArea,
    QAbstractSpinBox,
    QApplication,
    QComboBox,
    QDockWidget,
    QFrame,
    QHBoxLayout,
    QLayout,
    QMainWindow,
    QScrollArea,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ._labels import WrapLabel


class Section(QWidget):
    """A titled section whose body folds away: click the title (an arrow shows the state).

    Parameters
    ----------
    title : str
        Shown on the header button.
    body : QWidget or QLayout
        The content.
    expanded : bool
        Whether the body shows at first.
    """

    def __init__(self, title: str, body: QWidget | QLayout, expanded: bool = True, parent=None) -> None:
        super().__init__(parent)
        self.title = title
        self.header = QToolButton()
        self.header.setText(title)
        self.header.setCheckable(True)
        self.header.setAutoRaise(True)
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
        self.summary = WrapLabel("")
        self.summary.setEnabled(False)  # the theme's dimmed text colour
        if isinstance(body, QLayout):
            holder = QWidget()
            holder.setLayout(body)
            body = holder
        self.body = body
        top = QVBoxLayout()
        top.setContentsMargins(0, 0, 0, 0)
        top.setSpacing(0)
        row = QWidget()
        row_layout = QHBoxLayout(row)
        row_layout.setContentsMargins(0, 0, 0, 0)
        row_layout.addWidget(self.header)
        row_layout.addWidget(self.summary, 1)
        top.addWidget(row)
        top.addWidget(body)
        self.setLayout(top)
        self.header.toggled.connect(self._show)
        self.header.setChecked(expanded)
        self._show(expanded)

    def _show(self, on: bool) -> None:
        self.header.setArrowType(Qt.ArrowType.DownArrow if on else Qt.ArrowType.RightArrow)
        self.body.setVisible(on)
        self.summary.setVisible(not on and bool(self.summary.text()))

    def is_expanded(self) -> bool:
        return self.header.isChecked()

    def set_expanded(self, on: bool) -> None:
        self.header.setChecked(on)

    def set_summary(self, text: str) -> None:
        """A one-line digest of the body, shown while it is folded."""
        self.summary.setText(text)
        self.summary.setVisible(not self.is_expanded() and bool(text))


class VerticalScroll(QScrollArea):
    """A frameless scroll area that scrolls vertically only: as wide as its content needs (so
    nothing is cut at the right), as tall as the dock gives it."""

    def _extra_width(self) -> int:
        return self.verticalScrollBar().sizeHint().width() + 2 * self.frameWidth()

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt API
        hint = super().minimumSizeHint()
        content = self.widget()
        if content is None:
            return hint
        return QSize(content.minimumSizeHint().width() + self._extra_width(), hint.height())

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt API
        hint = super().sizeHint()
        content = self.widget()
        if content is None:
            return hint
        return QSize(content.sizeHint().width() + self._extra_width(), hint.height())

    def preferred_height(self) -> int:
        """The height that shows all of the content without scrolling."""
        content = self.widget()
        return (content.sizeHint().height() if content is not None else 0) + 2 * self.frameWidth()


class _WheelGuard(QObject):
    """Lets the mouse wheel scroll the panel instead of changing the combo box or spin box
    under the pointer, unless the user clicked into it first (it has the focus)."""

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt API
        if event.type() != QEvent.Type.Wheel or not isinstance(obj, QWidget) or obj.hasFocus():
            return False
        area = obj.parentWidget()
        while area is not None and not isinstance(area, QAbstractScrollArea):
            area = area.parentWidget()
        if area is not None:  # scroll the panel (the box never sees the wheel)
            QApplication.sendEvent(area.verticalScrollBar(), event)
        return True


def guard_wheel(content: QWidget) -> None:
    """Install the wheel guard on the combo boxes and spin boxes inside ``content`` (call it
    again for controls added later)."""
    guard = content.findChild(_WheelGuard) or _WheelGuard(content)
    for box in content.findChildren(QComboBox) + content.findChildren(QAbstractSpinBox):
        box.setFocusPolicy(Qt.FocusPolicy.StrongFocus)  # focus by click or tab, not by wheel
        box.installEventFilter(guard)


def vertical_scroll(content: QWidget) -> VerticalScroll:
    """``content`` in a :class:`VerticalScroll`, so that the widget asks for little height and
    never pushes the main window taller than the screen; the wheel scrolls it (see
    :func:`guard_wheel`)."""
    guard_wheel(content)
    area = VerticalScroll()
    area.setWidget(content)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
    return area


def share_dock_height(widget: QWidget, least: int = 150) -> bool:
    """Share the height of the dock area that holds ``widget`` among the dock widgets stacked
    there, in proportion to the height each one's content would like (at least ``least``
    pixels each); the user can still drag the handles between them. Qt API only (the dock
    widget and main window that hold ``widget``). Returns False when ``widget`` is not docked
    with others."""
    dock, parent = None, widget.parentWidget()
    while parent is not None and not isinstance(parent, QMainWindow):
        if isinstance(parent, QDockWidget):
            dock = parent
        parent = parent.parentWidget()
    if dock is None or parent is None or dock.isFloating():
        return False
    main = parent
    area = main.dockWidgetArea(dock)
    docks = [d for d in main.findChildren(QDockWidget)  # stacked, not in tabs
             if d.isVisibleTo(main) and not d.isFloating() and main.dockWidgetArea(d) == area
             and not main.tabifiedDockWidgets(d)]
    if dock not in docks or len(docks) < 2:
        return False

    def wanted(d: QDockWidget) -> int:
        scroll = d.findChild(VerticalScroll)
        return max(scroll.preferred_height() if scroll is not None else d.sizeHint().height(), least)

    docks.sort(key=lambda d: d.y())
    main.resizeDocks(docks, [wanted(d) for d in docks], Qt.Orientation.Vertical)
    return True
