"""ExecuTorch export: the run's adapter merged into the base, one XNNPACK-lowered `.pte` program.

`python -m engine export RUN --format executorch [--quantize none|8da4w] [--out DIR]` writes a
folder a phone-side runner needs and nothing else:

- `model.pte`: `forward(input_ids int64 (1, T)) -> logits float32 (1, T, vocab)`, T dynamic from
  1 to `max_seq_len`. No KV cache: a runner re-reads the whole sequence for each new token
  (simple and exact; a cached program is future work).
- the tokenizer files (`tokenizer.json` and friends, as Hugging Face writes them);
- `metadata.json`: chat template, EOS/stop token ids, max_seq_len, the run's task, prompt
  template and label words (classification runs), sha256 of the base weights, the adapter and
  the program, the export settings, seconds per stage and the verification numbers.

Verification loads the program in ExecuTorch's own runtime (`executorch.runtime`) and runs
prompts from the run's held-out data (the same file or seeded split the trainer evaluated on);
the reference is eager PyTorch with the PEFT adapter unmerged, so merging is checked too.
Tolerances (per position, full-vocabulary logits):

- fp32: max |Δlogit| ≤ 1e-2 and top-1 agreement ≥ 98 %, against both the adapter and the merged
  model. Both sides compute in float32; only the order of additions differs (XNNPACK's GEMM
  tiling). Measured: 6.4e-7 on the tiny test model; SmolLM2-135M in docs/executorch.md.
- 8da4w (int8 dynamic activations, int4 weights in groups of 32: torchao's
  Int8DynamicActivationIntxWeightConfig, the scheme ExecuTorch's Llama export uses; embeddings
  and the output head stay fp32): the lowering is checked against torchao's eager model of the
  same quantised weights (top-1 agreement ≥ 90 %); the quantisation error against float32 with
  the adapter (max |Δlogit|, top-1 agreement) is reported in metadata.json, not checked: on
  random-init test models it says nothing (their logits are nearly flat), and it has not been
  measured on a real model yet.

Progress goes to stderr as `executorch: stage I/N NAME: what` and `executorch: stage I/N NAME
done in S s` lines (stages: load, export, lower, serialize, verify); the app shows them as stage
progress. The last stdout line is the export folder.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.export import run_folder, write_atomic

STAGES = ("load", "export", "lower", "serialize", "verify")
QUANTIZE = ("none", "8da4w")
PROGRAM = "model.pte"
METADATA = "metadata.json"
GROUP_SIZE = 32  # int4 weight groups (8da4w): ExecuTorch's Llama default
VERIFY_PROMPTS = 4
VERIFY_TOKENS = 64  # per prompt: enough positions to see drift, short enough to stay fast


@dataclass(frozen=True)
class Tolerance:
    # .pte against eager PyTorch running the very model that was exported (merged, and
    # quantised for 8da4w): checks the lowering alone.
    program_max_abs_diff: float | None  # None: reported, not checked
    program_min_top1_agreement: float
    # .pte against eager PyTorch with the run's adapter in float32: what the user gets.
    max_abs_diff: float | None
    min_top1_agreement: float | None


TOLERANCES = {
    "none": Tolerance(program_max_abs_diff=1e-2, program_min_top1_agreement=0.98,
                      max_abs_diff=1e-2, min_top1_agreement=0.98),
    # XNNPACK quantises the activations at run time with its own rounding, so only top-1
    # agreement with torchao's eager model of the same weights is checked (tiny test model: 100 %,
    # max |Δlogit| 0.012-0.023). The quantisation error itself (against float32) is reported.
    "8da4w": Tolerance(program_max_abs_diff=None, program_min_top1_agreement=0.90,
                       max_abs_diff=None, min_top1_agreement=None),
}


@dataclass
class Verification:
    prompts: int
    positions: int
    max_abs_diff: float  # all positions, .pte vs eager float32 with the adapter
    last_max_abs_diff: float  # the last position of each prompt (the next-token logits)
    top1_agreement: float  # all positions
    last_top1_agreement: float
    program_max_abs_diff: float  # .pte vs eager on the exported (merged/quantised) model
    program_top1_agreement: float
    adapter_max_abs_change: float  # eager with vs without the adapter: the adapter is visible
    tolerance: Tolerance
    seconds: float

    def summary(self) -> str:
        return (f".pte vs eager with the adapter on {self.prompts} prompts ({self.positions} "
                f"positions): max |Δlogit| {self.max_abs_diff:.3g} (last position "
                f"{self.last_max_abs_diff:.3g}), top-1 agreement {self.top1_agreement:.1%} (last "
                f"{self.last_top1_agreement:.1%}); vs the exported model in eager: max |Δlogit| "
                f"{self.program_max_abs_diff:.3g}, top-1 {self.program_top1_agreement:.1%}; the "
                f"adapter moves eager logits by up to {self.adapter_max_abs_change:.3g}")

    def problems(self) -> list[str]:
        tol, found = self.tolerance, []
        if tol.program_max_abs_diff is not None and \
                not self.program_max_abs_diff <= tol.program_max_abs_diff:
            found.append(f"max |Δlogit| against the exported model {self.program_max_abs_diff:.3g}"
                         f" > {tol.program_max_abs_diff}")
        if self.program_top1_agreement < tol.program_min_top1_agreement:
            found.append(f"top-1 agreement with the exported model {self.program_top1_agreement:.1%}"
                         f" < {tol.program_min_top1_agreement:.0%}")
        if tol.max_abs_diff is not None and not self.max_abs_diff <= tol.max_abs_diff:
            found.append(f"max |Δlogit| {self.max_abs_diff:.3g} > {tol.max_abs_diff}")
        if tol.min_top1_agreement is not None and self.top1_agreement < tol.min_top1_agreement:
            found.append(f"top-1 agreement {self.top1_agreement:.1%} < {tol.min_top1_agreement:.0%}")
        return found


def add_arguments(parser: argparse.ArgumentParser, fmt: str) -> None:
    parser.add_argument("--quantize", choices=QUANTIZE, default="none",
                        help="none: fp32 weights (exact); 8da4w: int8 dynamic activations and "
                             "int4 weights (about 1/4 of the linear layers' size, approximate)")
    parser.add_argument("--max-seq-len", type=int, default=512,
                        help="longest token sequence the program accepts (capped at the model's "
                             "context length)")


def _stage_label(name: str) -> str:
    return f"executorch: stage {STAGES.index(name) + 1}/{len(STAGES)} {name}"


def _stage(name: str, message: str) -> float:
    print(f"{_stage_label(name)}: {message}", file=sys.stderr, flush=True)
    return time.perf_counter()


def _stage_done(name: str, started: float, seconds: dict[str, float]) -> None:
    seconds[name] = round(time.perf_counter() - started, 3)
    print(f"{_stage_label(name)} done in {seconds[name]:.1f} s", file=sys.stderr, flush=True)


def export(run_dir: Path, out: Path | None, quantize: str = "none", max_seq_len: int = 512) -> Path:
    """Write RUN's merged model as an XNNPACK .pte folder, verified in the ExecuTorch runtime."""
    # ExecuTorch's XNNPACK modules import torchao, which must happen before transformers
    # loads a model (torchao registers tensor subclasses and ops that export relies on).
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if quantize not in QUANTIZE:
        raise UserError(f"--quantize {quantize}: choose one of {', '.join(QUANTIZE)}")
    if max_seq_len < 2:
        raise UserError(f"--max-seq-len {max_seq_len}: must be at least 2")
    config_path, adapter_dir = run_folder(run_dir)
    out = out or run_dir / "export" / ("executorch" if quantize == "none" else f"executorch-{quantize}")
    _prepare_folder(out)
    seconds: dict[str, float] = {}

    started = _stage("load", f"base model + adapter of {run_dir}")
    run = _load(config_path, adapter_dir)
    max_seq_len = min(max_seq_len, run.context or max_seq_len)
    merged = _merged(run.adapted)
    if quantize == "8da4w":
        _quantize_8da4w(merged)
    _stage_done("load", started, seconds)

    started = _stage("export", f"torch.export, sequence length 1…{max_seq_len}")
    example = torch.zeros((1, min(8, max_seq_len)), dtype=torch.long)
    tokens = torch.export.Dim("tokens", min=1, max=max_seq_len)
    with torch.no_grad():
        program = torch.export.export(Logits(merged), (example,),
                                      dynamic_shapes=({1: tokens},), strict=False)
    _stage_done("export", started, seconds)

    started = _stage("lower", "XNNPACK partitioner (minutes for a 135M model)")
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    _stage_done("lower", started, seconds)

    started = _stage("serialize", str(out / PROGRAM))
    write_atomic(out / PROGRAM, lambda partial: _write_program(lowered, partial))
    run.tokenizer.save_pretrained(str(out))
    _stage_done("serialize", started, seconds)

    started = _stage("verify", "ExecuTorch runtime vs eager PyTorch with the adapter")
    report = verify(out / PROGRAM, run, merged, TOLERANCES[quantize], max_seq_len)
    _stage_done("verify", started, seconds)
    print(f"executorch: {report.summary()}", file=sys.stderr, flush=True)
    metadata = _metadata(run, out, quantize, max_seq_len, seconds, report)
    write_atomic(out / METADATA, lambda partial: partial.write_text(
        json.dumps(metadata, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"))
    problems = report.problems()
    if problems:
        # Renamed, not deleted: kept for a bug report, but `chat --pte` and `push` (which look
        # for model.pte) cannot pick it up as if it had passed.
        rejected = out / (PROGRAM + ".rejected")
        (out / PROGRAM).replace(rejected)
        raise UserError(f"{rejected}: the ExecuTorch program disagrees with eager PyTorch "
                        f"({'; '.join(problems)}); {report.summary()}. The numbers are in "
                        f"{out / METADATA}; do not ship this program, and please report this")
    print(f"executorch: {out / PROGRAM}: {(out / PROGRAM).stat().st_size / 2**20:.1f} MiB",
          file=sys.stderr, flush=True)
    return out


def _write_program(lowered, path: Path) -> None:
    # write_to_file streams the segments; `.buffer` would first join them in memory (650 MB).
    with path.open("wb") as handle:
        lowered.write_to_file(handle)


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


@dataclass
class _Run:
    config: object  # engine.config.TrainConfig
    config_path: Path
    adapter_dir: Path
    folder: Path  # Hugging Face folder of the base
    tokenizer: object
    adapted: object  # peft.PeftModel, unmerged: the eager reference
    context: int | None


def _load(config_path: Path, adapter_dir: Path) -> _Run:
    from peft import PeftModel

    from engine import config as config_io
    from engine.model import context_length, load, resolve_reference

    config = config_io.load(config_path)
    loaded = load(resolve_reference(config.model), torch.device("cpu"), torch.float32,
                  config.trust_remote_code)
    adapted = PeftModel.from_pretrained(loaded.model, str(adapter_dir)).eval()
    return _Run(config, config_path, adapter_dir, loaded.folder, loaded.tokenizer, adapted,
                context_length(loaded.model))


def _merged(adapted):
    """A merged copy (the unmerged model stays as the verification reference)."""
    import copy

    merged = copy.deepcopy(adapted).merge_and_unload().eval()
    for name, tensor in merged.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UserError(f"merged weight {name} holds NaN or infinite values: the adapter in "
                            "this run is broken (a diverged training run); export an earlier "
                            "checkpoint's adapter or retrain with a lower optimizer.lr")
    return merged


def _quantize_8da4w(model) -> None:
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerGroup

    def is_linear_in_blocks(module, fqn: str) -> bool:
        # The output head (tied to the embeddings in small models) stays fp32: quantising it
        # costs the most accuracy per byte saved.
        return isinstance(module, torch.nn.Linear) and fqn != "lm_head" \
            and module.in_features % GROUP_SIZE == 0

    quantize_(model, Int8DynamicActivationIntxWeightConfig(
        weight_dtype=torch.int4, weight_granularity=PerGroup(GROUP_SIZE)),
        filter_fn=is_linear_in_blocks)


class Logits(torch.nn.Module):
    """The exported signature: token ids in, logits out (torch.export wants tensors only)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def verify_prompts(run: _Run, max_seq_len: int) -> list[list[int]]:
    """Token ids of the first held-out examples the trainer evaluated on (prompt + answer)."""
    from engine.data import find_eval_file, load_dataset, split

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
    examples = held_out.render(run.tokenizer).examples[:VERIFY_PROMPTS]
    limit = min(VERIFY_TOKENS, max_seq_len)
    return [run.tokenizer(e.prompt + e.completion)["input_ids"][:limit] for e in examples]


def verify(pte: Path, run: _Run, exported: torch.nn.Module, tolerance: Tolerance,
           max_seq_len: int) -> Verification:
    """Run the program in ExecuTorch's runtime on held-out prompts; compare with eager PyTorch."""
    started = time.perf_counter()
    method = _load_method(pte)
    adapted, base, reference, program = [], [], [], []
    for ids in verify_prompts(run, max_seq_len):
        tokens = torch.tensor([ids], dtype=torch.long)
        with torch.no_grad():
            adapted.append(run.adapted(input_ids=tokens).logits[0].float().numpy())
            with run.adapted.disable_adapter():
                base.append(run.adapted(input_ids=tokens).logits[0].float().numpy())
            reference.append(exported(input_ids=tokens).logits[0].float().numpy())
        program.append(method.execute([tokens])[0][0].numpy())
    diff = [np.abs(p - a) for p, a in zip(program, adapted, strict=True)]
    agree = [p.argmax(-1) == a.argmax(-1) for p, a in zip(program, adapted, strict=True)]
    return Verification(
        prompts=len(adapted),
        positions=int(sum(len(a) for a in adapted)),
        max_abs_diff=float(max(d.max() for d in diff)),
        last_max_abs_diff=float(max(d[-1].max() for d in diff)),
        top1_agreement=float(np.concatenate(agree).mean()),
        last_top1_agreement=float(np.mean([a[-1] for a in agree])),
        program_max_abs_diff=_max_abs_diff(program, reference),
        program_top1_agreement=float(np.concatenate(
            [p.argmax(-1) == r.argmax(-1) for p, r in zip(program, reference, strict=True)]).mean()),
        adapter_max_abs_change=_max_abs_diff(adapted, base),
        tolerance=tolerance,
        seconds=round(time.perf_counter() - started, 3),
    )


def _max_abs_diff(left: list[np.ndarray], right: list[np.ndarray]) -> float:
    return float(max(np.abs(a - b).max() for a, b in zip(left, right, strict=True)))


def _load_method(pte: Path):
    from executorch.runtime import Runtime

    try:
        return Runtime.get().load_program(str(pte)).load_method("forward")
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"{pte}: ExecuTorch cannot load this program ({exc}); export it again "
                        "with this version of EdgeTune") from None


def _base_weights(reference: str, folder: Path) -> list[Path]:
    """The files that define the base: the GGUF the user gave, else the folder's weights."""
    if reference.endswith(".gguf"):
        return [Path(reference)]
    return sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))


def _metadata(run: _Run, out: Path, quantize: str, max_seq_len: int, seconds: dict[str, float],
              report: Verification) -> dict:
    from engine import __version__
    from engine.chat import stop_token_ids
    from engine.model import file_hash, resolve_reference

    cfg = run.config
    reference = resolve_reference(cfg.model)
    weights = _base_weights(reference, run.folder)
    classification = bool(cfg.label_words) or cfg.task == "classification"
    return {
        "format": "edgetune-executorch",
        "format_version": 1,
        "program": PROGRAM,
        "program_sha256": file_hash(out / PROGRAM),
        "program_bytes": (out / PROGRAM).stat().st_size,
        "forward": "input_ids int64 (1, T) -> logits float32 (1, T, vocab); no KV cache",
        "max_seq_len": max_seq_len,
        "vocab_size": run.adapted.get_input_embeddings().num_embeddings,
        "chat_template": getattr(run.tokenizer, "chat_template", None),
        "bos_token_id": run.tokenizer.bos_token_id,
        "eos_token_id": run.tokenizer.eos_token_id,
        "stop_token_ids": stop_token_ids(run.tokenizer),
        "task": cfg.task,
        "prompt_template": cfg.prompt_template if classification else None,
        "label_words": list(cfg.label_words) if classification else [],
        "base_model": reference,
        "base_model_sha256": {p.name: file_hash(p) for p in weights},
        "adapter_sha256": file_hash(run.adapter_dir / "adapter_model.safetensors"),
        "run_dir": str(run.config_path.parent.resolve()),
        "export": {"backend": "xnnpack", "quantize": quantize,
                   "group_size": GROUP_SIZE if quantize == "8da4w" else None,
                   "engine_version": __version__, "executorch_version": _version("executorch"),
                   "torch_version": _version("torch")},
        "stage_seconds": seconds,
        "verification": asdict(report),
    }


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def read_metadata(folder_or_pte: Path) -> dict:
    """metadata.json of an export folder (given the folder or its .pte)."""
    folder = folder_or_pte.parent if folder_or_pte.suffix == ".pte" else folder_or_pte
    path = folder / METADATA
    if not path.is_file():
        raise UserError(f"{folder}: no {METADATA}; give a folder written by "
                        "`python -m engine export RUN --format executorch` (or its model.pte)")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc}); export the run again") from None


# ---- running an export: `python -m engine chat --pte PATH` ---------------------------------

class PteBackend:
    """Generation with the exported program: the whole sequence is re-run for each token."""

    def __init__(self, pte: Path) -> None:
        from transformers import AutoTokenizer

        pte = pte / PROGRAM if pte.is_dir() else pte
        if not pte.is_file():
            raise UserError(f"--pte {pte}: no such file")
        self.metadata = read_metadata(pte)
        self.tokenizer = AutoTokenizer.from_pretrained(str(pte.parent))
        self.method = _load_method(pte)
        self.max_seq_len = int(self.metadata["max_seq_len"])
        self.stop_ids = set(self.metadata["stop_token_ids"])

    def logits(self, ids: list[int]):
        """Next-token logits after `ids` (numpy float32, vocabulary-sized)."""
        return self.method.execute([torch.tensor([ids], dtype=torch.long)])[0][0, -1].numpy()

    def generate_ids(self, ids: list[int], settings) -> Iterator[int]:
        """Token ids after `ids`: greedy at temperature 0, else nucleus sampling."""
        rng = np.random.default_rng(settings.seed)
        ids = list(ids)
        for _ in range(settings.max_tokens):
            if len(ids) >= self.max_seq_len or settings.stop.is_set():
                return
            logits = self.logits(ids).astype(np.float64)
            token = int(logits.argmax()) if settings.temperature == 0 else \
                _sample(logits, settings.temperature, settings.top_p, rng)
            if token in self.stop_ids:
                return
            ids.append(token)
            yield token

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        template = self.metadata.get("chat_template")
        if template:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                      tokenize=False, chat_template=template)
        else:
            text = "\n".join(m["content"] for m in messages)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) >= self.max_seq_len:
            raise UserError(f"the prompt is {len(ids)} tokens; this export accepts at most "
                            f"{self.max_seq_len} (export again with a larger --max-seq-len)")
        return ids

    def stream(self, messages: list[dict], settings) -> Iterator[str]:
        answer: list[int] = []
        shown = ""
        for token in self.generate_ids(self.prompt_ids(messages), settings):
            answer.append(token)
            text = self.tokenizer.decode(answer, skip_special_tokens=True)
            # A multi-byte character split across tokens decodes to U+FFFD until complete.
            if text.endswith("\ufffd"):
                continue
            if len(text) > len(shown):
                yield text[len(shown):]
                shown = text
        # Bytes still incomplete when generation ends will not complete: show them as they are.
        text = self.tokenizer.decode(answer, skip_special_tokens=True)
        if len(text) > len(shown):
            yield text[len(shown):]

    def label_probs(self, prompt: str, words: list[str]) -> list[float]:
        from engine.chat import _softmax

        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        label_ids = [self.tokenizer.encode(w, add_special_tokens=False)[0] for w in words]
        logits = self.logits(ids[-self.max_seq_len:])
        return _softmax([float(logits[i]) for i in label_ids])


def _sample(logits, temperature: float, top_p: float, rng) -> int:
    scaled = logits / temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    order = np.argsort(-probs)
    cumulative = np.cumsum(probs[order])
    keep = order[: int(np.searchsorted(cumulative, top_p)) + 1]
    kept = probs[keep] / probs[keep].sum()
    return int(rng.choice(keep, p=kept))


def chat_backend(pte_path: Path, model_reference: str) -> PteBackend:
    """`python -m engine chat --pte PATH`: the export folder's own tokenizer and metadata.

    `model_reference` is not needed: the export folder holds everything the program needs.
    """
    del model_reference
    return PteBackend(pte_path)

