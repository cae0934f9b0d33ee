"""Which run the Export tab and the Playground work on: one that saved an adapter (they can do
nothing without one), chosen when runs are listed, opened or finished; both are disabled while
no run has one."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtWidgets import QWidget

from app.runs import has_adapter
from app.widgets.export_panel import ExportPanel
from app.widgets.playground import PlaygroundWidget
from app.widgets.runs_tab import RunsTab


class AdapterRuns:
    def __init__(self, export_panel: ExportPanel, playground: PlaygroundWidget,
                 runs_tab: RunsTab) -> None:
        self.export_panel, self.playground, self.runs_tab = export_panel, playground, runs_tab
        for panel in (export_panel, playground):
            panel.run_dir.textChanged.connect(lambda text, panel=panel: self._given(panel, text))

    def offer(self, *preferred: Path) -> None:
        """Give Export and the Playground the first of `preferred` that saved an adapter, else
        the run they show while it still has one, else the newest run with one; with none,
        both are disabled (they need an adapter to do anything)."""
        shown = self.export_panel.run_dir.text().strip()
        candidates = [*preferred, *([Path(shown)] if shown else []), *self.runs_tab.adapter_runs()]
        folder = next((candidate for candidate in candidates if has_adapter(candidate)), None)
        for panel in (self.export_panel, self.playground):
            if folder is not None:
                panel.set_run(folder)
            _enable(panel, folder is not None)

    def _given(self, panel: QWidget, text: str) -> None:
        """A run folder reached a panel, from this window or its own set_run: one with an
        adapter enables it. Typing never disables it (a half-typed path has no adapter)."""
        if text.strip() and has_adapter(Path(text.strip())):
            _enable(panel, True)


def _enable(panel: QWidget, enabled: bool) -> None:
    panel.setEnabled(enabled)
    panel.setToolTip("" if enabled else "no run has saved an adapter yet")
