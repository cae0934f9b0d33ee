"""A notice across the run panel that goes away by itself: where the desktop has no tray to
notify through (app.notifications)."""

from __future__ import annotations

import html

from PySide6.QtCore import QTimer
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QLabel, QWidget

SHOWN_MS = 15_000
STYLE = "QLabel {{ background: {background}; border: 1px solid {border}; padding: 6px; }}"
LOOKS = {False: ("#e6f4ea", "#8bc49a"), True: ("#fbe9e7", "#e0a196")}  # failed → pale red


class Banner(QLabel):
    """Hidden until `show_notice`; a click or SHOWN_MS hides it."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, wordWrap=True)
        self._timer = QTimer(self, singleShot=True, interval=SHOWN_MS)
        self._timer.timeout.connect(self.hide)
        self.hide()

    def show_notice(self, title: str, text: str, failed: bool) -> None:
        background, border = LOOKS[failed]
        self.setStyleSheet(STYLE.format(background=background, border=border))
        self.setText(f"<b>{html.escape(title)}</b><br>{html.escape(text)}")
        self.show()
        self._timer.start()

    def mousePressEvent(self, event: QMouseEvent) -> None:
        self.hide()
