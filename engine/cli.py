"""`python -m engine …`: train, and the tools around it.

Every command runs in one session (engine.session): a user error prints one paragraph and exits
2 (no traceback; the traceback goes to the run's log file); with `--protocol` (what the app
passes) the command speaks engine.api.protocol on stdout instead of printing for a person.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from engine import __version__, session
from engine.api.errors import UserError

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "resources" / "configs" / "demo.yaml"

log = logging.getLogger("engine")


@dataclass(frozen=True)
class Tool:
    """A subcommand in its own module: `main(argv: list[str]) -> int` with its own argparse,
    raising UserError for user mistakes and reporting through engine.session.emit."""

    module: str
    help: str
    # It watches engine.session.current().stop and ends cleanly (chat: after the current
    # token); the others are interrupted by a stop as by Ctrl+C.
    polls_stop: bool = False


TOOLS = {
    "inspect-dataset": Tool("engine.data.inspection", "detect a dataset's format and schema, preview rows"),
    "probe": Tool("engine.model.probe", "describe a model: architecture, size, context, memory estimate"),
    "export": Tool("engine.export", "export a run: ExecuTorch .pte, GGUF adapter, merged model"),
    "chat": Tool("engine.chat", "chat with a base model (+ adapter), streaming", polls_stop=True),
    "bench": Tool("engine.bench", "benchmarks: throughput, step time, memory, accuracy"),
    "push": Tool("engine.deploy.push", "push an exported folder to a connected Android phone"),
    "make-tiny-model": Tool("engine.model.tiny", "write a tiny random-init model (tests, smoke checks)"),
    "launch": Tool("engine.train.launch",
                   "print the torchrun command and a SkyPilot task for a multi-machine run"),
}
PROTOCOL_FLAG = "--protocol"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine", description="EdgeTune engine",
        epilog=f"every command takes {PROTOCOL_FLAG}: events as JSON lines on stdout (the app's "
               "way to run it; see engine/api/protocol.py)")
    parser.add_argument("--version", action="version", version=f"edgetune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, tool in TOOLS.items():
        sub.add_parser(name, help=tool.help, add_help=False)
    p = sub.add_parser("train", help="train from a YAML config, with a progress bar")
    p.add_argument("config", nargs="?", help="YAML config file")
    p.add_argument("overrides", nargs="*", help="key=value or section.key=value")
    p.add_argument("--resume", action="store_true", help="continue the run in output_dir")
    p.add_argument("--demo", action="store_true", help="the bundled demo config")
    p.add_argument(PROTOCOL_FLAG, action="store_true",
                   help="events as JSON lines on stdout (used by the app)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Tracebacks go to the run's log file only; never to the user's terminal.
    logging.getLogger().addHandler(logging.NullHandler())
    _quiet_libraries(protocol=PROTOCOL_FLAG in argv)
    if argv and argv[0] in TOOLS:
        return run_tool(argv[0], argv[1:])
    args = _parser().parse_args(argv)
    # A bare `key=value` lands in `config` when no YAML is given; move it to the overrides.
    if args.config and "=" in args.config and not args.config.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.config)
        args.config = None
    return train_command(args, argv)


def _quiet_libraries(protocol: bool) -> None:
    """Keep library chatter (optional-kernel probes, progress bars) off the user's terminal.

    With --protocol the libraries' deprecation notices go too: they are for EdgeTune's developers
    (torch.export repeats some for every traced call), and the stderr tail a client shows after a
    failure should hold the failure.
    """
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    if protocol:
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category)


def run_tool(name: str, argv: list[str]) -> int:
    """Run a tool subcommand (its module's `main`) as this process's session."""
    import importlib

    tool = TOOLS[name]
    own = [arg for arg in argv if arg != PROTOCOL_FLAG]  # the session's flag, not the tool's
    return session.run([name, *argv], lambda: importlib.import_module(tool.module).main(own),
                       protocol=PROTOCOL_FLAG in argv, polls_stop=tool.polls_stop)


def train_command(args: argparse.Namespace, argv: list[str]) -> int:
    from engine.train import distributed

    # workers > 1: this process only launches them (torch.distributed.run) and waits; worker 0
    # speaks for the run.
    try:
        launched = distributed.enter(args, lambda: _load_config(args))
    except distributed.LaunchFailed as exc:
        # No worker started to speak for the run: this process reports it as the command's
        # session would (with --protocol: hello, error, done).
        return session.run(argv, functools.partial(_raise, exc), protocol=args.protocol)
    if launched is not None:
        return launched
    return session.run(argv, lambda: _train(args), protocol=args.protocol, polls_stop=True)


def _raise(error: Exception) -> None:
    raise error


def _train(args: argparse.Namespace) -> int:
    from engine.train import distributed
    from engine.train.events import EventBus, ProtocolSink, TerminalSink

    run = session.current()
    run.done["output_dir"] = None
    terminal = None if run.writer is not None else TerminalSink(sys.stderr)
    bus = EventBus([terminal or ProtocolSink(run.writer)])
    if terminal is not None:  # (with --protocol the session turns `stop` and SIGTERM into it)
        signal.signal(signal.SIGTERM, lambda *_: run.stop.set())
        signal.signal(signal.SIGINT,
                      lambda *_: (run.stop.set(), bus.log("stopping after this step…")))
    started = time.time()
    try:
        config = _load_config(args)
        output_dir = Path(config.output_dir)
        run.done["output_dir"] = str(output_dir)
        run.log_path = _open_log(output_dir)
        from engine.train.trainer import Trainer

        trainer = Trainer(config, bus, run.stop)
        try:
            trainer.setup(resume=args.resume)
            result = trainer.train()
        finally:
            trainer.cleanup()
    finally:
        if terminal is not None:
            terminal.close()
    run.status = result.status
    if result.status == "completed" and run.writer is None:
        _print_summary(result, output_dir, time.time() - started)
    if result.status == "completed" and distributed.rank() == 0:
        _plot(bus, output_dir)
    return session.EXIT_OK


def _load_config(args: argparse.Namespace):
    from engine.api import config as config_io

    if args.demo:
        from engine.model import device

        # The base precision the window would pick on this machine (bf16 where it is native).
        dtype = device.detected_profile().dtype
        overrides = [f"output_dir=runs/demo-{time.strftime('%Y%m%d-%H%M%S')}", f"dtype={dtype}",
                     *args.overrides]
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
