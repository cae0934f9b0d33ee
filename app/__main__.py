"""`python -m app`: the EdgeTune window with the bundled demo preselected (one click on Start trains)."""

from __future__ import annotations

import sys

from PySide6.QtWidgets import QApplication

from app.engine_client import REPO_ROOT

DEMO_CONFIG = REPO_ROOT / "resources" / "configs" / "demo.yaml"


def main(argv: list[str] | None = None) -> int:
    app = QApplication(list(sys.argv if argv is None else argv))
    app.setApplicationName("EdgeTune")
    from app.main_window import MainWindow

    window = MainWindow()
    window.load_config(DEMO_CONFIG)
    window.show()
    return app.exec()


if __name__ == "__main__":
    sys.exit(main())
