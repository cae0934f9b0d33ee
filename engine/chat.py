"""`python -m engine chat [MODEL] [--adapter RUN_DIR|GGUF]`: streaming generation.

A GGUF base runs in llama.cpp (with the run's adapter exported to GGUF on first use), a
Hugging Face folder in transformers (with the PEFT adapter). The chat template and its stop
tokens are applied on both. MODEL may be left out when --adapter names a run folder: the run's
own base model is used.

With --protocol the command is a session (the protocol and the request format: the "Chat"
section of engine/api/protocol.py): it loads the model once, then answers the JSON requests on
stdin one after another, so a conversation pays for the load once, not per message. Each answer
is status "generating", label_probs (classification runs: the run's prompt_template filled with
the last user turn, next-token probabilities of the label words' first tokens, renormalised over
them as the trainer scores them), its tokens in order, and an `answer` event; a `stop` line
ends that answer after the current token and the session waits for the next request. EOF or
`quit` ends the session with done (tokens and seconds of all answers). With --prompt it answers
that one prompt and ends, as at a terminal.

Templates: "chat" renders the conversation with the model's chat template; "raw" gives the model
the plain text (user turns through the run's prompt_template, each answer after its turn, one
turn a line): a classification run never saw a chat template in training.

The backends live in engine/runtime/ (llama.cpp, transformers, ExecuTorch), each with
`stream(messages, settings)` and `complete(text, settings) -> Iterator[str]` and
`label_probs(prompt, words) -> list[float]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine.api.errors import UserError
from engine.api.protocol import ProtocolError, json_object
from engine.data.dataset import render_prompt
from engine.runtime.backend import Backend, Settings
from engine.session import Request, current, emit, requests

TEMPLATES = ("chat", "raw")
ROLES = ("user", "assistant")


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
    parser.add_argument("--prompt", default=None,
                        help="one prompt (default: interactive; with --protocol, requests on stdin)")
    parser.add_argument("--system", default=None, help="system message")
    parser.add_argument("--template", choices=TEMPLATES, default="chat",
                        help="chat: the model's chat template; raw: the plain text through the "
                             "run's prompt_template (how classification runs are trained)")
    parser.add_argument("--temperature", type=float, default=Settings.temperature)
    parser.add_argument("--top-p", type=float, default=Settings.top_p)
    parser.add_argument("--max-tokens", type=int, default=Settings.max_tokens)
    parser.add_argument("--seed", type=int, default=Settings.seed)
    return parser


@dataclass
class Turn:
    """One question to the model: the conversation, how it is rendered, how to sample."""

    messages: list[dict]  # the system message (if any) first, the user's turn last
    template: str
    settings: Settings


FLAGS = {"temperature": "--temperature", "top_p": "--top-p", "max_tokens": "--max-tokens"}


def _checked(settings: Settings, names: dict[str, str]) -> Settings:
    """`settings`, refused with a message naming the option as `names` spells it."""
    if settings.temperature < 0:
        raise UserError(f"{names['temperature']} {settings.temperature}: must be 0 (greedy) or more")
    if not 0.0 < settings.top_p <= 1.0:
        raise UserError(f"{names['top_p']} {settings.top_p}: must be in (0, 1]")
    if settings.max_tokens < 1:
        raise UserError(f"{names['max_tokens']} {settings.max_tokens}: must be at least 1")
    return settings


def _messages(system: str | None, history: list[dict], prompt: str) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return head + history + [{"role": "user", "content": prompt}]


def _parse_request(text: str, defaults: argparse.Namespace, stop: threading.Event) -> Turn:
    """A request line (engine/api/protocol.py, "Chat"); fields it leaves out come from the
    command line. UserError names what is wrong."""
    try:
        request = json_object(text)
    except ProtocolError as exc:
        raise UserError(f"the request is {exc}") from None
    messages = request.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            for m in messages):
        raise UserError('request field "messages" must be a list of {"role": "user" | '
                        '"assistant", "content": text}, at least one')
    if messages[-1]["role"] != "user":
        raise UserError('request field "messages" must end with the user\'s turn')
    template = request.get("template", defaults.template)
    if template not in TEMPLATES:
        raise UserError(f'request field "template" is {template!r}: one of {", ".join(TEMPLATES)}')
    try:
        settings = Settings(float(request.get("temperature", defaults.temperature)),
                            float(request.get("top_p", defaults.top_p)),
                            int(request.get("max_tokens", defaults.max_tokens)),
                            int(request.get("seed", defaults.seed)), stop)
    except (TypeError, ValueError) as exc:
        raise UserError(f"a sampling field of the request is not a number ({exc})") from None
    system = request.get("system", defaults.system)
    history = [{"role": m["role"], "content": m["content"]} for m in messages[:-1]]
    return Turn(_messages(str(system) if system else None, history, messages[-1]["content"]),
                template, _checked(settings, {name: f'request field "{name}" is' for name in FLAGS}))


def _raw_prompt(messages: list[dict], prompt_template: str) -> str:
    """The conversation as plain text, one turn a line: user turns through `prompt_template`
    (as training renders a classification row), each answer right after its turn."""
    lines: list[str] = []
    for message in messages:
        if message["role"] == "assistant" and lines:
            lines[-1] += message["content"]
        elif message["role"] == "user":
            lines.append(render_prompt(prompt_template, message["content"]))
        else:
            lines.append(message["content"])
    return "\n".join(lines)


def _generate(backend: Backend, target: Target, turn: Turn) -> Iterator[str]:
    """The pieces of the model's answer to `turn`."""
    if turn.template == "raw":
        return backend.complete(_raw_prompt(turn.messages, target.prompt_template), turn.settings)
    return backend.stream(turn.messages, turn.settings)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    settings = _checked(Settings(args.temperature, args.top_p, args.max_tokens, args.seed), FLAGS)
    if current().writer is not None:
        return _serve(args)
    target = resolve(args.model, args.adapter, args.pte)
    backend = load_backend(target, args.adapter_scale, args.seed, args.pte)
    prompts = [args.prompt] if args.prompt is not None else _read_prompts()
    history: list[dict] = []
    for prompt in prompts:
        turn = Turn(_messages(args.system, history, prompt), args.template, settings)
        answer = []
        for piece in _generate(backend, target, turn):
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


def _serve(args: argparse.Namespace) -> int:
    """The protocol session: load once, then answer each request (or --prompt alone)."""
    session = current()
    session.done.update(tokens=0, seconds=0.0, output_dir=None)
    started = time.perf_counter()
    try:
        emit("status", state="loading", message="loading the model")
        target = resolve(args.model, args.adapter, args.pte)
        backend = load_backend(target, args.adapter_scale, args.seed, args.pte)
        if args.prompt is None:
            incoming = requests()
        else:  # no request line is read, so a `stop` stops the command: this one answer
            one = json.dumps({"messages": [{"role": "user", "content": args.prompt}]})
            incoming = iter([Request(one, session.stop)])
        for request in incoming:
            _answer(backend, target, request, args)
    finally:
        session.done["seconds"] = time.perf_counter() - started
    if session.stop.is_set():
        session.status = "stopped"
    return 0


def _answer(backend: Backend, target: Target, request: Request, args: argparse.Namespace) -> None:
    """One request's events, ending with its `answer`; a refused request fails only itself."""
    session = current()
    started = time.perf_counter()
    tokens, template, seen, status, message = 0, "", 0, "completed", ""
    try:
        turn = _parse_request(request.text, args, request.stop)
        template, seen = turn.template, len(turn.messages)
        if target.label_words:
            prompt = render_prompt(target.prompt_template, turn.messages[-1]["content"])
            emit("label_probs", words=target.label_words,
                 probabilities=backend.label_probs(prompt, target.label_words))
        emit("status", state="generating", message="generating")
        for piece in _generate(backend, target, turn):
            tokens += 1
            emit("token", text=piece)
        if request.stop.is_set():
            status = "stopped"
    except UserError as exc:
        status, message = "failed", str(exc)
    session.done["tokens"] += tokens
    emit("answer", status=status, tokens=tokens, seconds=time.perf_counter() - started,
         template=template, messages=seen, message=message)
