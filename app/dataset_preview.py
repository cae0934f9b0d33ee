"""The dataset drop zone and its preview: first rows at once, the engine's inspection after.

The first rows come from a small standard-library reader so the table fills the moment a file
is dropped; the engine's `inspect-dataset --json` (format, schema, labels, errors with file and
line) runs in its own process and fills the summary when it answers.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from PySide6.QtCore import QProcess, Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import QFrame, QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

from app.engine_client import REPO_ROOT

PREVIEW_ROWS = 20
CELL_CHARS = 200
COLUMN_PX = 240


def read_rows(path: Path, limit: int = PREVIEW_ROWS) -> list[dict]:
    """Up to `limit` rows of a .jsonl/.json/.csv/.tsv file; raises ValueError naming the line."""
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8", newline="") as handle:
        if suffix in (".csv", ".tsv"):
            reader = csv.DictReader(handle, delimiter="\t" if suffix == ".tsv" else ",")
            return [dict(row) for _, row in zip(range(limit), reader, strict=False)]
        if suffix == ".json":
            data = json.load(handle)
            if isinstance(data, dict):  # {"data": [...]} style files
                data = next((v for v in data.values() if isinstance(v, list)), [data])
            return [r if isinstance(r, dict) else {"value": r} for r in data[:limit]]
        if suffix == ".jsonl":
            rows = []
            for number, line in enumerate(handle, 1):
                if len(rows) == limit:
                    break
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path.name}:{number}: not JSON ({exc.msg})") from None
                rows.append(row if isinstance(row, dict) else {"value": row})
            return rows
    raise ValueError(f"{path.name}: no preview for {suffix or 'files without extension'}; "
                     "the engine's inspection below still applies")


def dropped_path(event: QDropEvent | QDragEnterEvent) -> Path | None:
    urls = event.mimeData().urls() if event.mimeData().hasUrls() else []
    local = [u.toLocalFile() for u in urls if u.isLocalFile()]
    return Path(local[0]) if local else None


class DropZone(QFrame):
    """A framed label that accepts one dropped file or folder."""

    sig_path_dropped = Signal(str)

    def __init__(self, text: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setAcceptDrops(True)
        self.setFrameShape(QFrame.Shape.StyledPanel)
        self.setMinimumHeight(48)
        self.setStyleSheet("DropZone { border: 2px dashed #999; border-radius: 6px; }")
        label = QLabel(text, alignment=Qt.AlignmentFlag.AlignCenter)
        label.setStyleSheet("color: #666;")
        QVBoxLayout(self).addWidget(label)

    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        if dropped_path(event) is not None:
            event.acceptProposedAction()

    def dropEvent(self, event: QDropEvent) -> None:
        path = dropped_path(event)
        if path is not None:
            event.acceptProposedAction()
            self.sig_path_dropped.emit(str(path))


class DatasetPreview(QWidget):
    """First rows of a dataset in a table, with the engine's summary of the whole file."""

    sig_inspected = Signal(dict)
    """The engine's inspect-dataset result ({} with an "errors" entry when it failed)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.summary = QLabel("Drop a dataset to preview it", wordWrap=True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setMinimumHeight(120)
        self._process: QProcess | None = None
        self._output = b""
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)

    def show_file(self, path: Path) -> None:
        try:
            rows = read_rows(path) if path.is_file() else []
            note = "" if path.is_file() else "folder: the engine picks its train file"
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            rows, note = [], str(exc)
        columns = list(dict.fromkeys(key for row in rows for key in row))
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setRowCount(len(rows))
        self.table.setHorizontalHeaderLabels(columns)
        for r, row in enumerate(rows):
            for c, column in enumerate(columns):
                value = row.get(column, "")
                text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
                self.table.setItem(r, c, QTableWidgetItem(text[:CELL_CHARS]))
        self.table.resizeColumnsToContents()
        for column in range(self.table.columnCount()):  # long texts must not hide the label
            self.table.setColumnWidth(column, min(self.table.columnWidth(column), COLUMN_PX))
        self.summary.setText(f"{path.name}: inspecting… {note}".strip())
        self._inspect(path)

    def kill(self) -> None:
        if self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning:
            self._process.kill()
            self._process.waitForFinished(3000)

    def is_inspecting(self) -> bool:
        return self._process is not None and self._process.state() != QProcess.ProcessState.NotRunning

    def _inspect(self, path: Path) -> None:
        self.kill()
        process = QProcess(self)
        process.setWorkingDirectory(str(REPO_ROOT))
        self._output = b""
        process.readyReadStandardOutput.connect(
            lambda: setattr(self, "_output", self._output + bytes(process.readAllStandardOutput())))
        process.finished.connect(lambda code, _status: self._inspected(process, path, code))
        self._process = process
        process.start(sys.executable, ["-m", "engine", "inspect-dataset", str(path), "--json"])

    def _inspected(self, process: QProcess, path: Path, code: int) -> None:
        if process is not self._process:
            return
        self._output += bytes(process.readAllStandardOutput())
        stderr = bytes(process.readAllStandardError()).decode("utf-8", errors="replace").strip()
        try:
            # Exit code 1 with a JSON object: the file was read and has errors to show.
            result = json.loads(self._output.decode("utf-8")) if self._output.strip() else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            result = None
        if not isinstance(result, dict):
            message = stderr.splitlines()[-1] if stderr else f"inspection failed (exit code {code})"
            self.summary.setText(f"<b>{path.name}</b>: <span style='color:#b00'>{message}</span>")
            self.sig_inspected.emit({"errors": [{"message": message}]})
            return
        self.summary.setText(summary_html(path, result))
        self.sig_inspected.emit(result)


def summary_html(path: Path, result: dict) -> str:
    rows = result.get("rows")
    rows_text = f"{rows} rows" if result.get("rows_exact", True) else f"about {rows} rows"
    parts = [f"<b>{path.name}</b>: {result.get('file_format')}, {rows_text}, "
             f"schema <b>{result.get('schema')}</b>, task {result.get('task')}"]
    labels = result.get("label_distribution")
    if labels:
        parts.append("labels: " + ", ".join(f"{k} {v}" for k, v in labels.items()))
    preview = result.get("preview") or []
    if preview:
        example = preview[0]
        parts.append("example: <i>" + _escape(str(example.get("prompt", ""))[-160:]) + "</i>"
                     + " → <b>" + _escape(str(example.get("completion", ""))) + "</b>")
    for error in result.get("errors") or []:
        parts.append(f"<span style='color:#b00'>{_escape(str(error.get('message')))}</span>")
    return "<br>".join(parts)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "⏎")
