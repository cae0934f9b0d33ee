"""The executorch backend: P-RGE whose forward passes run in ExecuTorch's runtime (a lowered .pte).

Lowering even the tiny model takes a while on 2 cores, so each test process lowers a program once:
runs copy it from a module cache into their run folder, where the trainer finds it under its
key (the same reuse a resumed run relies on), and a test whose config changes the key lowers
its own.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from conftest import train

from engine.api import config as config_io
from engine.api.errors import UserError
from engine.train.executorch.program import FOLDER

# Both backends compute in float32 and differ only in the order of additions (XNNPACK's GEMM
# tiling against MKL's). Measured on this test's runs (4 steps, threads 1 and 2, 4 runs each;
# every run gave the same numbers): losses differ by at most 9.1e-7 relative, θ by at most
# 8.9e-6 · max|θ|. Real differences are far larger: one step fewer moves θ by 0.27 · max|θ|,
# another seed by 1.8 · max|θ|, another batch or direction moves losses by 1e-2 and more.
# The bounds leave a hundredfold (losses) and elevenfold (θ) margin over the measured spread.
# θ starts at zero, so its bound is absolute, on θ's scale: an elementwise relative bound
# judges the entries that barely moved by their own size, where the same rounding reads as
# 1e-2 (7 of 4096 entries here, 12 on another machine).
LOSS_RTOL = 1e-4
THETA_ATOL_OF_SCALE = 1e-4


@pytest.fixture(scope="module")
def program_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("executorch-programs")


def _train_cached(cfg, cache: Path, resume: bool = False):
    """train, with the run folder seeded from (and the cache filled from) lowered programs."""
    folder = Path(cfg.output_dir) / FOLDER
    if cfg.backend == "executorch" and not resume:
        shutil.copytree(cache, folder, dirs_exist_ok=True)
    outcome = train(cfg, resume=resume)
    if cfg.backend == "executorch":
        shutil.copytree(folder, cache, dirs_exist_ok=True)
    return outcome


def _losses(recorder) -> torch.Tensor:
    return torch.tensor([m["loss"] for m in recorder.of("metrics")])


def _both(tiny_config, cache, *overrides):
    """(pytorch run, executorch run) of the same config, each as (result, recorder, trainer)."""
    program_config = tiny_config(*overrides, "backend=executorch")
    eager_dir = Path(program_config.output_dir).with_name("eager")
    eager = _train_cached(tiny_config(*overrides, f"output_dir={eager_dir}"), cache)
    return eager, _train_cached(program_config, cache)


def test_classification_losses_follow_pytorch(tiny_config, program_cache):
    (_, eager_events, eager), (result, events, trainer) = _both(
        tiny_config, program_cache, "steps=4", "eval_every=0")
    assert any("ExecuTorch training program" in m["message"] for m in events.of("log"))
    assert len(list((Path(trainer.output_dir) / FOLDER).glob("train-*.pte"))) == 1
    torch.testing.assert_close(_losses(events), _losses(eager_events), rtol=LOSS_RTOL, atol=0)
    assert _losses(events).unique().numel() == 4  # the steps moved: not one loss four times
    scale = eager.optimizer.theta.abs().max().item()
    torch.testing.assert_close(trainer.optimizer.theta, eager.optimizer.theta, rtol=0,
                               atol=THETA_ATOL_OF_SCALE * scale)
    assert trainer.optimizer.theta.abs().max() > 1e-3
    # Same run folder, events and adapter as the PyTorch backend.
    assert {t for t, _ in events.events} == {t for t, _ in eager_events.events}
    assert result.status == "completed" and (result.adapter_dir / "adapter_model.safetensors").exists()


def test_adapter_loads_in_peft(tiny_config, tiny_model, program_cache):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    result, _, trainer = _train_cached(tiny_config("steps=3", "eval_every=0", "backend=executorch"),
                                       program_cache)
    base = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(result.adapter_dir)).eval()
    batch = trainer.objective.encode(trainer.eval_data.examples[:5])
    with torch.inference_mode():
        ours = trainer.objective.logits(trainer.model, batch, 1)
        theirs = trainer.objective.logits(peft_model, batch, 1)
        with peft_model.disable_adapter():
            plain = trainer.objective.logits(peft_model, batch, 1)
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=1e-5)
    assert (plain - ours).abs().max() > 1e-5


def test_resume_reuses_the_program_and_replays_the_run(tiny_config, program_cache, tmp_path):
    _, straight, _ = _train_cached(tiny_config("steps=4", "eval_every=0", "checkpoint_every=2",
                                               "backend=executorch", f"output_dir={tmp_path / 'straight'}"),
                                   program_cache)
    cfg = tiny_config("steps=2", "eval_every=0", "checkpoint_every=2", "backend=executorch")
    _train_cached(cfg, program_cache)
    (program,) = (Path(cfg.output_dir) / FOLDER).glob("train-*.pte")
    written = program.stat().st_mtime_ns
    _, resumed, _ = _train_cached(tiny_config("steps=4", "eval_every=0", "checkpoint_every=2",
                                              "backend=executorch"), program_cache, resume=True)
    assert any("reusing" in m["message"] for m in resumed.of("log"))
    assert program.stat().st_mtime_ns == written
    torch.testing.assert_close(_losses(resumed), _losses(straight)[2:], rtol=1e-6, atol=0)


@pytest.mark.slow  # a second lowering (4 min on 2 loaded cores); measured 8.5e-7 relative
def test_sft_losses_follow_pytorch(tiny_config, sft_data, program_cache):
    (_, eager_events, _), (_, events, _) = _both(
        tiny_config, program_cache, f"dataset={sft_data}", "task=sft", "label_words=[]",
        "steps=3", "eval_every=0")
    torch.testing.assert_close(_losses(events), _losses(eager_events), rtol=LOSS_RTOL, atol=0)


@pytest.mark.parametrize("setting, named", [
    ("optimizer.name=fo", "prge or mezo"),
    ("device=cuda", "float32 on the CPU"),
    ("dtype=bfloat16", "float32 on the CPU"),
])
def test_config_refuses_what_the_program_cannot_run(tiny_config, setting, named):
    with pytest.raises(UserError, match=named) as raised:
        tiny_config("backend=executorch", setting)
    assert '"backend"' in str(raised.value)


def test_backend_is_checked_by_name():
    with pytest.raises(UserError, match="allowed: pytorch, executorch"):
        config_io.load(None, ["model=m", "dataset=d", "backend=tflite"])
