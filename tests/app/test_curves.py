"""The Curves tab's charts and the memory bar: layout, units, placeholders and elided text."""

from __future__ import annotations

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import QPointF, QSettings  # noqa: E402
from PySide6.QtWidgets import QVBoxLayout, QWidget  # noqa: E402

from app.series import Series  # noqa: E402
from app.widgets.curves import CurvesWidget  # noqa: E402

GIB = 2**30


@pytest.fixture
def curves(qtbot):
    widget = CurvesWidget()
    qtbot.addWidget(widget)
    widget.resize(1000, 700)
    widget.show()
    return widget


def _feed(target, steps: range, step_seconds: float = 0.1, rss_bytes: float = 0.4 * GIB) -> None:
    """Events of every kind, as the engine sends them, into a CurvesWidget or a Series."""
    for step in steps:
        target.add_event("metrics", {"step": step, "loss": 1.0 / step, "step_seconds": step_seconds,
                                     "tokens_per_second": 900.0 + step})
        target.add_event("memory", {"step": step, "rss_bytes": rss_bytes, "peak_rss_bytes": rss_bytes})
    target.add_event("eval", {"step": steps[-1], "loss": 0.5, "accuracy": 0.8})


def _drawn(curves: CurvesWidget) -> None:
    curves.redraw()
    curves.graphics.grab()  # lays the scene out so scene rectangles are final


def test_legends_sit_outside_the_plot_areas(curves):
    _feed(curves, range(1, 11))
    _drawn(curves)
    for title, plot in curves.plots.items():
        legend = curves.legends[title]
        assert legend.items, title
        assert not legend.sceneBoundingRect().intersects(plot.vb.sceneBoundingRect()), title


def test_accuracy_reads_in_percent_on_its_own_axis(curves):
    _feed(curves, range(1, 4))
    _drawn(curves)
    accuracy, eval_loss = curves._items[(0, "accuracy")], curves._items[(0, "eval_loss")]
    assert accuracy.getViewBox() is not eval_loss.getViewBox()
    plot = curves.plots["Eval"]
    assert plot.getAxis("right").linkedView() is accuracy.getViewBox()
    assert plot.getAxis("left").linkedView() is eval_loss.getViewBox()
    assert "%" in plot.getAxis("right").labelText
    assert list(accuracy.getData()[1]) == [pytest.approx(80.0)]
    low, high = accuracy.getViewBox().viewRange()[1]
    assert low <= 0 and high >= 100  # the whole 0–100 % scale, whatever the points


def test_placeholders_stand_in_for_empty_charts_until_data_and_after_clear(curves):
    def empty(title: str) -> bool:
        placeholder_shown = curves.placeholders[title].isVisible()
        axis_shown = curves.plots[title].getAxis("left").isVisible()
        assert placeholder_shown != axis_shown, title  # one or the other, never both or none
        return placeholder_shown

    assert all(empty(title) for title in curves.plots)
    assert "after the first step" in curves.placeholders["Training loss"].text
    curves.add_event("metrics", {"step": 1, "loss": 2.0, "step_seconds": 0.1,
                                 "tokens_per_second": 900.0})
    curves.redraw()
    assert not empty("Training loss") and not empty("Speed")
    assert empty("Eval") and empty("Memory")  # no eval or memory event yet
    curves.clear()
    assert all(empty(title) for title in curves.plots)


def test_axes_name_their_unit_instead_of_a_scale_factor(curves):
    _feed(curves, range(1, 4), step_seconds=0.1, rss_bytes=0.4 * GIB)
    _drawn(curves)
    labels = [curves.plots[title].getAxis(side).labelString()
              for title in curves.plots for side in ("left", "right")
              if curves.plots[title].getAxis(side).isVisible()]
    assert labels and not any("(x" in label for label in labels), labels
    speed, memory = curves.plots["Speed"], curves.plots["Memory"]
    assert speed.getAxis("left").labelText == "ms / step"
    assert list(curves._items[(0, "step_seconds")].getData()[1]) == pytest.approx([100.0] * 3)
    assert memory.getAxis("left").labelText == "memory (MiB)"
    assert curves._items[(0, "rss")].getData()[1][0] == pytest.approx(0.4 * 1024)

    curves.clear()
    _feed(curves, range(1, 4), step_seconds=2.5, rss_bytes=3 * GIB)
    _drawn(curves)
    assert speed.getAxis("left").labelText == "s / step"
    assert memory.getAxis("left").labelText == "memory (GiB)"
    assert curves._items[(0, "rss")].getData()[1][0] == pytest.approx(3.0)


def test_speed_draws_a_moving_average_over_faint_raw_points(curves):
    for step, seconds in enumerate((0.1, 0.2, 0.3), start=1):
        curves.add_event("metrics", {"step": step, "loss": 1.0, "step_seconds": seconds,
                                     "tokens_per_second": 1000.0})
    curves.redraw()
    raw = curves._items[(0, "step_seconds")]
    average = curves._items[(0, "step_seconds_smoothed")]
    assert list(raw.getData()[1]) == pytest.approx([100.0, 200.0, 300.0])
    # EMA with weight 0.9 on the past: 100, 0.9*100 + 0.1*200, 0.9*110 + 0.1*300.
    assert list(average.getData()[1]) == pytest.approx([100.0, 110.0, 129.0])
    assert raw.opts["pen"].color().alpha() < average.opts["pen"].color().alpha()


def test_hover_over_two_overlaid_runs_does_not_widen_the_window(qtbot):
    window = QWidget()
    qtbot.addWidget(window)
    curves = CurvesWidget()
    QVBoxLayout(window).addWidget(curves)
    window.resize(1280, 760)
    window.show()
    qtbot.waitExposed(window)
    runs = [Series(f"run-20250101-1200{second:02d}-qwen2.5-0.5b-instruct") for second in (0, 30)]
    for run in runs:
        _feed(run, range(1, 21))
    curves.show_runs(runs)
    curves.graphics.grab()
    plot = curves.plots["Speed"]
    curves._mouse_moved(plot.vb.mapViewToScene(QPointF(10, plot.vb.viewRange()[1][0])))
    assert all(run.label in curves.hover.text() for run in runs)  # the whole read-out is kept
    qtbot.wait(50)  # let a layout request, if any, reach the window
    assert curves.minimumSizeHint().width() <= 1366 and curves.sizeHint().width() <= 1366
    assert window.width() == 1280
    hover = curves.hover
    assert hover.fontMetrics().horizontalAdvance(hover.shown_text()) <= hover.contentsRect().width()
    # The legends of two runs do not push the charts out of the view either.
    view_width = curves.graphics.viewport().width()
    assert all(plot.sceneBoundingRect().right() <= view_width for plot in curves.plots.values())
    assert [label.text for _, label in curves.run_legend.items] == [run.label for run in runs]


def test_memory_bar_text_reads_whole_when_wide_and_elides_when_narrow(qtbot, tmp_path):
    from app.widgets.device_panel import DevicePanel

    panel = DevicePanel(QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat))
    qtbot.addWidget(panel)
    panel.resize(420, 200)  # the Device group's width in a 1366 × 768 window
    panel.show()
    bar = panel.bar
    bar.setValue(bar.maximum() // 2)
    bar.setFormat("12.34 GiB of 16.00 GiB budget")
    metrics = bar.fontMetrics()
    assert bar.text() == bar.format()
    assert metrics.horizontalAdvance(bar.text()) <= bar.contentsRect().width()
    assert bar.height() >= metrics.height()
    bar.setFixedWidth(100)
    assert bar.text() != bar.format() and bar.text().endswith("…")
    assert metrics.horizontalAdvance(bar.text()) <= bar.contentsRect().width()
    assert bar.format() == "12.34 GiB of 16.00 GiB budget"  # the whole text is still there
