"""`python -m engine chat [MODEL] [--adapter RUN_DIR|GGUF]`: streaming generation.

A GGUF base runs in llama.cpp (with the run's adapter exported to GGUF on first use), a
Hugging Face folder in transformers (with the PEFT adapter). The chat template and its stop
tokens are applied on both. MODEL may be left out when --adapter names a run folder: the run's
own base model is used.

With --protocol (needs --prompt) stdout carries protocol events (engine/api/protocol.py):
hello; status (state "loading" | "generating"); label_probs (classification runs: the run's
prompt_template filled with the prompt, next-token probabilities of the label words' first
tokens, renormalised over them as the trainer scores them); token (a piece of the answer, in
order); error; done (with tokens and seconds). A `stop` line on stdin ends generation after the
current token.

The backends live in engine/runtime/ (llama.cpp, transformers, ExecuTorch), each with
`stream(messages, settings) -> Iterator[str]` and `label_probs(prompt, words) -> list[float]`.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine.api.errors import UserError
from engine.data.dataset import render_prompt
from engine.runtime.backend import Backend, Settings
from engine.session import current, emit


@dataclass
class Target:
    """What to load: the base model, its adapter, and the run's classification setup."""

    model: str
    adapter_dir: Path | None = None  # PEFT folder
    adapter_gguf: Path | None = None
    run_dir: Path | None = None
    label_words: list[str] = field(default_factory=list)
    prompt_template: str = "{text}"


def resolve(model: str | None, adapter: Path | None, pte: Path | None = None) -> Target:
    # engine.model.loading imports torch: a mistyped path is reported before paying for that.
    def resolve_reference(reference: str) -> str:
        from engine.model.loading import resolve_reference

        return resolve_reference(reference)

    if adapter is not None and adapter.suffix == ".gguf":
        if model is None:
            raise UserError(f"--adapter {adapter} is a GGUF adapter; give the base model too "
                            "(python -m engine chat BASE.gguf --adapter ADAPTER.gguf)")
        if not adapter.is_file():
            raise UserError(f"--adapter {adapter}: no such file")
        return Target(resolve_reference(model), adapter_gguf=adapter)
    if adapter is None and model is None and pte is not None:
        # An ExecuTorch export carries its base's name and the run's classification setup.
        from engine.runtime.pte import read_metadata

        metadata = read_metadata(pte)
        return Target(metadata["base_model"], label_words=metadata["label_words"],
                      prompt_template=metadata["prompt_template"] or "{text}")
    if adapter is None:
        if model is None:
            raise UserError("give a model (a .gguf file, a model folder or `default`) or "
                            "--adapter RUN_DIR")
        return Target(resolve_reference(model))
    from engine.api import config as config_io
    from engine.export import run_folder

    config_path, adapter_dir = run_folder(adapter)
    config = config_io.load(config_path)
    return Target(resolve_reference(model or config.model), adapter_dir=adapter_dir, run_dir=adapter,
                  label_words=list(config.label_words), prompt_template=config.prompt_template)


def _run_adapter_gguf(run_dir: Path, adapter_dir: Path) -> Path:
    """The run's GGUF adapter, exported now if missing or older than the PEFT adapter."""
    from engine.export.gguf import export

    path = run_dir / "export" / "adapter.gguf"
    source = adapter_dir / "adapter_model.safetensors"
    if not path.is_file() or path.stat().st_mtime < source.stat().st_mtime:
        export(run_dir, path, verify=False)
    return path


def load_backend(target: Target, adapter_scale: float, seed: int, pte: Path | None) -> Backend:
    if pte is not None:
        from engine.runtime.pte import PteBackend

        return PteBackend(pte)
    if target.model.endswith(".gguf"):
        if not Path(target.model).is_file():
            raise UserError(f"model file {target.model} not found; check the path")
        adapter_gguf = target.adapter_gguf
        if adapter_scale == 0.0:
            adapter_gguf = None  # the base alone; llama.cpp gives identical logits (verified)
        elif adapter_gguf is None and target.run_dir is not None:
            adapter_gguf = _run_adapter_gguf(target.run_dir, target.adapter_dir)
        from engine.runtime.llamacpp import LlamaCppBackend

        return LlamaCppBackend(Path(target.model), adapter_gguf, adapter_scale, seed)
    if target.adapter_gguf is not None:
        raise UserError(f"--adapter {target.adapter_gguf} is a GGUF adapter but the base "
                        f"{target.model} is not a GGUF file; give the run folder instead")
    from engine.model.loading import local_folder
    from engine.runtime.hf import TransformersBackend

    return TransformersBackend(local_folder(target.model), target.adapter_dir, adapter_scale)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine chat",
                                     description="Chat with a base model (+ adapter), streaming.")
    parser.add_argument("model", nargs="?", default=None,
                        help="a .gguf file, a model folder or `default` (default: the run's base)")
    parser.add_argument("--adapter", type=Path, default=None,
                        help="a training run folder, or a GGUF adapter for a GGUF base")
    parser.add_argument("--adapter-scale", type=float, default=1.0,
                        help="adapter strength (0 = the base model alone)")
    parser.add_argument("--pte", type=Path, default=None,
                        help="an ExecuTorch export (its folder or model.pte); MODEL not needed")
    parser.add_argument("--prompt", default=None, help="one prompt (default: interactive)")
    parser.add_argument("--system", default=None, help="system message")
    parser.add_argument("--temperature", type=float, default=Settings.temperature)
    parser.add_argument("--top-p", type=float, default=Settings.top_p)
    parser.add_argument("--max-tokens", type=int, default=Settings.max_tokens)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    if args.temperature < 0:
        raise UserError(f"--temperature {args.temperature}: must be 0 (greedy) or more")
    if not 0.0 < args.top_p <= 1.0:
        raise UserError(f"--top-p {args.top_p}: must be in (0, 1]")
    if args.max_tokens < 1:
        raise UserError(f"--max-tokens {args.max_tokens}: must be at least 1")
    # The session's stop: a `stop` line on stdin ends the answer after the current token.
    return Settings(args.temperature, args.top_p, args.max_tokens, args.seed, current().stop)


def _messages(system: str | None, history: list[dict], prompt: str) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return head + history + [{"role": "user", "content": prompt}]


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    settings = _settings(args)
    if current().writer is not None:
        if args.prompt is None:
            raise UserError("--protocol needs --prompt")
        return _stream_events(args, settings)
    target = resolve(args.model, args.adapter, args.pte)
    backend = load_backend(target, args.adapter_scale, args.seed, args.pte)
    prompts = [args.prompt] if args.prompt is not None else _read_prompts()
    history: list[dict] = []
    for prompt in prompts:
        answer = []
        for piece in backend.stream(_messages(args.system, history, prompt), settings):
            answer.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        history += [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": "".join(answer)}]
    return 0


def _read_prompts() -> Iterator[str]:
    while True:
        try:
            line = input("> " if sys.stdin.isatty() else "")
        except EOFError:
            return
        if line.strip():
            yield line


def _stream_events(args: argparse.Namespace, settings: Settings) -> int:
    session = current()
    session.done.update(tokens=0, seconds=0.0, output_dir=None)
    started = time.perf_counter()
    try:
        emit("status", state="loading", message="loading the model")
        target = resolve(args.model, args.adapter, args.pte)
        backend = load_backend(target, args.adapter_scale, args.seed, args.pte)
        if target.label_words:
            prompt = render_prompt(target.prompt_template, args.prompt)
            emit("label_probs", words=target.label_words,
                 probabilities=backend.label_probs(prompt, target.label_words))
        emit("status", state="generating", message="generating")
        for piece in backend.stream(_messages(args.system, [], args.prompt), settings):
            session.done["tokens"] += 1
            emit("token", text=piece)
    finally:
        session.done["seconds"] = time.perf_counter() - started
    if settings.stop.is_set():
        session.status = "stopped"
    return 0
