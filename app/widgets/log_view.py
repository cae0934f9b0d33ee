"""The Log tab: the engine's log lines and the events worth a line."""

from __future__ import annotations

from PySide6.QtWidgets import QPlainTextEdit, QWidget

MAX_LINES = 5000


class LogView(QPlainTextEdit):
    """Read-only lines "[level] message"; the oldest go beyond MAX_LINES."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent, readOnly=True)
        self.setMaximumBlockCount(MAX_LINES)

    def add_line(self, level: str, message: str) -> None:
        self.appendPlainText(f"[{level}] {message}")
