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
from pathlib import Path

from engine import __version__
from engine.api.errors import UserError
from engine.api.protocol import PROTOCOL_VERSION, EventWriter
from engine.session import (
    EXIT_INTERNAL,
    EXIT_OK,
    failed,
    guarded,
    reserve_stdout,
    watch_stdin,
)

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "resources" / "configs" / "demo.yaml"

log = logging.getLogger("engine")


# Subcommands that live in their own modules: name → (module, help). Each module has
# `main(argv: list[str]) -> int` with its own argparse, and raises UserError for user mistakes.
TOOLS = {
    "inspect-dataset": ("engine.data.inspection", "detect a dataset's format and schema, preview rows"),
    "probe": ("engine.model.probe", "describe a model: architecture, size, context, memory estimate"),
    "export": ("engine.export", "export a run: ExecuTorch .pte, GGUF adapter, merged model"),
    "chat": ("engine.chat", "chat with a base model (+ adapter), streaming"),
    "bench": ("engine.bench", "benchmarks: throughput, step time, memory, accuracy"),
    "push": ("engine.deploy.push", "push an exported folder to a connected Android phone"),
    "make-tiny-model": ("engine.model.tiny", "write a tiny random-init model (tests, smoke checks)"),
    "launch": ("engine.train.launch",
               "print the torchrun command and a SkyPilot task for a multi-machine run"),
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


def train_command(args: argparse.Namespace, protocol: bool, argv: list[str]) -> int:
    from engine.train import distributed
    from engine.train.events import EventBus, ProtocolSink, TerminalSink

    # workers > 1: this process only launches them (torch.distributed.run) and waits.
    launched = distributed.enter(args, lambda: _load_config(args))
    if launched is not None:
        return launched
    run_id = uuid.uuid4().hex[:12]
    stop = threading.Event()
    bus = EventBus()
    if protocol:
        writer = EventWriter(reserve_stdout(), run_id)
        bus.add(ProtocolSink(writer))
        if not sys.stdin.closed and sys.stdin is not None and not sys.stdin.isatty():
            watch_stdin(stop)
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
        from engine.train.trainer import Trainer

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
    from engine.api import config as config_io

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
    from engine.train.distributed import log_name

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
    from engine.train.plot import plot_run

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
