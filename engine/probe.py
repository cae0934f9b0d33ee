"""`python -m engine probe MODEL [--json]`: what a model is and what training it would cost.

Reads config.json (a .gguf file is converted once and cached first) without loading weights,
except to list the adaptable layers, which uses an empty model on the meta device.

--json fields: reference, folder, architecture, model_type, parameters, context_length,
hidden_size, layers, vocab_size, chat_template (bool), lora_targets (adaptable linear layer
names), profile (detected device profile key), estimates ({optimizer: Estimate.as_dict()} for
the default settings: prge dual q=4 b=4, mezo, fo at max_seq_len 128).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from engine import device, profiles
from engine.config import TrainConfig
from engine.estimate import Shape, estimate
from engine.model import local_folder


def probe(reference: str) -> dict[str, Any]:
    folder = local_folder(reference)
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    shape = Shape.from_config(config)
    text = config.get("text_config") or config
    chat = (folder / "chat_template.jinja").exists() or "chat_template" in _read_json(
        folder / "tokenizer_config.json")
    defaults = TrainConfig(model=reference, dataset="-")
    estimates = {}
    for name in ("prge", "mezo", "fo"):
        cfg = TrainConfig(model=reference, dataset="-")
        cfg.optimizer.name = name
        estimates[name] = estimate(shape, cfg).as_dict()
    return {
        "reference": reference, "folder": str(folder),
        "architecture": (config.get("architectures") or ["?"])[0],
        "model_type": config.get("model_type"), "parameters": shape.parameters(),
        "context_length": text.get("max_position_embeddings"), "hidden_size": shape.hidden,
        "layers": shape.layers, "vocab_size": shape.vocab, "chat_template": bool(chat),
        "lora_targets": _linear_names(folder), "default_targets": defaults.lora.targets,
        "profile": profiles.detect(device.available()).key, "estimates": estimates,
    }


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}


def _linear_names(folder: Path) -> list[str]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(folder)))
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return sorted(names - {"lm_head"})


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine probe", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model folder, .gguf file, hub id, or 'default'")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    info = probe(args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    gib = lambda n: f"{n / 2**30:.2f} GiB"
    print(f"{info['reference']}: {info['architecture']} ({info['model_type']}), "
          f"{info['parameters'] / 1e6:.1f}M parameters, context {info['context_length']}, "
          f"{info['layers']} layers, chat template {'yes' if info['chat_template'] else 'no'}")
    print(f"  LoRA targets available: {', '.join(info['lora_targets'])}")
    print(f"  device profile: {info['profile']}")
    for name, values in info["estimates"].items():
        print(f"  estimated peak ({name}, defaults): {gib(values['total_bytes'])}")
    return 0
