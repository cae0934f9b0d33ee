"""Spin boxes and combo boxes that take the mouse wheel only once they have the focus.

Qt gives the wheel to whatever widget is under the pointer, so scrolling the left panel past a
spin box steps its value (200 → 193) without the user noticing. A guarded widget gets the focus
by click or Tab only, and until then leaves the wheel to the scroll area around it.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, QObject, Qt
from PySide6.QtWidgets import QWidget


class _WheelGuard(QObject):
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Wheel and not watched.hasFocus():
            # Ignored and filtered: Qt offers the event to the parents, the scroll area among them.
            event.ignore()
            return True
        return False


def wheel_only_when_focused(*widgets: QWidget) -> None:
    for widget in widgets:
        widget.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        widget.installEventFilter(_WheelGuard(widget))
