"""The event protocol between the engine process and its clients (the app, scripts).

Standard library only: the app imports this module and must never pull in torch.

Framing: one JSON object per line on the engine's stdout, UTF-8, flushed after every line.
Every object is an envelope::

    {"v": 1, "seq": 0, "time": 1732810000.123, "run_id": "…", "type": "hello", "data": {…}}

- ``v``: PROTOCOL_VERSION. Adding an event type or a field does not change it; removing or
  changing the meaning of one does. Clients refuse a larger major version.
- ``seq``: starts at 0 and increases by exactly one per event, so a gap shows a lost line.
- ``time``: seconds since the epoch (float) when the event was made.
- ``type``: one of EVENT_TYPES. Receivers ignore types they do not know.
- ``data``: the payload, documented per type below.

Every command speaks it when given ``--protocol`` (``python -m engine train CONFIG --protocol``,
``probe MODEL --protocol``, …; engine/session.py). ``hello`` is always the first event and
``done`` always the last, also after an error; an engine process that exits without ``done``
has crashed.

Event payloads (fields may be added):
- hello: protocol, engine_version, pid, argv
- status: state, message. The state is the stage the command is in: training "loading" |
  "training" | "evaluating" | "checkpointing"; chat "loading" | "generating"; export the stage
  names of its format (executorch "load" | "convert" | "export" | "lower" | "serialize" |
  "verify"; gguf "base" | "adapter" | "verify"; merged-gguf "merge" | "verify" | "quantise");
  push "pushing" | "verifying". Training adds device (the one it computes on: "cpu",
  "cuda:0", "mps") and threads (torch's CPU threads); "evaluating" comes as the evaluation
  starts and after each batch, with step, rows_done and rows (its progress)
- progress: training: step, total_steps, elapsed_seconds, eta_seconds. export: stage (1-based
  index), stages (their count), name, seconds (null as the stage starts, its duration as it
  ends). push: percent (of all bytes), file, file_percent
- metrics: step, loss, step_seconds, tokens_per_second, lr, projected_grad_norm (zeroth-order)
- eval: step, loss, accuracy (classification only, else null), rows
- memory: step, rss_bytes, peak_rss_bytes, device_allocated_bytes (null on CPU), budget_bytes
- log: level ("debug" | "info" | "warning" | "error"), message
- checkpoint: step, path, reason (why it was written: "interval" (checkpoint_every), "stop",
  "memory" (the budget was crossed) or "end" (the run's end, before its adapter is saved))
- artifact: kind, path: what the command wrote. training "adapter" | "plot"; export the format
  ("gguf" | "merged-gguf" | "executorch") and the exported file or folder; push "device" and
  SERIAL:/folder on the phone (SERIAL:/folder/NAME.gguf for a merged GGUF model), with format
  ("executorch" | "merged-gguf") and next_step (what to open on the phone; "" for ExecuTorch)
- result: the answer of a command that answers with data, the object it prints with --json:
  probe (see engine/model/probe.py), inspect-dataset (engine/data/inspection.py; its errors
  field lists problems, exit code 2 when not empty), push --list ({"devices": […]})
- error: kind ("user" | "internal"), message, log_path (null when no log file was open)
- done: status ("completed" | "stopped" | "failed"), exit_code; training adds output_dir, chat
  tokens and seconds (of all its answers)

Chat (`python -m engine chat [MODEL] --adapter RUN --protocol`, see engine/chat.py) is a
session: it loads the model once (status "loading"), then answers one request at a time, each
with status "generating", label_probs (classification runs), tokens and its `answer` event; it
ends with done at EOF on stdin or `quit`. With --prompt P it answers that one request and ends.
A request is one JSON object on one line of stdin; only messages is required, the others
default to the command line's flags::

    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                  {"role": "user", "content": "And now?"}],
     "system": "You are terse.", "template": "chat", "temperature": 0.7, "top_p": 0.9,
     "max_tokens": 256, "seed": 0}

- messages: the conversation so far, oldest first, ending with the user's turn (roles "user" |
  "assistant"); the client keeps it and sends it whole each turn
- system: a system message put before them (null or "": none)
- template: "chat" (the model's chat template) | "raw" (the plain text, user turns through the
  run's prompt_template: what a classification run was trained on)

Its events:
- token: text (a streamed piece of the answer)
- label_probs: words, probabilities (of each label word at the answer position of the last
  user turn)
- answer: the end of one answer: status ("completed" | "stopped" | "failed": a request the
  engine refused, the session goes on), tokens, seconds, template, messages (how many the
  model saw, the system message included), message (why it failed; "" otherwise)

Client → engine (the engine's stdin): one command per line: ``stop``, ``quit``, or a request.
``stop``: training finishes the current step, writes a checkpoint and ends with done/stopped; a
chat session ends its answer to the latest request it read (after the current token, or before
the first if that answer has not begun) and goes on (with --prompt it ends with done/stopped);
the other commands are interrupted as by Ctrl+C (no partial file is left) and end with
done/stopped, exit code 130. ``quit`` (or EOF): a session ends after its last answer. A client
that gets no ``done`` in time terminates, then kills.
"""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import IO, Any

PROTOCOL_VERSION = 1

EVENT_TYPES = (
    "hello",
    "status",
    "progress",
    "metrics",
    "eval",
    "memory",
    "log",
    "checkpoint",
    "artifact",
    "error",
    "done",
    "result",
    "token",
    "label_probs",
    "answer",
)

STOP_COMMAND = "stop"
QUIT_COMMAND = "quit"


class ProtocolError(ValueError):
    """A line that is not a valid event envelope."""


@dataclass(frozen=True)
class Event:
    """One protocol event (the envelope and its payload)."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)
    seq: int = 0
    run_id: str = ""
    time: float = 0.0
    v: int = PROTOCOL_VERSION

    def to_line(self) -> str:
        """The event as one JSON line, newline included; NaN and infinities become null."""
        return json.dumps(_json_safe(asdict(self)), separators=(",", ":"), allow_nan=False) + "\n"


def _json_safe(value: Any) -> Any:
    # NaN is not JSON; a diverged loss must still reach the client as a parseable line.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def json_object(line: str) -> dict[str, Any]:
    """The JSON object on one line (an event, a request); ProtocolError says what is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"not JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("not a JSON object")
    return obj


def decode(line: str) -> Event:
    """Parse one line into an Event; raises ProtocolError naming what is wrong."""
    obj = json_object(line)
    for key, kind in (("v", int), ("seq", int), ("type", str), ("data", dict)):
        if not isinstance(obj.get(key), kind):
            raise ProtocolError(f'field "{key}" missing or not {kind.__name__}')
    if obj["v"] > PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {obj['v']} is newer than this client's {PROTOCOL_VERSION}; "
            "update EdgeTune"
        )
    return Event(
        type=obj["type"],
        data=obj["data"],
        seq=obj["seq"],
        run_id=str(obj.get("run_id", "")),
        time=float(obj.get("time", 0.0)),
        v=obj["v"],
    )


class EventWriter:
    """Writes numbered events to a text stream, one flushed line each; thread-safe."""

    def __init__(self, stream: IO[str], run_id: str) -> None:
        self._stream = stream
        self._run_id = run_id
        self._seq = 0
        self._lock = threading.Lock()

    def emit(self, type: str, **data: Any) -> Event:
        with self._lock:
            event = Event(
                type=type, data=data, seq=self._seq, run_id=self._run_id, time=time.time()
            )
            self._stream.write(event.to_line())
            self._stream.flush()
            self._seq += 1
        return event
