"""The points of a run's curves, from live events or replayed from metrics.jsonl.

Kept apart from the plotting (app.widgets.curves) so reading run history does not import pyqtgraph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SMOOTHING = 0.9  # exponential moving average weight of the past, as in TensorBoard
GIB = 2**30


@dataclass
class Series:
    """The points of one run, by curve name: name → (steps, values)."""

    label: str = ""
    points: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    budget_gib: float = 0.0

    def add(self, name: str, step: float, value: Any) -> None:
        if value is None:
            return
        steps, values = self.points.setdefault(name, ([], []))
        steps.append(float(step))
        values.append(float(value))

    def add_event(self, type: str, data: dict[str, Any]) -> None:
        step = data.get("step")
        if step is None:
            return
        if type == "metrics":
            self.add("loss", step, data.get("loss"))
            self.add("step_seconds", step, data.get("step_seconds"))
            self.add("tokens_per_second", step, data.get("tokens_per_second"))
        elif type == "eval":
            self.add("eval_loss", step, data.get("loss"))
            self.add("accuracy", step, data.get("accuracy"))
        elif type == "memory":
            for key, name in (("rss_bytes", "rss"), ("peak_rss_bytes", "peak"),
                              ("device_allocated_bytes", "device")):
                value = data.get(key)
                self.add(name, step, None if value is None else value / GIB)
            if data.get("budget_bytes"):
                self.budget_gib = data["budget_bytes"] / GIB

    def get(self, name: str) -> tuple[list[float], list[float]]:
        return self.points.get(name, ([], []))


def smoothed(values: list[float]) -> list[float]:
    out, average = [], None
    for value in values:
        average = value if average is None else SMOOTHING * average + (1 - SMOOTHING) * value
        out.append(average)
    return out
