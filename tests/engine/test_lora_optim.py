"""The batched LoRA forward and the optimisers' agreement (P-RGE dual/single vs MeZO)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine.api import config as config_io
from engine.api.config import LoraConfig, OptimizerConfig
from engine.data.dataset import load_dataset
from engine.train import lora
from engine.train.objective import Objective
from engine.train.optim import build, copies_needed


def _model(tiny_model, variant="lora-fa", copies=4, seed=0):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    adapter = lora.inject(model, LoraConfig(variant=variant, rank=4), copies, seed)
    return model, adapter


@pytest.mark.parametrize("variant", ["lora-fa", "lora"])
def test_batched_forward_equals_each_copy_alone(tiny_model, variant):
    torch.manual_seed(1)
    model, adapter = _model(tiny_model, variant, copies=4)
    adapter.store.copies.normal_(0, 0.5)
    ids = torch.randint(0, 400, (3, 11))
    with torch.inference_mode():
        with lora.active_copies(adapter, 4):
            batched = model(input_ids=ids.repeat(4, 1)).logits.view(4, 3, 11, -1)
        for copy_index in range(4):
            # Each copy alone: a fresh one-copy adapter (same seed, so the same frozen A)
            # holding only that copy's trained values.
            single, single_adapter = _model(tiny_model, variant, copies=1)
            single_adapter.store.copies.copy_(adapter.store.copies[copy_index:copy_index + 1])
            with lora.active_copies(single_adapter, 1):
                alone = single(input_ids=ids).logits
            torch.testing.assert_close(batched[copy_index], alone, atol=1e-6, rtol=1e-5)
    # The copies really differ, so the check above compared distinct adapters.
    assert (batched[0] - batched[1]).abs().max() > 1e-3


def _step(tiny_model, classification_data, name, mode, q=3, step=7):
    cfg = OptimizerConfig(name=name, q=q, mode=mode, eps=1e-2, lr=1e-1)
    model, adapter = _model(tiny_model, copies=copies_needed(cfg))
    optimizer = build(cfg, adapter.store, seed=123)
    optimizer.theta.normal_(0, 0.05, generator=torch.Generator().manual_seed(5))
    optimizer.broadcast()
    losses = _review_losses(tiny_model, classification_data, model, adapter)
    with torch.inference_mode():
        result = optimizer.step(losses, step)
    return result, optimizer, adapter.store


def _review_losses(tiny_model, classification_data, model, adapter):
    """losses(n): the first four reviews scored on the model's first n adapter copies."""
    data = load_dataset(classification_data, label_words=[" terrible", " great"])
    objective = Objective(_tokenizer(tiny_model), "classification", 48, data.label_words)
    batch = objective.encode(data.examples[:4])

    def losses(n):
        with lora.active_copies(adapter, n):
            return objective.losses(model, batch, n)

    return losses


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_dual_single_and_mezo_agree(tiny_model, classification_data):
    dual, dual_opt, dual_store = _step(tiny_model, classification_data, "prge", "dual")
    single, single_opt, _ = _step(tiny_model, classification_data, "prge", "single")
    mezo, mezo_opt, _ = _step(tiny_model, classification_data, "mezo", "dual")
    assert len(dual.projected_grads) == 3
    assert any(abs(g) > 1e-3 for g in dual.projected_grads)
    # Losses come from differently batched matmuls: agreement to float32 rounding, amplified by
    # the 1/(2ε) of the finite difference.
    torch.testing.assert_close(torch.tensor(single.projected_grads), torch.tensor(dual.projected_grads),
                               atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(torch.tensor(mezo.projected_grads), torch.tensor(dual.projected_grads),
                               atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(single_opt.theta, dual_opt.theta, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(mezo_opt.theta, dual_opt.theta, atol=1e-5, rtol=1e-4)
    assert dual_store.copies.shape[0] == 6
    assert all(torch.equal(dual_store.copies[i], dual_opt.theta) for i in range(6))


@pytest.mark.parametrize("name, mode", [("prge", "dual"), ("prge", "single"), ("mezo", "dual")])
def test_update_follows_the_estimator(tiny_model, name, mode):
    """θ_new − θ_old = −lr/q Σ g_i z_i, g_i = (L+_i − L−_i)/2ε, with z_i drawn from the step's seeds
    (P-RGE reads z back from its copies; MeZO sums as it goes)."""
    cfg = OptimizerConfig(name=name, q=2, mode=mode, eps=1e-2, lr=0.5)
    model, adapter = _model(tiny_model, copies=copies_needed(cfg))
    optimizer = build(cfg, adapter.store, seed=9)
    optimizer.theta.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
    optimizer.broadcast()
    before = optimizer.theta.clone()
    plus, minus = [0.9, 0.4], [0.7, 0.5]
    # The order in which each optimiser asks for losses: dual [+, −] at once, single + then −,
    # MeZO + − per direction.
    served = {"dual": [plus + minus], "single": [plus, minus],
              "mezo": [[plus[0]], [minus[0]], [plus[1]], [minus[1]]]}["mezo" if name == "mezo" else mode]
    calls = iter(served)
    result = optimizer.step(lambda n: torch.tensor(next(calls)), step=4)
    grads = [(p - m) / (2 * 1e-2) for p, m in zip(plus, minus, strict=True)]
    assert result.projected_grads == pytest.approx(grads)
    expected = before.clone()
    for i, g in enumerate(grads):
        expected -= 0.5 * g / 2 * optimizer.direction(4, i)
    # z read back from θ ± εz carries θ's rounding, amplified by 1/ε.
    torch.testing.assert_close(optimizer.theta, expected, atol=1e-5, rtol=1e-4)
    assert (optimizer.theta - before).abs().max() > 1e-2
    assert all(torch.equal(copy, optimizer.theta) for copy in adapter.store.copies)
    # z is a function of (seed, step, direction) only.
    torch.testing.assert_close(optimizer.direction(4, 1).clone(), optimizer.direction(4, 1))
    assert not torch.equal(optimizer.direction(4, 0).clone(), optimizer.direction(5, 0))


def test_siblings_share_one_down_projection(tiny_model):
    """q/k/v and gate/up compute x @ A.T as one GEMM; same output as each layer alone, and no
    activation is kept once the forward is over."""
    torch.manual_seed(1)
    model, adapter = _model(tiny_model, copies=2)
    adapter.store.copies.normal_(0, 0.5)
    shared = {layer.name.rpartition(".")[2]: layer.shared_down for layer in adapter.layers.values()}
    assert shared["q_proj"] is not None and shared["gate_proj"] is not None
    assert shared["o_proj"] is None and shared["down_proj"] is None
    first = next(layer for layer in adapter.layers.values() if layer.name.endswith("q_proj"))
    assert first.shared_down[0].stacked_a.shape[0] == 3 * 4  # q, k, v at rank 4
    ids = torch.randint(0, 400, (3, 9)).repeat(2, 1)
    with torch.inference_mode(), lora.active_copies(adapter, 2):
        fused = model(input_ids=ids).logits
        assert all(layer.shared_down[0]._output is None for layer in adapter.layers.values()
                   if layer.shared_down)
        for layer in adapter.layers.values():
            layer.shared_down = None
        alone = model(input_ids=ids).logits
    torch.testing.assert_close(fused, alone, atol=1e-5, rtol=1e-5)
    assert (fused[0] - fused[3]).abs().max() > 1e-3  # the two copies really differ


def test_perturbation_does_not_touch_the_global_rng(tiny_model, classification_data):
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    _step(tiny_model, classification_data, "prge", "dual")
    torch.testing.assert_close(torch.rand(3), expected)


def test_fo_reduces_loss(tiny_model, classification_data, tiny_config):
    cfg = OptimizerConfig(name="fo", lr=1e-2)
    model, adapter = _model(tiny_model, copies=1)
    optimizer = build(cfg, adapter.store, seed=0)
    data = load_dataset(classification_data, label_words=[" terrible", " great"])
    objective = Objective(_tokenizer(tiny_model), "classification", 48, data.label_words)
    batch = objective.encode(data.examples[:8])
    losses = [optimizer.step(lambda n: objective.losses(model, batch, n), s).loss for s in range(15)]
    assert losses[-1] < losses[0] * 0.9


def test_config_defaults_validate_and_errors_name_the_field(tmp_path):
    from engine.api.errors import UserError

    config_io.validate(config_io.TrainConfig(model="m", dataset="d"))
    cases = {
        "optimizer.q=0": "optimizer.q",
        "optimizer.lr=-1": "optimizer.lr",
        "optimizer.eps=0": "optimizer.eps",
        "optimizer.mode=triple": "optimizer.mode",
        "lora.variant=dora": "lora.variant",
        "batch_size=0": "batch_size",
        "stepz=3": "stepz",
        "optimizer.lrr=3": "optimizer.lrr",
        "steps=abc": "steps",
    }
    for override, field in cases.items():
        with pytest.raises(UserError, match=f'"{field}"'):
            config_io.load(None, ["model=m", "dataset=d", override])
    path = tmp_path / "c.yaml"
    path.write_text("model: m\ndataset: d\noptimizer:\n  q: 8\n")
    cfg = config_io.load(path, ["optimizer.lr=1e-3", "lora.targets=q_proj,v_proj"])
    assert cfg.optimizer.q == 8 and cfg.optimizer.lr == 1e-3
    assert cfg.lora.targets == ["q_proj", "v_proj"]


@pytest.mark.parametrize("top_layers", [0, 1])
def test_shared_prefix_losses_equal_the_tiled_batch(tiny_model, classification_data, top_layers):
    """The model tiling the batch at its first adapted block (one pass over the blocks below it
    for the b distinct rows) gives every copy the loss the fully tiled batch gives it, also with
    left padding (rows of different lengths) and for SFT's many kept columns."""
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    adapter = lora.inject(model, LoraConfig(rank=4, top_layers=top_layers), 4, seed=0)
    adapter.store.copies.normal_(0, 0.5)
    assert adapter.shared_prefix is not None
    adapted_blocks = {name.split(".")[2] for name in adapter.layers}
    assert adapted_blocks == ({"1"} if top_layers == 1 else {"0", "1"})
    data = load_dataset(classification_data, label_words=[" terrible", " great"])
    for task in ("classification", "sft"):
        objective = Objective(_tokenizer(tiny_model), task, 48, data.label_words)
        examples = [dataclasses_replace(e, completion=" fine.") for e in data.examples[:3]]
        batch = objective.encode(examples)
        assert len(set(batch.attention_mask.sum(1).tolist())) > 1  # padded rows
        with torch.inference_mode():
            with lora.active_copies(adapter, 4):
                tiled = objective.losses(model, batch, 4)
            with lora.active_copies(adapter, 4, untiled_input=True):
                shared = objective.losses(model, batch, 4, tile=False)
        torch.testing.assert_close(shared, tiled, atol=1e-6, rtol=1e-5)
        assert tiled.max() - tiled.min() > 1e-3  # the copies really differ
    # One copy with the hook installed: nothing is tiled.
    with torch.inference_mode(), lora.active_copies(adapter, 1):
        assert model(input_ids=batch.input_ids).logits.shape[0] == 3


def dataclasses_replace(example, **changes):
    import dataclasses

    return dataclasses.replace(example, **changes)


def test_top_layers_beyond_the_model_adapt_every_layer(tiny_model):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    adapter = lora.inject(model, LoraConfig(rank=4, top_layers=50), 2, seed=0)
    assert len(adapter.layers) == 2 * 7


def test_one_sided_rademacher_update_follows_the_estimator(tiny_model):
    """One-sided: copy 0 is θ, copies 1..q hold θ + εz_i with Rademacher z; the update is
    −lr/q Σ (L_i − L_0)/ε · z_i, and with loss-std normalisation (L_i − L_0)/σ(L_1..L_q)."""
    for normalize in ("none", "loss-std"):
        cfg = OptimizerConfig(q=3, estimator="one-sided", directions="rademacher", normalize=normalize,
                              eps=1e-2, lr=0.5)
        assert copies_needed(cfg) == 4
        model, adapter = _model(tiny_model, copies=4)
        optimizer = build(cfg, adapter.store, seed=9)
        optimizer.theta.normal_(0, 0.05, generator=torch.Generator().manual_seed(3))
        optimizer.broadcast()
        before = optimizer.theta.clone()
        seen = []

        def losses(n, seen=seen, adapter=adapter):
            seen.append(adapter.store.copies[:n].clone())
            return torch.tensor([0.6, 0.9, 0.4, 0.65])

        result = optimizer.step(losses, step=4)
        assert torch.equal(seen[0][0], before)  # copy 0 is θ itself
        assert set(optimizer.direction(4, 0).unique().tolist()) == {-1.0, 1.0}
        differences = torch.tensor([0.3, -0.2, 0.05], dtype=torch.float64)
        scale = differences.std(unbiased=False) if normalize == "loss-std" else torch.tensor(1e-2)
        expected_grads = (differences / (torch.tensor([0.9, 0.4, 0.65], dtype=torch.float64)
                                         .std(unbiased=False) if normalize == "loss-std" else 1e-2))
        assert result.projected_grads == pytest.approx(expected_grads.tolist(), rel=1e-5)
        assert scale > 0
        expected = before.clone()
        for i, g in enumerate(expected_grads.tolist()):
            expected -= 0.5 * g / 3 * optimizer.direction(4, i)
        torch.testing.assert_close(optimizer.theta, expected, atol=1e-5, rtol=1e-4)
        assert result.loss == pytest.approx(0.6)


def test_momentum_and_schedule(tiny_model):
    from engine.train.optim.schedule import learning_rate

    cfg = OptimizerConfig(q=1, momentum=0.9, lr=0.1, eps=1e-2)
    model, adapter = _model(tiny_model, copies=copies_needed(cfg))
    optimizer = build(cfg, adapter.store, seed=1)
    steps = []
    for step in range(2):
        before = optimizer.theta.clone()
        optimizer.step(lambda n: torch.tensor([1.0, 0.98]), step, lr=0.1)
        steps.append(optimizer.theta - before)
    # g = 1 each step: velocity 0.1·g z_0, then 0.9·that + 0.1·g z_1.
    z0, z1 = optimizer.direction(0, 0).clone(), optimizer.direction(1, 0).clone()
    torch.testing.assert_close(steps[0], -0.1 * 0.1 * 1.0 * z0, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(steps[1], -0.1 * (0.9 * 0.1 * z0 + 0.1 * z1), atol=1e-5, rtol=1e-4)
    assert set(optimizer.state_dict()) == {"theta", "velocity"}
    cosine = OptimizerConfig(lr=1.0, schedule="cosine", warmup_steps=4)
    assert learning_rate(cosine, 0, 0.0) == pytest.approx(0.25)
    assert learning_rate(cosine, 10, 0.5) == pytest.approx(0.5)
    assert learning_rate(cosine, 10, 1.0) == pytest.approx(0.0)
    assert learning_rate(OptimizerConfig(lr=0.3), 99, 0.9) == 0.3


def test_bfloat16_base_keeps_a_float32_adapter_that_small_updates_move(tiny_model, classification_data):
    """On a bfloat16 base (CUDA's default) θ stays float32: an update far below bfloat16's
    resolution at θ (2^-7 at 1.0) still moves it, and the batched forward runs in bfloat16."""
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.bfloat16).eval()
    cfg = OptimizerConfig(q=2, lr=1e-4, eps=1e-2)
    adapter = lora.inject(model, LoraConfig(rank=4), copies_needed(cfg), seed=0)
    optimizer = build(cfg, adapter.store, seed=0)
    assert adapter.store.copies.dtype == torch.float32 and optimizer.theta.dtype == torch.float32
    optimizer.theta.fill_(1.0)
    optimizer.broadcast()
    losses = _review_losses(tiny_model, classification_data, model, adapter)
    with torch.inference_mode():
        result = optimizer.step(losses, 0)
    assert all(abs(g) > 0 for g in result.projected_grads)
    moved = (optimizer.theta - 1.0).abs()
    assert 0 < moved.max() < 2**-8  # below bfloat16's spacing at 1.0, yet θ changed
    assert (moved > 0).float().mean() > 0.9
    assert torch.bfloat16 == model.model.layers[0].self_attn.q_proj.base.weight.dtype
