"""Shared fixtures: tiny random-init models written with save_pretrained, and small datasets.

No network: the tokenizer is a byte-level BPE trained here on the bundled demo data, the model
a 2-layer Llama made from a config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "resources" / "datasets" / "reviews.jsonl"

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(folder: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = [json.loads(line)["text"] for line in DEMO_DATA.read_text().splitlines()]
    corpus += ["It was great. It was terrible. The product was good, bad, fine."] * 5
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return fast


def make_tiny_llama(folder: Path, seed: int = 0, **overrides) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = make_tokenizer(folder)
    values = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    values.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**values))
    model.save_pretrained(folder)
    return folder


def write_gguf(path: Path, architecture: str) -> Path:
    """A one-tensor GGUF file of `architecture`: enough for the checks made before conversion."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((64, 32), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


class Recorder:
    """An event sink that keeps what the trainer emits, for assertions."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def emit(self, type: str, data: dict) -> None:
        self.events.append((type, dict(data)))

    def of(self, type: str) -> list[dict]:
        return [d for t, d in self.events if t == type]

    def warnings(self) -> list[str]:
        return [d["message"] for d in self.of("log") if d["level"] == "warning"]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def classification_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sentiment.jsonl"
    rows = [json.loads(line) for line in DEMO_DATA.read_text().splitlines()[:120]]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="session")
def sft_data(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "sft.jsonl"
    rows = [
        {"prompt": f"Question: what is {a} plus {b}?\nAnswer:", "completion": f" {a + b}"}
        for a in range(6)
        for b in range(6)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def tiny_config(tiny_model, classification_data, tmp_path):
    """A fast classification config on the tiny model; returns overrides → TrainConfig."""
    from engine import config as config_io

    def make(*overrides: str):
        base = [
            f"model={tiny_model}",
            f"dataset={classification_data}",
            "task=classification",
            "label_words=[' terrible', ' great']",
            f"output_dir={tmp_path / 'run'}",
            "steps=6",
            "batch_size=2",
            "max_seq_len=48",
            "eval_every=3",
            "eval_rows=16",
            "checkpoint_every=3",
            "threads=1",
            "optimizer.q=2",
            "optimizer.lr=0.05",
            "lora.rank=4",
        ]
        return config_io.load(None, base + list(overrides))

    return make
