"""The batched LoRA forward and the optimisers' agreement (P-RGE dual/single vs MeZO)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from engine import config as config_io
from engine import lora
from engine.config import LoraConfig, OptimizerConfig
from engine.data import load_dataset
from engine.objective import Objective
from engine.optim import build, copies_needed


def _model(tiny_model, variant="lora-fa", copies=4, seed=0):
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32).eval()
    layers = lora.inject(model, LoraConfig(variant=variant, rank=4), copies, seed)
    return model, layers


@pytest.mark.parametrize("variant", ["lora-fa", "lora"])
def test_batched_forward_equals_each_copy_alone(tiny_model, variant):
    torch.manual_seed(1)
    model, layers = _model(tiny_model, variant, copies=4)
    for tensor in lora.trained_tensors(layers).values():
        tensor.data.normal_(0, 0.5)
    ids = torch.randint(0, 400, (3, 11))
    with torch.inference_mode():
        with lora.active_copies(layers, 4):
            batched = model(input_ids=ids.repeat(4, 1)).logits.view(4, 3, 11, -1)
        for copy_index in range(4):
            single = copy.deepcopy(model)
            single_layers = {n: single.get_submodule(n) for n in layers}
            for layer in single_layers.values():
                layer.lora_B.data = layer.lora_B.data[copy_index:copy_index + 1].clone()
                if layer.train_a:
                    layer.lora_A.data = layer.lora_A.data[copy_index:copy_index + 1].clone()
            with lora.active_copies(single_layers, 1):
                alone = single(input_ids=ids).logits
            torch.testing.assert_close(batched[copy_index], alone, atol=1e-6, rtol=1e-5)
    # The copies really differ, so the check above compared distinct adapters.
    assert (batched[0] - batched[1]).abs().max() > 1e-3


def _step(tiny_model, classification_data, name, mode, q=3, step=7):
    cfg = OptimizerConfig(name=name, q=q, mode=mode, eps=1e-2, lr=1e-1)
    model, layers = _model(tiny_model, copies=copies_needed(cfg))
    tensors = lora.trained_tensors(layers)
    optimizer = build(cfg, tensors, seed=123)
    generator = torch.Generator().manual_seed(5)
    for theta in optimizer.theta.values():
        theta.normal_(0, 0.05, generator=generator)
    optimizer.broadcast()
    data = load_dataset(classification_data, label_words=[" terrible", " great"])
    objective = Objective(_tokenizer(tiny_model), "classification", 48, data.label_words)
    batch = objective.encode(data.examples[:4])

    def losses(n):
        with lora.active_copies(layers, n):
            return objective.losses(model, batch, n)

    with torch.inference_mode():
        result = optimizer.step(losses, step)
    return result, optimizer, tensors


def _tokenizer(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def test_dual_single_and_mezo_agree(tiny_model, classification_data):
    dual, dual_opt, dual_tensors = _step(tiny_model, classification_data, "prge", "dual")
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
    for name, theta in dual_opt.theta.items():
        torch.testing.assert_close(single_opt.theta[name], theta, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(mezo_opt.theta[name], theta, atol=1e-5, rtol=1e-4)
    for name, tensor in dual_tensors.items():
        assert tensor.shape[0] == 6
        assert all(torch.equal(tensor[i], dual_opt.theta[name]) for i in range(6))


def test_update_follows_the_estimator(tiny_model, classification_data):
    """θ_new − θ_old = −lr/q Σ g_i z_i with z regenerated from the step's seeds."""
    cfg = OptimizerConfig(name="prge", q=2, mode="dual", eps=1e-2, lr=0.5)
    model, layers = _model(tiny_model, copies=4)
    optimizer = build(cfg, lora.trained_tensors(layers), seed=9)
    before = {k: v.clone() for k, v in optimizer.theta.items()}
    grads = [0.3, -1.2]
    optimizer.apply_projected_grads(4, grads)
    expected = {k: v.clone() for k, v in before.items()}
    for i, g in enumerate(grads):
        for name, z in optimizer.directions(4, i):
            expected[name] -= 0.5 * g / 2 * z
    for name in before:
        torch.testing.assert_close(optimizer.theta[name], expected[name])
    assert any((optimizer.theta[n] - before[n]).abs().max() > 0 for n in before)


def test_perturbation_does_not_touch_the_global_rng(tiny_model, classification_data):
    torch.manual_seed(42)
    expected = torch.rand(3)
    torch.manual_seed(42)
    _step(tiny_model, classification_data, "prge", "dual")
    torch.testing.assert_close(torch.rand(3), expected)


def test_fo_reduces_loss(tiny_model, classification_data, tiny_config):
    cfg = OptimizerConfig(name="fo", lr=1e-2)
    model, layers = _model(tiny_model, copies=1)
    optimizer = build(cfg, lora.trained_tensors(layers), seed=0)
    data = load_dataset(classification_data, label_words=[" terrible", " great"])
    objective = Objective(_tokenizer(tiny_model), "classification", 48, data.label_words)
    batch = objective.encode(data.examples[:8])
    losses = [optimizer.step(lambda n: objective.losses(model, batch, n), s).loss for s in range(15)]
    assert losses[-1] < losses[0] * 0.9


def test_config_defaults_validate_and_errors_name_the_field(tmp_path):
    from engine.errors import UserError

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
