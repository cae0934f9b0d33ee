"""`python -m engine push EXPORT [--serial S] [--dest PATH]` and `push --list [--json]`.

Pushes an export to a connected Android phone with progress, then checks on the phone that every
file has the local size and sha256. EXPORT is an ExecuTorch export folder (model.pte, tokenizer,
metadata.json; to /data/local/tmp/edgetune/RUN-executorch) or a merged GGUF model, the .gguf or
the folder holding it (to the phone's Download folder as RUN-Q4_K_M.gguf, for PocketPal and
ChatterUI; see engine/deploy/phone_gguf.py). Reports go through engine.session.emit: with
--protocol `progress` events (percent of all bytes), `status` (state "pushing" | "verifying") and
the `artifact` (kind "device", path SERIAL:/folder, or SERIAL:/folder/NAME.gguf for a GGUF,
format, next_step), and `push --list` answers with a `result` event ({"devices": […]}, as
`--list --json` prints).
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
from engine.deploy import phone_gguf
from engine.deploy.adb import (
    DEVICE_ROOT,
    NO_PHONE,
    choose_device,
    device_path,
    free_bytes,
    list_devices,
    parse_sha256sum,
    parse_sizes,
    push_file,
    shell,
)
from engine.files import file_hash
from engine.session import emit, say

STAGING = ".edgetune-partial"  # inside the destination, until the phone's copy is checked


def default_dest(export_dir: Path) -> str:
    """DEVICE_ROOT/NAME: the run's name too when the export sits in RUN/export/."""
    export_dir = export_dir.resolve()
    name = export_dir.name
    if export_dir.parent.name == "export":
        name = f"{export_dir.parent.parent.name}-{name}"
    return f"{DEVICE_ROOT}/{re.sub(r'[^A-Za-z0-9._-]', '_', name)}"


def export_files(export_dir: Path) -> list[Path]:
    if not (export_dir / "metadata.json").is_file() or not any(export_dir.glob("*.pte")):
        raise UserError(f"{export_dir}: not an export to push; give the folder written by "
                        "`python -m engine export RUN --format executorch` (metadata.json and "
                        ".pte), or a merged GGUF model (`export RUN --format merged-gguf` writes "
                        "RUN/export/merged-OUTTYPE.gguf)")
    files = sorted(p for p in export_dir.iterdir() if p.is_file() and not p.name.endswith(".partial"))
    for path in files:
        device_path(f"/{path.name}")  # names go into the phone's shell: plain characters only
    return files


@dataclass
class Upload:
    """What one push copies: each local file by its name on the phone, the folder there, the
    export's format, and what to do on the phone afterwards ("" when nothing to say)."""

    files: dict[str, Path]
    dest: str
    format: str  # "executorch" | "merged-gguf"
    next_step: str = ""

    @property
    def landing(self) -> str:
        """Where it lands on the phone: the folder, or the model file for a GGUF."""
        return f"{self.dest}/{next(iter(self.files))}" if self.format == "merged-gguf" else self.dest


def plan(export: Path, dest: str | None) -> Upload:
    """What pushing EXPORT means: an ExecuTorch folder as it is, or one merged GGUF model into
    the phone's Download folder under a name that says the run and the quantisation."""
    model = phone_gguf.find(export)
    if model is None:
        files = export_files(export)
        return Upload({p.name: p for p in files}, device_path(dest or default_dest(export)),
                      "executorch")
    folder = device_path(dest or phone_gguf.DOWNLOAD)
    name = model.phone_name
    return Upload({name: model.path}, folder, "merged-gguf", phone_gguf.next_step(name, folder))


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


def _run_on(serial: str, command: str, what: str) -> None:
    result = shell(serial, command)
    if result.returncode != 0:
        raise UserError(f"cannot {what} on {serial}: {(result.stdout + result.stderr).strip()}")


def push(upload: Upload, serial: str | None) -> str:
    """Copy the upload to the phone, check it there, then move it in place; SERIAL:LANDING.

    The files go to a hidden folder inside the destination first and are moved in only once
    their sizes and sha256 match, so a stopped or broken push never leaves a truncated model
    where a phone app would pick it up."""
    dest, files = upload.dest, upload.files
    staging = f"{dest}/{STAGING}"
    device = choose_device(list_devices(with_free_space=False), serial)
    total = sum(p.stat().st_size for p in files.values())
    started = time.perf_counter()
    _run_on(device.serial, f"mkdir -p {shlex.quote(staging)}", f"make {dest}")
    free = free_bytes(device.serial, dest)
    if free is not None and free < total:
        raise UserError(f"{device.serial} has {free / 2**20:.0f} MiB free in {dest}, the export "
                        f"needs {total / 2**20:.0f} MiB; free space on the phone")
    count = f"{len(files)} file{'s' * (len(files) != 1)}"
    emit("status", state="pushing", message=f"{count} to {device.serial}:{dest}")
    done = 0
    for name, path in files.items():
        progress = _Progress(name, done, path.stat().st_size, total)
        push_file(device.serial, path, f"{staging}/{name}", progress.show)
        done += progress.size
    pushed = time.perf_counter() - started
    checking = (f"{count}, {total / 2**20:.1f} MiB in {pushed:.1f} s; checking sizes "
                "and sha256 on the phone")
    emit("status", f"push: {checking}", state="verifying", message=checking)
    local = {name: (p.stat().st_size, file_hash(p)) for name, p in files.items()}
    verify_on_device(device.serial, staging, local)
    names = " ".join(shlex.quote(name) for name in files)
    _run_on(device.serial, f"cd {shlex.quote(staging)} && mv -f {names} {shlex.quote(dest)}/ && "
                           f"cd / && rmdir {shlex.quote(staging)}", f"move the files into {dest}")
    say(f"push: {device.serial}:{dest} verified ({count}, sizes and sha256 match)")
    return f"{device.serial}:{upload.landing}"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine push",
                                     description="Push an export to an Android phone over adb "
                                                 "and check it landed.")
    parser.add_argument("export_dir", nargs="?", type=Path,
                        help="an ExecuTorch export folder (RUN/export/executorch), or a merged "
                             "GGUF model (RUN/export/merged-q4_k_m.gguf, or the folder holding it)")
    parser.add_argument("--list", action="store_true", help="list connected devices and exit")
    parser.add_argument("--json", action="store_true", help="with --list: JSON on stdout")
    parser.add_argument("--serial", default=None, help="the device, when several are connected")
    parser.add_argument("--dest", default=None,
                        help=f"folder on the phone (default: {DEVICE_ROOT}/NAME for ExecuTorch, "
                             f"{phone_gguf.DOWNLOAD} for a GGUF model)")
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
        raise UserError("give the export to push (or --list)")
    upload = plan(args.export_dir, args.dest)
    where = push(upload, args.serial)
    if upload.next_step:
        say(upload.next_step)
    emit("artifact", where, kind="device", path=where, format=upload.format,
         next_step=upload.next_step)
    return 0
