"""The dataset drop zone and its preview: first rows at once, the engine's inspection after.

The first rows come from a small standard-library reader so the table fills the moment a file
is dropped; the engine's `inspect-dataset` (format, schema, labels, errors with file and
line) runs in its own process and fills the summary when it answers.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QDragEnterEvent, QDropEvent
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QFrame,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from app.json_tool import JsonTool
from app.wheel_guard import wheel_only_when_focused
from app.widgets.settings_form import name_the_controls
from engine.api.config import CHOICES, field_doc

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
    sig_validity_changed = Signal(str)
    """Why no run can start on this dataset ("" when one can, or it is not inspected yet)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.summary = QLabel("Drop a dataset to preview it", wordWrap=True)
        self.summary.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self.table.setMinimumHeight(120)
        self._path = Path()
        self._options: list[str] = []
        self.blocking_reason = ""
        self.inspection = JsonTool("inspect-dataset", self)
        self.inspection.sig_answered.connect(self._inspected)
        # The engine reads columns by schema (text+label, prompt+completion, …); when detection
        # guesses wrong, the user says which layout the columns follow (config field `schema`).
        self.schema = QComboBox()
        self.schema.addItems(list(CHOICES["schema"]))
        self.schema.setToolTip(field_doc("schema").help)
        self.schema.currentTextChanged.connect(lambda _: self.inspect())
        wheel_only_when_focused(self.schema)
        mapping = QFormLayout()
        mapping.addRow(field_doc("schema").label, self.schema)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(mapping)
        layout.addWidget(self.summary)
        layout.addWidget(self.table, 1)

    def show_file(self, path: Path, options: list[str] | None = None) -> None:
        """Preview `path`; options: more inspect-dataset flags (--model, --max-seq-len, …)."""
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
        self._path = path
        self._set_blocking("")  # not known until the engine answers about this file
        self.inspect(options, note)

    def inspect(self, options: list[str] | None = None, note: str = "") -> None:
        """(Re)run the engine's inspection of the current file, e.g. once the model is known."""
        if options is not None:
            self._options = list(options)
        if not self._path.name:
            return
        self.summary.setText(f"{self._path.name}: inspecting… {note}".strip())
        self.inspection.run(str(self._path), "--schema", self.schema.currentText(), *self._options)

    def kill(self) -> None:
        self.inspection.kill()

    def _inspected(self, result: dict) -> None:
        path = self._path
        errors = result.get("errors") or []
        if "schema" not in result:
            # No answer, only a reason: the file is no dataset (missing, binary, empty, …), and
            # no setting changes that. Errors about rows or label words come with an answer and
            # leave the run to the engine's own check: the form (label words, skipping bad rows)
            # may fix them, and this inspection does not rerun for every setting.
            message = name_the_controls(str(errors[0]["message"])) if errors else "inspection failed"
            self.summary.setText(f"<b>{path.name}</b>: <span style='color:#b00'>{_escape(message)}</span>")
            self._set_blocking(message)
        else:
            self.summary.setText(summary_html(path, result))
        self.sig_inspected.emit(result)

    def _set_blocking(self, reason: str) -> None:
        if reason != self.blocking_reason:
            self.blocking_reason = reason
            self.sig_validity_changed.emit(reason)


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
    tokens = result.get("token_lengths")
    if tokens:
        parts.append(f"tokens per row: min {tokens['min']}, median {tokens['median']:g}, p95 "
                     f"{tokens['p95']}, max {tokens['max']}; {tokens['truncated']} of "
                     f"{result.get('sample_rows')} sampled rows over max_seq_len {tokens['max_seq_len']}")
    for error in result.get("errors") or []:
        message = name_the_controls(str(error.get("message")))
        parts.append(f"<span style='color:#b00'>{_escape(message)}</span>")
    return "<br>".join(parts)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("\n", "⏎")
