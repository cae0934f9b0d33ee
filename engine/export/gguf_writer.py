"""Writing GGUF files: a base or merged model (tensors, tokenizer, metadata) and a LoRA adapter,
in the layout of llama.cpp's own converters (see engine/export/gguf.py)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.api.errors import UserError
from engine.files import write_atomic
from engine.runtime.sampling import END_OF_TURN

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str  # llama.cpp's architecture name (general.architecture)
    permute_qk: bool  # llama.cpp's "normal" rope needs Q/K rows interleaved per head


# Hugging Face model_type → llama.cpp layout.
ARCHS = {
    "llama": ArchSpec("llama", permute_qk=True),
    "mistral": ArchSpec("llama", permute_qk=True),
    "gemma3_text": ArchSpec("gemma3", permute_qk=False),
    "gemma3": ArchSpec("gemma3", permute_qk=False),
}

# Pre-tokenizers llama.cpp knows, recognised from tokenizer.json's pre_tokenizer. Only
# byte-level BPE tokenizers are written; others (SentencePiece) are refused with a message.
_GPT2_SPLIT = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)"
_LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?"
                 "[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def permute_rows(weight: torch.Tensor, n_head: int) -> torch.Tensor:
    """Reorder a Q/K projection's output rows from Hugging Face's rope layout to llama.cpp's."""
    return (weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _gguf_name(name_map, module: str) -> str:
    # Adapters on Gemma 3's multimodal wrapper name the text model `model.language_model.…`.
    module = module.replace("model.language_model.", "model.", 1)
    gguf_name = name_map.get_name(module, try_suffixes=(".weight", ".bias"))
    if gguf_name is None:
        raise UserError(f"tensor {module} has no llama.cpp counterpart; "
                        "adapt only attention and MLP projections (lora.targets)")
    return gguf_name


def _heads_for(module: str, hf_config: dict) -> int | None:
    """Rows of q_proj/k_proj are permuted in groups of this many heads; None for others."""
    n_head = hf_config["num_attention_heads"]
    if module.endswith("q_proj.weight"):
        return n_head
    if module.endswith("k_proj.weight"):
        return hf_config.get("num_key_value_heads") or n_head
    return None



def write_adapter(adapter_dir: Path, hf_config: dict, arch: ArchSpec, path: Path) -> None:
    """PEFT adapter folder → GGUF LoRA adapter (float32 tensors)."""
    import gguf
    from safetensors.torch import load_file

    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    if adapter_config.get("use_rslora") or adapter_config.get("use_dora"):
        raise UserError(f"{adapter_dir / 'adapter_config.json'}: rsLoRA/DoRA adapters have no "
                        "GGUF form in llama.cpp; train a plain LoRA adapter")
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.gguf_arch.upper()],
                                        hf_config["num_hidden_layers"])
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}.weight"
            if key.endswith(marker):
                module = key.removeprefix("base_model.model.").replace(marker, ".weight")
                pairs.setdefault(module, {})[part] = tensor.float()
                break
        else:
            raise UserError(f"{adapter_dir}: tensor {key} is neither lora_A nor lora_B; "
                            "only LoRA on linear layers can be exported to GGUF")
    writer = gguf.GGUFWriter(None, arch.gguf_arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(adapter_config["lora_alpha"]))
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"lora_A", "lora_B"}:
            raise UserError(f"{adapter_dir}: {module} lacks lora_A or lora_B; the adapter is "
                            "incomplete")
        lora_a, lora_b = pair["lora_A"], pair["lora_B"]
        n_head = _heads_for(module, hf_config) if arch.permute_qk else None
        if n_head is not None:
            lora_b = permute_rows(lora_b, n_head)
        name = _gguf_name(name_map, module)
        writer.add_tensor(f"{name}.lora_a", lora_a.contiguous().numpy())
        writer.add_tensor(f"{name}.lora_b", lora_b.contiguous().numpy())
    _write(writer, path)


def _write(writer, path: Path) -> None:
    # Written beside and renamed: a chat process loading the file never sees half of it.
    def write(partial: Path) -> None:
        try:
            writer.write_header_to_file(partial)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
        finally:
            writer.close()

    write_atomic(path, write)


def write_model(folder: Path, path: Path, outtype: str, adapter_dir: Path | None = None) -> None:
    """A Llama-family Hugging Face folder (+ a PEFT adapter merged in) → a GGUF model file.

    Matrices are written in `outtype` (f16 or f32); norms stay f32 as in llama.cpp's converter.
    """
    import gguf
    from transformers import AutoModelForCausalLM

    hf_config = json.loads((folder / "config.json").read_text())
    arch = ARCHS.get(hf_config.get("model_type", ""))
    if arch is None or arch.gguf_arch != "llama":
        raise UserError(f"{folder / 'config.json'}: model_type {hf_config.get('model_type')!r}; "
                        "a full GGUF model can be written for the Llama family only (export the "
                        "adapter with --format gguf and use the base model's own GGUF)")
    rope = hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        raise UserError(f"{folder / 'config.json'}: rope scaling {rope.get('rope_type')!r} is not "
                        "supported by the GGUF writer; export the adapter with --format gguf")
    n_layers = hf_config["num_hidden_layers"]
    n_head = hf_config["num_attention_heads"]
    n_head_kv = hf_config.get("num_key_value_heads") or n_head
    head_dim = hf_config.get("head_dim") or hf_config["hidden_size"] // n_head
    tied = hf_config.get("tie_word_embeddings", False)

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32)
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    state = model.state_dict()

    writer = gguf.GGUFWriter(None, "llama")
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(folder.name)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16"
                         else gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(hf_config.get("max_position_embeddings", 2048))
    writer.add_embedding_length(hf_config["hidden_size"])
    writer.add_block_count(n_layers)
    writer.add_feed_forward_length(hf_config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head_kv)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", hf_config.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(float(hf_config.get("rms_norm_eps", 1e-5)))
    writer.add_vocab_size(hf_config["vocab_size"])
    _add_tokenizer(writer, folder, hf_config["vocab_size"])

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    for name, tensor in state.items():
        if name == "lm_head.weight" and tied:
            continue  # llama.cpp reuses token_embd when output.weight is absent
        data = tensor.detach().float()
        heads = _heads_for(name, hf_config)
        if heads is not None:
            data = permute_rows(data, heads)
        array = data.contiguous().numpy()
        if outtype == "f16" and array.ndim == 2:
            array = array.astype(np.float16)
        writer.add_tensor(_gguf_name(name_map, name), array)
    _write(writer, path)


def _add_tokenizer(writer, folder: Path, vocab_size: int) -> None:
    """Byte-level BPE vocabulary, merges, special tokens and chat template (llama.cpp "gpt2")."""
    import gguf
    from transformers import AutoTokenizer

    tokenizer_json = folder / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise UserError(f"{folder}: no tokenizer.json; only byte-level BPE tokenizers can be "
                        "written to GGUF (export the adapter with --format gguf instead)")
    spec = json.loads(tokenizer_json.read_text())
    if (spec.get("model") or {}).get("type") != "BPE":
        raise UserError(f"{tokenizer_json}: a {(spec.get('model') or {}).get('type')} tokenizer; "
                        "only byte-level BPE tokenizers can be written to GGUF")
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    by_id = {i: token for token, i in tokenizer.get_vocab().items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(max(vocab_size, len(by_id))):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(spec.get("pre_tokenizer"), tokenizer_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(writer, quiet=True)


def _pre_tokenizer(pre: dict | None, where: Path) -> str:
    """llama.cpp's name for the way a tokenizer splits text before BPE."""
    parts = (pre or {}).get("pretokenizers") if (pre or {}).get("type") == "Sequence" else [pre]
    kinds = [(p or {}).get("type") for p in parts or []]
    if kinds == ["ByteLevel"] and parts[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and parts[0].get("individual_digits"):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and (parts[0].get("pattern") or {}).get("Regex") in (
            _LLAMA3_SPLIT,):
        return "llama-bpe"
    if kinds == ["Split", "ByteLevel"] and (parts[0].get("pattern") or {}).get("Regex") == _GPT2_SPLIT:
        return "gpt-2"
    raise UserError(f"{where}: pre-tokenizer {kinds} is not one llama.cpp is known to match "
                    "(gpt-2, smollm, llama-bpe); export the adapter with --format gguf and use "
                    "the base model's own GGUF")


def stop_words(folder: Path) -> list[str]:
    """Tokens that end an assistant turn: EOS and the chat template's end-of-turn marker."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    words = [tokenizer.eos_token] if tokenizer.eos_token else []
    for marker in END_OF_TURN:
        if marker in tokenizer.get_vocab() and marker not in words:
            words.append(marker)
    return words


# What llama.cpp users pick (LM Studio, Ollama, PocketPal): llama.cpp's own quantisations of an
# f16 file. K-quants need rows of 256; llama.cpp falls back per tensor where a row is shorter.
QUANTISATIONS = {"q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M"}
OUTTYPES = ("f16", "f32", *QUANTISATIONS)


def quantize(source: Path, path: Path, outtype: str, threads: int = 0) -> None:
    """llama.cpp's quantiser (llama_model_quantize) from an f16/f32 GGUF `source` to `path`."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANTISATIONS[outtype])
    params.nthread = threads
    failed = llama_cpp.llama_model_quantize(str(source).encode(), str(path).encode(), params)
    if failed:
        raise UserError(f"llama.cpp could not quantise {source} to {outtype} (code {failed}); "
                        "export with --outtype f16 instead")

