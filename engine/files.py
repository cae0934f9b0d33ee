"""Files the engine writes and checks: atomic writes and content hashes."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from engine.api.errors import UserError


def file_hash(path: Path) -> str:
    """sha256 of the file's bytes, hex."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def partial_path(path: Path) -> Path:
    """Where this process writes `path` before renaming it into place: its own name, so two
    processes writing the same path (two runs filling one cache) never mix their bytes."""
    return path.with_name(f"{path.name}.{os.getpid()}.partial")


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """`write(partial)` then rename to `path`: a reader never sees half a file, and a write that
    fails (disk full, read-only folder) or is stopped leaves no partial file behind."""
    partial = partial_path(path)
    try:
        write(partial)
        partial.replace(path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path}: {_write_failure(exc, path.parent)}; free disk "
                            "space or pick a writable folder with --out (files finished before "
                            "are kept)") from exc
        raise
    return path


def _write_failure(exc: OSError, folder: Path) -> str:
    # numpy's tofile reports a full disk as a short write without an errno.
    if exc.errno not in (errno.ENOSPC, None):
        return exc.strerror or str(exc)
    try:
        free = f" ({shutil.disk_usage(folder).free / 2**20:.1f} MiB free)"
    except OSError:
        free = ""
    return f"the disk is full{free}"
