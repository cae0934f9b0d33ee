"""`python -m engine …`: train, run (protocol mode for the app), and the tools around them.

A user error prints one paragraph and exits 2 (no traceback; the traceback goes to the run's
log file). In protocol mode stdout is reserved for events from the first line: anything else
that writes to file descriptor 1 (library prints, C extensions) is redirected to stderr.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

from engine import __version__
from engine.errors import UserError
from engine.protocol import PROTOCOL_VERSION, STOP_COMMAND, EventWriter

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_STOPPED = 0, 1, 2, 130
DEMO_CONFIG = Path(__file__).resolve().parent.parent / "resources" / "configs" / "demo.yaml"

log = logging.getLogger("engine")


# Subcommands that live in their own modules: name → (module, help). Each module has
# `main(argv: list[str]) -> int` with its own argparse, and raises UserError for user mistakes.
TOOLS = {
    "inspect-dataset": ("engine.inspect", "detect a dataset's format and schema, preview rows"),
    "probe": ("engine.probe", "describe a model: architecture, size, context, memory estimate"),
    "export": ("engine.export", "export a run: ExecuTorch .pte, GGUF adapter, merged model"),
    "chat": ("engine.chat", "chat with a base model (+ adapter), streaming"),
    "bench": ("engine.bench", "benchmarks: throughput, step time, memory, accuracy"),
    "push": ("engine.phone", "push an exported folder to a connected Android phone"),
    "make-tiny-model": ("engine.tiny_model", "write a tiny random-init model (tests, smoke checks)"),
    "launch": ("engine.launch", "print the torchrun command and a SkyPilot task for a multi-machine run"),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description="EdgeTune engine")
    parser.add_argument("--version", action="version", version=f"edgetune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (_, help_text) in TOOLS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    for name, help_text in (("train", "train from a YAML config, with a progress bar"),
                            ("run", "train and speak the event protocol (used by the app)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("config", nargs="?", help="YAML config file")
        p.add_argument("overrides", nargs="*", help="key=value or section.key=value")
        p.add_argument("--resume", action="store_true", help="continue the run in output_dir")
        p.add_argument("--demo", action="store_true", help="the bundled demo config")
        p.add_argument("--protocol", action="store_true", help="events as JSON lines on stdout")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Tracebacks go to the run's log file only; never to the user's terminal.
    logging.getLogger().addHandler(logging.NullHandler())
    _quiet_libraries()
    if argv and argv[0] in TOOLS:
        return run_tool(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    # A bare `key=value` lands in `config` when no YAML is given; move it to the overrides.
    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.config)
        args.config = None
    protocol = args.command == "run" or args.protocol
    return train_command(args, protocol, argv)


def _quiet_libraries() -> None:
    """Keep library chatter (optional-kernel probes, progress bars) off the user's terminal."""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_tool(name: str, argv: list[str]) -> int:
    """Run a tool subcommand (its module's `main`) inside the error boundary."""
    import importlib

    return guarded(lambda: importlib.import_module(TOOLS[name][0]).main(argv))


def print_error(kind: str, message: str) -> None:
    """How a terminal command says what ended it: one paragraph on stderr (and, for a bug, the
    traceback above it: there is no log file to keep it in)."""
    if kind == "internal":
        traceback.print_exc(file=sys.stderr)
    print(f"error: {message}", file=sys.stderr)


def guarded(body: Callable[[], int | None],
            report: Callable[[str, str], None] = print_error) -> int:
    """`body()`'s exit code, or the error boundary's (`failed`) for what escaped it."""
    try:
        return int(body() or 0)
    except (Exception, KeyboardInterrupt) as exc:
        return failed(exc, report)


def failed(exc: BaseException, report: Callable[[str, str], None]) -> int:
    """The error boundary of every subcommand: the exit code for an exception that ended it, and
    its one message through `report(kind, message)`. Call it from the `except` clause.

    UserError (bad input, with what to do): kind "user", exit 2. Ctrl+C or SIGTERM (a command
    that stops on it raises KeyboardInterrupt): exit 130, nothing to report. Anything else is a
    bug: kind "internal", exit 1. The traceback goes to the log (the run's engine.log where one
    is open), never into the message.
    """
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_STOPPED
    if isinstance(exc, UserError):
        log.error("user error", exc_info=exc)
        report("user", str(exc))
        return EXIT_USER
    log.error("internal error", exc_info=exc)
    report("internal", f"internal error ({type(exc).__name__}: {exc})")
    return EXIT_INTERNAL


def _reserve_stdout():
    """The protocol stream: a private copy of fd 1; fd 1 itself now points at stderr."""
    sys.stdout.flush()
    protocol_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = os.fdopen(1, "w", buffering=1, encoding="utf-8", errors="replace", closefd=False)
    return os.fdopen(protocol_fd, "w", buffering=1, encoding="utf-8")


def _watch_stdin(stop: threading.Event) -> None:
    def read() -> None:
        for line in sys.stdin:
            if line.strip() == STOP_COMMAND:
                stop.set()
                return
    threading.Thread(target=read, name="stdin-commands", daemon=True).start()


def train_command(args: argparse.Namespace, protocol: bool, argv: list[str]) -> int:
    from engine import distributed
    from engine.events import EventBus, ProtocolSink, TerminalSink

    # workers > 1: this process only launches them (torch.distributed.run) and waits.
    launched = distributed.enter(args, lambda: _load_config(args))
    if launched is not None:
        return launched
    run_id = uuid.uuid4().hex[:12]
    stop = threading.Event()
    bus = EventBus()
    if protocol:
        writer = EventWriter(_reserve_stdout(), run_id)
        bus.add(ProtocolSink(writer))
        if not sys.stdin.closed and sys.stdin is not None and not sys.stdin.isatty():
            _watch_stdin(stop)
    else:
        bus.add(TerminalSink(sys.stderr))
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    if not protocol:
        signal.signal(signal.SIGINT, lambda *_: (stop.set(), bus.log("stopping after this step…")))
    bus.emit("hello", protocol=PROTOCOL_VERSION, engine_version=__version__, pid=os.getpid(),
             argv=argv)
    output_dir: Path | None = None
    log_path: Path | None = None
    status, code = "failed", EXIT_INTERNAL
    started = time.time()

    def report(kind: str, message: str) -> None:
        where = f"; details in {log_path}" if kind == "internal" and log_path else ""
        bus.emit("error", kind=kind, message=message + where,
                 log_path=str(log_path) if log_path else None)
        if kind == "internal" and log_path is None:
            traceback.print_exc(file=sys.stderr)
        if not protocol or (kind == "internal" and log_path is None):
            print(f"\nerror: {message}{where}", file=sys.stderr)

    try:
        config = _load_config(args)
        output_dir = Path(config.output_dir)
        log_path = _open_log(output_dir)
        from engine.trainer import Trainer

        trainer = Trainer(config, bus, stop)
        try:
            trainer.setup(resume=args.resume)
            result = trainer.train()
        finally:
            trainer.cleanup()
        status, code = result.status, EXIT_OK
        if result.status == "completed" and not protocol:
            _print_summary(result, output_dir, time.time() - started)
        if result.status == "completed" and distributed.rank() == 0:
            _plot(bus, output_dir)
    except (Exception, KeyboardInterrupt) as exc:
        code = failed(exc, report)
    finally:
        bus.emit("done", status=status, exit_code=code,
                 output_dir=str(output_dir) if output_dir else None)
    return code


def _load_config(args: argparse.Namespace):
    from engine import config as config_io

    if args.demo:
        overrides = [f"output_dir=runs/demo-{time.strftime('%Y%m%d-%H%M%S')}", *args.overrides]
        return config_io.load(DEMO_CONFIG, overrides)
    if args.config is None and not args.overrides:
        raise UserError("give a config file (python -m engine train CONFIG.yaml) or --demo")
    try:
        return config_io.load(args.config, args.overrides)
    except OSError as exc:  # a folder, a file it may not read
        raise UserError(f"config file {args.config} cannot be read ({exc.strerror or exc}); "
                        "give a YAML file") from None


def _open_log(output_dir: Path) -> Path | None:
    """Full details (tracebacks included) go to OUTPUT_DIR/engine.log (worker-N.log for the
    other workers of a distributed run)."""
    from engine.distributed import log_name

    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        path = output_dir / log_name()
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    return path


def _plot(bus, output_dir: Path) -> None:
    from engine.plot import plot_run

    path = plot_run(output_dir)
    if path is not None:
        bus.emit("artifact", kind="plot", path=str(path))


def _print_summary(result, output_dir: Path, seconds: float) -> None:
    before, after = result.eval_before, result.eval_after
    lines = [f"\nfinished {result.step} steps in {seconds / 60:.1f} min"]
    if before and after:
        if after.get("accuracy") is not None and before.get("accuracy") is not None:
            lines.append(f"held-out accuracy: {before['accuracy']:.1%} before → "
                         f"{after['accuracy']:.1%} after")
        lines.append(f"held-out loss:     {before['loss']:.4f} before → {after['loss']:.4f} after")
    if result.adapter_dir:
        lines.append(f"adapter (PEFT):    {result.adapter_dir}")
    lines.append(f"run folder:        {output_dir}")
    print("\n".join(lines), file=sys.stderr)
