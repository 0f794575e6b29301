"""A word-wrapping label that asks for the height its text needs.

Qt's form layouts (inside napari's dock scroll areas) size a word-wrapped QLabel from its
one-line hint, so a second line is clipped at the top and bottom. This label sets its
minimum height from ``heightForWidth`` whenever its width or text changes.
"""

from __future__ import annotations

from qtpy.QtWidgets import QLabel, QSizePolicy


class WrapLabel(QLabel):
    def __init__(self, text: str = "", parent=None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Minimum)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name
        super().setText(text)
        self._fit()

    def resizeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().resizeEvent(event)
        self._fit()

    def _fit(self) -> None:
        width = self.width() if self.width() > 10 else self.sizeHint().width()
        need = self.heightForWidth(width)
        if need > 0 and need != self.minimumHeight():
            self.setMinimumHeight(need)
