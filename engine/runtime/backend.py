"""What every chat backend is: generation settings and the calls the chat command makes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass
class Settings:
    # 0 = greedy (repeatable answers); higher = more varied, less reliable.
    temperature: float = 0.7
    # Nucleus sampling: sample from the smallest token set holding this much probability.
    top_p: float = 0.9
    max_tokens: int = 256
    seed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


class Backend(Protocol):
    def stream(self, messages: list[dict], settings: Settings) -> Iterator[str]:
        """The answer to `messages` through the model's chat template, piece by piece."""
        ...

    def complete(self, text: str, settings: Settings) -> Iterator[str]:
        """What the model writes after the plain `text` (no template), piece by piece."""
        ...

    def label_probs(self, prompt: str, words: list[str]) -> list[float]: ...
