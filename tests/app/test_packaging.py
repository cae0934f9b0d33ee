"""The desktop bundle's pieces: how the app starts the engine frozen and unfrozen, the entry
script's dispatch, the About dialog's versions, user-data defaults, the icon, the desktop entry
installer, and the whole app's --smoke check (from source here; from the built bundle when slow).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from conftest import REPO
from PySide6.QtCore import QProcess, QSettings
from PySide6.QtGui import QColor, QImage

from app import process
from app.engine_client import EngineClient
from app.json_tool import JsonTool
from app.process import engine_command
from engine import __version__

PACKAGING = REPO / "packaging"


def _python(code: str, **env: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(REPO), **env})
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_engine_command_from_source_runs_the_module(qtbot):
    assert engine_command("probe", "m", "--json") == [sys.executable, "-m", "engine", "probe", "m", "--json"]
    assert EngineClient().command == [sys.executable, "-m", "engine", "train"]


def test_engine_command_in_a_frozen_bundle_reinvokes_its_executable(monkeypatch, qtbot):
    bundled = "/opt/EdgeTune-0.1.0-linux-x86_64/edgetune"
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(process.sys, "executable", bundled)
    assert engine_command("probe", "m", "--json") == [bundled, "engine", "probe", "m", "--json"]
    assert EngineClient().command == [bundled, "engine", "train"]
    # A tool started from the window goes the same way: the bundled executable, `engine` first.
    tool = JsonTool("probe")
    tool.run("some-model")
    started = tool.findChild(QProcess)
    assert (started.program(), started.arguments()) == (
        bundled, ["engine", "probe", "some-model", "--protocol"])
    tool.kill()


def test_entry_script_dispatches_engine_and_app():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    engine = subprocess.run([sys.executable, str(PACKAGING / "edgetune.py"), "engine", "--version"],
                            capture_output=True, text=True, timeout=60, env=env)
    assert engine.returncode == 0 and engine.stdout.strip() == f"edgetune {__version__}"
    app = subprocess.run([sys.executable, str(PACKAGING / "edgetune.py"), "--help"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert app.returncode == 0 and "--smoke" in app.stdout


def test_about_lists_library_versions_without_importing_torch():
    out = _python("import sys; from app.about import versions\n"
                  "for name, version in versions().items(): print(f'{name}={version}')\n"
                  "print('torch imported' if 'torch' in sys.modules else 'torch not imported')")
    lines = out.splitlines()
    assert lines[-1] == "torch not imported"
    shown = dict(line.split("=", 1) for line in lines[:-1])
    assert shown["torch"] == metadata.version("torch")
    assert shown["ExecuTorch"] == metadata.version("executorch")
    assert shown["transformers"] == metadata.version("transformers")
    assert shown["peft"] == metadata.version("peft")
    assert shown["llama.cpp (llama-cpp-python)"] == metadata.version("llama_cpp_python")


def test_help_menu_opens_about(qtbot, tmp_path):
    from app.about import AboutDialog
    from app.main_window import MainWindow

    window = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.Format.IniFormat),
                        runs_root=tmp_path / "runs")
    qtbot.addWidget(window)
    help_menu = next(a.menu() for a in window.menuBar().actions() if a.text() == "&Help")
    next(a for a in help_menu.actions() if a.text() == "About EdgeTune").trigger()
    dialog = window.findChild(AboutDialog)
    assert dialog is not None and dialog.isVisible()
    assert f"<td>peft</td><td>&nbsp;&nbsp;{metadata.version('peft')}</td>" in dialog.label.text()
    dialog.close()
    window.shutdown()


def test_runs_default_to_the_platform_user_data_folder(tmp_path):
    out = _python("from app.main_window import DEFAULT_RUNS_ROOT; print(DEFAULT_RUNS_ROOT)",
                  XDG_DATA_HOME=str(tmp_path))
    assert Path(out.strip()) == tmp_path / "edgetune" / "runs"


def _icon_pixels(image: QImage):
    import numpy as np

    image = image.convertToFormat(QImage.Format.Format_ARGB32)
    rows = np.frombuffer(image.constBits(), np.uint8).reshape(image.height(), image.bytesPerLine())
    return rows[:, : 4 * image.width()].reshape(image.height(), image.width(), 4).astype(float)


def _same_drawing(a: QImage, b: QImage) -> bool:
    """The same shapes in the same colours, whatever rasteriser drew them.

    Qt's raster engine rounds antialiased edge pixels differently with its SIMD paths and
    versions, so byte equality depends on the machine. Means over 8×8 blocks keep every shape
    and colour. Measured (largest block difference, channels 0-255): the script against the
    committed file here 0; another antialiasing altogether (drawn at 512 px, smooth-scaled) 2.2;
    wrong icons: the curve colour off by 15 → 15, the pen 2 px thinner → 26, the last point 4 px
    lower → 105, no antialiasing → 21. The bound 4 sits between the two groups.
    """
    pa, pb = _icon_pixels(a), _icon_pixels(b)
    if pa.shape != pb.shape:
        return False
    size = pa.shape[0]
    blocks = lambda p: p.reshape(size // 8, 8, size // 8, 8, 4).mean(axis=(1, 3))
    return float(abs(blocks(pa) - blocks(pb)).max()) <= 4


def test_icon_is_what_its_script_draws(qtbot):
    sys.path.insert(0, str(REPO / "resources" / "icons"))
    try:
        import make_icon
    finally:
        sys.path.pop(0)
    committed = QImage(str(make_icon.ICON))
    assert committed.width() == committed.height() == make_icon.SIZE
    drawn = make_icon.draw()
    assert _same_drawing(committed, drawn)
    # Pixels well inside a shape are rasteriser-independent: the palette exactly.
    colour = lambda x, y: committed.pixelColor(x, y).name(QColor.NameFormat.HexArgb)
    assert colour(2, 2) == "#00000000"  # outside the rounded tile: transparent
    assert colour(128, 40) == "#ff1f3a5f"  # the tile
    assert colour(216, 186) == "#ffffd166"  # the dot on the curve's last point
    assert colour(118, 150) == "#ff7fd1ff"  # a corner of the curve
    # The comparison is not blind: the icon mirrored is another drawing.
    assert not _same_drawing(committed, drawn.mirrored(True, False))


def test_install_desktop_entry_points_the_menu_at_the_bundle(tmp_path):
    bundle = tmp_path / "EdgeTune 0.1.0"  # a space, as in a user's folder name
    bundle.mkdir()
    for name in ("install-desktop-entry.sh", "edgetune.desktop"):
        shutil.copy(PACKAGING / name, bundle / name)
    shutil.copy(REPO / "resources" / "icons" / "edgetune.png", bundle / "edgetune.png")
    home = tmp_path / "home"
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    result = subprocess.run(["sh", str(bundle / "install-desktop-entry.sh")], capture_output=True,
                            text=True, timeout=30, env=env)
    assert result.returncode == 0, result.stderr
    entry = (home / ".local/share/applications/edgetune.desktop").read_text()
    fields = dict(line.split("=", 1) for line in entry.splitlines() if "=" in line)
    assert fields["Exec"] == f'"{bundle}/edgetune"'
    assert fields["Icon"] == "edgetune" and fields["Type"] == "Application"
    assert (home / ".local/share/icons/hicolor/256x256/apps/edgetune.png").read_bytes() == \
        (bundle / "edgetune.png").read_bytes()


def test_smoke_from_source_trains_through_the_engine(tmp_path):
    """`python -m app --smoke`: window, tiny model, probe, 3 steps through a real engine process."""
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_CONFIG_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "app", "--smoke"], cwd=REPO, capture_output=True,
                            text=True, timeout=900, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "smoke: run completed" in result.stdout
    assert "smoke: cold start to shown window:" in result.stdout
