"""An ExecuTorch export folder at run time: its program in ExecuTorch's runtime, its
TextLLMRunner, its metadata, and chat on it."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from engine.api.errors import UserError
from engine.runtime.sampling import sample, softmax

PROGRAM = "model.pte"
FOUNDATION = "foundation.ptd"
METADATA = "metadata.json"


def _custom_ops() -> None:
    # Registers llama::custom_sdpa / update_cache in the runtime; without it loading the program
    # fails with "Missing operator: llama::custom_sdpa.out".
    import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401


class Program:
    """An export folder: its program in ExecuTorch's runtime (KV cache, one position a call)."""

    def __init__(self, folder_or_pte: Path) -> None:
        folder = folder_or_pte.parent if folder_or_pte.suffix == ".pte" else folder_or_pte
        self.pte = folder / PROGRAM
        if not self.pte.is_file():
            raise UserError(f"{self.pte}: no such file; give a folder written by `python -m engine "
                            "export RUN --format executorch` (or its model.pte)")
        self.folder = folder
        self.data = folder / FOUNDATION if (folder / FOUNDATION).is_file() else None
        self._method = None

    @property
    def method(self):
        if self._method is None:
            from executorch.runtime import Runtime

            _custom_ops()
            try:
                program = Runtime.get().load_program(str(self.pte), data_path=self.data)
                self._method = program.load_method("forward")
            except (RuntimeError, ValueError) as exc:
                raise UserError(f"{self.pte}: ExecuTorch cannot load this program ({exc}); export "
                                "it again with this version of EdgeTune") from None
        return self._method

    def forward(self, ids: list[int], position: int) -> np.ndarray:
        """Next-token logits after `ids` placed at `position` (the cache holds what came before)."""
        tokens = torch.tensor([ids], dtype=torch.long)
        return self.method.execute([tokens, torch.tensor([position], dtype=torch.long)])[0][-1].numpy()

    def teacher_forced(self, ids: list[int], prefill: int) -> np.ndarray:
        """Logits after ids[:prefill] (one prefill call), then after each further id (one call each)."""
        rows = [self.forward(ids[:prefill], 0)]
        for position in range(prefill, len(ids)):
            rows.append(self.forward([ids[position]], position))
        return np.stack(rows)

    def greedy(self, prompt: list[int], count: int, stop_ids: set[int]) -> list[int]:
        logits, tokens = self.forward(prompt, 0), []
        while len(tokens) < count:
            token = int(logits.argmax())
            if token in stop_ids:
                break
            tokens.append(token)
            logits = self.forward([token], len(prompt) + len(tokens) - 1)
        return tokens

    def runner(self):
        """`TextLLMRunner`, the C++ runner of ExecuTorch's LLM apps, on this folder."""
        from executorch.extension.llm.runner import TextLLMRunner

        _custom_ops()
        try:
            return TextLLMRunner(str(self.pte), str(self.folder / "tokenizer.json"),
                                 data_path=str(self.data) if self.data else None)
        except RuntimeError as exc:
            raise UserError(f"{self.pte}: TextLLMRunner cannot load this program ({exc})") from None


def runner_generate(runner, prompt: str, max_tokens: int, temperature: float,
                    stats: dict | None = None) -> list[str]:
    """Text pieces TextLLMRunner generates after `prompt` (from an empty KV cache), up to the
    first token that is part of a UTF-8 character (its binding cannot pass that to Python)."""
    from executorch.extension.llm.runner import GenerationConfig

    pieces: list[str] = []
    runner.reset()
    with _stdout_to_stderr(), contextlib.suppress(UnicodeDecodeError):
        runner.generate(prompt, GenerationConfig(echo=False, max_new_tokens=max_tokens,
                                                 temperature=temperature), pieces.append,
                        (lambda s: stats.update(_stats(s))) if stats is not None else None)
    return pieces


@contextlib.contextmanager
def _stdout_to_stderr():
    """The C++ runner also prints tokens and stats on fd 1, which carries our one-line result."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _stats(stats) -> dict:
    decode_ms = stats.inference_end_ms - stats.prompt_eval_end_ms
    prefill_ms = stats.prompt_eval_end_ms - stats.inference_start_ms
    prompt, generated = stats.num_prompt_tokens, stats.num_generated_tokens
    # The first generated token comes out of the prefill; decode makes the others.
    return {"prompt_tokens": prompt, "generated_tokens": generated,
            "prefill_tokens_per_second": prompt * 1000 / prefill_ms if prefill_ms > 0 else None,
            "decode_tokens_per_second": (generated - 1) * 1000 / decode_ms
            if decode_ms > 0 and generated > 1 else None}


# ---- metadata and the folder's README ------------------------------------------------------

def read_metadata(folder_or_pte: Path) -> dict:
    """metadata.json of an export folder (given the folder or its .pte)."""
    folder = folder_or_pte.parent if folder_or_pte.suffix == ".pte" else folder_or_pte
    path = folder / METADATA
    if not path.is_file():
        raise UserError(f"{folder}: no {METADATA}; give a folder written by "
                        "`python -m engine export RUN --format executorch` (or its model.pte)")
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); export the run again") from None
    if metadata.get("format_version") != 2:
        raise UserError(f"{folder}: an export of an older EdgeTune (no KV cache, not the LLM-runner "
                        "contract); export the run again")
    return metadata


class PteBackend:
    """Chat with an export: its KV-cache program in ExecuTorch's runtime, one token a call.

    Tokens are sampled here rather than in TextLLMRunner: that runner's Python binding passes
    each token's text to a str callback and aborts on a token holding part of a UTF-8
    character (an accented letter or emoji split in two), and it has no top_p or seed. The
    program and runtime are the same; the export's verification checks that TextLLMRunner
    generates the same greedy tokens. `last_stats` holds the last answer's tokens/s."""

    def __init__(self, pte: Path) -> None:
        from transformers import AutoTokenizer

        self.metadata = read_metadata(pte)
        self.program = Program(pte)
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.program.folder))
        self.max_seq_len = int(self.metadata["max_seq_len"])
        self.stop_ids = set(self.metadata["stop_token_ids"])
        self.last_stats: dict = {}

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        template = self.metadata.get("chat_template")
        if template:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                      tokenize=False, chat_template=template)
        else:
            text = "\n".join(m["content"] for m in messages)
        return self.text_ids(text)

    def text_ids(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= self.max_seq_len:
            raise UserError(f"the prompt is {len(ids)} tokens; this export holds at most "
                            f"{self.max_seq_len} (export again with a larger --max-seq-len)")
        return ids

    def generate_ids(self, ids: list[int], settings) -> Iterator[int]:
        """Token ids after `ids`: greedy at temperature 0, else nucleus sampling."""
        rng = np.random.default_rng(settings.seed)
        started = time.perf_counter()
        logits = self.program.forward(ids, 0)
        prefilled = time.perf_counter()
        position, count = len(ids), 0
        self.last_stats = {"prompt_tokens": len(ids), "generated_tokens": 0,
                           "prefill_tokens_per_second": len(ids) / (prefilled - started)}
        while count < settings.max_tokens and position < self.max_seq_len and not settings.stop.is_set():
            values = logits.astype(np.float64)
            token = int(values.argmax()) if settings.temperature == 0 else \
                sample(values, settings.temperature, settings.top_p, rng)
            if token in self.stop_ids:
                return
            count += 1
            self.last_stats["generated_tokens"] = count
            yield token
            if count > 1:
                self.last_stats["decode_tokens_per_second"] = \
                    (count - 1) / (time.perf_counter() - prefilled)
            if count < settings.max_tokens and position + 1 < self.max_seq_len:
                logits = self.program.forward([token], position)
            position += 1

    def stream(self, messages: list[dict], settings) -> Iterator[str]:
        return self._decoded(self.prompt_ids(messages), settings)

    def complete(self, text: str, settings) -> Iterator[str]:
        return self._decoded(self.text_ids(text), settings)

    def _decoded(self, ids: list[int], settings) -> Iterator[str]:
        answer: list[int] = []
        shown = ""
        for token in self.generate_ids(ids, settings):
            answer.append(token)
            text = self.tokenizer.decode(answer, skip_special_tokens=True)
            # A multi-byte character split across tokens decodes to U+FFFD until complete.
            if text.endswith("\ufffd"):
                continue
            if len(text) > len(shown):
                yield text[len(shown):]
                shown = text
        # Bytes still incomplete when generation ends will not complete: show them as they are.
        text = self.tokenizer.decode(answer, skip_special_tokens=True)
        if len(text) > len(shown):
            yield text[len(shown):]

    def label_probs(self, prompt: str, words: list[str]) -> list[float]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        label_ids = [self.tokenizer.encode(w, add_special_tokens=False)[0] for w in words]
        logits = self.program.forward(ids[-(self.max_seq_len - 1):], 0)
        return softmax([float(logits[i]) for i in label_ids])
