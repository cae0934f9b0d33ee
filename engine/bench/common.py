"""What every benchmark shares: the record of where it ran, interleaved timing, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"


@dataclass
class Timing:
    median_seconds: float
    min_seconds: float
    max_seconds: float
    reps: int

    def as_dict(self) -> dict:
        return {"median_s": self.median_seconds, "min_s": self.min_seconds,
                "max_s": self.max_seconds, "reps": self.reps}


def interleaved(variants: dict[str, Callable[[], object]], reps: int, warmup: int) -> dict[str, Timing]:
    """Time each variant `reps` times, A B C A B C …, after `warmup` untimed rounds.

    Interleaving spreads a shared machine's load bursts over every variant instead of landing on
    whichever ran during them, so ratios taken from the medians stay honest.
    """
    for _ in range(warmup):
        for run in variants.values():
            run()
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(reps):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return {name: Timing(statistics.median(s), min(s), max(s), len(s)) for name, s in seconds.items()}


def environment(threads: int) -> dict:
    """Machine, versions, revision and load: what a reader needs to judge the numbers."""
    import torch
    import transformers

    return {
        "cpu": _cpu_model(),
        "logical_cpus": os.cpu_count(),
        "torch_threads": threads,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_revision": git_revision(),
        "load_average_at_start": list(os.getloadavg()),
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def finish(record: dict) -> dict:
    record["environment"]["load_average_at_end"] = list(os.getloadavg())
    return record


def _cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return platform.processor() or "unknown"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def git_revision() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "engine"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else "unknown"


def model_label(reference: str) -> str:
    return {"default": "SmolLM2-135M-Instruct", "tiny": "tiny Llama (2 layers, 64 wide)",
            "llama-3.2-1b": "Llama-3.2-1B's shape (random init)",
            "gemma-3-270m": "Gemma-3-270M's shape (random init)"}.get(reference, reference)


def write_json(record: dict, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    return path


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None
