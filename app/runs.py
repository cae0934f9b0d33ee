"""Run folders on disk: what the Runs tab lists and what it replays into the curves.

A run folder holds config.yaml (written when the run starts), metrics.jsonl (the recorded
events), checkpoints/ and, once finished, adapter/; the config the window launched it with
lies beside it (NAME.yaml). Read with the standard library and yaml only, so listing a hundred
runs stays instant and torch-free.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

from app.series import Series
from engine.api.checkpoints import CHECKPOINTS, resumable_step
from engine.api.history import read_history

FAILED_TO_START = "failed to start"  # a config and nothing else: the engine ended at once
# What a renamed folder may be called: one name (no separator), not hidden, and no '.' or space
# at the end (Windows drops them).
RUN_NAME = re.compile(r"\w([\w.\- ]*[\w\-])?")


@dataclass
class RunInfo:
    path: Path
    status: str  # completed | stopped (resumable) | started | FAILED_TO_START
    model: str
    dataset: str
    best_accuracy: float | None
    last_step: int
    date: str
    resumable_step: int | None  # the newest checkpoint's step, where Resume continues

    @property
    def step_text(self) -> str:
        """How far it got and, unless it completed, where Resume continues: "step 522 ·
        resumable from 500" (the steps after the last checkpoint are run again)."""
        if self.status == "completed":
            return f"step {self.last_step}"
        resumable = ("no checkpoint to resume from" if self.resumable_step is None
                     else f"resumable from {self.resumable_step}")
        return f"step {self.last_step} · {resumable}"


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
    if has_adapter(folder):
        status = "completed" if _ended(records) else "stopped"
    elif (folder / CHECKPOINTS).is_dir():
        status = "stopped"
    else:
        status = "started" if records else FAILED_TO_START
    return RunInfo(
        path=folder,
        status=status,
        model=Path(str(config.get("model", ""))).name or "?",
        dataset=Path(str(config.get("dataset", ""))).name or "?",
        best_accuracy=max(accuracies) if accuracies else None,
        last_step=max(steps) if steps else 0,
        resumable_step=resumable_step(folder),
        date=time.strftime("%Y-%m-%d %H:%M", time.localtime(config_path.stat().st_mtime)),
    )


def _ended(records: list[dict]) -> bool:
    """The run's last checkpoint was written at its end: a stopped run saves an adapter too, and
    only this tells the two apart (a run recorded before checkpoints said why counts as ended)."""
    checkpoints = [r for r in records if r.get("type") == "checkpoint"]
    return not checkpoints or checkpoints[-1].get("reason", "end") == "end"


def list_runs(root: Path) -> list[RunInfo]:
    """Runs directly under `root`, newest first."""
    if not root.is_dir():
        return []
    runs = [info for child in root.iterdir() if child.is_dir() and (info := read_run(child))]
    return sorted(runs, key=lambda r: (r.path / "config.yaml").stat().st_mtime, reverse=True)


def has_adapter(folder: Path) -> bool:
    """The run saved its PEFT adapter: what Export and the Playground load."""
    return (folder / "adapter" / "adapter_config.json").is_file()


def launch_config(folder: Path) -> Path:
    """The config the window launched `folder`'s run with, beside the folder."""
    return folder.with_name(f"{folder.name}.yaml")


def name_problem(folder: Path, name: str) -> str:
    """Why the run `folder` cannot be renamed to `name` ("" when it can)."""
    if not RUN_NAME.fullmatch(name):
        return (f"{name!r} cannot name a run folder: use letters, digits, '-', '_', '.' and "
                "spaces, starting with a letter or digit, ending without '.' or a space")
    target = folder.with_name(name)
    if target.exists() or launch_config(target).exists():
        return f"{target} exists already; pick another name"
    return ""


def rename_run(folder: Path, name: str) -> Path:
    """Rename the run `folder` and its launch config to `name`; their output_dir follows, so
    Resume continues the run in its new place. The new folder; OSError when the disk refuses."""
    target = folder.with_name(name)
    folder.rename(target)
    if launch_config(folder).is_file():
        launch_config(folder).rename(launch_config(target))
    for config_path in (target / "config.yaml", launch_config(target)):
        _point_output_dir(config_path, target)
    return target


def _point_output_dir(config_path: Path, folder: Path) -> None:
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return  # no config, or one the engine cannot read either: nothing points anywhere
    if isinstance(config, dict) and "output_dir" in config:
        config["output_dir"] = str(folder)
        config_path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def series_of(folder: Path) -> Series:
    """A finished (or interrupted) run's curves, replayed from metrics.jsonl."""
    series = Series(folder.name)
    for record in read_history(folder / "metrics.jsonl"):
        series.add_event(str(record.get("type", "")), record)
    return series
