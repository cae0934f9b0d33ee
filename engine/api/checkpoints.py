"""Where a run keeps its checkpoints, and which step a resume continues from, without torch.

Layout: OUTPUT_DIR/checkpoints/step-00000050/ holds the state and its manifest.json. The engine
(engine/train/checkpoint.py) writes a checkpoint into a hidden temporary folder, the manifest
last, and renames it into place; the app lists runs with `resumable_step`.
"""

from __future__ import annotations

import json
from pathlib import Path

CHECKPOINTS = "checkpoints"  # the folder under OUTPUT_DIR
MANIFEST = "manifest.json"
FOLDER_PREFIX = "step-"


def folder_name(step: int) -> str:
    """A checkpoint's folder: zero-padded, so sorting the names sorts the steps."""
    return f"{FOLDER_PREFIX}{step:08d}"


def resumable_step(output_dir: Path) -> int | None:
    """The step of the newest checkpoint whose manifest and files are all there: where Resume
    continues; None when there is none.

    The checksums are not read (listing a hundred runs must stay instant): a checkpoint torn
    after it was written is found by the engine, which then resumes from the one before.
    """
    root = output_dir / CHECKPOINTS
    folders = sorted(root.glob(f"{FOLDER_PREFIX}*"), reverse=True) if root.is_dir() else []
    for folder in folders:
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if not isinstance(manifest, dict) or not isinstance(manifest.get("step"), int):
            continue
        if all((folder / name).is_file() for name in manifest.get("files", {})):
            return manifest["step"]
    return None
