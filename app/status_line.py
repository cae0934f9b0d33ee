"""What the status line under the run buttons says: one message per owner, the most urgent shown.

A message belongs to the state it describes, and the event that ends that state removes it, so
none outlives its cause: an evaluation's or a checkpoint's message goes when training goes on, a
refused Start's error when the inputs pass the check again, the engine's stages when the run ends.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal

from app.widgets.settings_form import name_the_controls

# The owners, most urgent first: the line shows the first one that has a message.
OWNERS = (
    "input",  # the window refused Start over its inputs; checked again as they change
    "stopping",  # a stop was asked for; until the run ends
    "stage",  # the engine evaluates or checkpoints; until it trains on (metrics, progress)
    "engine",  # the engine's standing stage (loading, training); until the run ends
    "launch",  # the engine is starting; until it reports
    "outcome",  # how the last run ended; until the next start (a failure: or an input change)
)
IDLE_TEXT = "Ready"


@dataclass(frozen=True)
class StatusMessage:
    text: str
    error: bool = False
    detail: tuple[str, ...] = ()  # lines shown under it in a fixed font (a crash's stderr tail)

    def html(self) -> str:
        """The message as the status line's rich text; a path or message holding < or & shows
        as typed."""
        text = html.escape(name_the_controls(self.text) if self.error else self.text)
        if self.error:
            text = f"<span style='color:#b00'>{text}</span>"
        if self.detail:
            text += "<br><tt>" + "<br>".join(html.escape(line[-160:]) for line in self.detail) + "</tt>"
        return text


class StatusLine(QObject):
    """The status line's messages by owner (OWNERS)."""

    sig_changed = Signal()
    """The message shown changed."""

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._messages: dict[str, StatusMessage] = {}

    def show(self, owner: str, message: StatusMessage) -> None:
        """Set `owner`'s message, replacing its last one."""
        if owner not in OWNERS:
            raise ValueError(f"unknown status owner {owner!r}")
        self._messages[owner] = message
        self.sig_changed.emit()

    def clear(self, *owners: str) -> None:
        """Remove these owners' messages (all of them when none is named)."""
        for owner in owners or OWNERS:
            self._messages.pop(owner, None)
        self.sig_changed.emit()

    def message(self, owner: str) -> StatusMessage | None:
        return self._messages.get(owner)

    def shown(self) -> StatusMessage:
        """The most urgent message, or the idle text."""
        return next((self._messages[owner] for owner in OWNERS if owner in self._messages),
                    StatusMessage(IDLE_TEXT))
