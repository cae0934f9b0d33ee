"""Where the engine's events go: one bus, several sinks (protocol stdout, metrics.jsonl, terminal).

The trainer only ever calls `EventBus.emit`; which sinks listen depends on how the engine was
started (`train --protocol` for the app, `train` for a person at a terminal).
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import IO, Any, Protocol

from engine.api.protocol import EventWriter

# Event types that are part of a run's history, replayed by the app from metrics.jsonl.
RECORDED_TYPES = ("metrics", "eval", "memory", "checkpoint")


class Sink(Protocol):
    def emit(self, type: str, data: dict[str, Any]) -> None: ...


class EventBus:
    def __init__(self, sinks: list[Sink] | None = None) -> None:
        self.sinks: list[Sink] = list(sinks or [])

    def add(self, sink: Sink) -> None:
        self.sinks.append(sink)

    def emit(self, type: str, **data: Any) -> None:
        for sink in self.sinks:
            sink.emit(type, data)

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message)


class ProtocolSink:
    """JSON lines on the reserved protocol stream (the app's view of the run)."""

    def __init__(self, writer: EventWriter) -> None:
        self.writer = writer

    def emit(self, type: str, data: dict[str, Any]) -> None:
        self.writer.emit(type, **data)


class MetricsFileSink:
    """Appends the run's history to OUTPUT_DIR/metrics.jsonl, flushed per line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle = path.open("a", encoding="utf-8")

    def emit(self, type: str, data: dict[str, Any]) -> None:
        if type not in RECORDED_TYPES:
            return
        record = {"type": type, "time": time.time(), **data}
        self._handle.write(json.dumps(_finite(record)) + "\n")
        self._handle.flush()

    def close(self) -> None:
        self._handle.close()


def _finite(record: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


def truncate_history(path: Path, last_step: int) -> None:
    """Drop records after `last_step` (steps run after the checkpoint a resume starts from)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        if record.get("step", 0) <= last_step:
            kept.append(line)
    partial = path.with_suffix(".jsonl.partial")
    partial.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    partial.replace(path)


class TerminalSink:
    """A progress bar with ETA and the key numbers, for a person at a terminal."""

    def __init__(self, stream: IO[str] = sys.stderr) -> None:
        self.stream = stream
        self.is_tty = stream.isatty()
        self._last_loss: float | None = None
        self._bar_open = False  # a tty bar line without its newline yet

    def close(self) -> None:
        """End an unfinished bar's line, so what is printed next (an error) starts its own."""
        if self._bar_open:
            self.stream.write("\n")
            self._bar_open = False

    def emit(self, type: str, data: dict[str, Any]) -> None:
        if type == "metrics":
            self._last_loss = data.get("loss")
        elif type == "progress":
            self._bar(data)
        elif type == "eval":
            acc = data.get("accuracy")
            acc_text = f", accuracy {acc:.1%}" if acc is not None else ""
            self._line(f"eval @ step {data['step']}: loss {data['loss']:.4f}{acc_text} ({data['rows']} rows)")
        elif type == "status" and data.get("state") == "loading":
            self._line(data["message"])
        elif type == "log" and data.get("level") != "debug":
            self._line(data["message"])
        elif type == "checkpoint":
            self._line(f"checkpoint @ step {data['step']}: {data['path']}")
        elif type == "artifact":
            self._line(f"{data['kind']}: {data['path']}")

    def _bar(self, data: dict[str, Any]) -> None:
        step, total = data["step"], data["total_steps"]
        width = 30
        filled = int(width * step / max(total, 1))
        eta = data.get("eta_seconds")
        eta_text = f"ETA {int(eta) // 60}:{int(eta) % 60:02d}" if eta is not None else ""
        loss = f"loss {self._last_loss:.4f}" if self._last_loss is not None else ""
        text = f"[{'#' * filled}{'.' * (width - filled)}] {step}/{total} {loss} {eta_text}"
        if self.is_tty:
            self.stream.write("\r" + text.ljust(78))
            self._bar_open = step != total
            if step == total:
                self.stream.write("\n")
        elif step == total or step % 10 == 0:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _line(self, text: str) -> None:
        if self.is_tty:
            self.stream.write("\r" + " " * 78 + "\r")
            self._bar_open = False
        self.stream.write(text + "\n")
        self.stream.flush()
