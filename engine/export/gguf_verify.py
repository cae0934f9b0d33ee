"""Check a GGUF export in llama.cpp against torch + peft on the same token ids.

What is compared, per sample prompt and position (full-vocabulary logits):

- the LoRA-induced change: (adapter logits − base logits) in llama.cpp against the same
  difference in torch; their Pearson correlation says whether llama.cpp applies the adapter to
  the right rows, in the right layers, at the right scale;
- top-1 agreement of the adapted model's next token, and the largest absolute logit difference;
- for an adapter: lora_scale = 0 must reproduce the base logits bit for bit.

Token ids come from the Hugging Face tokenizer and are fed to both sides, so a tokenizer
difference cannot hide in the numbers; a merged model's own tokenizer is checked separately.

Tolerances: with float weights on both sides (f32/f16) the only differences are rounding, so
the change must correlate almost perfectly (SmolLM2-135M, f16 GGUF: 0.9997; the tiny test
model, f32: 0.9999999). A quantised base (Q4/Q8 GGUF against its dequantised torch copy) shifts
every activation that reaches the adapter, so there the correlation says little: on SmolLM2 Q4_1
it is 0.81-0.85 with the right Q/K permutation and 0.78 without (top-1 agreement 93-100%). For a
quantised Llama base the adapter is therefore also checked, decisively, against an f16 GGUF of
the dequantised weights (written to a temporary folder); the quantised numbers get loose bounds.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.api.errors import UserError

log = logging.getLogger(__name__)

SAMPLE_PROMPTS = [
    "The movie was surprisingly good, and the acting",
    "Question: what is 3 plus 4?\nAnswer:",
    "I bought this product last week. It was",
    "Once upon a time, in a small village by the sea,",
]
MAX_TOKENS = 48
# Below this RMS the adapter barely changes the logits (e.g. after a few training steps) and a
# correlation is mostly float noise; agreement and max difference are still checked.
MIN_DELTA_RMS = 1e-4


@dataclass(frozen=True)
class Tolerance:
    min_delta_correlation: float
    min_top1_agreement: float


FLOAT_BASE = Tolerance(min_delta_correlation=0.999, min_top1_agreement=0.98)
QUANTISED_BASE = Tolerance(min_delta_correlation=0.7, min_top1_agreement=0.85)


@dataclass
class Verification:
    kind: str  # "adapter" | "merged"
    positions: int
    delta_rms: float  # size of the LoRA-induced change in torch
    delta_correlation: float | None  # None when delta_rms < MIN_DELTA_RMS
    top1_agreement: float
    max_abs_diff: float  # adapted logits, llama.cpp vs torch
    base_max_abs_diff: float | None  # base logits, llama.cpp vs torch (quantisation shows here)
    scale0_exact: bool | None  # adapter only
    tokenizer_agreement: float | None  # merged only: prompts tokenised identically
    # Quantised base only: the same comparison on an f16 GGUF of the dequantised weights.
    float_base: dict | None
    tolerance: Tolerance
    seconds: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def summary(self) -> str:
        corr = "n/a" if self.delta_correlation is None else f"{self.delta_correlation:.5f}"
        return (f"llama.cpp vs torch on {self.positions} positions: LoRA-change correlation {corr} "
                f"(rms {self.delta_rms:.3g}), top-1 agreement {self.top1_agreement:.1%}, "
                f"max |Δlogit| {self.max_abs_diff:.3g}"
                + ("" if self.base_max_abs_diff is None else f" (base {self.base_max_abs_diff:.3g})")
                + ("" if self.float_base is None else
                   f"; on an f16 copy of the base: correlation "
                   f"{self.float_base['delta_correlation']:.5f}, top-1 "
                   f"{self.float_base['top1_agreement']:.1%}"))


def _prompt_ids(folder: Path) -> list[list[int]]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    return [tokenizer(text)["input_ids"][:MAX_TOKENS] for text in SAMPLE_PROMPTS]


def torch_logits(folder: Path, adapter_dir: Path, prompts: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(base, adapted) logits stacked over every prompt position, float32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()

    def run(m) -> np.ndarray:
        with torch.no_grad():
            return np.concatenate([m(torch.tensor([ids])).logits[0].numpy() for ids in prompts])

    base = run(model)
    adapted = run(PeftModel.from_pretrained(model, str(adapter_dir)).eval())
    return base, adapted


def llama_logits(model_path: Path, prompts: list[list[int]], lora_path: Path | None = None,
                 lora_scale: float = 1.0) -> np.ndarray:
    from llama_cpp import Llama

    llm = Llama(model_path=str(model_path), lora_path=str(lora_path) if lora_path else None,
                lora_scale=lora_scale, logits_all=True, n_ctx=MAX_TOKENS + 16,
                n_batch=MAX_TOKENS + 16, verbose=False, seed=0)
    rows = []
    for ids in prompts:
        llm.reset()
        llm.eval(ids)
        rows.append(np.array(llm.scores[: len(ids)], dtype=np.float32))
    llm.close()
    return np.concatenate(rows)


def _is_quantised(model_path: Path) -> bool:
    from gguf import GGMLQuantizationType, GGUFReader

    float_types = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}
    return any(t.tensor_type not in float_types for t in GGUFReader(str(model_path)).tensors)


def _compare(kind: str, cpp_base: np.ndarray, cpp_adapted: np.ndarray, torch_base: np.ndarray,
             torch_adapted: np.ndarray, tolerance: Tolerance) -> dict:
    vocab = min(cpp_base.shape[1], torch_base.shape[1])
    cpp_base, cpp_adapted = cpp_base[:, :vocab], cpp_adapted[:, :vocab]
    torch_base, torch_adapted = torch_base[:, :vocab], torch_adapted[:, :vocab]
    delta_torch = torch_adapted - torch_base
    delta_cpp = cpp_adapted - cpp_base
    delta_rms = float(np.sqrt(np.mean(delta_torch**2)))
    correlation = None
    if delta_rms >= MIN_DELTA_RMS:
        correlation = float(np.corrcoef(delta_cpp.ravel(), delta_torch.ravel())[0, 1])
    return dict(
        kind=kind,
        positions=int(cpp_base.shape[0]),
        delta_rms=delta_rms,
        delta_correlation=correlation,
        top1_agreement=float(np.mean(cpp_adapted.argmax(1) == torch_adapted.argmax(1))),
        max_abs_diff=float(np.abs(cpp_adapted - torch_adapted).max()),
        base_max_abs_diff=float(np.abs(cpp_base - torch_base).max()),
        tolerance=tolerance,
    )


def _check(report: Verification, path: Path) -> Verification:
    log.info("%s: %s", path.name, report.summary())
    problems = []
    tol = report.tolerance
    if report.delta_correlation is not None and report.delta_correlation < tol.min_delta_correlation:
        problems.append(f"LoRA-change correlation {report.delta_correlation:.4f} < "
                        f"{tol.min_delta_correlation}")
    if report.top1_agreement < tol.min_top1_agreement:
        problems.append(f"top-1 agreement {report.top1_agreement:.1%} < {tol.min_top1_agreement:.0%}")
    float_base = report.float_base
    if float_base is not None and (float_base["delta_correlation"] or 1.0) < \
            FLOAT_BASE.min_delta_correlation:
        problems.append(f"on an f16 copy of the base, LoRA-change correlation "
                        f"{float_base['delta_correlation']:.4f} < {FLOAT_BASE.min_delta_correlation}")
    if report.scale0_exact is False:
        problems.append("lora_scale=0 does not reproduce the base logits exactly")
    if report.tokenizer_agreement is not None and report.tokenizer_agreement < 1.0:
        problems.append(f"llama.cpp tokenises {1 - report.tokenizer_agreement:.0%} of the sample "
                        "prompts differently from Hugging Face")
    if problems:
        raise UserError(f"{path}: llama.cpp disagrees with torch ({'; '.join(problems)}); "
                        f"{report.summary()}. The file was written but should not be trusted; "
                        "re-run with --no-verify to keep it anyway, and please report this")
    return report


def verify_adapter(base_gguf: Path, adapter_gguf: Path, torch_folder: Path,
                   adapter_dir: Path) -> Verification:
    """Base GGUF + GGUF adapter in llama.cpp against torch + the PEFT adapter."""
    started = time.perf_counter()
    prompts = _prompt_ids(torch_folder)
    torch_base, torch_adapted = torch_logits(torch_folder, adapter_dir, prompts)
    cpp_base = llama_logits(base_gguf, prompts)
    cpp_adapted = llama_logits(base_gguf, prompts, adapter_gguf, 1.0)
    cpp_scale0 = llama_logits(base_gguf, prompts, adapter_gguf, 0.0)
    quantised = _is_quantised(base_gguf)
    fields = _compare("adapter", cpp_base, cpp_adapted, torch_base, torch_adapted,
                      QUANTISED_BASE if quantised else FLOAT_BASE)
    float_check = None
    if quantised:
        float_check = _float_base_check(adapter_gguf, torch_folder, prompts, torch_base,
                                        torch_adapted)
    report = Verification(**fields, scale0_exact=bool(np.array_equal(cpp_scale0, cpp_base)),
                          tokenizer_agreement=None, float_base=float_check,
                          seconds=time.perf_counter() - started)
    return _check(report, adapter_gguf)


def _float_base_check(adapter_gguf: Path, torch_folder: Path, prompts: list[list[int]],
                      torch_base: np.ndarray, torch_adapted: np.ndarray) -> dict | None:
    """The adapter on an f16 GGUF of the dequantised base: the same weights torch uses."""
    import tempfile

    from engine.export.gguf_writer import write_model

    with tempfile.TemporaryDirectory(prefix="edgetune-verify-") as tmp:
        base = Path(tmp) / "base-f16.gguf"
        try:
            write_model(torch_folder, base, "f16")
        except UserError as exc:  # not a Llama-family model: only the quantised check remains
            log.info("no float-base check: %s", exc)
            return None
        cpp_base = llama_logits(base, prompts)
        cpp_adapted = llama_logits(base, prompts, adapter_gguf, 1.0)
    return _compare("adapter", cpp_base, cpp_adapted, torch_base, torch_adapted, FLOAT_BASE)


def verify_merged(merged_gguf: Path, torch_folder: Path, adapter_dir: Path) -> Verification:
    """A merged GGUF model in llama.cpp against torch base + the PEFT adapter.

    The LoRA-induced change is taken against torch's base logits on both sides (there is no
    unmerged llama.cpp model to subtract).
    """
    from llama_cpp import Llama
    from transformers import AutoTokenizer

    started = time.perf_counter()
    prompts = _prompt_ids(torch_folder)
    torch_base, torch_adapted = torch_logits(torch_folder, adapter_dir, prompts)
    cpp_merged = llama_logits(merged_gguf, prompts)
    fields = _compare("merged", torch_base, cpp_merged, torch_base, torch_adapted, FLOAT_BASE)
    fields["base_max_abs_diff"] = None  # no unmerged llama.cpp model in this check
    tokenizer = AutoTokenizer.from_pretrained(str(torch_folder))
    llm = Llama(model_path=str(merged_gguf), vocab_only=True, verbose=False)
    same = [llm.tokenize(text.encode(), add_bos=False, special=True)
            == tokenizer(text, add_special_tokens=False)["input_ids"] for text in SAMPLE_PROMPTS]
    llm.close()
    report = Verification(**fields, scale0_exact=None, tokenizer_agreement=float(np.mean(same)),
                          float_base=None, seconds=time.perf_counter() - started)
    return _check(report, merged_gguf)


def quantised_agreement(quantised: Path, float_model: Path, folder: Path) -> dict:
    """How far llama.cpp's quantisation moved the merged model: the quantised file against the
    f16 one it was made from, on the sample prompts (reported, not gated: a 4-bit model is
    expected to differ; the f16 file was checked against torch)."""
    prompts = _prompt_ids(folder)
    reference, got = llama_logits(float_model, prompts), llama_logits(quantised, prompts)
    vocab = min(reference.shape[1], got.shape[1])
    reference, got = reference[:, :vocab], got[:, :vocab]
    cosine = np.sum(reference * got, 1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(got, axis=1))
    return {"positions": int(reference.shape[0]),
            "top1_agreement_with_f16": float(np.mean(reference.argmax(1) == got.argmax(1))),
            "mean_logit_cosine_with_f16": float(np.mean(cosine)),
            "max_abs_diff_with_f16": float(np.abs(reference - got).max())}

