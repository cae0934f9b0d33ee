"""A stand-in for `adb` with one phone whose storage is a local folder, for the push tests.

It answers what engine/deploy/adb.py asks, in adb's layout (see tests/data/adb/README.md):
`devices -l` lists FAKE0001; `shell CMD` runs CMD in this machine's sh with the phone's paths
(/sdcard/…, /data/…) under $FAKE_PHONE_ROOT (GNU stat, sha256sum and df print what toybox's
do); `push LOCAL REMOTE` copies the file and prints adb's terminal progress. With
$FAKE_PHONE_CORRUPT set, a push flips the copy's last byte (a cable that corrupts).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

SERIAL = "FAKE0001"


def on_this_machine(text: str) -> str:
    return re.sub(r"(?<![\w.])/(sdcard|data)\b", lambda m: os.environ["FAKE_PHONE_ROOT"] + m.group(0),
                  text)


def main(args: list[str]) -> int:
    if args[:1] == ["-s"]:
        if args[1] != SERIAL:
            print(f"adb: device '{args[1]}' not found", file=sys.stderr)
            return 1
        args = args[2:]
    if args == ["devices", "-l"]:
        print(f"List of devices attached\n{SERIAL:<22} device usb:1-1 product:fake model:Fake_Phone "
              "device:fake transport_id:1\n")
        return 0
    if args[0] == "shell":
        # adb shell hands its words to the phone's sh, as this does to the local one.
        return subprocess.run(["sh", "-c", on_this_machine(" ".join(args[1:]))]).returncode
    if args[0] == "push":
        local, remote = Path(args[1]), args[2]
        copy = Path(on_this_machine(remote))
        shutil.copyfile(local, copy)
        if os.environ.get("FAKE_PHONE_CORRUPT"):
            data = bytearray(copy.read_bytes())
            data[-1] ^= 0xFF
            copy.write_bytes(bytes(data))
        for percent in (0, 50, 100):
            sys.stdout.write(f"\r[{percent:3d}%] {remote}\x1b[K")
            sys.stdout.flush()
        size = local.stat().st_size
        print(f"\n{local}: 1 file pushed, 0 skipped. 1.0 MB/s ({size} bytes in 0.001s)")
        return 0
    print(f"fake adb: {' '.join(args)} is not faked", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
