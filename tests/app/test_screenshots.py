"""The main states of the window on a common laptop screen (1366×768) under a real X server:
each fits the screen with no horizontal scrolling. With EDGETUNE_SCREENSHOTS=DIR the states are
saved there as PNGs (docs/screenshots/ holds the committed ones, shown in the README):

    EDGETUNE_SCREENSHOTS=docs/screenshots .venv/bin/python -m pytest -q tests/app/test_screenshots.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ENGINE_TIMEOUT_MS, REPO, fill_tiny
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import QAbstractScrollArea, QApplication

SCREEN = (1366, 768)
ON_X = os.environ.get("QT_QPA_PLATFORM") == "xcb"


def _check_and_save(window, name: str) -> None:
    QApplication.processEvents()
    window.curves.redraw()
    screen = QGuiApplication.primaryScreen().availableGeometry()
    assert window.frameGeometry().width() <= SCREEN[0] and window.width() <= screen.width(), name
    scrolled = [area.objectName() or type(area).__name__ for area in
                window.findChildren(QAbstractScrollArea)
                if area.isVisible() and area.horizontalScrollBar().isVisible()
                and area.horizontalScrollBar().maximum() > 0]
    assert not scrolled, f"{name}: horizontal scrolling in {scrolled}"
    folder = os.environ.get("EDGETUNE_SCREENSHOTS")
    if folder:
        path = Path(folder) / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        assert window.grab().save(str(path)) and path.stat().st_size > 10_000


@pytest.mark.skipif(not ON_X, reason="runs under Xvfb (test_states_at_1366x768_on_a_real_x_server)")
def test_states_fit_1366x768(make_window, qtbot, tiny_model, classification_data):
    window = make_window()
    window.setGeometry(QGuiApplication.primaryScreen().availableGeometry())  # Xvfb has no WM
    qtbot.waitUntil(lambda: window.width() == SCREEN[0], timeout=5000)
    _check_and_save(window, "1-start")
    with qtbot.waitSignal(window.preview.sig_inspected, timeout=60_000):
        window.setup.set_dataset(str(classification_data))
    fill_tiny(window, tiny_model, classification_data, steps=12, eval_every=6)
    _check_and_save(window, "2-dataset-and-settings")
    with qtbot.waitSignal(window.engine.sig_event_received, timeout=ENGINE_TIMEOUT_MS,
                          check_params_cb=lambda e: e.type == "progress" and e.data["step"] >= 4):
        qtbot.mouseClick(window.start_button, Qt.MouseButton.LeftButton)
    _check_and_save(window, "3-training")
    with qtbot.waitSignal(window.sig_run_finished, timeout=ENGINE_TIMEOUT_MS) as finished:
        pass
    assert finished.args == ["completed"]
    _check_and_save(window, "4-finished")
    for index in range(window.tabs.count()):
        window.tabs.setCurrentIndex(index)
        name = window.tabs.tabText(index).lower().replace(" ", "-")
        _check_and_save(window, f"5-tab-{index + 1}-{name}")


@pytest.mark.skipif(shutil.which("xvfb-run") is None,
                    reason="Xvfb is not installed (make test-system installs it)")
def test_states_at_1366x768_on_a_real_x_server():
    env = {**os.environ, "QT_QPA_PLATFORM": "xcb", "QT_XCB_GL_INTEGRATION": "none"}
    result = subprocess.run(
        ["xvfb-run", "-a", "-s", f"-screen 0 {SCREEN[0]}x{SCREEN[1]}x24", sys.executable,
         "-X", "faulthandler", "-m", "pytest", "-q", "-p", "no:cacheprovider",
         f"{__file__}::test_states_fit_1366x768"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout
