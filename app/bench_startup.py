"""Cold start of the app: seconds from a fresh interpreter to the main window shown and rendered.

`python -m app.bench_startup [--runs N]` starts N fresh processes (offscreen unless a platform is
set) and prints each time and the median. Target: 1.5 s on a laptop.

"Shown" is the first complete frame of the window (rendered with `grab()` right after `show()`),
with the Curves tab still a placeholder; the plots (pyqtgraph and numpy, about a second of
imports) are built on the first turn of the event loop, and that time is printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
TARGET_SECONDS = 1.5

# Runs in the child: the clock starts before the first import of Qt or the app.
CHILD = """
import time
started = time.perf_counter()
import sys
from PySide6.QtCore import QSettings, QTimer
from PySide6.QtWidgets import QApplication
app = QApplication([])
from app.main_window import MainWindow
from app.__main__ import DEMO_CONFIG
window = MainWindow(settings=QSettings(sys.argv[1], QSettings.Format.IniFormat),
                    runs_root=sys.argv[2])
window.setup.load_config(DEMO_CONFIG)
window.show()
window.grab()
print(f"{time.perf_counter() - started:.3f}", flush=True)
def plots_ready():
    window.curves.grab()
    print(f"{time.perf_counter() - started:.3f}", flush=True)
    window.shutdown()
    app.quit()
QTimer.singleShot(0, plots_ready)
app.exec()
"""


def measure_once() -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "QT_QPA_PLATFORM": os.environ.get("QT_QPA_PLATFORM", "offscreen")}
        result = subprocess.run(
            [sys.executable, "-c", CHILD, str(Path(tmp) / "s.ini"), str(Path(tmp) / "runs")],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    lines = result.stdout.split()
    if not lines:
        raise SystemExit(f"the window did not start:\n{result.stderr}")
    return float(lines[0]), float(lines[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.bench_startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    results = [measure_once() for _ in range(args.runs)]
    shown = statistics.median(r[0] for r in results)
    plots = statistics.median(r[1] for r in results)
    print("runs (shown / plots ready): " + ", ".join(f"{a:.2f} / {b:.2f} s" for a, b in results))
    print(f"cold start to a shown window: {shown:.2f} s (median; target <= {TARGET_SECONDS} s)")
    print(f"plots ready: {plots:.2f} s (median)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
