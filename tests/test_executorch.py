"""ExecuTorch export: a real trained run lowered with XNNPACK, run in ExecuTorch's runtime.

One export of the tiny model (about 40 s of lowering on 2 cores) serves the module; the
comparisons load the .pte in `executorch.runtime` and the adapter in peft, as a user would.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, Recorder
from lora_runs import make_random_adapter

from engine import config as config_io
from engine.chat import Settings
from engine.cli import run_tool
from engine.errors import UserError
from engine.events import EventBus
from engine.export import executorch as et
from engine.protocol import decode
from engine.trainer import Trainer


def _train_run(model: Path, data: Path, out: Path) -> Path:
    cfg = config_io.load(None, [
        f"model={model}", f"dataset={data}", "task=classification",
        "label_words=[' terrible', ' great']", f"output_dir={out}", "steps=3", "batch_size=2",
        "max_seq_len=48", "eval_every=3", "eval_rows=8", "threads=1", "optimizer.q=2",
        "optimizer.lr=0.05", "lora.rank=4"])
    trainer = Trainer(cfg, EventBus([Recorder()]))
    try:
        trainer.setup(resume=False)
        assert trainer.train().status == "completed"
    finally:
        trainer.cleanup()
    return out


@pytest.fixture(scope="module")
def trained_run(tiny_model, classification_data, tmp_path_factory) -> Path:
    return _train_run(tiny_model, classification_data, tmp_path_factory.mktemp("et") / "run")


@pytest.fixture(scope="module")
def exported(trained_run) -> Path:
    started = time.perf_counter()
    assert run_tool("export", [str(trained_run), "--format", "executorch"]) == 0
    print(f"\ntiny model ExecuTorch export: {time.perf_counter() - started:.1f} s")
    return trained_run / "export" / "executorch"


def _eager(run_dir: Path, adapter_dir: Path | None = None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = config_io.load(run_dir / "config.yaml")
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter_dir or run_dir / "adapter")).eval()


def _program_logits(pte: Path, ids: list[int]) -> np.ndarray:
    from executorch.runtime import Runtime

    method = Runtime.get().load_program(str(pte)).load_method("forward")
    return method.execute([torch.tensor([ids])])[0][0].numpy()


def test_export_writes_a_verified_program_with_its_metadata(exported, trained_run):
    assert sorted(p.name for p in exported.iterdir() if p.name.startswith(("model", "meta", "token"))) \
        == ["metadata.json", "model.pte", "tokenizer.json", "tokenizer_config.json"]
    assert not list(exported.glob("*.partial"))
    meta = json.loads((exported / "metadata.json").read_text())
    report = meta["verification"]
    print("\ntiny model verification:", report, meta["stage_seconds"])
    assert report["prompts"] == 4 and report["positions"] > 40
    assert report["max_abs_diff"] < 1e-4  # measured 6.4e-7: float32 on both sides
    assert report["program_max_abs_diff"] < 1e-4
    assert report["top1_agreement"] == 1.0 and report["last_top1_agreement"] == 1.0
    assert report["adapter_max_abs_change"] > 0.05  # the trained adapter shows in the logits
    assert report["tolerance"] == {"program_max_abs_diff": 1e-2, "program_min_top1_agreement": 0.98,
                                   "max_abs_diff": 1e-2, "min_top1_agreement": 0.98}
    assert list(meta["stage_seconds"]) == list(et.STAGES)
    assert meta["label_words"] == [" terrible", " great"] and meta["task"] == "classification"
    assert meta["max_seq_len"] == 256  # --max-seq-len 512 capped at the model's context
    tokenizer_config = json.loads((exported / "tokenizer_config.json").read_text())
    vocab = json.loads((exported / "tokenizer.json").read_text())["added_tokens"]
    im_end = next(t["id"] for t in vocab if t["content"] == "<|im_end|>")
    assert meta["stop_token_ids"] == [im_end] and tokenizer_config["eos_token"] == "<|im_end|>"
    assert "<|im_start|>" in meta["chat_template"]
    adapter = (trained_run / "adapter" / "adapter_model.safetensors").read_bytes()
    assert meta["adapter_sha256"] == hashlib.sha256(adapter).hexdigest()
    weights = (Path(meta["base_model"]) / "model.safetensors").read_bytes()
    assert meta["base_model_sha256"] == {"model.safetensors": hashlib.sha256(weights).hexdigest()}
    assert meta["program_sha256"] == hashlib.sha256((exported / "model.pte").read_bytes()).hexdigest()
    assert meta["export"]["quantize"] == "none" and meta["export"]["executorch_version"]


def test_program_gives_eager_logits_with_the_adapter_at_any_length(exported, trained_run):
    model = _eager(trained_run)
    generator = torch.Generator().manual_seed(0)
    for length in (1, 7, 100):  # the sequence length is dynamic
        ids = torch.randint(3, 500, (length,), generator=generator).tolist()
        got = _program_logits(exported / "model.pte", ids)
        with torch.no_grad():
            adapted = model(torch.tensor([ids])).logits[0].numpy()
            with model.disable_adapter():
                base = model(torch.tensor([ids])).logits[0].numpy()
        assert got.shape == adapted.shape == (length, model.config.vocab_size)
        assert np.abs(got - adapted).max() < 1e-4
        assert (got.argmax(-1) == adapted.argmax(-1)).all()
        assert np.abs(got - base).max() > 10 * np.abs(got - adapted).max()  # the merge is in it


def test_a_different_adapter_is_caught_by_verification(exported, trained_run, tiny_model, tmp_path):
    other = make_random_adapter(tiny_model, tmp_path / "other", b_std=0.05, seed=1)
    ids = list(range(5, 25))
    with torch.no_grad():
        eager_other = _eager(trained_run, other)(torch.tensor([ids])).logits[0].numpy()
    assert np.abs(_program_logits(exported / "model.pte", ids) - eager_other).max() > 0.05
    run = et._load(trained_run / "config.yaml", other)
    report = et.verify(exported / "model.pte", run, run.adapted, et.TOLERANCES["none"], 256)
    assert report.max_abs_diff > 0.05
    assert any("max |Δlogit|" in problem for problem in report.problems())


def test_chat_pte_decodes_as_eager_greedy(exported, trained_run):
    backend = et.chat_backend(exported, "unused")
    messages = [{"role": "user", "content": "The product was great and"}]
    prompt = backend.prompt_ids(messages)
    got = list(backend.generate_ids(prompt, Settings(temperature=0.0, max_tokens=12)))
    model = _eager(trained_run)
    with torch.no_grad():
        output = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=12,
                                do_sample=False, eos_token_id=backend.metadata["stop_token_ids"],
                                pad_token_id=backend.metadata["stop_token_ids"][0])
    expected = [t for t in output[0, len(prompt):].tolist()
                if t not in backend.metadata["stop_token_ids"]]
    assert len(got) > 0 and got == expected
    text = "".join(backend.stream(messages, Settings(temperature=0.0, max_tokens=12)))
    assert text == backend.tokenizer.decode(got, skip_special_tokens=True)


def test_chat_pte_command_streams_label_probabilities_and_tokens(exported, trained_run):
    result = subprocess.run(
        [sys.executable, "-m", "engine", "chat", "--pte", str(exported / "model.pte"),
         "--prompt", "Works well", "--temperature", "0", "--max-tokens", "6", "--json-stream"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    events = [decode(line) for line in result.stdout.splitlines()]
    types = [e.type for e in events]
    assert result.returncode == 0, result.stderr[-2000:]
    assert types[0] == "hello" and types[-1] == "done" and "token" in types
    probs = next(e.data for e in events if e.type == "label_probs")
    meta = json.loads((exported / "metadata.json").read_text())
    assert probs["words"] == [" terrible", " great"]
    model = _eager(trained_run)
    tokenizer = et.PteBackend(exported).tokenizer
    prompt = meta["prompt_template"].replace("{text}", "Works well")
    label_ids = [tokenizer.encode(w, add_special_tokens=False)[0] for w in probs["words"]]
    with torch.no_grad():
        logits = model(torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])).logits
    expected = torch.softmax(logits[0, -1, label_ids], 0).tolist()
    assert probs["probabilities"] == pytest.approx(expected, abs=1e-5)


def test_chat_pte_without_an_export_folder_is_a_clear_error(tmp_path, capsys):
    stray = tmp_path / "model.pte"
    stray.write_bytes(b"not a program")
    assert run_tool("chat", ["--pte", str(stray), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert "no metadata.json" in err and "--format executorch" in err


def test_unwritable_out_is_a_clear_error_before_any_work(trained_run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    started = time.perf_counter()
    code = run_tool("export", [str(trained_run), "--format", "executorch",
                               "--out", str(blocker / "export")])
    err = capsys.readouterr().err
    assert code == 2 and time.perf_counter() - started < 5  # refused before minutes of lowering
    assert f"--out {blocker / 'export'}: cannot write there" in err and "Traceback" not in err


@pytest.mark.slow
def test_8da4w_program_matches_its_quantised_model(trained_run, exported):
    assert run_tool("export", [str(trained_run), "--format", "executorch", "--quantize", "8da4w"]) == 0
    meta = json.loads((trained_run / "export" / "executorch-8da4w" / "metadata.json").read_text())
    report = meta["verification"]
    print("\n8da4w tiny verification:", report)
    assert meta["export"] == meta["export"] | {"quantize": "8da4w", "group_size": 32}
    # The lowering: XNNPACK against torchao's eager model of the same weights (measured 98.7-100 %).
    assert report["program_max_abs_diff"] < 0.1 and report["program_top1_agreement"] >= 0.98
    # Quantisation moves the logits (reported, not checked).
    assert report["max_abs_diff"] > report["program_max_abs_diff"]  # tiny: 0.34 against 0.023
    fp32 = json.loads((exported / "metadata.json").read_text())
    assert meta["program_bytes"] < 0.75 * fp32["program_bytes"]


def test_bench_pte_times_the_program_against_eager_on_the_same_weights(exported, trained_run, tmp_path):
    from engine.bench import main as bench

    out = ["--results", str(tmp_path), "--plots", str(tmp_path)]
    assert bench(["pte", str(trained_run), "--threads", "1", "--lengths", "1", "5", "--reps", "2",
                  "--warmup", "1", *out]) == 0
    record = json.loads((tmp_path / "pte.json").read_text())
    assert [row["tokens"] for row in record["lengths"]] == [1, 5]
    for row in record["lengths"]:
        assert row["max_abs_logit_difference"] < 1e-3  # the program is the merged model
        for timing in row["timings"].values():
            assert timing["reps"] == 2 and 0 < timing["min_s"] <= timing["median_s"]
    assert record["program_bytes"] == (exported / "model.pte").stat().st_size
    with pytest.raises(UserError, match="longer than the program's max_seq_len"):
        bench(["pte", str(trained_run), "--lengths", "100000", *out])
    with pytest.raises(UserError, match="no exported program"):
        bench(["pte", str(tmp_path), *out])


def test_a_program_that_fails_verification_is_set_aside(trained_run, tmp_path, monkeypatch):
    # A tolerance no float32 lowering meets: the real export and verification run, and fail.
    monkeypatch.setitem(et.TOLERANCES, "none", et.Tolerance(
        program_max_abs_diff=0.0, program_min_top1_agreement=1.0, max_abs_diff=0.0,
        min_top1_agreement=1.0))
    out = tmp_path / "rejected"
    with pytest.raises(UserError, match="disagrees with eager PyTorch") as failure:
        et.export(trained_run, out, max_seq_len=32)
    assert str(out / "model.pte.rejected") in str(failure.value)
    assert not (out / "model.pte").exists() and (out / "model.pte.rejected").stat().st_size > 10_000
    assert json.loads((out / "metadata.json").read_text())["verification"]["max_abs_diff"] > 0
