"""How far a run is and how long it has left, from its progress, evaluating and eval events.

The engine's eta_seconds counts the steps left; its periodic evaluations fall inside the time it
measures steps by, but the final evaluation runs after the last step, and on a large held-out set
it takes tens of seconds. Its time is estimated from the run's earlier evaluations (a fresh run
always evaluates at step 0 first) and, once it has scored some rows, from its own pace.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Evaluation:
    """The evaluation under way, as its status events report it."""

    step: int
    started: float  # the event time of its first report
    rows_done: int
    rows: int
    reported: float  # the event time of its latest report

    def seconds_left(self, expected_seconds: float | None) -> float | None:
        """From its pace once it has scored rows, else from `expected_seconds` (None: unknown)."""
        elapsed = self.reported - self.started
        if self.rows_done:
            return elapsed / self.rows_done * (self.rows - self.rows_done)
        if expected_seconds is None:
            return None
        return max(expected_seconds - elapsed, 0.0)


@dataclass
class RunProgress:
    """A run's step, its evaluations and its time left, as its events report them."""

    step: int = 0
    total_steps: int = 0
    steps_seconds: float | None = None  # the engine's eta_seconds at its last progress event
    evaluation_seconds: float | None = None  # how long the run's last whole evaluation took
    evaluation: Evaluation | None = None  # the one under way
    final_evaluated: bool = False

    def on_progress(self, data: dict) -> None:
        self.step = int(data.get("step", 0))
        self.total_steps = int(data.get("total_steps", 0) or 0)
        eta = data.get("eta_seconds")
        self.steps_seconds = None if eta is None else float(eta)

    def on_evaluating(self, data: dict, time: float) -> None:
        """A status event of state "evaluating" (rows_done of rows scored so far)."""
        step = int(data.get("step", 0))
        if self.evaluation is None or self.evaluation.step != step:
            self.evaluation = Evaluation(step, started=time, rows_done=0, rows=0, reported=time)
        self.evaluation.rows_done = int(data.get("rows_done", 0))
        self.evaluation.rows = int(data.get("rows", 0))
        self.evaluation.reported = time

    def on_evaluated(self, time: float) -> None:
        """An eval event: the evaluation under way ended."""
        if self.evaluation is not None:
            self.evaluation_seconds = time - self.evaluation.started
            self.final_evaluated = self._is_final(self.evaluation)
        self.evaluation = None

    def _is_final(self, evaluation: Evaluation) -> bool:
        return bool(self.total_steps) and evaluation.step >= self.total_steps

    def seconds_left(self) -> float | None:
        """The run's time left, final evaluation included; None while it cannot be told."""
        final = 0.0 if self.final_evaluated else (self.evaluation_seconds or 0.0)
        running = self.evaluation
        if running is None:
            return None if self.steps_seconds is None else self.steps_seconds + final
        this_one = running.seconds_left(self.evaluation_seconds)
        if this_one is None or self._is_final(running):
            return this_one
        if self.steps_seconds is None:
            return None
        return this_one + self.steps_seconds + final
