"""Model files: GGUF checks before conversion, and real architectures trained end to end (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import REPO, write_gguf

from engine.api.config import ALL_PROJECTIONS
from engine.api.errors import UserError
from engine.api.estimate import Shape
from engine.model.loading import gguf_cache_folder, gguf_config, local_folder, read_gguf

DEMO_DATA = REPO / "resources" / "datasets" / "reviews.jsonl"


def test_gguf_of_a_supported_architecture_is_read_without_loading_weights(tmp_path):
    info = read_gguf(write_gguf(tmp_path / "tiny.gguf", "llama"))
    assert info.architecture == "llama" and info.tensor_names == ["token_embd.weight"]


def test_gguf_metadata_gives_the_model_shape_without_conversion(tiny_model, tmp_path, monkeypatch):
    from engine.export.gguf_writer import write_model

    monkeypatch.setenv("EDGETUNE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    write_model(tiny_model, path, "f32")
    info = read_gguf(path)
    config = gguf_config(info)
    expected = json.loads((tiny_model / "config.json").read_text())
    assert Shape.from_config(config) == Shape.from_config(expected)
    assert config["architectures"] == ["LlamaForCausalLM"] and config["max_position_embeddings"] == 256
    assert "tokenizer.chat_template" in info.metadata
    assert not gguf_cache_folder(path).exists()


def test_probe_describes_a_gguf_from_its_metadata_without_converting_it(tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from engine.export.gguf_writer import write_model

    path = tmp_path / "tiny.gguf"
    write_model(tiny_model, path, "f16")
    env = dict(os.environ, EDGETUNE_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "engine", "probe", str(path), "--json"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["architecture"] == "LlamaForCausalLM" and info["stored_dtype"] == "F16"
    assert info["layers"] == 2 and info["context_length"] == 256 and info["chat_template"] is True
    assert info["parameters"] == sum(p.numel() for p in
                                     AutoModelForCausalLM.from_pretrained(str(tiny_model)).parameters())
    from engine.model.device import cpu_features

    # The detected profile's training dtype: bfloat16 on a CPU that runs it natively.
    expected = "bfloat16" if "bf16" in cpu_features() else "float32"
    assert set(info["lora_targets"]) == set(ALL_PROJECTIONS) and info["dtype"] == expected
    assert info["estimates"]["prge"]["total_bytes"] > info["estimates"]["prge"]["weights_bytes"] > 0
    assert not (tmp_path / "cache").exists()


def test_truncated_gguf_is_refused_before_conversion(tmp_path):
    whole = write_gguf(tmp_path / "whole.gguf", "llama").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(whole[: len(whole) - 100])
    with pytest.raises(UserError, match=r"cut\.gguf: the file is truncated or corrupt .*download it again"):
        local_folder(str(cut))


def test_file_that_is_not_gguf_is_named_so(tmp_path):
    junk = tmp_path / "notes.gguf"
    junk.write_text("these are notes, not model weights\n" * 20)
    with pytest.raises(UserError, match=r"notes\.gguf: not a GGUF file"):
        local_folder(str(junk))


def test_gguf_of_an_unsupported_architecture_names_it_and_the_supported_ones(tmp_path):
    path = write_gguf(tmp_path / "rwkv.gguf", "rwkv6")
    with pytest.raises(UserError, match=r"rwkv\.gguf: architecture 'rwkv6' .*\(supported: .*gemma3.*llama"):
        local_folder(str(path))


def test_model_with_its_own_code_needs_trust_remote_code(tiny_model, tmp_path):
    import shutil

    from engine.model.loading import load

    folder = shutil.copytree(tiny_model, tmp_path / "custom")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match='ships its own Python code .*"trust_remote_code" set to true'):
        load(str(folder), torch.device("cpu"), torch.float32)


def test_two_processes_converting_one_gguf_at_once_both_get_the_cached_folder(tiny_model, tmp_path,
                                                                               monkeypatch):
    from engine.export.gguf_writer import write_model

    monkeypatch.setenv("EDGETUNE_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    write_model(tiny_model, path, "f32")
    env = dict(os.environ, EDGETUNE_CACHE_DIR=str(tmp_path / "cache"), PYTHONPATH=str(REPO))
    # Several at once, as benchmark lanes or the window and a CLI run start: each must end with
    # the converted folder, none with another's half-written files.
    convert = ("import sys; from engine.model.loading import local_folder; "
               "print(local_folder(sys.argv[1]))")
    runs = [subprocess.Popen([sys.executable, "-c", convert, str(path)], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(3)]
    outputs = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], [err[-2000:] for _, err in outputs]
    folders = {out.strip() for out, _ in outputs}
    assert folders == {str(gguf_cache_folder(path))}
    cache = gguf_cache_folder(path).parent
    assert [p.name for p in cache.iterdir()] == [gguf_cache_folder(path).name]  # no partial left
    from transformers import AutoModelForCausalLM

    converted = AutoModelForCausalLM.from_pretrained(str(gguf_cache_folder(path)))
    original = AutoModelForCausalLM.from_pretrained(str(tiny_model))
    assert torch.equal(converted.get_input_embeddings().weight, original.get_input_embeddings().weight)
