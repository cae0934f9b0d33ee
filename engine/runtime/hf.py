"""Chat on a Hugging Face folder in transformers, with the run's PEFT adapter."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from engine.runtime.backend import Settings
from engine.runtime.sampling import softmax, stop_token_ids


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
        if self.tokenizer.chat_template:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                      tokenize=False)
        else:
            text = "\n".join(m["content"] for m in messages)
        return self.complete(text, settings)

    def complete(self, text: str, settings: Settings) -> Iterator[str]:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        class StopRequested(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs) -> bool:
                return settings.stop.is_set()

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
        return softmax([float(logits[i]) for i in label_ids])
