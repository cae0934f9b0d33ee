"""What the window knows about the current run; its widgets follow the state's signal."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QObject, Signal

from app.run_progress import RunProgress
from engine.api.checkpoints import CHECKPOINTS


class RunState(QObject):
    """The run's state, folders, and what its last events said."""

    sig_state_changed = Signal(str)
    """The run became "idle", "running" or "stopping"."""

    def __init__(self) -> None:
        super().__init__()
        self.state = "idle"  # idle | running | stopping
        self.output_dir: Path | None = None
        self.config_path: Path | None = None
        self.last_status = ""
        self.last_error = ""  # the engine's error event of this run, shown when it ends
        self.started_at = 0.0
        self.tokens_per_second: float | None = None  # the last metrics event's, shown with progress
        self.progress = RunProgress()

    def set(self, state: str) -> None:
        self.state = state
        self.sig_state_changed.emit(state)

    @property
    def resumable(self) -> bool:
        """The run ended early and left checkpoints that Resume continues from."""
        return (self.last_status in ("stopped", "crashed", "hung", "failed")
                and self.output_dir is not None
                and (self.output_dir / CHECKPOINTS).is_dir())
