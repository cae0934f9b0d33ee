"""The Curves tab, whose plots are built on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QVBoxLayout, QWidget

if TYPE_CHECKING:
    from app.widgets.curves import CurvesWidget


class CurvesTab(QWidget):
    """Holds the CurvesWidget once it is built."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._curves: CurvesWidget | None = None
        QVBoxLayout(self).setContentsMargins(0, 0, 0, 0)
        # pyqtgraph (and numpy under it) take most of a cold start: the plots are built right
        # after the window is shown, or on first use, whichever comes first.
        QTimer.singleShot(0, lambda: self.curves)

    @property
    def curves(self) -> CurvesWidget:
        """The tab's CurvesWidget, built on first use."""
        if self._curves is None:
            from app.widgets.curves import CurvesWidget

            self._curves = CurvesWidget()
            self.layout().addWidget(self._curves)
        return self._curves
