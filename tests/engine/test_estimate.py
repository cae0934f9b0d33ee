"""The memory estimate's task-dependent parts: SFT logits, the evaluation pass, the trainer's inputs."""

from __future__ import annotations

import dataclasses

import pytest

from engine.api import config as config_io
from engine.api.estimate import Shape, estimate, forward_bytes, suggest

SMOLLM2 = Shape(hidden=576, intermediate=1536, layers=30, heads=9, kv_heads=3, head_dim=64,
                vocab=49152, tied_embeddings=True)


def settings(*overrides: str):
    return config_io.load(None, ["model=m", "dataset=d", "max_seq_len=64", *overrides])


def test_sft_logits_grow_with_the_scored_columns_and_are_capped_by_the_row_length():
    sft = settings("task=sft")
    short, longer = estimate(SMOLLM2, sft, scored_tokens=8), estimate(SMOLLM2, sft, scored_tokens=40)
    unknown = estimate(SMOLLM2, sft)
    assert short.total_bytes < longer.total_bytes < unknown.total_bytes
    assert estimate(SMOLLM2, sft, scored_tokens=500).total_bytes == unknown.total_bytes
    # Three float32 (rows, columns, vocab) tensors: 32 rows (prge dual q=4 b=4), 41 columns.
    rows = 32
    assert longer.activations_bytes - forward_bytes(SMOLLM2, rows, settings(), 4) == \
        3 * rows * 41 * SMOLLM2.vocab * 4 - rows * SMOLLM2.vocab * 8
    assert estimate(SMOLLM2, settings()).total_bytes < short.total_bytes


def test_the_evaluation_pass_sets_the_activations_when_it_is_the_widest():
    narrow = settings("optimizer.name=mezo", "batch_size=1")
    assert estimate(SMOLLM2, narrow).activations_bytes == forward_bytes(SMOLLM2, 16, narrow, 4)
    assert estimate(SMOLLM2, narrow, eval_rows=1).activations_bytes == forward_bytes(SMOLLM2, 1, narrow, 4)
    wide = settings("optimizer.q=16", "batch_size=1")
    assert estimate(SMOLLM2, wide).activations_bytes == forward_bytes(SMOLLM2, 32, wide, 4)


def test_suggestions_for_sft_keep_the_scored_columns():
    sft = settings("task=sft", "optimizer.q=8")
    budget = estimate(SMOLLM2, dataclasses.replace(sft, batch_size=1), scored_tokens=20).total_bytes
    options = suggest(SMOLLM2, sft, budget, scored_tokens=20)
    assert options and "batch_size=1" in options
    assert suggest(SMOLLM2, sft, budget) != options  # unknown lengths cost more, so fewer fit


@pytest.fixture
def wide_vocab_model(tmp_path_factory):
    from conftest import make_tiny_llama

    # A large vocabulary makes the logits visible next to the rest of the tiny model.
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "wide-vocab", vocab_size=32768)


def test_trainer_estimates_the_task_it_detected_and_the_data_completions(wide_vocab_model, sft_data,
                                                                         tmp_path):
    from engine.train.events import EventBus
    from engine.train.trainer import Trainer

    cfg = config_io.load(None, [f"model={wide_vocab_model}", f"dataset={sft_data}", "task=auto",
                                f"output_dir={tmp_path / 'run'}", "max_seq_len=48", "batch_size=2",
                                "optimizer.q=2", "threads=1"])
    trainer = Trainer(cfg, EventBus())
    try:
        trainer.setup(resume=False)
    finally:
        trainer.cleanup()
    shape = Shape.from_config(trainer.model.config.to_dict())
    sft = dataclasses.replace(cfg, task="sft")
    made = trainer.memory_estimate.total_bytes
    assert estimate(shape, cfg).total_bytes < made < estimate(shape, sft).total_bytes
    completions = [e.completion for e in trainer.train_data.examples + trainer.eval_data.examples]
    longest = max(len(trainer.tokenizer.encode(c, add_special_tokens=False)) for c in completions)
    assert made == estimate(shape, sft, scored_tokens=longest + 1).total_bytes  # + EOS


def test_int8_base_trains_with_a_float32_adapter_and_a_smaller_estimate(tiny_config):
    """dtype=int8: the projections hold int8 weights (torchao), the run trains and writes its
    adapter, θ stays float32, and the estimate counts one byte per projection weight."""
    import torch
    from conftest import train

    from engine.api import estimate as est

    cfg = tiny_config("dtype=int8", "steps=3", "eval_every=0")
    result, recorder, trainer = train(cfg)
    q_proj = trainer.model.model.layers[0].self_attn.q_proj.base.weight
    assert "Int8" in type(q_proj).__name__
    assert trainer.optimizer.theta.dtype == torch.float32
    assert result.status == "completed" and (result.adapter_dir / "adapter_model.safetensors").exists()
    assert all(torch.isfinite(torch.tensor(m["loss"])) for m in recorder.of("metrics"))
    assert any("int8 base:" in line["message"] for line in recorder.of("log"))
    shape = est.Shape.from_config(trainer.model.config.to_dict())
    int8 = est.estimate(shape, cfg, "int8").weights_bytes
    fp32 = est.estimate(shape, cfg, "float32").weights_bytes
    linear = shape.linear_parameters()
    assert int8 < fp32 and fp32 - int8 >= 3 * linear - 4 * linear // 64


# Small models of the two families the benchmarks measure (engine/model/tiny.py's SHAPES): a
# Llama with its head tied or not, and a Gemma 3 (scaled embedding, q/k norms, sliding layers).
FAMILIES = {
    "llama tied": ("tiny", {}),
    "llama untied": ("tiny", {"tie_word_embeddings": False}),
    "gemma 3": ("gemma-3-270m", {"vocab_size": 1000, "hidden_size": 64, "intermediate_size": 128,
                                 "num_hidden_layers": 2, "num_attention_heads": 2,
                                 "head_dim": 32, "query_pre_attn_scalar": 32,
                                 "layer_types": ["sliding_attention", "full_attention"]}),
}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8"])
def test_estimated_weights_are_the_bytes_the_loaded_base_holds(family, dtype):
    """Shape.weights_bytes against the tensors of the base as the trainer holds it: int8 keeps
    the projections, the embedding and the head (one table when tied) in one byte per weight
    and a float32 scale per row, the norms in float32."""
    import torch

    from engine.bench.memory import weights_bytes
    from engine.model.loading import quantize_int8
    from engine.model.tiny import random_model

    shape_name, overrides = FAMILIES[family]
    model = random_model(shape_name, 1000, torch.bfloat16 if dtype == "bfloat16" else torch.float32,
                         **overrides)
    if dtype == "int8":
        quantize_int8(model)
    predicted = Shape.from_config(model.config.to_dict()).weights_bytes(dtype)
    # Left out by the shape: buffers (rotary frequencies) and Gemma's two extra norms per layer
    # and its q/k norms, 1.2 % of this 64-wide model's int8 bytes (0.01 % of Gemma-3-270M's).
    assert predicted == pytest.approx(weights_bytes(model), rel=0.02)


# In a fresh process: RSS is the whole process's. The 30 MiB block freed first raises glibc's
# mmap threshold as a tokenizer load does, so the float weights below it live on the heap, whose
# freed pages stay resident until they are trimmed.
INT8_RESIDENT = """
import json, torch
import torchao.quantization
from engine.bench.memory import weights_bytes
from engine.model import memory
from engine.model.loading import quantize_int8
from engine.model.tiny import random_model
small = dict(num_hidden_layers=1, hidden_size=64, intermediate_size=128, vocab_size=512,
             head_dim=16, num_attention_heads=2, query_pre_attn_scalar=16)
random_model("gemma-3-270m", 512, torch.float32, **small)  # imports the model code
torch.empty(30 * 2**20, dtype=torch.uint8)
before = memory.rss_bytes()
model = random_model("gemma-3-270m", 8192, torch.float32, vocab_size=8192)
quantize_int8(model)
print(json.dumps([memory.rss_bytes() - before, weights_bytes(model)]))
"""


def test_int8_base_leaves_only_its_int8_weights_resident():
    """The float weights quantize_int8 replaces are handed back to the system: the process
    grows by the int8 weights, not by the float32 model (Gemma-3-270M's shape with an 8192-token
    vocabulary: 101 MiB of int8 weights; before the fix the process kept 511 MiB)."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", INT8_RESIDENT], capture_output=True, text=True,
                          timeout=300, check=True)
    grown, weights = json.loads(done.stdout.strip().splitlines()[-1])
    assert weights > 90 * 2**20
    assert grown < weights + 48 * 2**20, f"{grown / 2**20:.0f} MiB resident for {weights / 2**20:.0f} MiB"


@pytest.mark.parametrize("family", FAMILIES)
def test_int8_base_computes_its_dequantised_weights(family):
    """quantize_int8's projections, embedding and head give the logits and the input gradients
    of the float model that holds their dequantised values (so no float copy is needed)."""
    import torch

    from engine.model.loading import Int8Embedding, Int8Head, quantize_int8
    from engine.model.tiny import random_model

    shape_name, overrides = FAMILIES[family]
    quantized = random_model(shape_name, 1000, torch.float32, **overrides)
    reference = random_model(shape_name, 1000, torch.float32, **overrides)
    quantize_int8(quantized)
    assert isinstance(quantized.get_input_embeddings(), Int8Embedding)
    assert isinstance(quantized.get_output_embeddings(), Int8Head)
    tied = overrides.get("tie_word_embeddings", True)
    assert (quantized.get_output_embeddings().weight is quantized.get_input_embeddings().weight) == tied
    float_weights = {name: p.dequantize() if hasattr(p, "qdata") else p
                     for name, p in quantized.named_parameters(remove_duplicate=False)}
    with torch.no_grad():
        for name, parameter in reference.named_parameters(remove_duplicate=False):
            parameter.copy_(float_weights[name])
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    grads = []
    for model in (quantized, reference):
        embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
        logits = model(inputs_embeds=embeds, use_cache=False).logits
        logits.square().mean().backward()
        grads.append((logits.detach(), embeds.grad))
    (q_logits, q_grad), (f_logits, f_grad) = grads
    torch.testing.assert_close(q_logits, f_logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(q_grad, f_grad, rtol=1e-4, atol=1e-6)


def test_each_worker_is_estimated_for_its_share_of_the_step():
    """Every worker holds the runtime and the model; it evaluates the copies of its directions
    on its rows only, so the activations and the adapter copies split, the rest repeats."""
    from engine.api.estimate import describe_workers, per_worker

    def alone(q, b):
        return estimate(SMOLLM2, settings(f"optimizer.q={q}", f"batch_size={b}"))

    assert per_worker(SMOLLM2, settings("optimizer.q=4", "batch_size=4")) == [alone(4, 4)]
    assert per_worker(SMOLLM2, settings("optimizer.q=4", "batch_size=4", "workers=2")) == [alone(2, 4)] * 2
    # q = 1: the two workers evaluate direction 0's ± copies on 2 rows each.
    split = per_worker(SMOLLM2, settings("optimizer.q=1", "batch_size=4", "workers=2"))
    assert split == [alone(1, 2)] * 2
    # … whose 4 rows are narrower than the 16-row evaluation batch, the widest pass either way.
    assert split[0].total_bytes == alone(1, 4).total_bytes
    halves = per_worker(SMOLLM2, settings("optimizer.q=4", "batch_size=4", "workers=2"))[0]
    assert halves.weights_bytes == alone(4, 4).weights_bytes
    assert halves.activations_bytes < alone(4, 4).activations_bytes  # 16 rows, not 32
    assert halves.adapter_bytes == alone(4, 4).adapter_bytes * 6 // 10  # 4 + 2 copies, not 8 + 2
    # 3 workers, 2 directions × 3 rows: worker 0 has direction 0 on 3 rows, workers 1 and 2
    # direction 1 on 1 and 2 rows.
    assert per_worker(SMOLLM2, settings("optimizer.q=2", "batch_size=3", "workers=3")) == \
        [alone(1, 3), alone(1, 1), alone(1, 2)]
    gib = lambda e: f"{e.total_bytes / 2**30:.2f} GiB"
    assert describe_workers([alone(4, 4)]) == alone(4, 4).describe()
    three = [alone(1, 3), alone(1, 1), alone(1, 2)]
    total = sum(e.total_bytes for e in three) / 2**30
    assert describe_workers(three) == (f"{alone(1, 3).describe()} per worker; 3 workers, each with "
                                       f"its own copy of the model: {total:.2f} GiB in total")
    assert gib(alone(1, 3)) in describe_workers(three)


@pytest.mark.parametrize("family", ["llama untied", "gemma 3"])
def test_estimated_saved_activations_are_what_autograd_saves(family):
    """Shape.saved_per_token against the bytes autograd saves per token in one more block, for
    first-order LoRA on a frozen base; the same per token at two lengths (flash attention keeps
    no (L, L) scores)."""
    import torch

    from engine.api.config import LoraConfig
    from engine.model.tiny import random_model
    from engine.train import lora

    shape_name, overrides = FAMILIES[family]
    widths = {"hidden_size": 256, "intermediate_size": 512}

    def saved_bytes(layers: int, length: int) -> int:
        extra = {"layer_types": ["full_attention"] * layers} if "layer_types" in overrides else {}
        model = random_model(shape_name, 1000, torch.float32,
                             **{**overrides, **widths, **extra, "num_hidden_layers": layers})
        frozen = {p.untyped_storage().data_ptr() for p in (*model.parameters(), *model.buffers())}
        adapter = lora.inject(model, LoraConfig(), 1, seed=0)
        adapter.store.copies.requires_grad_(True)
        frozen |= {t.untyped_storage().data_ptr() for t in (adapter.store.copies,
                                                           *adapter.frozen().values())}
        seen: dict[int, int] = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in frozen:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        ids = torch.randint(0, 1000, (1, length))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(input_ids=ids, attention_mask=torch.ones_like(ids), logits_to_keep=1, use_cache=False)
        return sum(seen.values())

    shape = Shape.from_config(random_model(shape_name, 1000, torch.float32,
                                           **{**overrides, **widths}).config.to_dict())
    for length in (32, 128):
        per_token = (saved_bytes(2, length) - saved_bytes(1, length)) / length
        # Left out: the LoRA down-projections' outputs, the norms' 1/rms and the attention's
        # log-sum-exp (2-3.5 % at these 256-wide blocks, 0.3 % at Llama-3.2-1B's widths).
        assert per_token == pytest.approx(shape.saved_per_token(4), rel=0.05)
