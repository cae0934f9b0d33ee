"""Process memory readings (the estimate before a run lives in engine/estimate.py)."""

from __future__ import annotations

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
