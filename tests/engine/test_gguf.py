"""GGUF export: real files written here, loaded by llama.cpp, compared with torch + peft.

The base GGUF is the tiny test Llama written by our own merged-model writer, so its test runs
first; the SmolLM2 test (slow) uses the bundled Q4_1 file with an adapter on its dequantised copy.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from lora_runs import make_random_adapter, make_run

from engine.cli import run_tool
from engine.export import gguf as gguf_export
from engine.export import gguf_verify, gguf_writer


@pytest.fixture(scope="module")
def tiny_gguf(tiny_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf"
    gguf_writer.write_model(tiny_model, path, "f32")
    return path


@pytest.fixture(scope="module")
def random_adapter(tiny_model, tmp_path_factory) -> Path:
    return make_random_adapter(tiny_model, tmp_path_factory.mktemp("adapter") / "adapter")


@pytest.fixture(scope="module")
def gguf_run(tiny_gguf, random_adapter, tmp_path_factory) -> Path:
    """A run whose base is a GGUF file, like the default SmolLM2 model."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EDGETUNE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        run = make_run(tmp_path_factory.mktemp("runs") / "gguf-run", tiny_gguf, random_adapter,
                       label_words=[" terrible", " great"])
        started = time.perf_counter()
        code = run_tool("export", [str(run), "--format", "gguf"])
        print(f"\ntiny adapter export + verification: {time.perf_counter() - started:.1f} s")
        assert code == 0
        yield run


def test_model_writer_gives_torch_logits_in_llama_cpp(tiny_model, tiny_gguf):
    prompts = gguf_verify._prompt_ids(tiny_model)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny_model), dtype=torch.float32)
    with torch.no_grad():
        expected = np.concatenate([model(torch.tensor([ids])).logits[0].numpy() for ids in prompts])
    got = gguf_verify.llama_logits(tiny_gguf, prompts)
    # Q/K permutation, norms, tied embeddings and rope all have to be right for this to hold.
    assert np.abs(got - expected).max() < 1e-3
    assert (got.argmax(1) == expected.argmax(1)).all()


def test_adapter_export_on_a_gguf_base_is_verified(gguf_run, tiny_gguf):
    from gguf import GGUFReader

    export = gguf_run / "export"
    report = json.loads((export / "adapter.verification.json").read_text())
    print("\ntiny adapter verification:", report)
    assert report["delta_correlation"] > 0.9999
    assert report["top1_agreement"] == 1.0
    assert report["max_abs_diff"] < 2e-3
    assert report["scale0_exact"] is True
    assert report["delta_rms"] > 0.05  # the adapter really changes the logits

    reader = GGUFReader(str(export / "adapter.gguf"))
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(8.0)
    tensors = {t.name: t for t in reader.tensors}
    assert len(tensors) == 2 * 2 * 7  # 2 layers × 7 projections × (A, B)
    # ggml shapes are (columns, rows): A is rank × in, B is out × rank.
    assert list(tensors["blk.0.attn_q.weight.lora_a"].shape) == [64, 4]
    assert list(tensors["blk.0.attn_k.weight.lora_b"].shape) == [4, 32]
    assert list(tensors["blk.1.ffn_down.weight.lora_a"].shape) == [128, 4]


def test_q_and_k_rows_follow_llama_cpp_permutation(tiny_model, tiny_gguf, tmp_path):
    """An adapter on Q and K only: right with the permutation, clearly wrong without it."""
    adapter_dir = make_random_adapter(tiny_model, tmp_path / "qk", b_std=0.5,
                                      targets=["q_proj", "k_proj"])
    hf_config = json.loads((tiny_model / "config.json").read_text())
    prompts = gguf_verify._prompt_ids(tiny_model)
    torch_base, torch_adapted = gguf_verify.torch_logits(tiny_model, adapter_dir, prompts)
    cpp_base = gguf_verify.llama_logits(tiny_gguf, prompts)
    correlations = {}
    for permute in (True, False):
        path = tmp_path / f"qk-{permute}.gguf"
        gguf_writer.write_adapter(adapter_dir, hf_config, gguf_writer.ArchSpec("llama", permute), path)
        cpp_adapted = gguf_verify.llama_logits(tiny_gguf, prompts, path)
        correlations[permute] = gguf_verify._compare(
            "adapter", cpp_base, cpp_adapted, torch_base, torch_adapted, gguf_verify.FLOAT_BASE
        )["delta_correlation"]
    print("\nQ/K-only adapter, LoRA-change correlation with/without permutation:", correlations)
    assert correlations[True] > 0.9999
    assert correlations[False] < gguf_verify.FLOAT_BASE.min_delta_correlation


def _parse_modelfile(path: Path) -> dict[str, list[str]]:
    """Ollama's Modelfile grammar: INSTRUCTION value, values optionally in triple quotes."""
    entries: dict[str, list[str]] = {}
    rest = path.read_text()
    while rest.strip():
        match = re.match(r'\s*(\w+) (?:"""(.*?)"""|([^\n]*))\n', rest, re.DOTALL)
        assert match, f"unparseable Modelfile line: {rest.splitlines()[0]!r}"
        entries.setdefault(match.group(1), []).append(
            match.group(2) if match.group(2) is not None else match.group(3))
        rest = rest[match.end():]
    return entries


def test_modelfile_parses_back(gguf_run, tiny_gguf):
    path = gguf_run / "export" / "adapter.Modelfile"
    entries = _parse_modelfile(path)
    assert set(entries) == {"FROM", "ADAPTER", "TEMPLATE", "PARAMETER"}
    assert Path(entries["FROM"][0]) == tiny_gguf.resolve()
    assert entries["ADAPTER"] == ["./adapter.gguf"]
    assert (path.parent / entries["ADAPTER"][0]).is_file()
    template = entries["TEMPLATE"][0]
    assert "{{- range .Messages }}<|im_start|>{{ .Role }}" in template
    assert template.endswith("<|im_start|>assistant\n")
    assert entries["PARAMETER"] == ['stop "<|im_end|>"']


def test_folder_base_merged_and_adapter_exports(tiny_model, random_adapter, tmp_path):
    run = make_run(tmp_path / "run", tiny_model, random_adapter)
    started = time.perf_counter()
    merged = gguf_export.export_merged(run, None, outtype="f32")
    print(f"\ntiny merged f32 export + verification: {time.perf_counter() - started:.1f} s")
    report = json.loads((merged.parent / "merged-f32.verification.json").read_text())
    print("tiny merged verification:", report)
    assert report["delta_correlation"] > 0.9999 and report["top1_agreement"] == 1.0
    assert report["tokenizer_agreement"] == 1.0
    entries = _parse_modelfile(merged.with_suffix(".Modelfile"))
    assert entries["FROM"] == ["./merged-f32.gguf"] and "ADAPTER" not in entries

    # The adapter for a folder base comes with the base converted to an f16 GGUF.
    adapter = gguf_export.export(run, None)
    assert (adapter.parent / "base-f16.gguf").is_file()
    report = json.loads((adapter.parent / "adapter.verification.json").read_text())
    print("tiny adapter on f16 base:", report)
    assert report["delta_correlation"] > 0.999 and report["scale0_exact"] is True


@pytest.mark.parametrize("outtype", ["q8_0", "q4_k_m"])
def test_merged_export_quantised_by_llama_cpp(tiny_model, random_adapter, tmp_path, outtype):
    """What Ollama / PocketPal users pick: llama.cpp's own quantisation of the checked f16 file,
    with its agreement with that f16 file reported beside the f16 check."""
    from gguf import GGMLQuantizationType, GGUFReader

    run = make_run(tmp_path / "run", tiny_model, random_adapter)
    assert run_tool("export", [str(run), "--format", "merged-gguf", "--outtype", outtype]) == 0
    merged = run / "export" / f"merged-{outtype}.gguf"
    types = {t.tensor_type for t in GGUFReader(str(merged)).tensors}
    floats = {GGMLQuantizationType.F32, GGMLQuantizationType.F16}
    assert types - floats, f"{outtype}: no quantised tensor in {types}"
    assert not list((run / "export").glob("edgetune-merge-*")), "the f16 intermediate is left"
    report = json.loads((run / "export" / f"merged-{outtype}.verification.json").read_text())
    print(f"\ntiny merged {outtype}:", report["quantised"])
    assert report["delta_correlation"] > 0.9999 and report["top1_agreement"] == 1.0  # f16 vs torch
    quantised = report["quantised"]
    assert quantised["outtype"] == outtype and quantised["positions"] > 0
    assert quantised["mean_logit_cosine_with_f16"] > (0.999 if outtype == "q8_0" else 0.9)
    assert quantised["top1_agreement_with_f16"] > (0.9 if outtype == "q8_0" else 0.5)
    entries = _parse_modelfile(merged.with_suffix(".Modelfile"))
    assert entries["FROM"] == [f"./merged-{outtype}.gguf"]


def test_gemma3_adapter_keeps_rows_in_order(tmp_path):
    """Gemma 3 runs on llama.cpp's NeoX rope: names mapped, nothing permuted."""
    from gguf import GGUFReader
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder = tmp_path / "gemma"
    config = Gemma3TextConfig(vocab_size=128, hidden_size=64, intermediate_size=96,
                              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              head_dim=16)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    adapter_dir = make_random_adapter(folder, tmp_path / "adapter")
    path = tmp_path / "gemma.gguf"
    hf_config = json.loads((folder / "config.json").read_text())
    gguf_writer.write_adapter(adapter_dir, hf_config, gguf_writer.ARCHS[hf_config["model_type"]], path)
    reader = GGUFReader(str(path))
    assert reader.fields["general.architecture"].contents() == "gemma3"
    from safetensors.torch import load_file

    peft_b = load_file(str(adapter_dir / "adapter_model.safetensors"))[
        "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"]
    tensors = {t.name: t for t in reader.tensors}
    written = np.asarray(tensors["blk.1.attn_q.weight.lora_b"].data).reshape(peft_b.shape)
    np.testing.assert_array_equal(written, peft_b.numpy())


def test_bad_run_folder_is_a_clear_error(tmp_path, capsys):
    assert run_tool("export", [str(tmp_path / "nowhere"), "--format", "gguf"]) == 2
    assert "no such run folder" in capsys.readouterr().err
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.yaml").write_text("model: default\n")
    assert run_tool("export", [str(tmp_path / "half"), "--format", "merged-gguf"]) == 2
    assert "adapter_config.json" in capsys.readouterr().err
