"""The Curves tab: loss, eval, memory and speed plotted live from engine events.

Events only append to plain lists; a 100 ms timer redraws what changed, so a burst of events
(10+ per second) costs one redraw per tick instead of one per event.
"""

from __future__ import annotations

from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

from app.series import Series, smoothed

REDRAW_MS = 100
OVERLAY_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")

# plot title → [(series name, legend, pen style)]
PLOTS = {
    "Training loss": [("loss", "raw", "faint"), ("loss_smoothed", "smoothed", "solid")],
    "Eval": [("eval_loss", "eval loss", "solid"), ("accuracy", "accuracy", "dash")],
    "Memory (GiB)": [("rss", "RSS", "solid"), ("peak", "peak", "dash"), ("device", "device", "dot")],
    "Speed": [("step_seconds", "s / step", "solid"), ("tokens_per_second", "tokens / s", "dash")],
}
RIGHT_AXIS = "tokens_per_second"  # on the Speed plot's right axis: its scale is ~1000x s / step


class CurvesWidget(QWidget):
    """Four plots; shows one live run or overlays finished runs."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        pg.setConfigOptions(antialias=True)
        self.runs: list[Series] = [Series("live")]
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground("w")
        self.hover = QLabel("Hover a plot to read its values")
        self.plots: dict[str, pg.PlotItem] = {}
        for index, title in enumerate(PLOTS):
            plot = self.graphics.addPlot(row=index // 2, col=index % 2, title=title)
            plot.showGrid(x=True, y=True, alpha=0.3)
            plot.setLabel("bottom", "step")
            # Steps are whole and start at 0: a lone zero-shot point must not stretch the axis
            # to a fraction of a step around it.
            plot.setLimits(xMin=0, minXRange=1)
            plot.addLegend(offset=(-10, 10))
            self.plots[title] = plot
            plot.scene().sigMouseMoved.connect(self._mouse_moved)
        speed = self.plots["Speed"]
        speed.setLabel("left", "s / step")
        speed.showAxis("right")
        speed.setLabel("right", "tokens / s")
        self.right_view = pg.ViewBox()
        speed.scene().addItem(self.right_view)
        speed.getAxis("right").linkToView(self.right_view)
        self.right_view.setXLink(speed)
        speed.vb.sigResized.connect(
            lambda: self.right_view.setGeometry(speed.vb.sceneBoundingRect()))
        self.budget_line = pg.InfiniteLine(angle=0, pen=pg.mkPen("#888", style=pg.QtCore.Qt.DashLine),
                                           label="budget", labelOpts={"position": 0.1})
        self.plots["Memory (GiB)"].addItem(self.budget_line)
        self.budget_line.hide()
        self._items: dict[tuple[int, str], pg.PlotDataItem] = {}
        self._item_plot: dict[tuple[int, str], str] = {}  # key → plot title
        self._dirty = False
        self._timer = QTimer(self, interval=REDRAW_MS)
        self._timer.timeout.connect(self.redraw)
        self._timer.start()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.hover)

    # ---- data in ----------------------------------------------------------------------
    def clear(self, label: str = "live") -> None:
        self.show_runs([Series(label)])

    def add_event(self, type: str, data: dict[str, Any]) -> None:
        self.runs[0].add_event(type, data)
        self._dirty = True

    def show_runs(self, runs: list[Series]) -> None:
        for plot in self.plots.values():
            for item in plot.listDataItems():
                plot.removeItem(item)
            if plot.legend is not None:
                plot.legend.clear()
        for item in list(self.right_view.addedItems):
            self.right_view.removeItem(item)
        self._items.clear()
        self._item_plot.clear()
        self.runs = runs or [Series("live")]
        self._dirty = True
        self.redraw()

    def point_count(self, name: str) -> int:
        return len(self.runs[0].get(name)[0])

    # ---- drawing ----------------------------------------------------------------------
    def redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        overlay = len(self.runs) > 1
        for run_index, run in enumerate(self.runs):
            colour = OVERLAY_COLOURS[run_index % len(OVERLAY_COLOURS)]
            for title, curves in PLOTS.items():
                for curve_index, (name, legend, style) in enumerate(curves):
                    if name == "loss_smoothed":
                        steps, values = run.get("loss")
                        values = smoothed(values)
                    else:
                        steps, values = run.get(name)
                    if not steps:
                        continue
                    self._item(run_index, title, name, legend, style, curve_index, colour,
                               overlay, run.label).setData(steps, values)
        budget = self.runs[0].budget_gib
        self.budget_line.setVisible(budget > 0)
        if budget > 0:
            self.budget_line.setValue(budget)

    def _item(self, run_index: int, title: str, name: str, legend: str, style: str,
              curve_index: int, colour: str, overlay: bool, run_label: str) -> pg.PlotDataItem:
        key = (run_index, name)
        item = self._items.get(key)
        if item is not None:
            return item
        if not overlay:
            colour = OVERLAY_COLOURS[curve_index % len(OVERLAY_COLOURS)]
        qt_style = {"dash": pg.QtCore.Qt.DashLine, "dot": pg.QtCore.Qt.DotLine}.get(
            style, pg.QtCore.Qt.SolidLine)
        pen = pg.mkPen(colour, width=1 if style == "faint" else 2, style=qt_style)
        if style == "faint":
            pen.setColor(pg.mkColor(colour + "66"))
        name_text = f"{run_label}: {legend}" if overlay else legend
        # Sparse series (eval) need symbols: two points make no visible line.
        symbol = "o" if name in ("eval_loss", "accuracy") else None
        plot = self.plots[title]
        if name == RIGHT_AXIS:
            item = pg.PlotDataItem(name=name_text, pen=pen)
            self.right_view.addItem(item)
            plot.legend.addItem(item, name_text)
        else:
            item = plot.plot(name=name_text, pen=pen, symbol=symbol, symbolSize=6,
                             symbolBrush=colour)
        self._items[key] = item
        self._item_plot[key] = title
        return item

    def _mouse_moved(self, position) -> None:
        for title, plot in self.plots.items():
            if not plot.sceneBoundingRect().contains(position):
                continue
            point = plot.vb.mapSceneToView(position)
            parts = [f"{title} @ step {point.x():.0f}:"]
            for key, item in self._items.items():
                if self._item_plot[key] != title:
                    continue
                name = key[1]
                xs, ys = item.getData()
                if xs is None or len(xs) == 0:
                    continue
                nearest = min(range(len(xs)), key=lambda i: abs(xs[i] - point.x()))
                label = item.name() or name
                parts.append(f"{label} = {ys[nearest]:.4g} (step {xs[nearest]:.0f})")
            self.hover.setText("  ".join(parts))
            return
