"""GGUF exports for llama.cpp, LM Studio and Ollama: a LoRA adapter, or a merged full model.

The layout follows llama.cpp's own converters (convert_hf_to_gguf.py, convert_lora_to_gguf.py):

- Tensor names come from gguf's TensorNameMap (`model.layers.3.self_attn.q_proj.weight` →
  `blk.3.attn_q.weight`). An adapter stores A (rank × in) as `<name>.lora_a` and B (out × rank)
  as `<name>.lora_b`, with `general.type = adapter`, `adapter.type = lora` and
  `adapter.lora.alpha`; llama.cpp applies `alpha / rank * B @ A`, the same scale as peft.
- Llama-family Q and K rows are permuted within each head: Hugging Face pairs rotary dimensions
  (i, i + d/2), llama.cpp's "normal" rope pairs (2i, 2i + 1). The adapter's B rows follow the same
  permutation (A multiplies the input side, which is unchanged). Gemma 3 uses llama.cpp's NeoX
  rope, whose pairing is Hugging Face's, so nothing is permuted there.

After writing, the export is loaded by llama.cpp and compared with torch + peft (see
engine/export/gguf_verify.py); an Ollama Modelfile (`<name>.Modelfile`) is written beside it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

from engine.api.errors import UserError
from engine.export import run_folder
from engine.export.gguf_writer import (
    ARCHS,
    OUTTYPES,
    QUANTISATIONS,
    ArchSpec,
    quantize,
    stop_words,
    write_adapter,
    write_model,
)
from engine.files import write_atomic
from engine.session import Stages, say


@dataclass
class Run:
    """What an export needs to know about a finished training run."""

    run_dir: Path
    adapter_dir: Path
    model_reference: str  # as resolved from config.yaml (a path)
    torch_folder: Path  # Hugging Face folder of the base (the dequantised cache for GGUF)
    hf_config: dict
    arch: ArchSpec
    base_gguf: Path | None  # the base model as GGUF, when training started from one
    chat_template: str | None


def add_arguments(parser: argparse.ArgumentParser, fmt: str) -> None:
    parser.add_argument("--no-verify", dest="verify", action="store_false",
                        help="skip loading the export in llama.cpp and comparing with torch")
    if fmt == "gguf":
        parser.add_argument("--base-gguf", type=Path, default=None,
                            help="the base model as GGUF, for a Hugging Face folder base "
                                 "(default: write RUN_DIR/export/base-f16.gguf)")
    else:
        parser.add_argument("--outtype", choices=OUTTYPES, default="f16",
                            help="weights of the merged model: f16 (half of f32), or llama.cpp's "
                                 "q8_0 / q4_k_m (about a half / a quarter of f16)")


def load_run(run_dir: Path) -> Run:
    from engine.api import config as config_io
    from engine.model.loading import local_folder, resolve_reference

    config_path, adapter_dir = run_folder(run_dir)
    config = config_io.load(config_path)
    reference = resolve_reference(config.model)
    folder = local_folder(reference)
    hf_config = json.loads((folder / "config.json").read_text())
    model_type = hf_config.get("model_type", "")
    if model_type not in ARCHS:
        raise UserError(f"{config_path}: model {reference} is a {model_type or 'unknown'} model; "
                        f"GGUF export supports {', '.join(sorted(ARCHS))}")
    template_file = folder / "chat_template.jinja"
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text()) \
        if (folder / "tokenizer_config.json").is_file() else {}
    chat_template = template_file.read_text() if template_file.is_file() \
        else tokenizer_config.get("chat_template")
    base_gguf = Path(reference) if reference.endswith(".gguf") else None
    return Run(run_dir, adapter_dir, reference, folder, hf_config, ARCHS[model_type], base_gguf,
               chat_template)


def export(run_dir: Path, out: Path | None, verify: bool = True,
           base_gguf: Path | None = None) -> Path:
    """Write the run's adapter as GGUF (+ Modelfile); verify it in llama.cpp unless told not to."""
    from engine.export.gguf_verify import verify_adapter
    from engine.export.ollama import write_modelfile

    run = load_run(run_dir)
    out = out or run_dir / "export" / "adapter.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    # A Hugging Face folder base has no GGUF of its own: convert it once, beside the adapter.
    converted = out.parent / "base-f16.gguf"
    base_gguf = base_gguf or run.base_gguf or converted
    convert = not base_gguf.is_file()
    if convert and base_gguf != converted:
        raise UserError(f"--base-gguf {base_gguf}: no such file")
    stages = Stages("gguf", ("base",) * convert + ("adapter",) + ("verify",) * verify)
    if convert:
        with stages.stage("base", f"the base model as GGUF: {base_gguf}"):
            write_model(run.torch_folder, base_gguf, "f16")
    with stages.stage("adapter", str(out)):
        write_adapter(run.adapter_dir, run.hf_config, run.arch, out)
    if verify:
        with stages.stage("verify", "llama.cpp against torch + peft"):
            report = verify_adapter(base_gguf, out, run.torch_folder, run.adapter_dir)
            write_atomic(out.parent / f"{out.stem}.verification.json",
                         lambda partial: partial.write_text(report.to_json()))
    write_modelfile(out.with_suffix(".Modelfile"), base_gguf, out, run.chat_template,
                    stop_words(run.torch_folder))
    return out


def export_merged(run_dir: Path, out: Path | None, verify: bool = True,
                  outtype: str = "f16") -> Path:
    """Write base + adapter merged into one GGUF model (+ Modelfile). A quantised outtype is
    made from an f16 file by llama.cpp's quantiser; verification checks that f16 file against
    torch and reports how far the quantisation moved it."""
    import tempfile

    from engine.export.gguf_verify import quantised_agreement, verify_merged
    from engine.export.ollama import write_modelfile

    if outtype not in OUTTYPES:
        raise UserError(f"--outtype {outtype}: choose one of {', '.join(OUTTYPES)}")
    run = load_run(run_dir)
    out = out or run_dir / "export" / f"merged-{outtype}.gguf"
    out.parent.mkdir(parents=True, exist_ok=True)
    if run.base_gguf is not None:
        say(f"gguf: the base is a GGUF file; the merged model holds its dequantised weights in "
            f"{outtype}")
    quantised = outtype in QUANTISATIONS
    stages = Stages("merged-gguf", ("merge",) + ("verify",) * verify + ("quantise",) * quantised)
    with tempfile.TemporaryDirectory(prefix="edgetune-merge-", dir=out.parent) as scratch:
        written = Path(scratch) / "merged-f16.gguf" if quantised else out
        with stages.stage("merge", str(written)):
            write_model(run.torch_folder, written, "f16" if quantised else outtype, run.adapter_dir)
        report = None
        if verify:
            with stages.stage("verify", "llama.cpp against torch + peft"):
                report = verify_merged(written, run.torch_folder, run.adapter_dir)
        if quantised:
            with stages.stage("quantise", f"{outtype} by llama.cpp's quantiser: {out}"):
                write_atomic(out, lambda partial: quantize(written, partial, outtype))
        if report is not None:
            result = json.loads(report.to_json())
            if quantised:
                result["quantised"] = {"outtype": outtype,
                                       **quantised_agreement(out, written, run.torch_folder)}
            write_atomic(out.parent / f"{out.stem}.verification.json",
                         lambda partial: partial.write_text(json.dumps(result, indent=2)))
    write_modelfile(out.with_suffix(".Modelfile"), out, None, run.chat_template,
                    stop_words(run.torch_folder))
    return out
