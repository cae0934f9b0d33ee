"""The shape of the code: the contracts in pyproject.toml hold, and no module reaches into
another's private names."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def test_import_contracts_hold():
    """app → only engine.api; engine.api and app → no torch & co.; engine → no Qt; layers; no
    cycles (pyproject.toml's [tool.importlinter])."""
    lint = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert lint, "import-linter is a dev dependency (pip install -e '.[dev]')"
    done = subprocess.run([lint, "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "5 kept, 0 broken" in done.stdout


def _private_imports(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(("engine", "app")):
                found += [f"{path.relative_to(root.parent)}:{node.lineno} {node.module}.{a.name}"
                          for a in node.names if a.name.startswith("_") and a.name != "__version__"]
    return found


def test_no_module_imports_another_modules_private_names(tmp_path):
    assert _private_imports(REPO / "engine") + _private_imports(REPO / "app") == []
    # The scan finds one when there is one.
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "bad.py").write_text("from engine.cli import _parser\n")
    assert _private_imports(tmp_path / "engine") == ["engine/bad.py:1 engine.cli._parser"]
