"""The run configuration: one dataclass tree, loaded from YAML, overridable from the CLI.

Every field carries a short label and a help text saying what it trades off (`setting`); the
app's settings form shows them, so the words live here once. `validate` is the one place that
checks values; its errors name the field (dotted path) and the allowed range.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine.api.errors import UserError

ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def setting(default: Any = MISSING, *, label: str, help: str,
            factory: Callable[[], Any] | Any = MISSING) -> Any:
    """A config field with its label (a few words naming it) and help (what it trades off)."""
    return field(default=default, default_factory=factory, metadata={"label": label, "help": help})


@dataclass(frozen=True)
class FieldDoc:
    label: str
    help: str


def field_doc(dotted: str) -> FieldDoc:
    """The label and help text of a field (dotted path, e.g. "optimizer.q")."""
    cls: Any = TrainConfig
    *sections, name = dotted.split(".")
    for section in sections:
        cls = typing.get_type_hints(cls)[section]
    metadata = next(f for f in dataclasses.fields(cls) if f.name == name).metadata
    return FieldDoc(metadata["label"], metadata["help"])


@dataclass
class OptimizerConfig:
    name: str = setting(
        "prge", label="Optimizer",
        help="prge: batched zeroth-order (forward only, inference memory, the default); mezo: the "
             "same estimator with 2q sequential passes (the speed baseline); fo: backprop + AdamW "
             "on the LoRA weights (best accuracy per step, but activation memory grows with batch "
             "and length).")
    q: int = setting(
        4, label="Perturbations per step (q)",
        help="Directions per step. More directions lower the gradient estimate's variance but "
             "widen the batched pass (2q copies in dual mode); keep q * batch_size roughly "
             "constant (paper: 16).")
    mode: str = setting(
        "dual", label="Perturbation passes",
        help="dual: the + and - perturbations share one pass (2q copies, fastest); single: two "
             "passes of q copies each (half the activation memory of dual).")
    eps: float = setting(
        1e-2, label="Perturbation scale (ε)",
        help="Too small drowns the loss difference in float noise; too large biases the finite "
             "difference.")
    lr: float = setting(
        1e-2, label="Learning rate",
        help="Step size. Zeroth-order steps are noisy: 1e-2 moves LoRA-FA on a 135M model within "
             "a few hundred steps; 1e-3 barely moves it. For fo (AdamW) use about 1e-3.")
    weight_decay: float = setting(0.0, label="Weight decay", help="AdamW weight decay, fo only.")
    estimator: str = setting(
        "two-sided", label="Gradient estimator",
        help="prge only. two-sided: L(θ+εz) − L(θ−εz) per direction (2 copies each). one-sided "
             "(FZOO): L(θ+εz) − L(θ) against one shared unperturbed copy, so a pass of 2q copies "
             "measures 2q − 1 directions instead of q; slightly more bias (O(ε) instead of "
             "O(ε²)), much less variance per pass. With one-sided, q counts directions and the "
             "pass holds q + 1 copies.")
    directions: str = setting(
        "gaussian", label="Direction distribution",
        help="gaussian: z ~ N(0, I) (MeZO, the paper). rademacher: z ∈ {−1, +1} (FZOO): the same "
             "expectation, lower variance of ‖z‖, cheaper to draw.")
    normalize: str = setting(
        "none", label="Step normalisation",
        help="none: the step is lr · projected gradient, so it follows the loss scale. loss-std "
             "(FZOO, prge only): the loss differences are divided by the standard deviation of "
             "the step's perturbed losses, a normalised step that is large far from a basin and "
             "shrinks near it; lr then sets the step size directly (ε drops out of it).")
    momentum: float = setting(
        0.0, label="Momentum",
        help="Heavy-ball momentum on the gradient estimate (0 = off). Averages directions over "
             "about 1 / (1 − momentum) steps: less noise per step, slower to turn; costs one flat "
             "vector the size of the adapter (checkpointed).")
    schedule: str = setting(
        "constant", label="Learning-rate schedule",
        help="constant: lr throughout (the paper). cosine: lr decays to 0 over the run (its "
             "steps, or its time budget when that ends it first), which stops the drift of a "
             "constant-lr ZO run near a basin.")
    warmup_steps: int = setting(
        0, label="Warm-up steps",
        help="Steps over which lr ramps up linearly from lr / warmup_steps (0 = no warm-up).")


@dataclass
class LoraConfig:
    variant: str = setting(
        "lora-fa", label="LoRA variant",
        help="lora-fa: A frozen (random) and shared across copies, only B trained (half the "
             "perturbed parameters, the paper's choice); lora: A and B both trained (more "
             "capacity, more noise).")
    rank: int = setting(
        8, label="LoRA rank",
        help="Capacity of the adapter against its size and the zeroth-order noise (which grows "
             "with the number of trained parameters).")
    alpha: float = setting(16.0, label="LoRA alpha", help="Output scale is alpha / rank.")
    targets: list[str] = setting(
        factory=lambda: list(ALL_PROJECTIONS), label="LoRA target layers",
        help="Linear layers that get an adapter, by their module name suffix.")
    top_layers: int = setting(
        0, label="Adapted top layers",
        help="Adapt only the top N decoder layers (0 = all). Fewer trained values lower the "
             "zeroth-order noise, and every layer below the first adapted one runs once per step "
             "instead of once per perturbation copy (the shared prefix), so steps get cheaper "
             "too; too few layers limit what the adapter can change.")


@dataclass
class TrainConfig:
    model: str = setting(
        "", label="Model",
        help="Base model: a Hugging Face folder, a hub id (HF cache; HF_HUB_OFFLINE respected) or "
             "a .gguf file (converted once and cached).")
    dataset: str = setting(
        "", label="Dataset",
        help="Training data: a .jsonl, .json, .csv, .tsv, .parquet or .txt file, or a folder "
             "holding train.* (and valid.* or test.* as held-out data).")
    eval_dataset: str = setting(
        "", label="Held-out dataset",
        help="Held-out data; empty means a seeded split of the dataset (eval_fraction of it).")
    schema: str = setting(
        "auto", label="Column layout",
        help="What the columns hold: auto (detected) | classification | prompt_completion | "
             "alpaca | messages | conversations | text. Force it only when detection guesses "
             "wrong.")
    skip_bad_rows: bool = setting(
        False, label="Skip malformed rows",
        help="Train without malformed rows instead of stopping (they are counted and reported).")
    eval_fraction: float = setting(
        0.1, label="Held-out share",
        help="Share of the dataset held out for evaluation when there is no separate held-out "
             "file. More: steadier scores, fewer training rows.")
    eval_rows: int = setting(
        200, label="Evaluation rows",
        help="Rows scored at each evaluation (0 = all). Fewer rows: faster evals, noisier "
             "curves.")
    task: str = setting(
        "auto", label="Task",
        help="auto (from the data's columns) | classification (label-word scoring) | sft (causal "
             "LM loss on the completion tokens).")
    label_words: list[str] = setting(
        factory=list, label="Label words",
        help='Classification: the word the model should say for each label, in label order, '
             'e.g. [" terrible", " great"]. Empty: inferred when the labels are words.')
    prompt_template: str = setting(
        "{text} It was", label="Prompt template",
        help="Classification: how a row becomes the prompt; {text} is the row's text (the only "
             "field; {{ and }} are literal braces). The label word is scored right after it.")
    output_dir: str = setting(
        "runs/run", label="Run folder",
        help="Where the run's config, metrics, checkpoints and adapter go. A folder holding a run "
             "is refused unless --resume is given.")
    steps: int = setting(
        200, label="Steps",
        help="Optimiser steps (an upper bound when a time budget is set).")
    time_budget_minutes: float = setting(
        0.0, label="Time budget (minutes)",
        help="Stop after this many minutes of training (0 = off), exactly as after the last step: "
             "evaluation, checkpoint, adapter. Evaluation and setup time are not counted.")
    early_stopping_patience: int = setting(
        0, label="Early-stopping patience",
        help="Stop when this many evaluations in a row bring no better held-out score (0 = off). "
             "The adapter written at the end is always the best evaluated one.")
    batch_size: int = setting(
        4, label="Batch size",
        help="Distinct examples per step (b). Each is repeated for every perturbation copy.")
    max_seq_len: int = setting(
        128, label="Max sequence length (tokens)",
        help="Longer rows are truncated from the left (the answer position is kept). Memory and "
             "time grow linearly with it.")
    seed: int = setting(
        0, label="Seed", help="Seeds the split, the batch order, the LoRA init and every perturbation.")
    eval_every: int = setting(
        50, label="Evaluate every (steps)",
        help="Evaluate every N steps (0 = only before the first and after the last step).")
    checkpoint_every: int = setting(
        50, label="Checkpoint every (steps)",
        help="Write a resumable checkpoint every N steps (0 = only at the end or on stop).")
    keep_checkpoints: int = setting(
        2, label="Checkpoints kept",
        help="Checkpoints kept on disk (older ones are deleted once a newer one is verified).")
    device: str = setting("auto", label="Device", help="auto | cpu | cuda | mps.")
    dtype: str = setting(
        "auto", label="Base weight precision",
        help="The frozen base's precision (the trained adapter, its perturbations and updates "
             "stay float32 whatever this is): auto (float32 on CPU and MPS, bfloat16 on CUDA) | "
             "float32 | bfloat16 (half the weight memory; fast only where the CPU has native "
             "bf16) | float16 | int8 (weight-only int8 projections via torchao, computing in "
             "float32: about a quarter of the projections' memory, slightly perturbed logits).")
    threads: int = setting(
        0, label="CPU threads",
        help="CPU threads for torch (0 = torch's default). Pin it to compare timings. Per worker "
             "when workers > 1 (torch's launcher then defaults each worker to 1 thread).")
    workers: int = setting(
        1, label="Worker processes",
        help="Worker processes for one run (torch.distributed: gloo on CPU, nccl on CUDA; "
             "docs/distributed.md). Each worker evaluates its share of the step's q directions "
             "(with fewer directions than workers, its share of the batch's rows) and they "
             "exchange only the losses (16 bytes per direction), so a forward-bound step gets "
             "shorter; but each worker holds its own copy of the model (memory × workers on one "
             "machine) and redraws all q directions for the update. At most optimizer.q × "
             "batch_size; "
             "prge with backend pytorch only. 1 = one process. Under an external torchrun, the "
             "launcher's worker count wins. For several machines: python -m engine launch CONFIG "
             "--nodes K --print.")
    worker_timeout_seconds: float = setting(
        300.0, label="Worker timeout (seconds)",
        help="Seconds a worker waits for the others (at start and at every exchange) before it "
             "ends the run with an error. A killed worker is noticed at once whatever this is; "
             "the timeout catches hung workers and lost machines, so it must exceed the longest "
             "gap between two exchanges (an evaluation batch, or a checkpoint or adapter write by "
             "worker 0).")
    memory_budget_gb: float = setting(
        0.0, label="Memory budget",
        help="Stop with a checkpoint when the process RSS crosses this many GiB (0 = no limit; "
             "per worker when workers > 1).")
    trust_remote_code: bool = setting(
        False, label="Trust remote code",
        help="Allow model code from the hub (runs arbitrary Python from the model repository).")
    backend: str = setting(
        "pytorch", label="Training backend",
        help="Where the training forward passes run. pytorch: eager PyTorch on the device. "
             "executorch: a lowered ExecuTorch program (XNNPACK, float32 CPU) run by ExecuTorch's "
             "own runtime, the way a phone would train; zeroth-order optimisers only. It costs a "
             "one-off export and lowering at setup (minutes for a 135M model; cached in the run "
             "folder for resume). Evaluation stays eager.")
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)


CHOICES = {
    "task": ("auto", "classification", "sft"),
    "schema": ("auto", "classification", "prompt_completion", "alpaca", "messages",
               "conversations", "text"),
    "device": ("auto", "cpu", "cuda", "mps"),
    "dtype": ("auto", "float32", "bfloat16", "float16", "int8"),
    "backend": ("pytorch", "executorch"),
    "optimizer.name": ("prge", "mezo", "fo"),
    "optimizer.mode": ("dual", "single"),
    "optimizer.estimator": ("two-sided", "one-sided"),
    "optimizer.directions": ("gaussian", "rademacher"),
    "optimizer.normalize": ("none", "loss-std"),
    "optimizer.schedule": ("constant", "cosine"),
    "lora.variant": ("lora-fa", "lora"),
}

# (field, lowest allowed, highest allowed, lowest is exclusive)
_RANGES = [
    ("steps", 1, 10_000_000, False),
    ("batch_size", 1, 4096, False),
    ("max_seq_len", 8, 1_000_000, False),
    ("eval_every", 0, 10_000_000, False),
    ("eval_rows", 0, 10_000_000, False),
    ("checkpoint_every", 0, 10_000_000, False),
    ("keep_checkpoints", 1, 1000, False),
    ("threads", 0, 1024, False),
    ("workers", 1, 1024, False),
    ("worker_timeout_seconds", 0.0, 1e6, True),
    ("memory_budget_gb", 0.0, 1e6, False),
    ("eval_fraction", 0.0, 0.9, True),
    ("optimizer.q", 1, 1024, False),
    ("optimizer.eps", 0.0, 1.0, True),
    ("optimizer.lr", 0.0, 10.0, True),
    ("optimizer.weight_decay", 0.0, 1.0, False),
    ("optimizer.momentum", 0.0, 0.999, False),
    ("optimizer.warmup_steps", 0, 10_000_000, False),
    ("time_budget_minutes", 0.0, 1e6, False),
    ("early_stopping_patience", 0, 1_000_000, False),
    ("lora.top_layers", 0, 100_000, False),
    ("lora.rank", 1, 4096, False),
    ("lora.alpha", 0.0, 1e6, True),
]


def get_field(config: TrainConfig, dotted: str) -> Any:
    obj: Any = config
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def validate(config: TrainConfig) -> TrainConfig:
    """Check every value; raise UserError naming the first bad field and its allowed range."""
    for name in ("model", "dataset", "output_dir"):
        if not str(get_field(config, name)).strip():
            raise UserError(f'config field "{name}" is empty; set it in the YAML or as {name}=…')
    for name, choices in CHOICES.items():
        value = get_field(config, name)
        if value not in choices:
            raise UserError(
                f'config field "{name}" is {value!r}; allowed: {", ".join(choices)}'
            )
    for name, low, high, exclusive in _RANGES:
        value = get_field(config, name)
        too_low = value <= low if exclusive else value < low
        if too_low or value > high:
            bound = f"> {low}" if exclusive else f">= {low}"
            raise UserError(
                f'config field "{name}" is {value}; allowed: {bound} and <= {high}'
            )
    if config.backend == "executorch":
        if config.optimizer.name not in ("prge", "mezo"):
            raise UserError(
                f'config field "backend" is executorch but "optimizer.name" is '
                f"{config.optimizer.name!r}: the ExecuTorch training program runs forward passes "
                "only, so it trains with the zeroth-order optimisers prge or mezo; set "
                "optimizer.name=prge, or backend=pytorch for fo"
            )
        if config.device not in ("auto", "cpu") or config.dtype not in ("auto", "float32"):
            raise UserError(
                f'config field "backend" is executorch but device is {config.device!r} and dtype '
                f"{config.dtype!r}: the ExecuTorch training program runs in float32 on the CPU "
                "(XNNPACK); set device=cpu dtype=float32 (or auto), or backend=pytorch"
            )
    if config.workers > 1:
        if config.optimizer.name != "prge" or config.backend != "pytorch":
            raise UserError(
                f'config field "workers" is {config.workers} but optimizer.name is '
                f"{config.optimizer.name!r} and backend {config.backend!r}: several workers split "
                "P-RGE's directions, so they need optimizer.name=prge and backend=pytorch; or set "
                "workers=1"
            )
        q, rows = config.optimizer.q, config.batch_size
        if config.workers > q * rows:
            raise UserError(
                f'config field "workers" is {config.workers} but optimizer.q × batch_size is '
                f"{q} × {rows} = {q * rows}: each worker evaluates at least one direction on at "
                "least one row of the batch (with fewer directions than workers, the workers of "
                "a direction split its rows); raise optimizer.q or batch_size, or lower workers "
                f"to {q * rows}"
            )
    if config.optimizer.name != "prge" and (config.optimizer.estimator != "two-sided"
                                            or config.optimizer.normalize != "none"):
        raise UserError(
            f'config fields "optimizer.estimator" and "optimizer.normalize" apply to prge only '
            f"(optimizer.name is {config.optimizer.name!r}): set optimizer.estimator=two-sided "
            "optimizer.normalize=none, or optimizer.name=prge"
        )
    if not config.lora.targets:
        raise UserError('config field "lora.targets" is empty; name at least one projection')
    # The template is rendered with str.format (engine.data.dataset.render_prompt): any field but
    # {text} would fail only once the first row is rendered, so refuse it here.
    from string import Formatter

    template = config.prompt_template
    braces = "write a literal brace as {{ or }}"
    try:
        fields = [(name, conversion, spec) for _, name, spec, conversion
                  in Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise UserError(f'config field "prompt_template" is {template!r}: {exc}; {braces}') from None
    for name, conversion, spec in fields:
        if name != "text" or conversion or spec:
            field_text = "{" + name + (f"!{conversion}" if conversion else "") + \
                (f":{spec}" if spec else "") + "}"
            raise UserError(
                f'config field "prompt_template" is {template!r}: {field_text} is not a field it '
                f"fills; only {{text}} is (the row's text); {braces}"
            )
    if not fields:
        raise UserError(f'config field "prompt_template" is {template!r}: it must contain {{text}} '
                        "where the row's text goes")
    if len(set(config.label_words)) != len(config.label_words):
        raise UserError('config field "label_words" has duplicates; each label needs its own word')
    return config


def _from_dict(cls: type, values: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if key not in known:
            raise UserError(
                f'unknown config field "{path}"; known fields here: {", ".join(sorted(known))}'
            )
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise UserError(f'config field "{path}" must be a mapping of its fields')
            kwargs[key] = _from_dict(hint, value, prefix=f"{path}.")
        else:
            kwargs[key] = _coerce(path, hint, value)
    return cls(**kwargs)


def _coerce(path: str, hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v != ""]
        if not isinstance(value, list):
            raise UserError(f'config field "{path}" must be a list')
        return [str(v) for v in value]
    try:
        if hint is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if hint is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if hint is float:
            return float(value)
        return "" if value is None else str(value)
    except (TypeError, ValueError):
        raise UserError(
            f'config field "{path}" is {value!r}; expected {hint.__name__}'
        ) from None


def to_dict(config: TrainConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)


def from_dict(values: dict[str, Any]) -> TrainConfig:
    return _from_dict(TrainConfig, values)


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` → (dotted key, YAML-parsed value)."""
    if "=" not in text:
        raise UserError(f"override {text!r} is not key=value (e.g. optimizer.lr=1e-3)")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(values: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        key, value = parse_override(text)
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f'override "{key}": "{part}" is not a section')
        node[parts[-1]] = value
    return values


def load(path: str | Path | None, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML config (or start from defaults), apply overrides, validate."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise UserError(f"config file {path} not found") from None
        except UnicodeDecodeError:
            raise UserError(f"config file {path} is not UTF-8 text") from None
        try:
            values = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"config file {path} is not valid YAML: {exc}") from None
        if not isinstance(values, dict):
            raise UserError(f"config file {path} must be a mapping of fields")
        values = _resolve_relative_paths(values, path.parent)
    values = apply_overrides(values, list(overrides))
    try:
        return validate(from_dict(values))
    except UserError as exc:
        if path is None:
            raise
        # A run folder's config.yaml and a loaded file look alike: say which file holds it.
        raise UserError(f"{path}: {exc}") from None


def _resolve_relative_paths(values: dict[str, Any], base: Path) -> dict[str, Any]:
    # Paths in a config file are relative to the file, so a config travels with its data.
    for key in ("dataset", "eval_dataset", "model"):
        value = values.get(key)
        if isinstance(value, str) and value and not Path(value).is_absolute():
            candidate = base / value
            if candidate.exists():
                values[key] = str(candidate.resolve())
    return values


def save(config: TrainConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
