"""Resumable checkpoints, written atomically and verified by a manifest of checksums.

Layout: OUTPUT_DIR/checkpoints/step-00000050/{state.safetensors, manifest.json}. A checkpoint is
written into a temporary folder beside it and renamed into place, so a kill leaves either the
old set or the new one, never half a checkpoint under a valid name. The manifest (written last)
holds the sha256 of every file; a checkpoint whose files do not match is skipped with a warning
and the previous good one is used.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from engine.api.checkpoints import FOLDER_PREFIX, MANIFEST, folder_name
from engine.api.errors import UserError
from engine.files import file_hash

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
STATE_FILE = "state.safetensors"


@dataclass
class Checkpoint:
    step: int
    path: Path
    state: dict[str, torch.Tensor]
    config_fingerprint: str


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save(
    root: Path, step: int, state: dict[str, torch.Tensor], config_fingerprint: str, keep: int
) -> Path:
    """Write a checkpoint for `step` atomically; prune all but the newest `keep` good ones."""
    final = root / folder_name(step)
    partial = root / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        root.mkdir(parents=True, exist_ok=True)
        partial.mkdir()
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
        save_file(tensors, str(partial / STATE_FILE))
        manifest = {
            "format": FORMAT_VERSION,
            "step": step,
            "config_fingerprint": config_fingerprint,
            "files": {STATE_FILE: file_hash(partial / STATE_FILE)},
        }
        with (partial / MANIFEST).open("w", encoding="utf-8") as handle:
            json.dump(manifest, handle, indent=2)
            handle.flush()
            os.fsync(handle.fileno())
        with (partial / STATE_FILE).open("rb") as handle:
            os.fsync(handle.fileno())
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
        _fsync_dir(root)
    except (OSError, SafetensorError) as exc:  # safetensors reports a full disk as its own error
        shutil.rmtree(partial, ignore_errors=True)
        reason = getattr(exc, "strerror", None) or exc
        raise UserError(
            f"cannot write checkpoint {final}: {reason}; free disk space or pick a writable "
            "output_dir (the previous checkpoint is intact)"
        ) from exc
    for old in sorted(root.glob(f"{FOLDER_PREFIX}*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify(path: Path) -> str | None:
    """None if the checkpoint folder is intact, else what is wrong with it."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "manifest.json missing"
    except (json.JSONDecodeError, UnicodeDecodeError):
        return "manifest.json unreadable"
    if manifest.get("format", 0) > FORMAT_VERSION:
        return f"written by a newer EdgeTune (checkpoint format {manifest.get('format')})"
    for name, expected in manifest.get("files", {}).items():
        file = path / name
        if not file.exists():
            return f"{name} missing"
        if file_hash(file) != expected:
            return f"{name} does not match its checksum (torn or corrupted)"
    return None


def load_latest(root: Path, warn=log.warning) -> Checkpoint | None:
    """The newest intact checkpoint under `root`; damaged ones are reported and skipped."""
    candidates = sorted(root.glob(f"{FOLDER_PREFIX}*"), reverse=True) if root.exists() else []
    damaged = []
    for path in candidates:
        problem = verify(path)
        if problem:
            damaged.append(f"{path.name}: {problem}")
            warn(f"checkpoint {path} is damaged ({problem}); trying the previous one")
            continue
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        try:
            state = load_file(str(path / STATE_FILE))
        except (SafetensorError, OSError) as exc:
            warn(f"checkpoint {path} cannot be read ({exc}); trying the previous one")
            continue
        return Checkpoint(manifest["step"], path, state, manifest.get("config_fingerprint", ""))
    if damaged:
        raise UserError(
            f"every checkpoint in {root} is damaged ({', '.join(damaged)}); nothing to resume "
            "from. Start a new run with another output_dir"
        )
    return None
