"""Random-init models: the tiny test Llama written to a folder, and public models' shapes in memory.

The tiny model (2 layers, 64 wide, 512-token byte-level BPE) is what the tests and the app's
`--smoke` check use: `python -m engine make-tiny-model DIR [--seed N]`. No network: the tokenizer
is trained here on the bundled demo reviews, the model is built from a config and saved with
save_pretrained. The benchmarks build `SHAPES` in memory (`random_model`): memory and speed
depend on a model's sizes, not on its weights' values, so no download is needed to measure them.
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


# config.json fields that memory and speed depend on (model_type first). The public models' values
# are their own config.json's; the vocabulary stays theirs even where the benchmark's tokenizer
# (SmolLM2's) is smaller: the embedding and the output head are a large part of the memory.
SHAPES: dict[str, dict] = {
    "tiny": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                 tie_word_embeddings=True),
    "llama-3.2-1b": dict(model_type="llama", vocab_size=128256, hidden_size=2048,
                         intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=64, max_position_embeddings=131072,
                         rms_norm_eps=1e-5, tie_word_embeddings=True),
    "gemma-3-270m": dict(model_type="gemma3_text", vocab_size=262144, hidden_size=640,
                         intermediate_size=2048, num_hidden_layers=18, num_attention_heads=4,
                         num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
                         sliding_window=512, max_position_embeddings=32768, rms_norm_eps=1e-6,
                         tie_word_embeddings=True),
}


def shape_config(shape: str, tokenizer_vocab: int, **overrides):
    """The transformers config of `shape`, its vocabulary the tokenizer's where the shape names
    none (tiny); `overrides` are config fields (a smaller model of the same family: the tests)."""
    from transformers import AutoConfig

    values = {"vocab_size": tokenizer_vocab, **SHAPES[shape], **overrides}
    return AutoConfig.for_model(values.pop("model_type"), **values)


def random_model(shape: str, tokenizer_vocab: int, dtype, seed: int = 0, **overrides):
    """A random-init causal LM of `shape` (see shape_config), built directly in `dtype`."""
    import torch
    from transformers import AutoModelForCausalLM

    from engine.model.loading import contiguous_head_input

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(shape_config(shape, tokenizer_vocab, **overrides),
                                             dtype=dtype).eval()
    contiguous_head_input(model)  # as engine.model.loading.load does
    return model


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
    values = {key: value for key, value in SHAPES["tiny"].items() if key != "model_type"}
    values.update(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
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
