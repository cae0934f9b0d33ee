"""A tiny random-init Llama (2 layers, 64 wide, 512-token byte-level BPE) written to a folder.

One way to make it for the tests and the app's `--smoke` check:
`python -m engine make-tiny-model DIR [--seed N]`. No network: the tokenizer is trained here on
the bundled demo reviews, the model is built from a config and saved with save_pretrained.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEMO_DATA = Path(__file__).resolve().parents[2] / "resources" / "datasets" / "reviews.jsonl"

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer(folder: Path):
    """A 512-token byte-level BPE trained on the demo reviews, saved to `folder`."""
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
    """The tiny model and its tokenizer in `folder`; `overrides` are LlamaConfig fields."""
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine make-tiny-model", description=__doc__)
    parser.add_argument("folder", type=Path, help="where to write the model (created)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation")
    args = parser.parse_args(argv)
    print(make_tiny_llama(args.folder, seed=args.seed))
    return 0
