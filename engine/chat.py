"""`python -m engine chat [MODEL] [--adapter RUN_DIR|GGUF]`: streaming generation.

A GGUF base runs in llama.cpp (with the run's adapter exported to GGUF on first use), a
Hugging Face folder in transformers (with the PEFT adapter). The chat template and its stop
tokens are applied on both. MODEL may be left out when --adapter names a run folder: the run's
own base model is used.

With --json-stream stdout carries protocol events (engine/protocol.py envelopes), one per line:
- hello: protocol, engine_version, pid, argv
- status: state "loading" | "generating", message
- label_probs: words, probabilities (classification runs: the run's prompt_template filled with
  the prompt, next-token probabilities of the label words' first tokens, renormalised over them
  as the trainer scores them)
- token: text (a piece of the answer, in order)
- error: kind, message
- done: status "completed" | "stopped" | "failed", exit_code, tokens, seconds
A `stop` line on stdin ends generation after the current token.

Backends are objects with `stream(messages, settings) -> Iterator[str]` and
`label_probs(prompt, words) -> list[float]`. --pte hands the model to
`engine.export.executorch.chat_backend(pte_path: Path, model_reference: str)`, which returns
such an object (ExecuTorch owns that side).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from engine.data import render_prompt
from engine.errors import UserError


@dataclass
class Settings:
    # 0 = greedy (repeatable answers); higher = more varied, less reliable.
    temperature: float = 0.7
    # Nucleus sampling: sample from the smallest token set holding this much probability.
    top_p: float = 0.9
    max_tokens: int = 256
    seed: int = 0
    stop: threading.Event = field(default_factory=threading.Event)


class Backend(Protocol):
    def stream(self, messages: list[dict], settings: Settings) -> Iterator[str]: ...

    def label_probs(self, prompt: str, words: list[str]) -> list[float]: ...


def _softmax(scores: list[float]) -> list[float]:
    import math

    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    return [e / sum(exps) for e in exps]


class LlamaCppBackend:
    def __init__(self, model_path: Path, adapter_gguf: Path | None, adapter_scale: float,
                 seed: int, context: int = 2048) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(model_path), lora_path=str(adapter_gguf) if adapter_gguf else None,
                         lora_scale=adapter_scale, n_ctx=context, seed=seed, verbose=False)
        self.stop_words = [w for w in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>")
                           if len(self.llm.tokenize(w.encode(), add_bos=False, special=True)) == 1]

    def stream(self, messages: list[dict], settings: Settings) -> Iterator[str]:
        chunks = self.llm.create_chat_completion(
            messages=messages, stream=True, temperature=settings.temperature, top_p=settings.top_p,
            max_tokens=settings.max_tokens, stop=self.stop_words, seed=settings.seed)
        for chunk in chunks:
            text = chunk["choices"][0]["delta"].get("content")
            if text:
                yield text
            if settings.stop.is_set():
                return

    def label_probs(self, prompt: str, words: list[str]) -> list[float]:
        ids = self.llm.tokenize(prompt.encode(), add_bos=False, special=False)
        label_ids = [self.llm.tokenize(w.encode(), add_bos=False, special=False)[0] for w in words]
        import llama_cpp

        self.llm.reset()
        self.llm.eval(ids)
        # Without logits_all (n_ctx × vocab floats) llama-cpp-python keeps no scores; the last
        # position's logits are still in the context.
        logits = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return _softmax([float(logits[i]) for i in label_ids])


def stop_token_ids(tokenizer) -> list[int]:
    """Token ids that end an answer: EOS and the chat templates' end-of-turn markers."""
    vocab = tokenizer.get_vocab()
    return sorted({tokenizer.eos_token_id, *(
        vocab[w] for w in ("<|im_end|>", "<end_of_turn>", "<|eot_id|>") if w in vocab)} - {None})


class TransformersBackend:
    def __init__(self, folder: Path, adapter_dir: Path | None, adapter_scale: float) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
        if adapter_dir is not None and adapter_scale != 0.0:
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, str(adapter_dir))
            if adapter_scale != 1.0:
                for module in model.modules():
                    if hasattr(module, "scaling") and isinstance(module.scaling, dict):
                        module.scaling = {k: v * adapter_scale for k, v in module.scaling.items()}
        self.model = model.eval()
        self.stop_ids = stop_token_ids(self.tokenizer)

    def stream(self, messages: list[dict], settings: Settings) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class StopRequested(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                return settings.stop.is_set()

        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                      tokenize=False)
        else:
            text = "\n".join(m["content"] for m in messages)
        inputs = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
        torch.manual_seed(settings.seed)
        sampling = settings.temperature > 0
        kwargs = dict(**inputs, max_new_tokens=settings.max_tokens, do_sample=sampling,
                      eos_token_id=self.stop_ids, pad_token_id=self.stop_ids[0], streamer=streamer,
                      stopping_criteria=StoppingCriteriaList([StopRequested()]))
        if sampling:
            kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
        worker = threading.Thread(target=self._generate, args=(kwargs,), daemon=True)
        worker.start()
        for piece in streamer:
            if piece:
                yield piece
        worker.join()

    def _generate(self, kwargs: dict) -> None:
        import torch

        with torch.no_grad():
            self.model.generate(**kwargs)

    def label_probs(self, prompt: str, words: list[str]) -> list[float]:
        import torch

        ids = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
        label_ids = [self.tokenizer.encode(w, add_special_tokens=False)[0] for w in words]
        with torch.no_grad():
            logits = self.model(ids).logits[0, -1]
        return _softmax([float(logits[i]) for i in label_ids])


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
    # engine.model imports torch: a mistyped path is reported before paying for that.
    def resolve_reference(reference: str) -> str:
        from engine.model import resolve_reference

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
        from engine.export.executorch import read_metadata

        metadata = read_metadata(pte)
        return Target(metadata["base_model"], label_words=metadata["label_words"],
                      prompt_template=metadata["prompt_template"] or "{text}")
    if adapter is None:
        if model is None:
            raise UserError("give a model (a .gguf file, a model folder or `default`) or "
                            "--adapter RUN_DIR")
        return Target(resolve_reference(model))
    from engine import config as config_io
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
        from engine.export import executorch

        return executorch.chat_backend(pte, target.model)
    if target.model.endswith(".gguf"):
        if not Path(target.model).is_file():
            raise UserError(f"model file {target.model} not found; check the path")
        adapter_gguf = target.adapter_gguf
        if adapter_scale == 0.0:
            adapter_gguf = None  # the base alone; llama.cpp gives identical logits (verified)
        elif adapter_gguf is None and target.run_dir is not None:
            adapter_gguf = _run_adapter_gguf(target.run_dir, target.adapter_dir)
        return LlamaCppBackend(Path(target.model), adapter_gguf, adapter_scale, seed)
    if target.adapter_gguf is not None:
        raise UserError(f"--adapter {target.adapter_gguf} is a GGUF adapter but the base "
                        f"{target.model} is not a GGUF file; give the run folder instead")
    from engine.model import local_folder

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
    parser.add_argument("--json-stream", action="store_true",
                        help="protocol events on stdout (used by the app); needs --prompt")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    if args.temperature < 0:
        raise UserError(f"--temperature {args.temperature}: must be 0 (greedy) or more")
    if not 0.0 < args.top_p <= 1.0:
        raise UserError(f"--top-p {args.top_p}: must be in (0, 1]")
    if args.max_tokens < 1:
        raise UserError(f"--max-tokens {args.max_tokens}: must be at least 1")
    return Settings(args.temperature, args.top_p, args.max_tokens, args.seed)


def _messages(system: str | None, history: list[dict], prompt: str) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return head + history + [{"role": "user", "content": prompt}]


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    settings = _settings(args)
    if args.json_stream:
        if args.prompt is None:
            raise UserError("--json-stream needs --prompt")
        return _json_stream(args, settings, argv)
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


def _json_stream(args: argparse.Namespace, settings: Settings, argv: list[str]) -> int:
    from engine import __version__
    from engine.cli import EXIT_INTERNAL, _reserve_stdout, _watch_stdin, failed
    from engine.protocol import PROTOCOL_VERSION, EventWriter

    writer = EventWriter(_reserve_stdout(), uuid.uuid4().hex[:12])
    _watch_stdin(settings.stop)
    writer.emit("hello", protocol=PROTOCOL_VERSION, engine_version=__version__, pid=os.getpid(),
                argv=argv)
    started = time.perf_counter()
    tokens, status, code = 0, "failed", EXIT_INTERNAL

    def report(kind: str, message: str) -> None:
        if kind == "internal":
            traceback.print_exc(file=sys.stderr)
        writer.emit("error", kind=kind, message=message, log_path=None)

    try:
        writer.emit("status", state="loading", message="loading the model")
        target = resolve(args.model, args.adapter, args.pte)
        backend = load_backend(target, args.adapter_scale, args.seed, args.pte)
        if target.label_words:
            prompt = render_prompt(target.prompt_template, args.prompt)
            writer.emit("label_probs", words=target.label_words,
                        probabilities=backend.label_probs(prompt, target.label_words))
        writer.emit("status", state="generating", message="generating")
        for piece in backend.stream(_messages(args.system, [], args.prompt), settings):
            tokens += 1
            writer.emit("token", text=piece)
        status, code = ("stopped" if settings.stop.is_set() else "completed"), 0
    except (Exception, KeyboardInterrupt) as exc:
        code = failed(exc, report)
    finally:
        writer.emit("done", status=status, exit_code=code, tokens=tokens,
                    seconds=time.perf_counter() - started, output_dir=None)
    return code
