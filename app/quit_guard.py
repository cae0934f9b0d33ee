"""Closing the window while a run is going: ask, and stop the run cleanly before quitting.

Killing the engine would lose every step since its last checkpoint; "Stop and quit" sends the
ordinary stop (the engine finishes its step and writes a checkpoint) and the window closes once
the engine has ended, bounded by the stop's own escalation (terminate, then kill).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from PySide6.QtWidgets import QMessageBox

from app.status_line import StatusMessage

if TYPE_CHECKING:
    from app.main_window import MainWindow


class QuitGuard:
    def __init__(self, window: MainWindow) -> None:
        self.window = window
        self.question: QMessageBox | None = None
        self.quit_when_stopped = False

    def ask(self) -> QMessageBox:
        """"A run is in progress — stop and quit?", asked without blocking the event loop (the
        run goes on drawing); Cancel keeps the window and the run."""
        if self.question is None:
            box = QMessageBox(QMessageBox.Icon.Question, "Quit EdgeTune",
                              "A run is in progress — stop and quit?",
                              QMessageBox.StandardButton.Cancel, self.window)
            box.setInformativeText("The run finishes its step and writes a checkpoint first; "
                                   "Resume continues from it.")
            stop = box.addButton("Stop and quit", QMessageBox.ButtonRole.AcceptRole)
            box.setDefaultButton(QMessageBox.StandardButton.Cancel)
            box.buttonClicked.connect(lambda button: self.stop_and_quit() if button is stop else None)
            self.question = box
        self.question.open()
        return self.question

    def stop_and_quit(self) -> None:
        """Stop the run cleanly and close once the engine has ended; the stop's own escalation
        (terminate, then kill) bounds the wait."""
        if self.window.run.state == "idle":  # it ended while the question was open
            self.window.close()
            return
        self.quit_when_stopped = True
        self.window.stop()
        self.window.status.show("stopping", StatusMessage(
            "Stopping the run: its step is finished and a checkpoint written, then EdgeTune "
            "closes…"))
