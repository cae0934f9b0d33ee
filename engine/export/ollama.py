"""An Ollama Modelfile beside a GGUF export, so `ollama create NAME -f Modelfile` works as is.

Ollama's TEMPLATE is a Go template over `.Messages`, not Jinja; the Jinja chat template is
recognised by its turn markers (ChatML, Gemma) and written in Go form. For other templates
TEMPLATE is left out and Ollama falls back to the template it detects in the base GGUF.
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.files import write_atomic

CHATML_TEMPLATE = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n"
    "{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)
# Gemma has no system role; a system message is sent as a user turn.
GEMMA_TEMPLATE = (
    '{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}user{{ end }}\n'
    "{{ .Content }}<end_of_turn>\n"
    "{{ end }}<start_of_turn>model\n"
)


def go_template(chat_template: str | None) -> str | None:
    """The Ollama TEMPLATE for a Jinja chat template, or None when it is not a known style."""
    if not chat_template:
        return None
    if "<|im_start|>" in chat_template:
        return CHATML_TEMPLATE
    if "<start_of_turn>" in chat_template:
        return GEMMA_TEMPLATE
    return None


def default_system_prompt(chat_template: str | None) -> str | None:
    """A system prompt the Jinja template inserts when the chat has none (SmolLM2 does)."""
    match = re.search(r"<\|im_start\|>system\\n(.+?)<\|im_end\|>", chat_template or "")
    return match.group(1) if match and "{{" not in match.group(1) else None


def _reference(path: Path, folder: Path) -> str:
    # Ollama resolves relative paths against the Modelfile's folder.
    path = path.resolve()
    return f"./{path.name}" if path.parent == folder.resolve() else str(path)


def _quoted(text: str) -> str:
    return '"""' + text + '"""'


def write_modelfile(path: Path, model: Path, adapter: Path | None, chat_template: str | None,
                    stop_words: list[str]) -> Path:
    folder = path.parent
    lines = [f"FROM {_reference(model, folder)}"]
    if adapter is not None:
        lines.append(f"ADAPTER {_reference(adapter, folder)}")
    template = go_template(chat_template)
    if template is not None:
        lines.append(f"TEMPLATE {_quoted(template)}")
    system = default_system_prompt(chat_template)
    if system is not None:
        lines.append(f"SYSTEM {_quoted(system)}")
    lines += [f'PARAMETER stop "{word}"' for word in stop_words]
    return write_atomic(path, lambda partial: partial.write_text("\n".join(lines) + "\n",
                                                                 encoding="utf-8"))
