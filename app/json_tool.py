"""An engine tool that answers with data (`inspect-dataset`, `probe`, `push --list`): its
`result` event.

Runs in its own process (app.process.EngineProcess) so the window stays responsive while the
engine imports torch; a newer request replaces the one in flight.
"""

from __future__ import annotations

from PySide6.QtCore import QObject, Signal

from app.process import EngineProcess, ProcessEnd, engine_command


class JsonTool(QObject):
    """`python -m engine TOOL ARGS… --protocol`, its result event's data."""

    sig_answered = Signal(dict)
    """The tool's result, or {"errors": [{"message": …}]} when it gave none."""

    def __init__(self, tool: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.tool = tool
        self._result: dict | None = None
        self._process = EngineProcess(self)
        self._process.sig_event_received.connect(self._event)
        self._process.sig_finished.connect(self._ended)

    def run(self, *args: str) -> None:
        self.kill()
        self._result = None
        self._process.start(engine_command(self.tool, *args, "--protocol"))

    def is_running(self) -> bool:
        return self._process.is_running()

    def kill(self) -> None:
        """Drop the request in flight; its process is killed and its answer never shown."""
        self._process.abandon()

    def _event(self, event) -> None:
        if event.type == "result":
            self._result = dict(event.data)

    def _ended(self, end: ProcessEnd) -> None:
        # A nonzero exit with a result still answers (e.g. a dataset with errors).
        message = end.message or f"{self.tool} failed (exit code {end.exit_code})"
        self.sig_answered.emit(self._result if self._result is not None
                               else {"errors": [{"message": message}]})
