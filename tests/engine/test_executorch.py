"""ExecuTorch export through export_llm: real programs of the tiny model, run as a phone app would.

Three exports of the tiny model (about a minute of lowering each on 2 cores) serve the module:
the trained run in the default layout (small .pte + foundation .ptd), a second adapter as one
single-file .pte, and a third whose verification is made to fail. The programs run in
ExecuTorch's runtime and in `TextLLMRunner` (the C++ runner of ExecuTorch's LLM apps); the
reference is transformers with the PEFT adapter, as a user would load it.
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
from conftest import REPO, train_tiny_run
from lora_runs import classification_run, make_random_adapter, make_run

from engine.api import config as config_io
from engine.api.errors import UserError
from engine.api.protocol import decode
from engine.cli import run_tool
from engine.export import executorch as et
from engine.runtime import pte
from engine.runtime.backend import Settings

LABELS = [" terrible", " great"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The foundation .ptd cache in a folder of this module, not the developer's own."""
    with pytest.MonkeyPatch.context() as patch:
        folder = tmp_path_factory.mktemp("et-cache")
        patch.setenv("EDGETUNE_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(scope="module")
def trained_run(tiny_model, classification_data, tmp_path_factory) -> Path:
    return train_tiny_run(tiny_model, classification_data, tmp_path_factory.mktemp("et") / "run")


@pytest.fixture(scope="module")
def exported(trained_run, cache) -> Path:
    started = time.perf_counter()
    assert run_tool("export", [str(trained_run), "--format", "executorch"]) == 0
    print(f"\ntiny model ExecuTorch export: {time.perf_counter() - started:.1f} s")
    return trained_run / "export" / "executorch"


def _other_run(tiny_model, classification_data, folder: Path, seed: int) -> Path:
    adapter = make_random_adapter(tiny_model, folder / "adapter-src", b_std=0.3, seed=seed)
    return classification_run(folder / "run", tiny_model, adapter, classification_data)


@pytest.fixture(scope="module")
def single(tiny_model, classification_data, tmp_path_factory, cache) -> tuple[Path, Path]:
    run = _other_run(tiny_model, classification_data, tmp_path_factory.mktemp("et-single"), 1)
    assert run_tool("export", [str(run), "--format", "executorch", "--layout", "single",
                               "--max-seq-len", "64"]) == 0
    return run, run / "export" / "executorch-single"


def _eager(run_dir: Path, adapter_dir: Path | None = None):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = config_io.load(run_dir / "config.yaml")
    model = AutoModelForCausalLM.from_pretrained(cfg.model, dtype=torch.float32)
    return PeftModel.from_pretrained(model, str(adapter_dir or run_dir / "adapter")).eval()


def _greedy(model, prompt: list[int], count: int, stop_ids: list[int]) -> list[int]:
    with torch.no_grad():
        output = model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=count,
                                do_sample=False, eos_token_id=stop_ids, pad_token_id=stop_ids[0])
    return [t for t in output[0, len(prompt):].tolist() if t not in stop_ids]


def test_export_writes_a_verified_llm_runner_folder(exported, trained_run, cache):
    assert sorted(p.name for p in exported.iterdir() if p.is_file()) == [
        "README.md", "chat_template.jinja", "foundation.ptd", "metadata.json", "model.pte",
        "tokenizer.json", "tokenizer_config.json"]
    assert not list(exported.glob("*.partial")) and not [p for p in exported.iterdir() if p.is_dir()]
    meta = json.loads((exported / "metadata.json").read_text())
    report = meta["verification"]
    print("\ntiny model verification:", report, meta["stage_seconds"])
    assert report["prompts"] == 4 and report["positions"] > 20
    assert report["max_abs_diff"] < 1e-4  # measured 8.5e-7: float32 on both sides
    assert report["top1_agreement"] == 1.0 and report["logit_cosine"] > 0.99999
    assert report["greedy_identical"] == report["runner_identical"] == 4
    assert report["runner_tokens"] > 0  # TextLLMRunner's text was compared, not skipped
    assert report["adapter_max_abs_change"] > 0.01  # the trained adapter shows in the logits
    assert report["tolerance"] == {"max_abs_diff": 1e-3, "min_top1_agreement": 1.0,
                                   "greedy_identical": True}
    assert list(meta["stage_seconds"]) == list(et.STAGES)
    assert meta["label_words"] == LABELS and meta["task"] == "classification"
    assert meta["max_seq_len"] == 256  # --max-seq-len 512 capped at the model's context
    assert meta["layout"] == "adapter" and meta["format_version"] == 2
    # The adapter program is small; the base's weights are in the .ptd (tiny: 90 KB vs 450 KB).
    assert meta["program_bytes"] < meta["data_bytes"] / 2
    assert meta["data"]["sha256"] == hashlib.sha256((exported / "foundation.ptd").read_bytes()).hexdigest()
    assert Path(meta["data"]["cache_path"]).samefile(exported / "foundation.ptd")  # a hard link
    assert Path(meta["data"]["cache_path"]).is_relative_to(cache)
    tokenizer_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert "<|im_start|>" in tokenizer_config["chat_template"] == meta["chat_template"]
    vocab = json.loads((exported / "tokenizer.json").read_text())["added_tokens"]
    im_end = next(t["id"] for t in vocab if t["content"] == "<|im_end|>")
    assert meta["stop_token_ids"] == [im_end] and tokenizer_config["eos_token"] == "<|im_end|>"
    adapter = (trained_run / "adapter" / "adapter_model.safetensors").read_bytes()
    assert meta["adapter_sha256"] == hashlib.sha256(adapter).hexdigest()
    assert meta["program_sha256"] == hashlib.sha256((exported / "model.pte").read_bytes()).hexdigest()
    assert meta["export"]["quantize"] == "none" and meta["export"]["executorch_version"]
    readme = (exported / "README.md").read_text()
    assert "react-native-executorch" in readme and "foundation.ptd" in readme


def test_program_has_the_llm_runner_metadata_methods(exported):
    from executorch.runtime import Runtime

    pte.Program(exported).method  # noqa: B018 - registers the custom ops and loads the program
    program = Runtime.get().load_program(str(exported / "model.pte"),
                                         data_path=str(exported / "foundation.ptd"))
    value = lambda name: program.load_method(name).execute([])[0]  # noqa: E731
    assert value("get_max_seq_len") == value("get_max_context_len") == 256
    assert value("use_kv_cache") and value("get_vocab_size") == 512
    meta = json.loads((exported / "metadata.json").read_text())
    assert value("get_bos_id") == meta["bos_token_id"]
    assert [value("get_eos_ids")] == meta["stop_token_ids"]


def test_kv_cache_logits_match_eager_with_the_adapter_at_every_position(exported, trained_run):
    model = _eager(trained_run)
    program = pte.Program(exported)
    ids = torch.randint(3, 500, (40,), generator=torch.Generator().manual_seed(0)).tolist()
    got = program.teacher_forced(ids, prefill=7)  # one 7-token prefill, then 33 one-token steps
    with torch.no_grad():
        adapted = model(torch.tensor([ids])).logits[0, 6:].numpy()
        with model.disable_adapter():
            base = model(torch.tensor([ids])).logits[0, 6:].numpy()
    assert got.shape == adapted.shape == (34, 512)
    assert np.abs(got - adapted).max() < 1e-4
    assert (got.argmax(-1) == adapted.argmax(-1)).all()
    assert np.abs(got - base).max() > 10 * np.abs(got - adapted).max()  # the adapter is in it


def test_text_llm_runner_generates_eager_greedy_tokens(exported, trained_run):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(exported))
    stop_ids = json.loads((exported / "metadata.json").read_text())["stop_token_ids"]
    runner = pte.Program(exported).runner()
    model = _eager(trained_run)
    compared = 0
    for prompt in ["Review: Works well.\nThe product was", "It was great", "Broke after a day"]:
        expected = _greedy(model, tokenizer(prompt, add_special_tokens=False)["input_ids"], 12,
                           stop_ids)
        whole = next((i for i, t in enumerate(expected) if "\ufffd" in tokenizer.decode([t])),
                     len(expected))
        text = "".join(pte.runner_generate(runner, prompt, 12, 0.0))
        assert text == tokenizer.decode(expected[:whole], skip_special_tokens=True)
        compared += whole
    assert compared > 0


def test_single_file_layout_runs_without_a_data_file(single, exported):
    run, folder = single
    meta = json.loads((folder / "metadata.json").read_text())
    assert meta["layout"] == "single" and meta["data"] is None and meta["data_bytes"] == 0
    assert not (folder / "foundation.ptd").exists() and meta["max_seq_len"] == 64
    report = meta["verification"]
    assert report["max_abs_diff"] < 1e-4 and report["greedy_identical"] == 4
    assert report["adapter_max_abs_change"] > 1.0  # b_std 0.3: this adapter moves the logits
    fp32 = json.loads((exported / "metadata.json").read_text())
    assert meta["program_bytes"] > fp32["program_bytes"] + 0.9 * fp32["data_bytes"]
    # A single file loads in TextLLMRunner by itself.
    assert isinstance(pte.runner_generate(pte.Program(folder).runner(), "Hello", 4, 0.0), list)


def test_chat_pte_decodes_as_eager_greedy_with_tokens_per_second(exported, trained_run):
    backend = pte.PteBackend(exported)
    messages = [{"role": "user", "content": "The product was great and"}]
    prompt = backend.prompt_ids(messages)
    got = list(backend.generate_ids(prompt, Settings(temperature=0.0, max_tokens=12)))
    expected = _greedy(_eager(trained_run), prompt, 12, backend.metadata["stop_token_ids"])
    assert len(got) > 0 and got == expected
    stats = backend.last_stats
    assert stats["prompt_tokens"] == len(prompt) and stats["generated_tokens"] == len(got)
    assert stats["prefill_tokens_per_second"] > 0 and stats["decode_tokens_per_second"] > 0
    text = "".join(backend.stream(messages, Settings(temperature=0.0, max_tokens=12)))
    assert text == backend.tokenizer.decode(got, skip_special_tokens=True)


def test_chat_pte_command_streams_label_probabilities_and_tokens(exported, trained_run):
    result = subprocess.run(
        [sys.executable, "-m", "engine", "chat", "--pte", str(exported / "model.pte"),
         "--prompt", "Works well", "--temperature", "0", "--max-tokens", "6", "--protocol"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    events = [decode(line) for line in result.stdout.splitlines()]
    types = [e.type for e in events]
    assert result.returncode == 0, result.stderr[-2000:]
    assert types[0] == "hello" and types[-1] == "done" and "token" in types
    probs = next(e.data for e in events if e.type == "label_probs")
    meta = json.loads((exported / "metadata.json").read_text())
    assert probs["words"] == LABELS
    model = _eager(trained_run)
    tokenizer = pte.PteBackend(exported).tokenizer
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


@pytest.mark.parametrize("config, reason", [
    ({"model_type": "qwen2", "attention_bias": True}, "model type 'qwen2'"),
    ({"model_type": "llama", "rope_parameters": {"rope_type": "llama3", "factor": 32.0}},
     "RoPE scaling 'llama3'"),
])
def test_unsupported_architectures_are_refused_before_any_work(tmp_path, tiny_model, capsys,
                                                               config, reason):
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(config))
    run = make_run(tmp_path / "run", base, make_random_adapter(tiny_model, tmp_path / "adapter"))
    started = time.perf_counter()
    assert run_tool("export", [str(run), "--format", "executorch"]) == 2
    err = capsys.readouterr().err
    assert time.perf_counter() - started < 5 and "Traceback" not in err
    assert "not supported for this architecture yet" in err and reason in err
    assert "merged-gguf" in err and not (run / "export").exists()


def test_a_program_that_fails_verification_is_set_aside_and_the_foundation_is_shared(
        tiny_model, classification_data, exported, tmp_path, monkeypatch, cache):
    run = _other_run(tiny_model, classification_data, tmp_path, 2)
    # A tolerance no float32 lowering meets: the real export and verification run, and fail.
    monkeypatch.setitem(et.TOLERANCES, "none", et.Tolerance(
        max_abs_diff=0.0, min_top1_agreement=1.0, greedy_identical=True))
    out = tmp_path / "rejected"
    with pytest.raises(UserError, match="disagrees with eager PyTorch") as failure:
        et.export(run, out)
    assert str(out / "model.pte.rejected") in str(failure.value)
    assert not (out / "model.pte").exists() and (out / "model.pte.rejected").stat().st_size > 10_000
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["verification"]["max_abs_diff"] > 0
    # Another adapter on the same base: the same foundation bytes, taken from the cache.
    assert meta["data"]["reused_from_cache"] is True
    assert (out / "foundation.ptd").read_bytes() == (exported / "foundation.ptd").read_bytes()
    assert (out / "model.pte.rejected").read_bytes() != (exported / "model.pte").read_bytes()


def test_bench_pte_times_the_program_against_eager_on_the_same_weights(exported, trained_run, tmp_path):
    from engine.bench import main as bench

    out = ["--results", str(tmp_path), "--plots", str(tmp_path)]
    assert bench(["pte", str(trained_run), "--threads", "1", "--lengths", "1", "5", "--reps", "2",
                  "--warmup", "1", *out]) == 0
    record = json.loads((tmp_path / "pte.json").read_text())
    assert [row["tokens"] for row in record["lengths"]] == [1, 5]
    for row in record["lengths"]:
        assert row["max_abs_logit_difference"] < 1e-3  # the program is the adapted model
        for timing in row["timings"].values():
            assert timing["reps"] == 2 and 0 < timing["min_s"] <= timing["median_s"]
    assert record["program_bytes"] == (exported / "model.pte").stat().st_size
    with pytest.raises(UserError, match="longer than the program's max_seq_len"):
        bench(["pte", str(trained_run), "--lengths", "100000", *out])
    with pytest.raises(UserError, match="no exported program"):
        bench(["pte", str(tmp_path), *out])


@pytest.mark.slow
def test_8da4w_reports_its_agreement_with_float32(trained_run, exported):
    assert run_tool("export", [str(trained_run), "--format", "executorch", "--quantize", "8da4w"]) == 0
    meta = json.loads((trained_run / "export" / "executorch-8da4w" / "metadata.json").read_text())
    report = meta["verification"]
    print("\n8da4w tiny verification:", report)
    assert meta["export"] == meta["export"] | {"quantize": "8da4w", "group_size": 32}
    assert 0 < report["logit_cosine"] <= 1 and report["max_abs_diff"] > 1e-3
    fp32 = json.loads((exported / "metadata.json").read_text())
    assert meta["data_bytes"] < 0.75 * fp32["data_bytes"]
