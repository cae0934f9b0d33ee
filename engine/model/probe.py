"""`python -m engine probe MODEL [--json]`: what a model is and what training it would cost.

Reads config.json, or a .gguf file's own metadata when it is not converted yet, without loading
weights; the adaptable layers are listed from an empty model on the meta device.

--json fields: reference, folder, architecture, model_type, parameters, context_length,
hidden_size, layers, vocab_size, chat_template (bool), lora_targets (adaptable linear layer
names), stored_dtype (of the weights on disk; a GGUF quantisation type such as Q4_1), dtype
(the detected profile's training dtype, used by the estimates), profile (detected device
profile key), estimates ({optimizer: Estimate.as_dict()} for the default settings: prge dual
q=4 b=4, mezo, fo at max_seq_len 128). With --protocol the same object is the `result` event.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from engine.api.config import TrainConfig
from engine.api.errors import UserError
from engine.api.estimate import Shape, estimate
from engine.model import device
from engine.model import loading as models
from engine.session import emit


def probe(reference: str) -> dict[str, Any]:
    config, source, chat, stored_dtype = _model_config(reference)
    shape = Shape.from_config(config)
    text = config.get("text_config") or config
    profile = device.detected_profile()
    defaults = TrainConfig(model=reference, dataset="-")
    estimates = {}
    for name in ("prge", "mezo", "fo"):
        cfg = TrainConfig(model=reference, dataset="-")
        cfg.optimizer.name = name
        estimates[name] = estimate(shape, cfg, profile.dtype).as_dict()
    return {
        "reference": reference, "folder": source,
        "architecture": (config.get("architectures") or ["?"])[0],
        "model_type": config.get("model_type"), "parameters": shape.parameters(),
        "context_length": text.get("max_position_embeddings"), "hidden_size": shape.hidden,
        "layers": shape.layers, "vocab_size": shape.vocab, "chat_template": chat,
        "stored_dtype": stored_dtype, "dtype": profile.dtype,
        "lora_targets": _linear_names(config), "default_targets": defaults.lora.targets,
        "profile": profile.key, "estimates": estimates,
    }


def _model_config(reference: str) -> tuple[dict[str, Any], str, bool, str]:
    """(config dict, where it was read, chat template present, dtype of the stored weights).

    A GGUF file not yet converted is described from its own metadata: seconds instead of the
    minutes a conversion takes.
    """
    path = Path(models.resolve_reference(reference)).expanduser()
    gguf_file = path.suffix == ".gguf" and path.is_file()
    if gguf_file and not (models.gguf_cache_folder(path) / "config.json").exists():
        import gguf

        info = models.read_gguf(path)
        models.check_gguf_architecture(path, info.architecture)
        file_type = info.metadata.get("general.file_type")
        stored = "unknown" if file_type is None else \
            gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        return models.gguf_config(info), str(path), "tokenizer.chat_template" in info.metadata, stored
    folder = models.local_folder(reference)
    config = models.read_config(folder)
    chat = (folder / "chat_template.jinja").exists() or "chat_template" in _read_json(
        folder / "tokenizer_config.json")
    return config, str(folder), chat, str(config.get("dtype") or config.get("torch_dtype") or "unknown")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"model file {path} is not valid JSON; restore it from the model's "
                        "source") from None


def _linear_names(config: dict[str, Any]) -> list[str]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    values = dict(config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(values.pop("model_type"), **values))
    names = {n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return sorted(names - {"lm_head"})


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine probe", description=__doc__.splitlines()[0])
    parser.add_argument("model", help="model folder, .gguf file, hub id, or 'default'")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    info = probe(args.model)
    emit("result", json.dumps(info, indent=2) if args.json else _format_text(info), **info)
    return 0


def _format_text(info: dict[str, Any]) -> str:
    gib = lambda n: f"{n / 2**30:.2f} GiB"
    lines = [f"{info['reference']}: {info['architecture']} ({info['model_type']}), "
             f"{info['parameters'] / 1e6:.1f}M parameters, context {info['context_length']}, "
             f"{info['layers']} layers, chat template {'yes' if info['chat_template'] else 'no'}, "
             f"weights {info['stored_dtype']}",
             f"  LoRA targets available: {', '.join(info['lora_targets'])}",
             f"  device profile: {info['profile']} (trains in {info['dtype']})"]
    for name, values in info["estimates"].items():
        lines.append(f"  estimated peak ({name}, defaults): {gib(values['total_bytes'])}")
    return "\n".join(lines)
