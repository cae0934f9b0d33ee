"""The export formats: what the app shows as buttons and `python -m engine export --format` takes."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Format:
    help: str
    module: str  # imported only when this format is asked for: its stack is heavy
    function: str  # export(run_dir, out, **options) -> Path


FORMATS = {
    "gguf": Format("GGUF LoRA adapter for llama.cpp / LM Studio / Ollama, with an Ollama Modelfile",
                   "engine.export.gguf", "export"),
    "merged-gguf": Format("full GGUF model with the adapter merged in (Hugging Face folder bases, "
                          "Llama family)", "engine.export.gguf", "export_merged"),
    "executorch": Format("ExecuTorch .pte program for phones", "engine.export.executorch", "export"),
}
