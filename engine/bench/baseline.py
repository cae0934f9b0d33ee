"""An earlier revision's LoRA and optimisers, loaded beside the working tree's.

A speed fix is measured before/after in one interleaved run (the issue's rule: ratios from the
same run), so the old code must live in the same process: its files are read from git into a
package of their own, with their imports of each other pointed at that package.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from engine.api.errors import UserError
from engine.bench.common import REPO

FILES = ["lora.py", "optim/__init__.py", "optim/base.py", "optim/fo.py", "optim/mezo.py",
         "optim/prge.py"]


def load(revision: str) -> tuple[ModuleType, ModuleType]:
    """(lora, optim) as they were at `revision`."""
    package = "engine_at_" + re.sub(r"\W", "_", revision)
    root = Path(tempfile.mkdtemp(prefix="edgetune-baseline-"))
    for name in FILES:
        # engine/train/ since the layout by data flow; engine/ itself before.
        for folder in ("engine/train", "engine"):
            shown = subprocess.run(["git", "-C", str(REPO), "show", f"{revision}:{folder}/{name}"],
                                   capture_output=True, text=True)
            if not shown.returncode:
                break
        if shown.returncode:
            raise UserError(f"--baseline {revision}: cannot read engine/{name} from git "
                            f"({shown.stderr.strip()}); pass a commit of this repository")
        text = re.sub(r"\bengine\.(?:train\.)?(lora|optim)\b", rf"{package}.\1", shown.stdout)
        target = root / package / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    (root / package / "__init__.py").write_text("", encoding="utf-8")
    sys.path.insert(0, str(root))
    return (importlib.import_module(f"{package}.lora"), importlib.import_module(f"{package}.optim"))
