"""Chat on a GGUF base in llama.cpp (llama-cpp-python), with a GGUF LoRA adapter."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from engine.runtime.backend import Settings
from engine.runtime.sampling import END_OF_TURN, softmax


class LlamaCppBackend:
    def __init__(self, model_path: Path, adapter_gguf: Path | None, adapter_scale: float,
                 seed: int, context: int = 2048) -> None:
        from llama_cpp import Llama

        self.llm = Llama(model_path=str(model_path), lora_path=str(adapter_gguf) if adapter_gguf else None,
                         lora_scale=adapter_scale, n_ctx=context, seed=seed, verbose=False)
        self.stop_words = [w for w in END_OF_TURN
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

    def complete(self, text: str, settings: Settings) -> Iterator[str]:
        chunks = self.llm.create_completion(
            prompt=text, stream=True, temperature=settings.temperature, top_p=settings.top_p,
            max_tokens=settings.max_tokens, stop=self.stop_words, seed=settings.seed)
        for chunk in chunks:
            piece = chunk["choices"][0]["text"]
            if piece:
                yield piece
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
        return softmax([float(logits[i]) for i in label_ids])
