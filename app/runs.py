"""Run folders on disk: what the Runs tab lists and what it replays into the curves.

A run folder holds config.yaml (written when the run starts), metrics.jsonl (the recorded
events), checkpoints/ and, once finished, adapter/. Read with the standard library and yaml
only, so listing a hundred runs stays instant and torch-free.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from app.series import Series
from engine.api.history import read_history


@dataclass
class RunInfo:
    path: Path
    status: str  # completed | stopped (resumable) | started | broken
    model: str
    dataset: str
    best_accuracy: float | None
    last_step: int
    date: str


def read_run(folder: Path) -> RunInfo | None:
    """The summary of one run folder, or None when the folder is no run."""
    config_path = folder / "config.yaml"
    if not config_path.is_file():
        return None
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    if not isinstance(config, dict):
        config = {}
    records = read_history(folder / "metrics.jsonl")
    accuracies = [r["accuracy"] for r in records
                  if r.get("type") == "eval" and isinstance(r.get("accuracy"), (int, float))]
    steps = [r["step"] for r in records if r.get("type") == "metrics" and isinstance(r.get("step"), int)]
    if (folder / "adapter").is_dir():
        status = "completed"
    elif (folder / "checkpoints").is_dir():
        status = "stopped"
    else:
        status = "started" if records else "broken"
    return RunInfo(
        path=folder,
        status=status,
        model=Path(str(config.get("model", ""))).name or "?",
        dataset=Path(str(config.get("dataset", ""))).name or "?",
        best_accuracy=max(accuracies) if accuracies else None,
        last_step=max(steps) if steps else 0,
        date=time.strftime("%Y-%m-%d %H:%M", time.localtime(config_path.stat().st_mtime)),
    )


def list_runs(root: Path) -> list[RunInfo]:
    """Runs directly under `root`, newest first."""
    if not root.is_dir():
        return []
    runs = [info for child in root.iterdir() if child.is_dir() and (info := read_run(child))]
    return sorted(runs, key=lambda r: (r.path / "config.yaml").stat().st_mtime, reverse=True)


def series_of(folder: Path) -> Series:
    """A finished (or interrupted) run's curves, replayed from metrics.jsonl."""
    series = Series(folder.name)
    for record in read_history(folder / "metrics.jsonl"):
        series.add_event(str(record.get("type", "")), record)
    return series
