"""The desktop bundle (packaging/): PyInstaller build, then the bundled app's --smoke check."""

from __future__ import annotations

import subprocess

import pytest
from conftest import REPO

PACKAGING = REPO / "packaging"
pytestmark = pytest.mark.slow


def test_bundle_builds_and_passes_its_smoke_check():
    """packaging/smoke.sh: PyInstaller build, then the bundled app's --smoke (minutes)."""
    result = subprocess.run(["sh", str(PACKAGING / "smoke.sh")], cwd=REPO, capture_output=True,
                            text=True, timeout=3600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "smoke: run completed" in result.stdout
    versions = next(line for line in result.stdout.splitlines() if line.startswith("smoke: versions:"))
    assert "not installed" not in versions  # every package's metadata made it into the bundle
