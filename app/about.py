"""The About dialog: EdgeTune's version and those of the libraries under the engine.

Versions come from package metadata (importlib.metadata), so the app still never imports torch;
the bundle collects these packages' dist-info for the same reason (packaging/edgetune.spec).
"""

from __future__ import annotations

import platform
from importlib import metadata

from PySide6.QtWidgets import QDialog, QDialogButtonBox, QLabel, QVBoxLayout, QWidget

# (shown name, distribution name): what trains, exports and chats, then what draws the window.
DISTRIBUTIONS = (
    ("EdgeTune", "edgetune"),
    ("torch", "torch"),
    ("ExecuTorch", "executorch"),
    ("transformers", "transformers"),
    ("peft", "peft"),
    ("llama.cpp (llama-cpp-python)", "llama_cpp_python"),
    ("PySide6", "PySide6_Essentials"),
)


def versions() -> dict[str, str]:
    """Shown name → installed version, or "not installed"."""
    found = {}
    for shown, distribution in DISTRIBUTIONS:
        try:
            found[shown] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[shown] = "not installed"
    found["Python"] = platform.python_version()
    return found


class AboutDialog(QDialog):
    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("About EdgeTune")
        rows = "".join(f"<tr><td>{name}</td><td>&nbsp;&nbsp;{version}</td></tr>"
                       for name, version in versions().items())
        text = ("<h3>EdgeTune</h3><p>LoRA fine-tuning with P-RGE (forward passes only) on the "
                f"machine you have.</p><table>{rows}</table>")
        self.label = QLabel(text)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.label)
        layout.addWidget(buttons)
