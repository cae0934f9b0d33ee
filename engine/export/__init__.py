"""`python -m engine export RUN_DIR --format FORMAT [--out PATH] [format options]`.

A run folder (config.yaml + adapter/) becomes something another runtime loads. Each format
lives in its own module, imported only when asked for (llama.cpp's and ExecuTorch's stacks are
heavy and independent).

The contract a format module follows (see FORMATS for which function serves which format):

- ``export(run_dir: Path, out: Path | None, **options) -> Path``: write the export and return
  the path of its main file (or folder). ``out=None`` means the default, a path inside
  ``run_dir/export/``. ``options`` are the format's own command-line options, by their argparse
  ``dest`` name. Raise ``engine.api.errors.UserError`` for anything the user can fix.
- ``add_arguments(parser: argparse.ArgumentParser, fmt: str) -> None`` (optional): add the
  format's own options to the export parser; ``fmt`` tells a module serving several formats
  which one is being parsed. Every option needs a default, so that calling ``export`` from
  Python without it works too.

Progress goes through engine.session (`Stages`, `emit`): `status`/`progress` events with
--protocol, stage lines on stderr at a terminal. The exported path is an `artifact` event (kind =
the format), at a terminal the one line on stdout.
Every file is written through ``engine.files.write_atomic``: a full disk, a read-only folder or a stop
(SIGTERM, Ctrl+C) leaves the files already finished and nothing half-written.
"""

from __future__ import annotations

import argparse
import importlib
import signal
from pathlib import Path

from engine.api.errors import UserError
from engine.api.formats import FORMATS
from engine.session import emit, say


def _parser(fmt: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m engine export",
        description="Export a training run for another runtime.",
        epilog="formats: " + "; ".join(f"{name}: {spec.help}" for name, spec in FORMATS.items()),
    )
    parser.add_argument("run_dir", type=Path, help="run folder (holds config.yaml and adapter/)")
    parser.add_argument("--format", dest="fmt", choices=sorted(FORMATS), required=True,
                        help="what to write")
    parser.add_argument("--out", type=Path, default=None,
                        help="output path (default: a file in RUN_DIR/export/)")
    if fmt is not None:
        add_arguments = getattr(_format_module(fmt), "add_arguments", None)
        if add_arguments is not None:
            add_arguments(parser, fmt)
    return parser


def _format_module(fmt: str):
    return importlib.import_module(FORMATS[fmt].module)


def main(argv: list[str]) -> int:
    # The format decides which options exist: find it first, then parse everything.
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--format", dest="fmt")
    fmt = probe.parse_known_args(argv)[0].fmt
    args = _parser(fmt if fmt in FORMATS else None).parse_args(argv)
    options = {k: v for k, v in vars(args).items() if k not in ("run_dir", "fmt", "out")}
    export = getattr(_format_module(args.fmt), FORMATS[args.fmt].function)
    signal.signal(signal.SIGTERM, _stop)
    try:
        path = export(args.run_dir, args.out, **options)
    except KeyboardInterrupt:
        say("export stopped; the files it had finished are kept, no partial file is left")
        raise
    except OSError as exc:  # a folder that cannot be made, an input that cannot be read
        raise UserError(f"{exc.filename or args.run_dir}: {exc.strerror or exc}; check that the "
                        "run folder is readable and the output folder (--out) writable") from exc
    emit("artifact", str(path), kind=args.fmt, path=str(path))
    return 0


def _stop(_signum, _frame) -> None:
    # SIGTERM (the app's stop, a service manager) unwinds like Ctrl+C, so write_atomic can
    # remove its partial file; the CLI turns KeyboardInterrupt into exit code 130.
    raise KeyboardInterrupt


def run_folder(run_dir: Path) -> tuple[Path, Path]:
    """Check that `run_dir` is a finished run; return (config.yaml, adapter folder)."""
    config_path = run_dir / "config.yaml"
    adapter_dir = run_dir / "adapter"
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder; give the output_dir of a training run")
    if not config_path.is_file():
        raise UserError(f"{run_dir}: no config.yaml; this is not a run folder made by "
                        "`python -m engine train`")
    if not (adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"{adapter_dir}: no adapter_config.json; the run has not finished "
                        "(resume it with `python -m engine train CONFIG --resume`)")
    return config_path, adapter_dir

