"""An engine tool that answers with one JSON object (`inspect-dataset --json`, `probe --json`).

Runs in its own process so the window stays responsive while the engine imports torch; a newer
request replaces the one in flight.
"""

from __future__ import annotations

import json

from PySide6.QtCore import QObject, QProcess, Signal

from app.engine_client import REPO_ROOT, engine_command


class JsonTool(QObject):
    """`python -m engine TOOL ARGS… --json`, its answer parsed."""

    sig_answered = Signal(dict)
    """The tool's JSON object, or {"errors": [{"message": …}]} when it gave none."""

    def __init__(self, tool: str, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.tool = tool
        self._process: QProcess | None = None
        self._output = b""

    def run(self, *args: str) -> None:
        self.kill()
        process = QProcess(self)
        process.setWorkingDirectory(str(REPO_ROOT))
        self._output = b""
        process.readyReadStandardOutput.connect(lambda: self._collect(process))
        process.finished.connect(lambda code, _status: self._finished(process, code))
        process.errorOccurred.connect(lambda error: self._failed_to_start(process, error))
        self._process = process
        program, *arguments = engine_command(self.tool, *args, "--json")
        process.start(program, arguments)

    def is_running(self) -> bool:
        return self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning

    def kill(self) -> None:
        """Drop the request in flight; its process is killed and its answer never shown."""
        process, self._process = self._process, None
        if process is not None and process.state() != QProcess.ProcessState.NotRunning:
            process.finished.connect(process.deleteLater)
            process.kill()

    def _failed_to_start(self, process: QProcess, error: QProcess.ProcessError) -> None:
        # No `finished` follows a process that never started: answer here, once.
        if process is self._process and error == QProcess.ProcessError.FailedToStart:
            self._process = None
            process.deleteLater()
            self.sig_answered.emit({"errors": [{"message": f"the engine could not be started "
                                                           f"({process.program()}: "
                                                           f"{process.errorString()})"}]})

    def _collect(self, process: QProcess) -> None:
        if process is self._process:
            self._output += bytes(process.readAllStandardOutput())

    def _finished(self, process: QProcess, code: int) -> None:
        if process is not self._process:
            return  # replaced by a newer request
        self._output += bytes(process.readAllStandardOutput())
        stderr = bytes(process.readAllStandardError()).decode("utf-8", errors="replace").strip()
        try:
            # A nonzero exit with a JSON object still answers (e.g. a dataset with errors).
            result = json.loads(self._output.decode("utf-8")) if self._output.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            result = None
        if not isinstance(result, dict):
            message = stderr.splitlines()[-1] if stderr else f"{self.tool} failed (exit code {code})"
            result = {"errors": [{"message": message}]}
        self.sig_answered.emit(result)
