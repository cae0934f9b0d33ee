"""The Curves tab: loss, eval, memory and speed plotted live from engine events.

Events only append to plain lists; a 100 ms timer redraws what changed, so a burst of events
(10+ per second) costs one redraw per tick instead of one per event.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QPointF, Qt, QTimer
from PySide6.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

from app.series import Series, smoothed
from app.widgets.elided import ElidedLabel

REDRAW_MS = 100
OVERLAY_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")
PEN_STYLES = {"dash": Qt.PenStyle.DashLine, "dot": Qt.PenStyle.DotLine}
# Overlaid runs each take one colour: the run legend shows it, the charts' legends show each
# curve's pen in grey (a legend of runs × curves would be wider than the charts).
LEGEND_GREY = "#555555"


@dataclass(frozen=True)
class Axis:
    """A value axis: its label and the units its values may read in, the smallest first."""

    label: str  # "{unit}" stands for the unit picked
    units: tuple[tuple[str, float], ...] = (("", 1.0),)  # (unit, factor from the Series' unit)
    fixed_range: tuple[float, float] | None = None  # in the unit; None: follow the data

    def unit(self, largest: float) -> tuple[str, float]:
        """The first unit in which `largest` reads below 1000, so the ticks are plain numbers."""
        return next(((unit, factor) for unit, factor in self.units if largest * factor < 1000),
                    self.units[-1])


@dataclass(frozen=True)
class Curve:
    """One line of a chart: a Series curve, or its moving average, drawn in one pen."""

    key: str  # the line's name among CurvesWidget's items
    source: str  # the Series curve it draws
    legend: str
    style: str  # "faint" (raw points under their average) | "solid" | "dash" | "dot"
    smooth: bool = False
    right: bool = False  # on the chart's right axis
    symbol: bool = False  # dots on the points


@dataclass(frozen=True)
class Chart:
    """One plot of the tab: its curves, its axes and what it says while it has no points."""

    title: str
    placeholder: str  # shown instead of empty axes until the first point (HTML: <br> breaks)
    curves: tuple[Curve, ...]
    left: Axis
    right: Axis | None = None

    def axes(self) -> dict[str, Axis]:
        """The value axes by side."""
        return {"left": self.left} if self.right is None else {"left": self.left, "right": self.right}


CHARTS = (
    Chart("Training loss", "Training loss appears here<br>after the first step",
          (Curve("loss", "loss", "raw", "faint"),
           Curve("loss_smoothed", "loss", "smoothed", "solid", smooth=True)),
          Axis("loss")),
    Chart("Eval", "Eval loss and accuracy appear here<br>after the first evaluation",
          (Curve("eval_loss", "eval_loss", "eval loss", "solid", symbol=True),
           Curve("accuracy", "accuracy", "accuracy", "dash", right=True, symbol=True)),
          Axis("eval loss"), Axis("accuracy (%)", (("%", 100.0),), fixed_range=(0.0, 100.0))),
    Chart("Memory", "Memory use appears here<br>after the first memory reading",
          (Curve("rss", "rss", "RSS", "solid"), Curve("peak", "peak", "peak", "dash"),
           Curve("device", "device", "device", "dot")),
          Axis("memory ({unit})", (("MiB", 1024.0), ("GiB", 1.0)))),  # the Series holds GiB
    Chart("Speed", "Step time and tokens / s appear here<br>after the first step",
          (Curve("step_seconds", "step_seconds", "step time", "faint"),
           Curve("step_seconds_smoothed", "step_seconds", "step time (EMA)", "solid", smooth=True),
           Curve("tokens_per_second", "tokens_per_second", "tokens / s", "dash", right=True)),
          Axis("{unit} / step", (("ms", 1000.0), ("s", 1.0))), Axis("tokens / s")),
)
MEMORY = "Memory"  # the chart that draws the budget line
HOVER_TEXT = "Hover a plot to read its values"


def _look(curve: Curve, colour: str) -> dict[str, Any]:
    """PlotDataItem keywords that draw `curve` in `colour`."""
    faint = curve.style == "faint"
    look: dict[str, Any] = {"pen": pg.mkPen(colour + "66" if faint else colour, width=1 if faint else 2,
                                            style=PEN_STYLES.get(curve.style, Qt.PenStyle.SolidLine))}
    if curve.symbol:  # sparse series (eval): two points make no visible line
        look.update(symbol="o", symbolSize=6, symbolBrush=colour)
    return look


def _colour(index: int) -> str:
    return OVERLAY_COLOURS[index % len(OVERLAY_COLOURS)]


def _legend_row(layout: pg.GraphicsLayout, row: int, columns: int, colspan: int = 1) -> pg.LegendItem:
    """A legend in a row of its own, so no entry ever covers a curve."""
    legend = pg.LegendItem(colCount=columns, frame=False, labelTextColor="#333")
    # No wider than its entries, centred; with no minimum width a narrow window squeezes it
    # instead of the scene growing past the window and cutting the charts off.
    legend.setSizePolicy(QSizePolicy.Policy.Maximum, QSizePolicy.Policy.Fixed)
    legend.setMinimumWidth(0)
    layout.addItem(legend, row=row, col=0, colspan=colspan)
    layout.layout.setAlignment(legend, Qt.AlignmentFlag.AlignHCenter)
    return legend


class CurvesWidget(QWidget):
    """Four charts; shows one live run or overlays finished runs."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        pg.setConfigOptions(antialias=True)
        self.runs: list[Series] = [Series("live")]
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground("w")
        self.hover = ElidedLabel(HOVER_TEXT)
        self.plots: dict[str, pg.PlotItem] = {}
        self.right_views: dict[str, pg.ViewBox] = {}
        self.legends: dict[str, pg.LegendItem] = {}
        self.placeholders: dict[str, pg.LabelItem] = {}
        self.run_legend = _legend_row(self.graphics.ci, row=0, columns=len(OVERLAY_COLOURS),
                                      colspan=2)
        for index, chart in enumerate(CHARTS):
            cell = self.graphics.addLayout(row=1 + index // 2, col=index % 2)
            plot = cell.addPlot(row=0, col=0, title=chart.title)
            self.legends[chart.title] = _legend_row(cell, row=1, columns=len(chart.curves))
            self.plots[chart.title] = plot
            plot.showGrid(x=True, y=True, alpha=0.3)
            plot.setLabel("bottom", "step")
            # Steps are whole and start at 0: a lone zero-shot point must not stretch the axis
            # to a fraction of a step around it.
            plot.setLimits(xMin=0, minXRange=1)
            if chart.right is not None:
                self._add_right_view(chart.title, chart.right, plot)
            for side in ("left", "right", "bottom"):
                # The axes label their unit themselves; pyqtgraph's scaling would write
                # "(x0.001)" next to a label that already names the unit.
                plot.getAxis(side).enableAutoSIPrefix(False)
            self._add_placeholder(chart, plot)
            plot.scene().sigMouseMoved.connect(self._mouse_moved)
        self.budget_line = pg.InfiniteLine(angle=0, pen=pg.mkPen("#888", style=Qt.PenStyle.DashLine),
                                           label="budget", labelOpts={"position": 0.1})
        self.plots[MEMORY].addItem(self.budget_line)
        self.budget_line.hide()
        self._items: dict[tuple[int, str], pg.PlotDataItem] = {}
        self._item_plot: dict[tuple[int, str], str] = {}  # key → chart title
        self._item_unit: dict[tuple[int, str], str] = {}  # the unit its values are drawn in
        self._dirty = False
        self._timer = QTimer(self, interval=REDRAW_MS)
        self._timer.timeout.connect(self.redraw)
        self._timer.start()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.graphics, 1)
        layout.addWidget(self.hover)
        self._redraw_now()

    def _add_right_view(self, title: str, axis: Axis, plot: pg.PlotItem) -> None:
        view = pg.ViewBox()
        plot.showAxis("right")
        plot.scene().addItem(view)
        plot.getAxis("right").linkToView(view)
        view.setXLink(plot)
        plot.vb.sigResized.connect(lambda: view.setGeometry(plot.vb.sceneBoundingRect()))
        if axis.fixed_range is not None:
            view.setYRange(*axis.fixed_range)
            view.setMouseEnabled(y=False)
        self.right_views[title] = view

    def _add_placeholder(self, chart: Chart, plot: pg.PlotItem) -> None:
        placeholder = pg.LabelItem(chart.placeholder, color="#555", size="10pt")
        placeholder.setParentItem(plot.vb)
        placeholder.anchor(itemPos=(0.5, 0.5), parentPos=(0.5, 0.5))
        self.placeholders[chart.title] = placeholder

    # ---- data in ----------------------------------------------------------------------
    def clear(self, label: str = "live") -> None:
        self.show_runs([Series(label)])

    def add_event(self, type: str, data: dict[str, Any]) -> None:
        self.runs[0].add_event(type, data)
        self._dirty = True

    def show_runs(self, runs: list[Series]) -> None:
        for title, plot in self.plots.items():
            for item in plot.listDataItems():
                plot.removeItem(item)
            self.legends[title].clear()
        for view in self.right_views.values():
            for item in list(view.addedItems):
                view.removeItem(item)
        # The runs shown now set the axes, not where the last ones were zoomed or panned to.
        for chart in CHARTS:
            self.plots[chart.title].enableAutoRange()
            if chart.right is not None and chart.right.fixed_range is None:
                self.right_views[chart.title].enableAutoRange(axis=pg.ViewBox.YAxis)
        self.hover.setText(HOVER_TEXT)
        self._items.clear()
        self._item_plot.clear()
        self._item_unit.clear()
        self.runs = runs or [Series("live")]
        self.run_legend.clear()
        if len(self.runs) > 1:
            for run_index, run in enumerate(self.runs):
                self.run_legend.addItem(pg.PlotDataItem(pen=pg.mkPen(_colour(run_index), width=2)),
                                        run.label)
        self._redraw_now()

    def point_count(self, name: str) -> int:
        return len(self.runs[0].get(name)[0])

    # ---- drawing ----------------------------------------------------------------------
    def _redraw_now(self) -> None:
        self._dirty = True
        self.redraw()

    def redraw(self) -> None:
        if not self._dirty:
            return
        self._dirty = False
        budget = self.runs[0].budget_gib
        for chart in CHARTS:
            units = {side: self._pick_unit(chart, side, budget if chart.title == MEMORY else 0.0)
                     for side in chart.axes()}
            drawn = False
            for run_index, run in enumerate(self.runs):
                for curve in chart.curves:
                    steps, values = run.get(curve.source)
                    if not steps:
                        continue
                    unit, factor = units["right" if curve.right else "left"]
                    shown = [value * factor for value in values]
                    item = self._item(run_index, chart, curve)
                    item.setData(steps, smoothed(shown) if curve.smooth else shown)
                    self._item_unit[(run_index, curve.key)] = unit
                    drawn = True
            self._show_chart(chart, drawn, units)
            if chart.title == MEMORY:
                self.budget_line.setVisible(budget > 0)
                self.budget_line.setValue(budget * units["left"][1])

    def _pick_unit(self, chart: Chart, side: str, floor: float) -> tuple[str, float]:
        """The unit of the axis on `side`, for the largest value it shows (and `floor`)."""
        largest = max((abs(value) for run in self.runs for curve in chart.curves
                       if curve.right == (side == "right") for value in run.get(curve.source)[1]),
                      default=0.0)
        return chart.axes()[side].unit(max(largest, floor))

    def _show_chart(self, chart: Chart, drawn: bool, units: dict[str, tuple[str, float]]) -> None:
        """The curves and their axes once there is a point, the placeholder text until then."""
        plot = self.plots[chart.title]
        self.placeholders[chart.title].setVisible(not drawn)
        for side, axis in chart.axes().items():
            label = axis.label.format(unit=units[side][0])
            if plot.getAxis(side).labelText != label:
                plot.setLabel(side, label)
        for side in (*chart.axes(), "bottom"):
            plot.showAxis(side, drawn)  # after setLabel, which shows the axis

    def _item(self, run_index: int, chart: Chart, curve: Curve) -> pg.PlotDataItem:
        key = (run_index, curve.key)
        item = self._items.get(key)
        if item is not None:
            return item
        overlay = len(self.runs) > 1
        legend = self.legends[chart.title]
        if overlay:
            item = pg.PlotDataItem(name=f"{self.runs[run_index].label}: {curve.legend}",
                                   **_look(curve, _colour(run_index)))
            if all(label.text != curve.legend for _, label in legend.items):
                legend.addItem(pg.PlotDataItem(**_look(curve, LEGEND_GREY)), curve.legend)
        else:
            # One colour per quantity: a raw line and its average share one.
            sources = list(dict.fromkeys(c.source for c in chart.curves))
            item = pg.PlotDataItem(name=curve.legend,
                                   **_look(curve, _colour(sources.index(curve.source))))
            legend.addItem(item, curve.legend)
        if curve.right:
            self.right_views[chart.title].addItem(item)
        else:
            self.plots[chart.title].addItem(item)
        self._items[key] = item
        self._item_plot[key] = chart.title
        return item

    def _mouse_moved(self, position: QPointF) -> None:
        for title, plot in self.plots.items():
            if not plot.sceneBoundingRect().contains(position):
                continue
            point = plot.vb.mapSceneToView(position)
            parts = [f"{title} @ step {point.x():.0f}:"]
            for key, item in self._items.items():
                if self._item_plot[key] != title:
                    continue
                xs, ys = item.getData()
                if xs is None or len(xs) == 0:
                    continue
                nearest = min(range(len(xs)), key=lambda i: abs(xs[i] - point.x()))
                unit = self._item_unit[key]
                value = f"{ys[nearest]:.4g} {unit}" if unit else f"{ys[nearest]:.4g}"
                parts.append(f"{item.name() or key[1]} = {value} (step {xs[nearest]:.0f})")
            self.hover.setText("  ".join(parts))
            return
