"""`python -m app` (`edgetune` in the bundle): the EdgeTune window with the bundled demo
preselected (one click on Start trains). `--smoke` checks the whole app instead (app.smoke)."""

from __future__ import annotations

import argparse
import os
import sys

from PySide6.QtGui import QIcon
from PySide6.QtWidgets import QApplication

from app.process import REPO_ROOT

DEMO_CONFIG = REPO_ROOT / "resources" / "configs" / "demo.yaml"
ICON = REPO_ROOT / "resources" / "icons" / "edgetune.png"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgetune", description="EdgeTune: LoRA fine-tuning")
    parser.add_argument("--smoke", action="store_true",
                        help="open the window offscreen, train a tiny model 3 steps, exit 0 if done")
    args, qt_args = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.smoke:
        os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    app = QApplication([sys.argv[0], *qt_args])  # the rest (-platform, -style …) is Qt's
    app.setApplicationName("EdgeTune")
    app.setWindowIcon(QIcon(str(ICON)))
    if args.smoke:
        from app import smoke

        return smoke.run(app)
    from app.main_window import MainWindow

    window = MainWindow()
    window.setup.load_config(DEMO_CONFIG)
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
