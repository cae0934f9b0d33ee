"""Widgets whose text is elided to their width instead of widening their parent.

A plain QLabel asks its layout for the width of its whole text, so a long line (a hover read-out
over several overlaid runs, a probe error naming a long path) grows the window past the screen;
these ask for no width and draw as much of the text as fits, ending in "…". text() still answers
the whole text.
"""

from __future__ import annotations

from PySide6.QtCore import QRect, QSize, Qt
from PySide6.QtGui import QPainter, QPaintEvent, QPalette, QTextLayout, QTextOption
from PySide6.QtWidgets import QLabel, QProgressBar, QSizePolicy, QWidget

LINE_SEPARATOR = "\u2028"  # what QTextLayout breaks a line at ("\n" it does not)


class ElidedLabel(QLabel):
    """A label of `lines` lines that takes the width it is given: its plain text wraps at word
    boundaries (anywhere inside a word longer than a line, such as a path) and the last line
    that fits ends in "…". Its height is that of `lines` lines whatever the text, so a new text
    never moves the widgets below it."""

    def __init__(self, text: str = "", parent: QWidget | None = None, lines: int = 1) -> None:
        super().__init__(text, parent)
        self.lines = lines
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)

    def sizeHint(self) -> QSize:
        margins = self.contentsMargins()
        return QSize(0, self.lines * self.fontMetrics().lineSpacing() + margins.top() + margins.bottom())

    def minimumSizeHint(self) -> QSize:
        return self.sizeHint()

    def shown_text(self) -> str:
        """The text as drawn: wrapped to the label's width, the last line elided; lines joined by
        "\\n"."""
        return "\n".join(self._shown_lines())

    def _shown_lines(self) -> list[str]:
        width = max(0, self.contentsRect().width())
        text = self.text().replace("\n", LINE_SEPARATOR)
        layout = QTextLayout(text, self.font())
        option = QTextOption()
        option.setWrapMode(QTextOption.WrapMode.WrapAtWordBoundaryOrAnywhere)
        layout.setTextOption(option)
        starts: list[int] = []
        layout.beginLayout()
        while len(starts) < self.lines and (line := layout.createLine()).isValid():
            line.setLineWidth(width)
            starts.append(line.textStart())
        layout.endLayout()
        if not starts:
            return []
        shown = [text[start:end] for start, end in zip(starts, starts[1:], strict=False)]
        rest = text[starts[-1]:].replace(LINE_SEPARATOR, " ")
        shown.append(self.fontMetrics().elidedText(rest, Qt.TextElideMode.ElideRight, width))
        return [line.rstrip(LINE_SEPARATOR + " ") for line in shown]

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        area = self.contentsRect()
        spacing = self.fontMetrics().lineSpacing()
        alignment = int(self.alignment() & Qt.AlignmentFlag.AlignHorizontal_Mask
                        | Qt.AlignmentFlag.AlignVCenter)
        for index, line in enumerate(self._shown_lines()):
            row = QRect(area.left(), area.top() + index * spacing, area.width(), spacing)
            self.style().drawItemText(painter, row, alignment, self.palette(), self.isEnabled(),
                                      line, QPalette.ColorRole.WindowText)


class ElidedProgressBar(QProgressBar):
    """A progress bar whose text (its format, filled in) is elided to the bar's width."""

    def text(self) -> str:
        # The style draws what text() answers; a margin of a character each side keeps the
        # text off the bar's rounded border.
        room = self.contentsRect().width() - 2 * self.fontMetrics().averageCharWidth()
        return self.fontMetrics().elidedText(super().text(), Qt.TextElideMode.ElideRight,
                                             max(0, room))
