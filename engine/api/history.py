"""A run's history: OUTPUT_DIR/metrics.jsonl, one event record a line (see engine/api/protocol.py),
read by the engine (resume, plots, benchmarks) and by the app (the runs list, replayed curves)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_history(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; a line torn by a kill is skipped, a missing file is empty."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records
