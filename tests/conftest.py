"""Shared fixtures: tiny random-init models written with save_pretrained, and small datasets.

No network: the tiny model comes from engine.model.tiny (also `python -m engine make-tiny-model`,
which the app's --smoke check uses), a 2-layer Llama with a BPE trained on the bundled demo data.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.model.tiny import make_tiny_llama

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "resources" / "datasets" / "reviews.jsonl"

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# System tools some tests drive; without them those tests skip (`make test-system` installs them).
needs_adb = pytest.mark.skipif(shutil.which("adb") is None,
                               reason="adb is not installed (make test-system installs it)")


def write_gguf(path: Path, architecture: str, kind: str | None = None,
               file_type: int | None = None) -> Path:
    """A one-tensor GGUF file of `architecture`: enough for the checks made before conversion
    and before a push (`kind`: general.type, "model" | "adapter"; `file_type`: general.file_type,
    a gguf.LlamaFileType)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    if kind is not None:
        writer.add_type(kind)
    if file_type is not None:
        writer.add_file_type(file_type)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((64, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class Recorder:
    """An event sink that keeps what the trainer emits, for assertions."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def emit(self, type: str, data: dict) -> None:
        self.events.append((type, dict(data)))

    def of(self, type: str) -> list[dict]:
        return [d for t, d in self.events if t == type]

    def warnings(self) -> list[str]:
        return [d["message"] for d in self.of("log") if d["level"] == "warning"]


@pytest.fixture
def own_adb_server(monkeypatch) -> dict[str, str]:
    """The environment of an adb server of this test's own (its own port), killed afterwards.

    adb starts its server on first use; a test without adb on PATH starts none, so there is
    nothing to kill.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    monkeypatch.setenv("ANDROID_ADB_SERVER_PORT", port)
    yield dict(os.environ)
    adb = shutil.which("adb")
    if adb is not None:
        subprocess.run([adb, "kill-server"], env=dict(os.environ, ANDROID_ADB_SERVER_PORT=port),
                       capture_output=True, timeout=30)


@pytest.fixture
def fake_phone(tmp_path, monkeypatch) -> Path:
    """tests/fake_adb.py first on PATH as `adb` (for this test and the processes it starts), and
    the folder that is its phone's storage (sdcard/Download, data/local/tmp)."""
    root = tmp_path / "phone"
    for folder in ("sdcard/Download", "data/local/tmp"):
        (root / folder).mkdir(parents=True)
    bin_dir = tmp_path / "fake-adb-bin"
    bin_dir.mkdir()
    (bin_dir / "adb").write_text(f'#!/bin/sh\nexec "{sys.executable}" '
                                 f'"{REPO / "tests" / "fake_adb.py"}" "$@"\n')
    (bin_dir / "adb").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_PHONE_ROOT", str(root))
    return root


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def classification_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sentiment.jsonl"
    rows = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()[:120]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sft.jsonl"
    rows = [
        {"prompt": f"Question: what is {a} plus {b}?\nAnswer:", "completion": f" {a + b}"}
        for a in range(6)
        for b in range(6)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny_config(tiny_model, classification_data, tmp_path):
    """A fast classification config on the tiny model; returns overrides → TrainConfig."""
    from engine.api import config as config_io

    def make(*overrides: str):
        base = [
            f"model={tiny_model}",
            f"dataset={classification_data}",
            "task=classification",
            "label_words=[' terrible', ' great']",
            f"output_dir={tmp_path / 'run'}",
            "steps=6",
            "batch_size=2",
            "max_seq_len=48",
            "eval_every=3",
            "eval_rows=16",
            "checkpoint_every=3",
            "threads=1",
            "optimizer.q=2",
            "optimizer.lr=0.05",
            "lora.rank=4",
        ]
        return config_io.load(None, base + list(overrides))

    return make


ENGINE_TIMEOUT_MS = 120_000  # the window's tests wait this long for an engine process
WORKER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def train(cfg, resume: bool = False, sinks=()):
    """Train `cfg` in this process: (RunResult, the Recorder of its events, the Trainer)."""
    from engine.train.events import EventBus
    from engine.train.trainer import Trainer

    recorder = Recorder()
    trainer = Trainer(cfg, EventBus([recorder, *sinks]))
    try:
        trainer.setup(resume=resume)
        result = trainer.train()
    finally:
        trainer.cleanup()
    return result, recorder, trainer


def train_tiny_run(model: Path, data: Path, out: Path) -> Path:
    """A finished 3-step classification run of `model` on `data` in `out`."""
    from engine.api import config as config_io

    cfg = config_io.load(None, [
        f"model={model}", f"dataset={data}", "task=classification",
        "label_words=[' terrible', ' great']", f"output_dir={out}", "steps=3", "batch_size=2",
        "max_seq_len=48", "eval_every=3", "eval_rows=8", "threads=1", "optimizer.q=2",
        "optimizer.lr=0.05", "lora.rank=4"])
    assert train(cfg)[0].status == "completed"
    return out


def engine_process(args: list[str], worker_env: dict | None = None, **popen) -> subprocess.Popen:
    """`python -m engine ARGS` as a real process (pipes on stdin/stdout/stderr, text mode);
    `worker_env` makes it one worker of a torch.distributed run."""
    env = {k: v for k, v in os.environ.items() if k not in WORKER_VARIABLES}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", **(worker_env or {}))
    return subprocess.Popen([sys.executable, "-m", "engine", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.PIPE, text=True, env=env,
                            cwd=REPO, **popen)


@pytest.fixture
def ctx(tmp_path, tiny_model):
    """A bad-input case's folder with the good inputs (tests/bad_inputs.py)."""
    from bad_inputs import GOOD_ROWS, Ctx

    data = tmp_path / "inputs" / "good.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(r) + "\n" for r in GOOD_ROWS))
    case_dir = tmp_path / "case"
    case_dir.mkdir()
    return Ctx(case_dir, tiny_model, data)


# ---- the window -----------------------------------------------------------------------------

def _child_processes(window) -> list:
    from PySide6.QtCore import QProcess

    return [p for p in window.findChildren(QProcess) if p.state() != QProcess.ProcessState.NotRunning]


@pytest.fixture
def make_window(qtbot, tmp_path):
    windows = []

    def make(**kwargs):
        from PySide6.QtCore import QSettings

        from app.main_window import MainWindow

        settings = QSettings(str(tmp_path / "settings.ini"), QSettings.Format.IniFormat)
        window = MainWindow(settings=settings, runs_root=tmp_path / "runs", **kwargs)
        qtbot.addWidget(window)
        window.show()
        windows.append(window)
        return window

    yield make
    import shiboken6

    for window in windows:
        # Let a pending inspection or probe end on its own, and the processes a test killed be
        # reaped (that takes a turn of the event loop); anything else still running is a leak.
        # A window the test closed for good may be gone by then: its processes went with it.
        for tool in (window.preview.inspection, window.model_probe):
            if shiboken6.isValid(window) and tool.is_running():
                qtbot.waitSignal(tool.sig_answered, timeout=60_000).wait()
        if not shiboken6.isValid(window):
            continue
        with contextlib.suppress(qtbot.TimeoutError):
            qtbot.waitUntil(lambda w=window: not shiboken6.isValid(w) or not _child_processes(w),
                            timeout=3000)
        if not shiboken6.isValid(window):
            continue
        running = _child_processes(window)
        window.shutdown()
        leaked = [" ".join([p.program(), *p.arguments()]) for p in running]
        assert not leaked, f"processes left running: {leaked}"


def fill_tiny(window, model: Path, data: Path, **fields) -> None:
    window.model_edit.setText(str(model))
    window.dataset_edit.setText(str(data))
    values = {"task": "classification", "steps": 4, "threads": 1, "eval_every": 2,
              "checkpoint_every": 0, "batch_size": 2, "max_seq_len": 48, "optimizer.q": 2,
              "lora.rank": 4, "label_words": '[" terrible", " great"]', "seed": 0}
    values.update(fields)
    form = window.form
    for name, value in values.items():
        widget = form.widgets[name]
        if hasattr(widget, "setCurrentText"):
            widget.setCurrentText(str(value))
        elif hasattr(widget, "setValue"):
            widget.setValue(int(value))
        else:
            widget.setText(str(value))
    # eval_rows is not on the form; a small eval keeps the test fast.
    window.form.base.eval_rows = 16


def fake_engine(tmp_path: Path, name: str, body: str) -> list[str]:
    script = tmp_path / f"{name}.py"
    script.write_text(textwrap.dedent("""
        import json, sys, time
        def event(seq, type, **data):
            print(json.dumps({"v": 1, "seq": seq, "time": time.time(), "run_id": "fake",
                              "type": type, "data": data}), flush=True)
        event(0, "hello", protocol=1)
    """) + textwrap.dedent(body))
    return [sys.executable, str(script)]


def drop_file(widget, path: Path):
    """Drag `path` onto `widget` and drop it there, as a file manager does; the drop event."""
    from PySide6.QtCore import QMimeData, QPoint, QPointF, Qt, QUrl
    from PySide6.QtGui import QDragEnterEvent, QDropEvent
    from PySide6.QtWidgets import QApplication

    mime = QMimeData()
    mime.setUrls([QUrl.fromLocalFile(str(path))])
    enter = QDragEnterEvent(QPoint(5, 5), Qt.DropAction.CopyAction, mime,
                            Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, enter)
    assert enter.isAccepted()
    drop = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime,
                      Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, drop)
    return drop
