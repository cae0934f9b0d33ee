"""Android phones through `adb` (Debian's `adb` package or Google's platform tools): finding
the binary, listing devices with model, serial and free space, one file's push with live
progress, and reading the phone's answers.

Every adb call takes an argument list and a timeout. `adb shell` joins its arguments into one
command line for the phone's shell, so device paths are restricted to plain characters and
quoted. adb prints live progress (`[ 45%] /data/local/tmp/…`) only to a terminal, so pushes run
on a pseudo-terminal and that line is parsed. Standard library only.
"""

from __future__ import annotations

import os
import re
import select
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.api.errors import UserError

DEVICE_ROOT = "/data/local/tmp/edgetune"  # writable by adb's shell user without root
LIST_TIMEOUT_SECONDS = 15  # the first call starts the adb server (about a second)
SHELL_TIMEOUT_SECONDS = 120  # sha256 of a 650 MB program on a phone: seconds
PUSH_STALL_SECONDS = 60  # no progress for this long: the cable or the phone is gone
NO_ADB = ("adb (Android Debug Bridge) is not installed: install Debian's adb package "
          "(sudo apt install adb) or Google's Android SDK platform tools and put adb on PATH")
NO_PHONE = ("no phone connected: plug the phone in by USB, turn on USB debugging (Settings › "
            "Developer options), accept the prompt on the phone, then run "
            "`python -m engine push --list`")
STATE_HINTS = {
    "unauthorized": "accept the 'Allow USB debugging?' prompt on the phone",
    "offline": "unplug and replug the cable, or restart adb with `adb kill-server`",
    "no permissions": "your user may not open the USB device: add a udev rule for it "
                      "(Debian: the android-sdk-platform-tools-common package)",
}
_DEVICE_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")
_FIELD = re.compile(r"^(usb|product|model|device|transport_id):")
_PROGRESS = re.compile(r"\[\s*(\d{1,3})%\]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclass
class Device:
    serial: str
    state: str  # "device" when usable; "unauthorized", "offline", "no permissions …"
    model: str = ""
    product: str = ""
    free_bytes: int | None = None  # in DEVICE_ROOT's filesystem; None when not asked/readable

    @property
    def ready(self) -> bool:
        return self.state == "device"

    def describe(self) -> str:
        free = "" if self.free_bytes is None else f", {self.free_bytes / 2**30:.1f} GiB free"
        hint = next((h for s, h in STATE_HINTS.items() if self.state.startswith(s)), "")
        state = "" if self.ready else f" [{self.state}{': ' + hint if hint else ''}]"
        return f"{self.serial}  {self.model or self.product or 'unknown model'}{free}{state}"


def adb_path() -> str:
    path = shutil.which("adb")
    if path is None:
        raise UserError(NO_ADB)
    return path


def adb(args: list[str], timeout: float, serial: str | None = None) -> subprocess.CompletedProcess:
    """One adb call: argument list, no shell on this side, bounded in time."""
    command = [adb_path(), *(["-s", serial] if serial else []), *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UserError(f"`adb {' '.join(args)}` did not answer in {timeout:.0f} s; unplug and "
                        "replug the phone (or run `adb kill-server`) and try again") from None


def parse_devices(text: str) -> list[Device]:
    """`adb devices -l` output → devices (serial, state, model, product)."""
    devices = []
    for line in text.splitlines():
        if not line.strip() or line.startswith(("List of devices", "*", "adb server")):
            continue
        serial, *rest = line.split()
        # The state may hold spaces ("no permissions (…); see […]"); key:value fields follow.
        first_field = next((i for i, t in enumerate(rest) if _FIELD.match(t)), len(rest))
        state = " ".join(rest[:first_field])
        fields = dict(t.partition(":")[::2] for t in rest[first_field:])
        devices.append(Device(serial, state, fields.get("model", "").replace("_", " "),
                              fields.get("product", "")))
    return devices


def parse_free_bytes(df_output: str) -> int | None:
    """Available bytes from `df -k PATH` (toybox/busybox layout; a long name may wrap)."""
    numbers = [t for t in " ".join(df_output.splitlines()[1:]).split() if t.isdigit()]
    # 1K-blocks, Used, Available: the third number of the data line.
    return int(numbers[2]) * 1024 if len(numbers) >= 3 else None


def list_devices(with_free_space: bool = True) -> list[Device]:
    result = adb(["devices", "-l"], LIST_TIMEOUT_SECONDS)
    if result.returncode != 0:
        raise UserError(f"`adb devices` failed: {(result.stderr or result.stdout).strip()[-300:]}")
    devices = parse_devices(result.stdout)
    for device in devices:
        if device.ready and with_free_space:
            device.free_bytes = free_bytes(device.serial, "/data/local/tmp")
    return devices


def free_bytes(serial: str, path: str) -> int | None:
    """Available bytes in the filesystem holding PATH on the phone (/sdcard is not always the
    filesystem of /data/local/tmp); None when df cannot tell."""
    df = adb(["shell", "df", "-k", path], LIST_TIMEOUT_SECONDS, serial)
    return parse_free_bytes(df.stdout) if df.returncode == 0 else None


def choose_device(devices: list[Device], serial: str | None) -> Device:
    """The one device to push to; a clear message for none, several, or one not ready."""
    if not devices:
        raise UserError(NO_PHONE)
    listing = "\n  ".join(d.describe() for d in devices)
    if serial is not None:
        device = next((d for d in devices if d.serial == serial), None)
        if device is None:
            raise UserError(f"--serial {serial}: no such device; connected:\n  {listing}")
    elif len(devices) > 1:
        raise UserError(f"{len(devices)} devices connected; pick one with --serial:\n  {listing}")
    else:
        device = devices[0]
    if not device.ready:
        raise UserError(f"device {device.describe()}")
    return device


def device_path(path: str) -> str:
    if not _DEVICE_PATH.match(path) or ".." in PurePosixPath(path).parts:
        raise UserError(f"--dest {path}: use an absolute path of letters, digits, '.', '_', '-' "
                        f"and '/' (e.g. {DEVICE_ROOT}/my-model)")
    return path.rstrip("/")


class ProgressParser:
    """adb push's terminal output → percentages, as they arrive (split across reads)."""

    def __init__(self) -> None:
        self._pending = ""
        self.text = ""  # everything, escape codes removed

    def feed(self, chunk: bytes) -> list[int]:
        text = _ANSI.sub("", self._pending + chunk.decode("utf-8", errors="replace"))
        *complete, self._pending = re.split(r"[\r\n]", text)
        self.text += "\n".join(complete) + ("\n" if complete else "")
        return [int(m.group(1)) for line in complete for m in _PROGRESS.finditer(line)]

    def finish(self) -> str:
        self.text += _ANSI.sub("", self._pending)
        self._pending = ""
        return self.text


def push_command(adb_binary: str, serial: str, local: Path, remote: str) -> list[str]:
    return [adb_binary, "-s", serial, "push", str(local), remote]


def push_file(serial: str, local: Path, remote: str, on_percent: Callable[[int], None]) -> str:
    """`adb push` one file on a pseudo-terminal (adb shows live progress only there)."""
    import pty

    master, slave = pty.openpty()
    env = dict(os.environ, TERM="xterm")
    process = subprocess.Popen(push_command(adb_path(), serial, local, remote),
                               stdin=subprocess.DEVNULL, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    parser = ProgressParser()
    last_output = time.monotonic()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:  # EIO: adb exited and closed the terminal
                    chunk = b""
                if not chunk:
                    break
                last_output = time.monotonic()
                for percent in parser.feed(chunk):
                    on_percent(percent)
            elif process.poll() is not None:
                break
            if time.monotonic() - last_output > PUSH_STALL_SECONDS:
                process.kill()
                raise UserError(f"pushing {local.name} stalled for {PUSH_STALL_SECONDS} s; check "
                                "the cable and that the phone is unlocked, then push again")
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
    output = parser.finish().strip()
    if process.returncode != 0:
        last = output.splitlines()[-1] if output else f"exit code {process.returncode}"
        raise UserError(f"adb could not push {local.name} to {remote}: {last}")
    return output


def parse_sha256sum(text: str) -> dict[str, str]:
    """`sha256sum FILE…` output → {file name: hex digest}."""
    sums = {}
    for line in text.splitlines():
        digest, _, name = line.strip().partition(" ")
        if re.fullmatch(r"[0-9a-f]{64}", digest):
            sums[PurePosixPath(name.strip().lstrip("*")).name] = digest
    return sums


def parse_sizes(text: str) -> dict[str, int]:
    """`stat -c '%s %n' FILE…` output → {file name: bytes}."""
    sizes = {}
    for line in text.splitlines():
        size, _, name = line.strip().partition(" ")
        if size.isdigit():
            sizes[PurePosixPath(name).name] = int(size)
    return sizes


def shell(serial: str, command: str) -> subprocess.CompletedProcess:
    return adb(["shell", command], SHELL_TIMEOUT_SECONDS, serial)


