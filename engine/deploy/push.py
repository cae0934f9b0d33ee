"""`python -m engine push EXPORT_DIR [--serial S] [--dest PATH]` and `push --list [--json]`.

Pushes an export folder (model.pte, tokenizer, metadata.json) to a connected Android phone with
progress, then checks on the phone that every file has the local size and sha256. Reports go
through engine.session.emit: with --protocol `progress` events (percent of all bytes), `status`
(state "pushing" | "verifying") and the `artifact` (kind "device", path SERIAL:/folder), and
`push --list` answers with a `result` event ({"devices": […]}, as `--list --json` prints).
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from engine.api.errors import UserError
from engine.deploy.adb import (
    DEVICE_ROOT,
    NO_PHONE,
    choose_device,
    device_path,
    list_devices,
    parse_sha256sum,
    parse_sizes,
    push_file,
    shell,
)
from engine.files import file_hash
from engine.session import emit, say


def default_dest(export_dir: Path) -> str:
    """DEVICE_ROOT/NAME: the run's name too when the export sits in RUN/export/."""
    export_dir = export_dir.resolve()
    name = export_dir.name
    if export_dir.parent.name == "export":
        name = f"{export_dir.parent.parent.name}-{name}"
    return f"{DEVICE_ROOT}/{re.sub(r'[^A-Za-z0-9._-]', '_', name)}"


def export_files(export_dir: Path) -> list[Path]:
    if not (export_dir / "metadata.json").is_file() or not any(export_dir.glob("*.pte")):
        raise UserError(f"{export_dir}: not an export folder (no metadata.json and .pte); give "
                        "the folder written by `python -m engine export RUN --format executorch`")
    files = sorted(p for p in export_dir.iterdir() if p.is_file() and not p.name.endswith(".partial"))
    for path in files:
        device_path(f"/{path.name}")  # names go into the phone's shell: plain characters only
    return files


def compare(local: dict[str, tuple[int, str]], sizes: dict[str, int],
            sums: dict[str, str]) -> list[str]:
    """What differs between local (size, sha256) per file and the phone's sizes and sums."""
    problems = []
    for name, (size, digest) in local.items():
        if name not in sizes:
            problems.append(f"{name}: missing on the phone")
        elif sizes[name] != size:
            problems.append(f"{name}: {sizes[name]} bytes on the phone, {size} here")
        elif sums.get(name) != digest:
            problems.append(f"{name}: sha256 differs ({sums.get(name) or 'not computed'} on the "
                            f"phone, {digest} here)")
    return problems


def verify_on_device(serial: str, dest: str, local: dict[str, tuple[int, str]]) -> None:
    names = " ".join(shlex.quote(name) for name in local)
    folder = shlex.quote(dest)
    sizes = parse_sizes(shell(serial, f"cd {folder} && stat -c '%s %n' {names}").stdout)
    sums_result = shell(serial, f"cd {folder} && sha256sum {names}")
    sums = parse_sha256sum(sums_result.stdout)
    if not sums and sizes:  # Android before 8 has no sha256sum applet
        sums = parse_sha256sum(shell(serial, f"cd {folder} && toybox sha256sum {names}").stdout)
        if not sums:
            raise UserError(f"{serial}: the phone has no sha256sum (toybox); the sizes match but "
                            "the contents could not be checked")
    problems = compare(local, sizes, sums)
    if problems:
        raise UserError(f"the files on {serial} under {dest} differ from the export: "
                        f"{'; '.join(problems)}; push again")


@dataclass
class _Progress:
    """One file's push progress, every 10 % (a 650 MB program takes a while)."""

    name: str
    before: int  # bytes of the files pushed before this one
    size: int
    total: int
    shown: int = -10

    def show(self, percent: int) -> None:
        if percent >= self.shown + 10 or (percent == 100 and self.shown != 100):
            self.shown = percent
            overall = (self.before + self.size * percent / 100) / max(self.total, 1)
            emit("progress", f"push: {self.name} {percent}% (all files {overall:.0%})",
                 percent=round(overall * 100, 1), file=self.name, file_percent=percent)


def push(export_dir: Path, serial: str | None, dest: str | None) -> str:
    files = export_files(export_dir)
    dest = device_path(dest or default_dest(export_dir))
    device = choose_device(list_devices(), serial)
    total = sum(p.stat().st_size for p in files)
    if device.free_bytes is not None and device.free_bytes < total:
        raise UserError(f"{device.serial} has {device.free_bytes / 2**20:.0f} MiB free in "
                        f"/data/local/tmp, the export needs {total / 2**20:.0f} MiB; free space "
                        "on the phone")
    started = time.perf_counter()
    made = shell(device.serial, f"mkdir -p {shlex.quote(dest)}")
    if made.returncode != 0:
        raise UserError(f"cannot make {dest} on {device.serial}: {(made.stdout + made.stderr).strip()}")
    emit("status", state="pushing", message=f"{len(files)} files to {device.serial}:{dest}")
    done = 0
    for path in files:
        progress = _Progress(path.name, done, path.stat().st_size, total)
        push_file(device.serial, path, f"{dest}/{path.name}", progress.show)
        done += progress.size
    pushed = time.perf_counter() - started
    checking = (f"{len(files)} files, {total / 2**20:.1f} MiB in {pushed:.1f} s; checking sizes "
                "and sha256 on the phone")
    emit("status", f"push: {checking}", state="verifying", message=checking)
    local = {p.name: (p.stat().st_size, file_hash(p)) for p in files}
    verify_on_device(device.serial, dest, local)
    say(f"push: {device.serial}:{dest} verified ({len(files)} files, sizes and sha256 match)")
    return f"{device.serial}:{dest}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine push",
                                     description="Push an ExecuTorch export to an Android phone "
                                                 "over adb and check it landed.")
    parser.add_argument("export_dir", nargs="?", type=Path,
                        help="export folder (RUN/export/executorch)")
    parser.add_argument("--list", action="store_true", help="list connected devices and exit")
    parser.add_argument("--json", action="store_true", help="with --list: JSON on stdout")
    parser.add_argument("--serial", default=None, help="the device, when several are connected")
    parser.add_argument("--dest", default=None,
                        help=f"folder on the phone (default: {DEVICE_ROOT}/NAME)")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        devices = list_devices()
        answer = {"devices": [asdict(d) | {"ready": d.ready} for d in devices]}
        text = "\n".join(d.describe() for d in devices) or NO_PHONE
        emit("result", json.dumps(answer) if args.json else text, **answer)
        return 0
    if args.export_dir is None:
        raise UserError("give the export folder to push (or --list)")
    where = push(args.export_dir, args.serial, args.dest)
    emit("artifact", where, kind="device", path=where)
    return 0
