"""`edgetune --smoke` (or `python -m app --smoke`): the whole app, end to end, without a user.

Opens the main window (offscreen unless a platform is set), makes a tiny random-init model with
the engine (`engine make-tiny-model`), probes it, trains it for 3 steps from the window through
the engine subprocess, and exits 0 only if the engine's `done` event said `completed`. Run in a
source checkout and inside the bundle (packaging/smoke.sh), where every engine call goes through
the frozen executable.
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from pathlib import Path

import psutil
from PySide6.QtCore import QEventLoop, QSettings, QTimer
from PySide6.QtWidgets import QApplication

from app.about import versions
from app.process import REPO_ROOT, engine_command
from engine.api import config as config_io

DEMO_CONFIG = REPO_ROOT / "resources" / "configs" / "demo.yaml"
# The demo's data and prompt on the tiny model, cut down to seconds: 3 steps, a 16-row eval.
SMOKE_OVERRIDES = ["steps=3", "batch_size=2", "max_seq_len=48", "eval_rows=16", "eval_every=0",
                   "checkpoint_every=0", "optimizer.q=2", "lora.rank=4", "threads=2"]
MODEL_SECONDS = 300  # making the tiny model: a cold torch import in the bundle is the slow part
RUN_SECONDS = 600


def wait_for(signal, seconds: float) -> list | None:
    """Run the event loop until `signal` fires (its arguments) or `seconds` pass (None)."""
    loop = QEventLoop()
    received: list = []

    def arrived(*args) -> None:
        received.extend(args)
        loop.quit()

    signal.connect(arrived)
    QTimer.singleShot(int(seconds * 1000), loop.quit)
    loop.exec()
    signal.disconnect(arrived)
    return received or None


def report(line: str) -> None:
    print(f"smoke: {line}", flush=True)


def run(app: QApplication) -> int:
    from app.main_window import MainWindow

    with tempfile.TemporaryDirectory(prefix="edgetune-smoke-") as tmp:
        folder = Path(tmp)
        settings = QSettings(str(folder / "settings.ini"), QSettings.Format.IniFormat)
        window = MainWindow(settings=settings, runs_root=folder / "runs")
        window.show()
        window.grab()  # the first complete frame
        # From the process's start (the bundle's bootloader included) to the shown window.
        report(f"cold start to shown window: {time.time() - psutil.Process().create_time():.2f} s")
        # What the About dialog shows: in the bundle, proof the packages' metadata was collected.
        report("versions: " + ", ".join(f"{name} {version}" for name, version in versions().items()))
        try:
            started = time.monotonic()
            made = subprocess.run(engine_command("make-tiny-model", str(folder / "model")),
                                  capture_output=True, text=True, timeout=MODEL_SECONDS)
            report(f"tiny model made by the engine: {time.monotonic() - started:.2f} s")
            if made.returncode != 0:
                report(f"make-tiny-model failed (exit {made.returncode}):\n{made.stderr}")
                return 1
            config = config_io.load(DEMO_CONFIG, [f"model={folder / 'model'}", *SMOKE_OVERRIDES])
            config_path = folder / "smoke.yaml"
            config_io.save(config, config_path)

            started = time.monotonic()
            window.setup.load_config(config_path)  # starts the probe and the dataset inspection
            answer = wait_for(window.model_probe.sig_answered, MODEL_SECONDS)
            report(f"model probed: {time.monotonic() - started:.2f} s")
            if not answer or "architecture" not in answer[0]:
                report(f"the probe did not describe the model: {answer}")
                return 1

            started = time.monotonic()
            window.start()
            if window.run.state != "running":  # e.g. the memory estimate blocked Start
                report(f"the run did not start: {window.status_line.text()}")
                return 1
            finished = wait_for(window.sig_run_finished, RUN_SECONDS)
            report(f"3-step training, start to done: {time.monotonic() - started:.2f} s")
            status = finished[0] if finished else "no answer"
        finally:
            for tool in (window.preview.inspection, window.model_probe):
                if tool.is_running():
                    wait_for(tool.sig_answered, 60)
            window.shutdown()
            window.close()
    report(f"run {status}")
    if status != "completed":
        report("the engine's last stderr lines:\n" + "\n".join(window.engine.stderr_tail))
    return 0 if status == "completed" else 1
