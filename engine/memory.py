"""Process memory readings (the estimate before a run lives in engine/estimate.py)."""

from __future__ import annotations

import resource
import sys

import psutil


def rss_bytes() -> int:
    return psutil.Process().memory_info().rss


def peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak if sys.platform == "darwin" else peak * 1024
