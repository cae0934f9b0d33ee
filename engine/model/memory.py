"""Process memory readings (the estimate before a run lives in engine/estimate.py)."""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import psutil


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    """The process's resident high-water mark.

    On Linux this reads VmHWM: getrusage's ru_maxrss survives exec, so a process started by a
    large parent (pytest, the benchmark driver) would report the parent's size at fork.
    """
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    try:
        import resource
    except ImportError:  # Windows: psutil's peak working set
        return int(getattr(psutil.Process().memory_info(), "peak_wset", rss_bytes()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # macOS reports bytes, other Unixes KiB.
    return peak if sys.platform == "darwin" else peak * 1024


def reset_peak_rss() -> bool:
    """Start the high-water mark afresh from the current RSS, so peak_rss_bytes measures what
    comes next (a run's steps, not its model load). Linux only (clear_refs); False elsewhere."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def trim_heap() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; nothing elsewhere).

    Many tensors of a few MiB each, allocated and freed in turn (quantising a model's weights),
    leave free holes inside the heap that glibc keeps: RSS stayed 300 MiB above the live data
    in some runs and not in others."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
