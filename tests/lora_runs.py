"""Run folders for the export, chat and playground tests: a config.yaml and a PEFT adapter.

The adapter is made by peft itself (the format every other tool reads), with B drawn at random
instead of trained: a few zeroth-order steps barely move the logits, and the llama.cpp checks
need a LoRA change well above float noise to say anything.
"""

from __future__ import annotations

from pathlib import Path

import torch

from engine.api import config as config_io

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def make_random_adapter(model_folder: Path, adapter_dir: Path, b_std: float = 0.05, rank: int = 4,
                        alpha: float = 8.0, seed: int = 0,
                        targets: list[str] = PROJECTIONS) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_folder), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=alpha,
                                                  target_modules=targets))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * b_std)
    peft_model.save_pretrained(str(adapter_dir))
    return adapter_dir


def make_run(run_dir: Path, model: str | Path, adapter_source: Path, **config) -> Path:
    """A finished-run folder: config.yaml naming `model`, adapter/ copied from `adapter_source`."""
    import shutil

    run_dir.mkdir(parents=True, exist_ok=True)
    config_io.save(config_io.TrainConfig(model=str(model), dataset="data.jsonl", **config),
                   run_dir / "config.yaml")
    shutil.copytree(adapter_source, run_dir / "adapter", dirs_exist_ok=True)
    return run_dir


def classification_run(folder: Path, model: Path | str, adapter: Path, data: Path,
                       label_words: tuple[str, ...] = (" terrible", " great"), **config) -> Path:
    """A finished classification run folder: `make_run` with the task and its data."""
    run = make_run(folder, model, adapter)
    config_io.save(config_io.TrainConfig(model=str(model), dataset=str(data), task="classification",
                                         label_words=list(label_words), **config), run / "config.yaml")
    return run
