"""Shared fixtures: tiny random-init models written with save_pretrained, and small datasets.

No network: the tiny model comes from engine.model.tiny (also `python -m engine make-tiny-model`,
which the app's --smoke check uses), a 2-layer Llama with a BPE trained on the bundled demo data.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
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


def write_gguf(path: Path, architecture: str) -> Path:
    """A one-tensor GGUF file of `architecture`: enough for the checks made before conversion."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
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
