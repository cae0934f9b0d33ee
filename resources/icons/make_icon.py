"""Draws resources/icons/edgetune.png (256×256), the desktop-menu icon: `python resources/icons/make_icon.py`.

Drawn with QPainter offscreen so the icon is reproducible from this file alone: a rounded tile,
a falling loss curve, and a dot on its last point (a run that converged).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QColor, QGuiApplication, QImage, QPainter, QPainterPath, QPen

SIZE = 256
ICON = Path(__file__).resolve().parent / "edgetune.png"


def draw(size: int = SIZE) -> QImage:
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    unit = size / 256
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor("#1f3a5f"))
    painter.drawRoundedRect(QRectF(8 * unit, 8 * unit, 240 * unit, 240 * unit), 44 * unit, 44 * unit)
    # The curve: a noisy descent flattening out, as a P-RGE loss does.
    points = [(40, 70), (70, 110), (92, 100), (118, 150), (142, 142), (168, 176), (196, 180), (216, 186)]
    curve = QPainterPath(QPointF(points[0][0] * unit, points[0][1] * unit))
    for x, y in points[1:]:
        curve.lineTo(x * unit, y * unit)
    pen = QPen(QColor("#7fd1ff"), 16 * unit, Qt.PenStyle.SolidLine, Qt.PenCapStyle.RoundCap,
               Qt.PenJoinStyle.RoundJoin)
    painter.setPen(pen)
    painter.setBrush(Qt.BrushStyle.NoBrush)
    painter.drawPath(curve)
    painter.setPen(Qt.PenStyle.NoPen)
    painter.setBrush(QColor("#ffd166"))
    painter.drawEllipse(QPointF(points[-1][0] * unit, points[-1][1] * unit), 20 * unit, 20 * unit)
    painter.end()
    return image


def main() -> int:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    _app = QGuiApplication(sys.argv[:1])  # QPainter on a QImage needs the GUI application
    if not draw().save(str(ICON)):
        print(f"error: could not write {ICON}", file=sys.stderr)
        return 1
    print(ICON)
    return 0


if __name__ == "__main__":
    sys.exit(main())
