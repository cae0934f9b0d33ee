"""Widgets whose one line of text is elided to their width instead of widening their parent.

A plain QLabel asks its layout for the width of its whole text, so a long line (a hover read-out
over several overlaid runs) grows the window past the screen; these ask for no width and draw as
much of the text as fits, ending in "…". text() still answers the whole text.
"""

from __future__ import annotations

from PySide6.QtCore import QSize, Qt
from PySide6.QtGui import QPainter, QPaintEvent, QPalette
from PySide6.QtWidgets import QLabel, QProgressBar, QSizePolicy, QWidget


class ElidedLabel(QLabel):
    """A one-line label that takes the width it is given and elides its text to it."""

    def __init__(self, text: str = "", parent: QWidget | None = None) -> None:
        super().__init__(text, parent)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

    def sizeHint(self) -> QSize:
        return QSize(0, super().sizeHint().height())

    def minimumSizeHint(self) -> QSize:
        return QSize(0, super().minimumSizeHint().height())

    def shown_text(self) -> str:
        """The text as drawn: elided to the label's width."""
        return self.fontMetrics().elidedText(self.text(), Qt.TextElideMode.ElideRight,
                                             self.contentsRect().width())

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        self.style().drawItemText(painter, self.contentsRect(), int(self.alignment()),
                                  self.palette(), self.isEnabled(), self.shown_text(),
                                  QPalette.ColorRole.WindowText)


class ElidedProgressBar(QProgressBar):
    """A progress bar whose text (its format, filled in) is elided to the bar's width."""

    def text(self) -> str:
        # The style draws what text() answers; a margin of a character each side keeps the
        # text off the bar's rounded border.
        room = self.contentsRect().width() - 2 * self.fontMetrics().averageCharWidth()
        return self.fontMetrics().elidedText(super().text(), Qt.TextElideMode.ElideRight,
                                             max(0, room))
