"""What a run's engine events change in the window: the curves, the progress and ETA, the status
line (each message by its owner), the log, the device indicator and the Export tab's run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from app.run_state import RunState
from app.status_line import StatusLine, StatusMessage
from app.widgets.export_panel import ExportPanel
from app.widgets.log_view import LogView
from app.widgets.run_controls import RunControls

if TYPE_CHECKING:
    from app.widgets.curves import CurvesWidget


class RunEvents:
    """The engine's protocol events of the run in progress, shown in the panels."""

    def __init__(self, run: RunState, curves: Callable[[], CurvesWidget], controls: RunControls,
                 status: StatusLine, log: LogView, export_panel: ExportPanel) -> None:
        self.run, self.curves, self.controls = run, curves, controls
        self.status, self.log, self.export_panel = status, log, export_panel

    def on_event(self, event) -> None:
        data = event.data
        if event.type in ("metrics", "eval", "memory"):
            self.curves().add_event(event.type, data)
        if event.type in ("progress", "metrics"):
            self.status.clear("stage")  # training went on after an evaluation or a checkpoint
        if event.type == "progress":
            self.run.progress.on_progress(data)
            self.controls.show_progress(self.run.progress, self.run.tokens_per_second)
        elif event.type == "metrics":
            self.run.tokens_per_second = data.get("tokens_per_second")
        elif event.type == "status":
            self._on_status(event)
        elif event.type == "log":
            self.log.add_line(str(data.get("level", "info")), str(data.get("message", "")))
        elif event.type == "eval":
            accuracy = data.get("accuracy")
            text = f"eval @ step {data.get('step')}: loss {data.get('loss', float('nan')):.4f}"
            self.log.add_line("info", text + (f", accuracy {accuracy:.1%}" if accuracy is not None else ""))
            self.status.clear("stage")
            self.run.progress.on_evaluated(event.time)
            self.controls.show_progress(self.run.progress, self.run.tokens_per_second)
        elif event.type == "artifact" and data.get("kind") == "adapter":
            self.export_panel.set_run(Path(str(data.get("path"))).parent)
        elif event.type == "error":
            self.run.last_error = str(data.get("message"))
            self.log.add_line("error", self.run.last_error)
        elif event.type == "checkpoint":
            self.log.add_line("info", f"checkpoint @ step {data.get('step')}: {data.get('path')}")
            self.status.clear("stage")

    def _on_status(self, event) -> None:
        data = event.data
        state = str(data.get("state"))
        message = StatusMessage(str(data.get("message") or state))
        if data.get("device"):
            self.controls.show_device(str(data["device"]), data.get("threads"))
        if state in ("evaluating", "checkpointing"):  # passing stages, over the standing one
            self.status.show("stage", message)
        else:
            self.status.clear("launch", "stage")
            self.status.show("engine", message)
        if state == "evaluating":
            self.run.progress.on_evaluating(data, event.time)
            self.controls.show_progress(self.run.progress, self.run.tokens_per_second)
