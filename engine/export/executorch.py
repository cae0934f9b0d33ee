"""ExecuTorch export through ExecuTorch's own LLM export (`export_llm`), for the phone apps.

`python -m engine export RUN --format executorch [--quantize none|8da4w] [--layout
adapter|single] [--max-seq-len N] [--out DIR]` writes a folder an LLM app opens as it is:

- `model.pte`: the program of ExecuTorch's LLM-runner contract (`forward(tokens int64 (1, T),
  input_pos int64 (1,)) -> logits float32 (1, vocab)` of the last position, a KV cache in the
  program, metadata methods `get_max_seq_len`, `get_bos_id`, `get_eos_ids`, …), made by
  `executorch.extension.llm.export` from ExecuTorch's own Llama definition, XNNPACK, custom
  sdpa. `executorch.extension.llm.runner.TextLLMRunner` (the C++ runner of the Android demo
  app) runs it.
- layout `adapter` (the default): `model.pte` holds the LoRA adapter and the graph (a few MB),
  `foundation.ptd` the base weights. The `.ptd` depends only on the base and the export settings
  (byte-identical across adapters), so a phone keeps one base and many small adapters; it is
  cached per base (keyed by the base weights' sha256) and hard-linked into each export.
  Layout `single`: everything in `model.pte` (apps that take one file: react-native-executorch).
- `tokenizer.json`, `tokenizer_config.json` (with the chat template in it, as the apps read it),
  `README.md` (how to open the folder in the apps), `metadata.json` (chat template, stop ids,
  max_seq_len, task, prompt template and label words, hashes, sizes, seconds per stage and the
  verification numbers).

Only Llama-architecture bases (Llama, SmolLM2, TinyLlama…) with plain RoPE are supported:
export_llm's Llama definition with `use_hf_rope` (q/k weights unpermuted, so PEFT's q/k LoRA
matrices apply as they are; the permuted layout with `use_hf_rope: false` gives silently wrong
LoRA output). Anything else is refused before any work.

Verification runs the program in ExecuTorch's runtime on the first held-out examples of the
run (the trainer's eval file or seeded split) against eager PyTorch with the PEFT adapter: the
prompt is prefilled, then every further token of the example is fed one at a time through the KV
cache, comparing the next-token logits at each position; then greedy decoding from the prompt
must give the same tokens as transformers + PEFT, in the runtime and in `TextLLMRunner`. fp32
gates: max |Δlogit| ≤ 1e-3, top-1 agreement 100 %, greedy tokens identical. 8da4w (int8 dynamic
activations, int4 weights in groups of 32): its agreement with float32 (top-1, logit cosine,
greedy tokens) is reported, not gated. A program that fails is renamed `model.pte.rejected`.

Progress goes through engine.session.Stages: with --protocol `status` and `progress` events per
stage, at a terminal `executorch: stage I/N NAME: what` and `… done in S s` lines on stderr; the
export folder is the artifact (the last stdout line at a terminal).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.api.errors import UserError
from engine.export import run_folder
from engine.files import file_hash, partial_path, write_atomic
from engine.runtime.pte import FOUNDATION, METADATA, PROGRAM, Program, runner_generate
from engine.runtime.sampling import stop_token_ids
from engine.session import Stages, say

STAGES = ("load", "convert", "export", "lower", "serialize", "verify")
QUANTIZE = ("none", "8da4w")
LAYOUTS = ("adapter", "single")
GROUP_SIZE = 32  # int4 weight groups (8da4w); 128 does not divide SmolLM2's 576
VERIFY_PROMPTS = 4
VERIFY_TOKENS = 64  # per example: enough positions to see drift, short enough to stay fast
GREEDY_TOKENS = 16
HF_TO_META = {  # Hugging Face Llama names → ExecuTorch's Llama definition
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
    "self_attn.q_proj.weight": "attention.wq.weight",
    "self_attn.k_proj.weight": "attention.wk.weight",
    "self_attn.v_proj.weight": "attention.wv.weight",
    "self_attn.o_proj.weight": "attention.wo.weight",
    "mlp.gate_proj.weight": "feed_forward.w1.weight",
    "mlp.down_proj.weight": "feed_forward.w2.weight",
    "mlp.up_proj.weight": "feed_forward.w3.weight",
    "input_layernorm.weight": "attention_norm.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
}
LORA_TARGETS = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn",
                "o_proj": "self_attn", "gate_proj": "mlp", "up_proj": "mlp", "down_proj": "mlp"}


@dataclass(frozen=True)
class Tolerance:
    max_abs_diff: float | None  # None: reported, not checked
    min_top1_agreement: float | None
    greedy_identical: bool


TOLERANCES = {
    # Both sides compute in float32; only the order of additions differs (XNNPACK's GEMM tiling,
    # the custom sdpa). Measured: tiny model 4e-7, SmolLM2-135M 7e-5 (docs/executorch.md).
    "none": Tolerance(max_abs_diff=1e-3, min_top1_agreement=1.0, greedy_identical=True),
    # 4-bit weights of a small model move its logits by whole units: reported for the user.
    "8da4w": Tolerance(max_abs_diff=None, min_top1_agreement=None, greedy_identical=False),
}


@dataclass
class Verification:
    prompts: int
    positions: int  # next-token positions compared (prefill + one-token KV-cache steps)
    max_abs_diff: float  # .pte vs eager float32 with the adapter
    prefill_max_abs_diff: float  # the positions right after each prefill
    top1_agreement: float
    logit_cosine: float  # mean over positions
    greedy_identical: int  # prompts whose greedy tokens in the runtime match eager's
    runner_identical: int  # prompts whose TextLLMRunner text is the runtime's greedy tokens
    runner_tokens: int  # greedy tokens compared with TextLLMRunner (see verify)
    adapter_max_abs_change: float  # eager with vs without the adapter: the adapter is visible
    tolerance: Tolerance
    seconds: float

    def summary(self) -> str:
        return (f".pte vs eager with the adapter on {self.prompts} held-out prompts "
                f"({self.positions} positions through the KV cache): max |Δlogit| "
                f"{self.max_abs_diff:.3g} (after prefill {self.prefill_max_abs_diff:.3g}), top-1 "
                f"agreement {self.top1_agreement:.1%}, logit cosine {self.logit_cosine:.5f}; greedy "
                f"{GREEDY_TOKENS} tokens identical on {self.greedy_identical}/{self.prompts} "
                f"(TextLLMRunner {self.runner_identical}/{self.prompts}, {self.runner_tokens} "
                f"tokens); the adapter moves eager "
                f"logits by up to {self.adapter_max_abs_change:.3g}")

    def problems(self) -> list[str]:
        tol, found = self.tolerance, []
        if tol.max_abs_diff is not None and not self.max_abs_diff <= tol.max_abs_diff:
            found.append(f"max |Δlogit| {self.max_abs_diff:.3g} > {tol.max_abs_diff}")
        if tol.min_top1_agreement is not None and self.top1_agreement < tol.min_top1_agreement:
            found.append(f"top-1 agreement {self.top1_agreement:.1%} < {tol.min_top1_agreement:.0%}")
        if tol.greedy_identical and min(self.greedy_identical, self.runner_identical) < self.prompts:
            found.append(f"greedy tokens differ on {self.prompts - self.greedy_identical} prompts "
                         f"in the runtime, {self.prompts - self.runner_identical} in TextLLMRunner")
        return found


def add_arguments(parser: argparse.ArgumentParser, fmt: str) -> None:
    parser.add_argument("--quantize", choices=QUANTIZE, default="none",
                        help="none: fp32 weights (exact); 8da4w: int8 dynamic activations and "
                             "int4 weights in groups of 32 (about 1/3 of the size, approximate)")
    parser.add_argument("--layout", choices=LAYOUTS, default="adapter",
                        help="adapter: a small model.pte per run plus the base's foundation.ptd "
                             "(shared by every run on that base); single: one model.pte")
    parser.add_argument("--max-seq-len", type=int, default=512,
                        help="context length of the program's KV cache (capped at the model's)")


def export(run_dir: Path, out: Path | None, quantize: str = "none", layout: str = "adapter",
           max_seq_len: int = 512) -> Path:
    """Write RUN as an export_llm program folder, verified in the ExecuTorch runtime."""
    if quantize not in QUANTIZE:
        raise UserError(f"--quantize {quantize}: choose one of {', '.join(QUANTIZE)}")
    if layout not in LAYOUTS:
        raise UserError(f"--layout {layout}: choose one of {', '.join(LAYOUTS)}")
    if max_seq_len < 2:
        raise UserError(f"--max-seq-len {max_seq_len}: must be at least 2")
    config_path, adapter_dir = run_folder(run_dir)
    base_config = check_supported(_base_reference(config_path))
    targets = _adapter_targets(adapter_dir)
    name = "executorch" + ("" if quantize == "none" else f"-{quantize}") + \
        ("" if layout == "adapter" else "-single")
    out = out or run_dir / "export" / name
    _prepare_folder(out)
    stages = Stages("executorch", STAGES)

    with stages.stage("load", f"base model + adapter of {run_dir}"):
        run = load_run(config_path, adapter_dir)
        max_seq_len = min(max_seq_len, run.context or max_seq_len)

    with tempfile.TemporaryDirectory(prefix="edgetune-executorch-", dir=out) as scratch:
        scratch = Path(scratch)
        with stages.stage("convert", "checkpoint and adapter in ExecuTorch's Llama layout"):
            llm_config = _llm_config(run, base_config, targets, scratch, quantize, layout,
                                     max_seq_len)
        # The lowered program (the size of the model) is dropped once written.
        foundation = _serialize(_export_and_lower(llm_config, stages), out, scratch,
                                _foundation_key(run, quantize, max_seq_len) if layout == "adapter"
                                else None, stages)
        _write_tokenizer(run.tokenizer, out)

    with stages.stage("verify", "ExecuTorch runtime and TextLLMRunner vs eager PyTorch + adapter"):
        report = verify(out, run, TOLERANCES[quantize], max_seq_len)
    say(f"executorch: {report.summary()}")
    metadata = _metadata(run, out, quantize, layout, max_seq_len, stages.seconds, report,
                         foundation)
    write_atomic(out / METADATA, lambda partial: partial.write_text(
        json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"))
    write_atomic(out / "README.md", lambda partial: partial.write_text(
        _readme(metadata), encoding="utf-8"))
    problems = report.problems()
    if problems:
        # Renamed, not deleted: kept for a bug report, but `chat --pte` and `push` (which look
        # for model.pte) cannot pick it up as if it had passed.
        rejected = out / (PROGRAM + ".rejected")
        (out / PROGRAM).replace(rejected)
        raise UserError(f"{rejected}: the ExecuTorch program disagrees with eager PyTorch "
                        f"({'; '.join(problems)}); {report.summary()}. The numbers are in "
                        f"{out / METADATA}; do not ship this program, and please report this")
    sizes = f"{PROGRAM} {metadata['program_bytes'] / 2**20:.1f} MiB" + (
        f" + {FOUNDATION} {metadata['data_bytes'] / 2**20:.1f} MiB" if foundation else "")
    say(f"executorch: {out}: {sizes}")
    return out


# ---- what can be exported ------------------------------------------------------------------

def _base_reference(config_path: Path) -> str:
    from engine.api import config as config_io
    from engine.model.loading import resolve_reference

    return resolve_reference(config_io.load(config_path).model)


def base_config(reference: str) -> dict:
    """The base's Hugging Face config (a .gguf's from its header), without loading weights."""
    from engine.model.loading import gguf_config, local_folder, read_gguf

    if reference.endswith(".gguf"):
        return gguf_config(read_gguf(Path(reference)))
    path = (Path(reference) if Path(reference).is_dir() else local_folder(reference)) / "config.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: cannot read the base model's config ({exc})") from None


def check_supported(reference: str) -> dict:
    """The base's config if export_llm's Llama definition can run it; else a UserError."""
    config = base_config(reference)
    model_type = config.get("model_type", "unknown")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    reasons = []
    if model_type != "llama":
        reasons.append(f"model type {model_type!r}; only Llama-architecture models (Llama, "
                       "SmolLM2, TinyLlama) are exported through export_llm so far")
    else:
        if config.get("attention_bias") or config.get("mlp_bias"):
            reasons.append("projection biases")
        if config.get("hidden_act", "silu") != "silu":
            reasons.append(f"activation {config.get('hidden_act')!r}")
        if rope.get("rope_type", rope.get("type", "default")) != "default":
            reasons.append(f"RoPE scaling {rope.get('rope_type', rope.get('type'))!r} (Llama 3.x "
                           "style rope scaling is not in export_llm's HF-RoPE path)")
    if reasons:
        raise UserError(f"--format executorch is not supported for this architecture yet "
                        f"({reference}: {'; '.join(reasons)}); export --format gguf or "
                        "merged-gguf instead (llama.cpp apps on phones run those)")
    return config


def _adapter_targets(adapter_dir: Path) -> list[str]:
    try:
        peft = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"{adapter_dir}/adapter_config.json: cannot read it ({exc})") from None
    targets = peft.get("target_modules") or []
    targets = sorted(targets) if isinstance(targets, list) else [targets]
    unsupported = [t for t in targets if t not in LORA_TARGETS]
    if unsupported or peft.get("use_dora") or peft.get("use_rslora") or \
            peft.get("rank_pattern") or peft.get("alpha_pattern"):
        what = ", ".join(unsupported) or "DoRA, rsLoRA or per-layer ranks"
        raise UserError(f"{adapter_dir}: this adapter ({what}) is not supported by export_llm's "
                        "LoRA; export --format merged-gguf instead")
    return targets


# ---- conversion to export_llm's inputs -----------------------------------------------------

@dataclass
class ExportRun:
    config: object  # engine.api.config.TrainConfig
    config_path: Path
    adapter_dir: Path
    folder: Path  # Hugging Face folder of the base
    reference: str
    tokenizer: object
    adapted: object  # peft.PeftModel: the eager reference
    context: int | None


def load_run(config_path: Path, adapter_dir: Path) -> ExportRun:
    from peft import PeftModel

    from engine.api import config as config_io
    from engine.model.loading import context_length, load, resolve_reference

    config = config_io.load(config_path)
    reference = resolve_reference(config.model)
    loaded = load(reference, torch.device("cpu"), torch.float32, config.trust_remote_code)
    adapted = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).eval()
    return ExportRun(config, config_path, adapter_dir, loaded.folder, reference, loaded.tokenizer,
                adapted, context_length(loaded.model))


def meta_checkpoint(base_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF Llama weights → ExecuTorch's Llama names, q/k NOT permuted (the model uses HF RoPE)."""
    converted = {}
    for key, tensor in base_state.items():
        if key.endswith("rotary_emb.inv_freq"):
            continue
        if key.startswith("model.layers."):
            _, _, layer, rest = key.split(".", 3)
            name = HF_TO_META.get(rest)
            name = name and f"layers.{layer}.{name}"
        else:
            name = HF_TO_META.get(key)
        if name is None:
            raise UserError(f"base weight {key} has no place in ExecuTorch's Llama definition; "
                            "--format executorch is not supported for this model yet")
        converted[name] = tensor.detach().float().contiguous()
    converted.setdefault("output.weight", converted["tok_embeddings.weight"])  # tied embeddings
    return converted


def _params(config: dict, vocab_size: int) -> dict:
    heads = int(config["num_attention_heads"])
    rope = config.get("rope_parameters") or {}
    return {
        "dim": int(config["hidden_size"]), "n_layers": int(config["num_hidden_layers"]),
        "n_heads": heads, "n_kv_heads": int(config.get("num_key_value_heads") or heads),
        "head_dim": int(config.get("head_dim") or config["hidden_size"] // heads),
        "hidden_dim": int(config["intermediate_size"]), "vocab_size": vocab_size,
        "norm_eps": float(config.get("rms_norm_eps", 1e-5)),
        "rope_theta": float(rope.get("rope_theta", config.get("rope_theta", 10000.0))),
        "use_scaled_rope": False, "use_hf_rope": True, "attention_qkv_bias": False,
    }


def _adapter_checkpoint(adapted, targets: list[str], n_layers: int, path: Path) -> None:
    """PEFT's A/B in the names export_llm's loader maps, zeros where a layer has no adapter
    (lora.top_layers): export_llm puts LoRA on every layer of a target module."""
    from safetensors.torch import save_file

    state = {k: v for k, v in adapted.state_dict().items() if "lora_" in k}
    rank = adapted.peft_config["default"].r
    modules = dict(adapted.named_modules())
    tensors = {}
    for layer in range(n_layers):
        for target in targets:
            prefix = f"base_model.model.model.layers.{layer}.{LORA_TARGETS[target]}.{target}"
            a, b = state.get(f"{prefix}.lora_A.default.weight"), state.get(f"{prefix}.lora_B.default.weight")
            if a is None:
                base = modules[prefix].get_base_layer() if hasattr(modules[prefix], "get_base_layer") \
                    else modules[prefix]
                a = torch.zeros(rank, base.in_features)
                b = torch.zeros(base.out_features, rank)
            tensors[f"{prefix}.lora_A.weight"] = a.detach().float().contiguous()
            tensors[f"{prefix}.lora_B.weight"] = b.detach().float().contiguous()
    save_file(tensors, str(path))


def _llm_config(run: ExportRun, config: dict, targets: list[str], scratch: Path, quantize: str,
                layout: str, max_seq_len: int):
    from executorch.extension.llm.export.config.llm_config import LlmConfig, LoraConfig, ModelType


    base = run.adapted.get_base_model()
    with run.adapted.disable_adapter():
        state = {k: v for k, v in base.state_dict().items() if "lora_" not in k}
    state = {k.replace(".base_layer.", "."): v for k, v in state.items()}
    torch.save(meta_checkpoint(state), scratch / "checkpoint.pth")
    params = _params(config, run.adapted.get_input_embeddings().num_embeddings)
    (scratch / "params.json").write_text(json.dumps(params))
    _adapter_checkpoint(run.adapted, targets, params["n_layers"], scratch / "adapter.safetensors")
    peft = run.adapted.peft_config["default"]

    cfg = LlmConfig()
    # The Llama definition the export builds; the class only names the program and picks the
    # RoPE scaling factor, which plain RoPE (checked above) does not use.
    cfg.base.model_class = ModelType.llama3
    cfg.base.checkpoint = str(scratch / "checkpoint.pth")
    cfg.base.params = str(scratch / "params.json")
    cfg.base.lora_config = LoraConfig(adapter_checkpoint=str(scratch / "adapter.safetensors"),
                                      lora_rank=int(peft.r), lora_alpha=peft.lora_alpha,
                                      target_modules=targets)
    bos = run.tokenizer.bos_token_id
    cfg.base.metadata = json.dumps({"get_bos_id": bos if bos is not None else -1,
                                    "get_eos_ids": stop_token_ids(run.tokenizer)})
    cfg.model.use_kv_cache = True
    cfg.model.use_sdpa_with_kv_cache = True
    cfg.model.enable_dynamic_shape = True
    cfg.export.max_seq_length = cfg.export.max_context_length = max_seq_len
    cfg.export.output_dir = str(scratch)
    if layout == "adapter":
        cfg.export.foundation_weights_file = FOUNDATION
    cfg.backend.xnnpack.enabled = True
    cfg.backend.xnnpack.extended_ops = True
    if quantize == "8da4w":
        cfg.quantization.qmode = "8da4w"
        cfg.quantization.group_size = GROUP_SIZE
    return cfg


def _export_and_lower(llm_config, stages: Stages):
    """export_llm's XNNPACK path (`export_llama_lib._export_llama`), in stages the window shows."""
    from executorch.examples.models.llama import export_llama_lib as lib

    with stages.stage("export", "export_llm's Llama definition with the adapter, torch.export"):
        lib._validate_args(llm_config)
        quant_params, quantizers, quant_dtype = lib.get_quantizer_and_quant_params(llm_config)
        exported = lib._prepare_for_llama_export(llm_config).export()
        exported.run_canonical_optimizations()

    with stages.stage("lower", "XNNPACK partitioner"):
        tag = None
        if llm_config.export.foundation_weights_file:
            # export_llm's own rule: everything but the LoRA weights goes to the foundation file.
            tag = lambda node: None if "lora" in node.name else FOUNDATION  # noqa: E731
        builder = lib._to_edge_and_lower_llama_xnnpack(
            exported, exported.modelname, [], quant_params, quantizers, quant_dtype,
            xnnpack_extended_ops=llm_config.backend.xnnpack.extended_ops, gen_tag_fn=tag)
    return builder.export_program


def _serialize(lowered, out: Path, scratch: Path, foundation_key: str | None,
               stages: Stages) -> dict | None:
    def write_program(path: Path) -> None:
        # write_to_file streams the segments; `.buffer` would first join them in memory.
        with path.open("wb") as handle:
            lowered.write_to_file(handle)

    with stages.stage("serialize", str(out / PROGRAM)):
        write_atomic(out / PROGRAM, write_program)
        foundation = None
        if foundation_key is not None:
            lowered.write_tensor_data_to_file(outdir=str(scratch))
            foundation = _place_foundation(scratch / FOUNDATION, out / FOUNDATION, foundation_key)
    return foundation


def _foundation_key(run: ExportRun, quantize: str, max_seq_len: int) -> str:
    import executorch


    parts = {"base": {p.name: file_hash(p) for p in _base_weights(run.reference, run.folder)},
             "quantize": quantize, "max_seq_len": max_seq_len,
             "executorch": getattr(executorch, "__version__", _version("executorch"))}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def _place_foundation(written: Path, target: Path, key: str) -> dict:
    """The foundation .ptd into the export, through the per-base cache (hard link, else copy)."""
    from engine.model.loading import cache_dir

    digest = file_hash(written)
    cached = cache_dir() / "executorch-foundation" / key / FOUNDATION
    reused = cached.is_file() and file_hash(cached) == digest
    if not reused:
        with contextlib.suppress(OSError):
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = partial_path(cached)
            shutil.copyfile(written, partial)
            partial.replace(cached)
    target.unlink(missing_ok=True)
    try:
        os.link(cached, target)
    except OSError:  # no cache (read-only), or another filesystem
        write_atomic(target, lambda partial: shutil.copyfile(written, partial))
    return {"file": FOUNDATION, "sha256": digest, "cache_key": key, "cache_path": str(cached),
            "reused_from_cache": reused}


def _write_tokenizer(tokenizer, out: Path) -> None:
    tokenizer.save_pretrained(str(out))
    # transformers 5 writes the template to chat_template.jinja; the phone apps read it from
    # tokenizer_config.json.
    path = out / "tokenizer_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if getattr(tokenizer, "chat_template", None):
        config["chat_template"] = tokenizer.chat_template
    path.write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _prepare_folder(out: Path) -> None:
    # Before minutes of lowering: a folder that cannot be written fails now.
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UserError(f"--out {out}: cannot write there ({exc.strerror or exc}); "
                        "give a folder you can write to") from None
    for stale in (PROGRAM, PROGRAM + ".rejected", FOUNDATION):
        (out / stale).unlink(missing_ok=True)


# ---- verification --------------------------------------------------------------------------

def verify_examples(run: ExportRun, max_seq_len: int) -> list[tuple[list[int], str]]:
    """(prompt + answer token ids, prompt text) of the first held-out examples of the run."""
    from engine.data.dataset import find_eval_file, load_dataset, split

    cfg = run.config
    options = dict(prompt_template=cfg.prompt_template, schema=cfg.schema,
                   skip_bad_rows=cfg.skip_bad_rows)
    try:
        data = load_dataset(cfg.dataset, task=cfg.task, label_words=cfg.label_words, **options)
        eval_file = cfg.eval_dataset or find_eval_file(cfg.dataset)
        held_out = load_dataset(eval_file, task=data.task, label_words=data.label_words, **options) \
            if eval_file else split(data, cfg.eval_fraction, cfg.seed)[1]
    except UserError as exc:
        raise UserError(f"{run.config_path}: the run's evaluation data cannot be read for "
                        f"verification ({exc})") from None
    limit = min(VERIFY_TOKENS, max_seq_len - GREEDY_TOKENS)
    examples = []
    for example in held_out.render(run.tokenizer).examples[:VERIFY_PROMPTS]:
        ids = run.tokenizer(example.prompt + example.completion, add_special_tokens=False)["input_ids"]
        examples.append((ids[:limit], example.prompt))
    return examples


def verify(out: Path, run: ExportRun, tolerance: Tolerance, max_seq_len: int) -> Verification:
    """The program in ExecuTorch's runtime and TextLLMRunner against eager PyTorch + PEFT."""
    started = time.perf_counter()

    program = Program(out)
    runner = program.runner()
    stop_ids = set(stop_token_ids(run.tokenizer))
    diffs, prefill_diffs, agree, cosines, adapter_change = [], [], [], [], []
    greedy_same = runner_same = runner_tokens = 0
    for ids, prompt_text in verify_examples(run, max_seq_len):
        prompt = run.tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        # Half the prompt in one prefill call, the rest one token a call through the KV cache.
        prefill = max(1, min(len(prompt) // 2, len(ids) - 1))
        tokens = torch.tensor([ids])
        with torch.no_grad():
            eager = run.adapted(input_ids=tokens).logits[0].float().numpy()
            with run.adapted.disable_adapter():
                base = run.adapted(input_ids=tokens).logits[0].float().numpy()
        got = program.teacher_forced(ids, prefill)
        want = eager[prefill - 1:]
        diff = np.abs(got - want)
        diffs.append(diff.max())
        prefill_diffs.append(diff[0].max())
        agree.append(got.argmax(-1) == want.argmax(-1))
        cosines.append((got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1))
        adapter_change.append(np.abs(eager - base).max())
        greedy = program.greedy(prompt, GREEDY_TOKENS, stop_ids)
        greedy_same += greedy == _eager_greedy(run, prompt, stop_ids)
        # TextLLMRunner's Python binding hands each token's text to a str callback and stops
        # at a token that is part of a UTF-8 character (UnicodeDecodeError): compare up to
        # the first such token.
        whole = next((i for i, t in enumerate(greedy)
                      if "\ufffd" in run.tokenizer.decode([t])), len(greedy))
        pieces = runner_generate(runner, prompt_text, GREEDY_TOKENS, 0.0)
        runner_same += "".join(pieces) == run.tokenizer.decode(greedy[:whole],
                                                                skip_special_tokens=True)
        runner_tokens += whole
    agreement = np.concatenate(agree)
    return Verification(
        prompts=len(diffs), positions=int(agreement.size), max_abs_diff=float(max(diffs)),
        prefill_max_abs_diff=float(max(prefill_diffs)), top1_agreement=float(agreement.mean()),
        logit_cosine=float(np.concatenate(cosines).mean()), greedy_identical=greedy_same,
        runner_identical=runner_same, runner_tokens=runner_tokens,
        adapter_max_abs_change=float(max(adapter_change)),
        tolerance=tolerance, seconds=round(time.perf_counter() - started, 3))


def _eager_greedy(run: ExportRun, prompt: list[int], stop_ids: set[int]) -> list[int]:
    with torch.no_grad():
        output = run.adapted.generate(input_ids=torch.tensor([prompt]), max_new_tokens=GREEDY_TOKENS,
                                      do_sample=False, eos_token_id=sorted(stop_ids),
                                      pad_token_id=min(stop_ids))
    return [t for t in output[0, len(prompt):].tolist() if t not in stop_ids]


def _base_weights(reference: str, folder: Path) -> list[Path]:
    """The files that define the base: the GGUF the user gave, else the folder's weights."""
    if reference.endswith(".gguf"):
        return [Path(reference)]
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def _metadata(run: ExportRun, out: Path, quantize: str, layout: str, max_seq_len: int,
              seconds: dict[str, float], report: Verification, foundation: dict | None) -> dict:
    from engine import __version__

    cfg = run.config
    classification = bool(cfg.label_words) or cfg.task == "classification"
    return {
        "format": "edgetune-executorch",
        "format_version": 2,
        "program": PROGRAM,
        "program_sha256": file_hash(out / PROGRAM),
        "program_bytes": (out / PROGRAM).stat().st_size,
        "data": foundation,
        "data_bytes": (out / FOUNDATION).stat().st_size if foundation else 0,
        "layout": layout,
        "forward": "export_llm LLM-runner contract: forward(tokens int64 (1, T), input_pos int64 "
                   "(1,)) -> logits float32 (1, vocab), KV cache in the program",
        "max_seq_len": max_seq_len,
        "vocab_size": run.adapted.get_input_embeddings().num_embeddings,
        "chat_template": getattr(run.tokenizer, "chat_template", None),
        "bos_token_id": run.tokenizer.bos_token_id,
        "eos_token_id": run.tokenizer.eos_token_id,
        "stop_token_ids": stop_token_ids(run.tokenizer),
        "task": cfg.task,
        "prompt_template": cfg.prompt_template if classification else None,
        "label_words": list(cfg.label_words) if classification else [],
        "base_model": run.reference,
        "base_model_sha256": {p.name: file_hash(p) for p in _base_weights(run.reference, run.folder)},
        "adapter_sha256": file_hash(run.adapter_dir / "adapter_model.safetensors"),
        "run_dir": str(run.config_path.parent.resolve()),
        "export": {"tool": "executorch.extension.llm.export (export_llm)", "backend": "xnnpack",
                   "quantize": quantize, "group_size": GROUP_SIZE if quantize == "8da4w" else None,
                   "engine_version": __version__, "executorch_version": _version("executorch"),
                   "torch_version": _version("torch")},
        "stage_seconds": seconds,
        "verification": asdict(report),
    }


def _readme(metadata: dict) -> str:
    data = metadata["data"]
    files = f"`{PROGRAM}`" + (f" + `{FOUNDATION}` (the base's weights; pass it as the data "
                              "file)" if data else " (one file: weights included)")
    data_argument = f', data_path="{FOUNDATION}"' if data else ""
    return f"""# EdgeTune ExecuTorch export

Base `{metadata['base_model']}` with this run's LoRA adapter, {metadata['export']['quantize']}
weights, XNNPACK, KV cache, context {metadata['max_seq_len']} tokens.
Program: {files}. Tokenizer: `tokenizer.json`, `tokenizer_config.json` (chat template inside).
Stop token ids: {metadata['stop_token_ids']}. Checked against PyTorch: see `metadata.json`.

The program follows ExecuTorch's LLM-runner contract (made by `export_llm`), so the runners
built on ExecuTorch's C++ `TextLLMRunner` load it:

- **Python / desktop**: `python -m engine chat --pte {PROGRAM}` (EdgeTune), or
  `TextLLMRunner("{PROGRAM}", "tokenizer.json"{data_argument})`
  after `import executorch.extension.llm.custom_ops.custom_ops`.
- **ExecuTorch Android demo app (LlamaDemo)**: copy the files to the phone
  (`python -m engine push THIS_FOLDER`, or `adb push` to `/data/local/tmp/llama/`), then pick the
  `.pte` as the model and `tokenizer.json` as the tokenizer in the app's settings. An app that
  takes a single model file needs the single-file export (`--layout single`).
- **react-native-executorch**: `useLLM({{ model: {{ modelSource, tokenizerSource,
  tokenizerConfigSource }} }})` with `{PROGRAM}`, `tokenizer.json` and `tokenizer_config.json`.
  It takes one `.pte` file: use the single-file export (`--layout single`).

Apply the chat template from `tokenizer_config.json` to the conversation before generating.
"""


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


