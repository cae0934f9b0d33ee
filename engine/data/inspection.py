"""`python -m engine inspect-dataset PATH [--json] [--model M] [--max-seq-len N] …`

What the app shows when a dataset is dropped, computed from a prefix of the file so it answers
in about a second however large the file is. `--json` prints one object (stable fields):

- path, file_format, schema, task
- rows: row count; rows_exact: false when estimated from the prefix's bytes per row
- columns: column names of the first row
- sample_rows: rows read for everything below
- label_distribution: {label: count} over the sample (classification), else null
- label_words: the label word of each label (classification), else []
- preview: up to two examples as the model sees them: {prompt, completion, label}
- token_lengths (with --model): {min, median, p95, max, truncated, max_seq_len} over the sample;
  truncated = sample rows longer than max_seq_len
- longest_completion_tokens (with --model, SFT): the longest completion in tokens over every row
  a run would read (the whole file, no separate held-out file); null when not known. The
  window's memory bar sizes the run with it, as the trainer's pre-flight check does
- errors: [{"message": …}] problems found (the run would refuse them); empty when all is well

With --protocol the object is the `result` event (exit code 2 when its errors are not empty); a
refusal before there is one (a missing file, bad options) is the `error` event.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from engine.api.errors import UserError
from engine.data.dataset import (
    count_rows,
    detect_schema,
    file_format,
    find_eval_file,
    iter_rows,
    load_dataset,
    task_of,
    train_file,
)
from engine.session import EXIT_USER, emit

SAMPLE_ROWS = 1000
EXACT_COUNT_BYTES = 64 * 2**20  # count every row below this size; estimate above


def inspect(
    path: str | Path,
    *,
    model: str | None = None,
    max_seq_len: int = 128,
    schema: str = "auto",
    label_words: list[str] | None = None,
    prompt_template: str = "{text} It was",
) -> dict[str, Any]:
    given = path = Path(path)
    if not path.exists():
        raise UserError(f"dataset {path} not found; check the path")
    path = train_file(path)
    fmt = file_format(path)
    sample = list(iter_rows(path, limit=SAMPLE_ROWS))
    if not sample:
        raise UserError(f"{path.name}: the file holds no rows")
    if schema == "auto":
        schema = detect_schema(path, sample)
    report: dict[str, Any] = {
        "path": str(path), "file_format": fmt, "schema": schema, "task": task_of(schema),
        "columns": sorted(next((r for _, r in sample if "__error__" not in r), {})),
        "sample_rows": len(sample), "errors": [], "label_distribution": None, "label_words": [],
        "preview": [], "token_lengths": None, "longest_completion_tokens": None,
    }
    report.update(_row_count(path, fmt, sample))
    prefix = _prefix_file(path, fmt, sample)
    try:
        data = load_dataset(prefix or path, schema=schema, label_words=label_words,
                            prompt_template=prompt_template)
    except UserError as exc:
        message = str(exc).replace(prefix.name, path.name) if prefix else str(exc)
        report["errors"].append({"message": message})
        return report
    finally:
        if prefix:
            prefix.unlink(missing_ok=True)
    tokenizer = _tokenizer(model) if model else None
    data = data.render(tokenizer)
    if data.task == "classification":
        counts: dict[str, int] = {}
        for example in data.examples:
            name = data.label_names[example.label]
            counts[name] = counts.get(name, 0) + 1
        report["label_distribution"] = counts
        report["label_words"] = data.label_words
    for example in data.examples[:2]:
        completion = example.completion
        if example.label is not None:
            completion = data.label_words[example.label]
        report["preview"].append({"prompt": example.prompt, "completion": completion,
                                  "label": example.label})
    if tokenizer is not None:
        lengths = []
        for example in data.examples:
            text = example.prompt + (example.completion or "")
            lengths.append(len(tokenizer.encode(text, add_special_tokens=True)))
        ordered = sorted(lengths)
        report["token_lengths"] = {
            "min": ordered[0], "median": statistics.median(ordered),
            "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], "max": ordered[-1],
            "truncated": sum(n > max_seq_len for n in lengths), "max_seq_len": max_seq_len,
        }
        if data.task == "sft" and prefix is None and find_eval_file(given) is None:
            completions = tokenizer([e.completion for e in data.examples], add_special_tokens=False)
            report["longest_completion_tokens"] = max(map(len, completions["input_ids"]))
    return report


def _row_count(path: Path, fmt: str, sample: list) -> dict[str, Any]:
    size = path.stat().st_size
    if fmt == "parquet" or len(sample) < SAMPLE_ROWS or size <= EXACT_COUNT_BYTES:
        return {"rows": count_rows(path, fmt) if len(sample) == SAMPLE_ROWS else len(sample),
                "rows_exact": True}
    if fmt == "json":
        return {"rows": count_rows(path, fmt), "rows_exact": True}
    with path.open("rb") as handle:
        head = b"".join(handle.readline() for _ in range(len(sample) + 1))
    per_row = len(head) / (len(sample) + 1)
    return {"rows": int(size / per_row), "rows_exact": False}


def _prefix_file(path: Path, fmt: str, sample: list) -> Path | None:
    """A temporary copy of the first SAMPLE_ROWS rows of a large line-based file."""
    if len(sample) < SAMPLE_ROWS or fmt not in ("jsonl", "csv", "tsv", "text"):
        return None
    import tempfile

    last_line = sample[-1][0]
    handle = tempfile.NamedTemporaryFile("wb", suffix=path.suffix, delete=False)
    with path.open("rb") as source, handle:
        for _ in range(last_line):
            handle.write(source.readline())
    return Path(handle.name)


def _tokenizer(reference: str):
    from transformers import AutoTokenizer

    from engine.model.loading import local_folder

    return AutoTokenizer.from_pretrained(str(local_folder(reference)))


def _format_text(report: dict[str, Any]) -> str:
    lines = [
        f"{report['path']}",
        f"  format {report['file_format']}, schema {report['schema']} (task {report['task']})",
        f"  rows {report['rows']}{'' if report['rows_exact'] else ' (estimated)'}, "
        f"columns {', '.join(report['columns'])}",
    ]
    if report["label_distribution"]:
        dist = ", ".join(f"{k}: {v}" for k, v in report["label_distribution"].items())
        lines.append(f"  labels (first {report['sample_rows']} rows): {dist}")
        lines.append(f"  label words: {report['label_words']}")
    for i, example in enumerate(report["preview"], start=1):
        lines.append(f"  example {i}: {example['prompt']!r} → {example['completion']!r}")
    if report["token_lengths"]:
        t = report["token_lengths"]
        lines.append(f"  tokens: min {t['min']}, median {t['median']}, p95 {t['p95']}, max {t['max']}; "
                     f"{t['truncated']} rows over max_seq_len {t['max_seq_len']}")
    for error in report["errors"]:
        lines.append(f"  error: {error['message']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    from engine.api import config as config_io

    parser = argparse.ArgumentParser(prog="python -m engine inspect-dataset",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    parser.add_argument("--model", help="tokenizer for token-length statistics (and chat template)")
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--schema", default="auto")
    parser.add_argument("--label-words", help='JSON list, e.g. \'[" terrible", " great"]\'')
    parser.add_argument("--prompt-template", default="{text} It was")
    args = parser.parse_args(argv)
    try:
        label_words = _label_words(args.label_words)
        # The settings a run would take, checked as a run's config is.
        config_io.validate(config_io.TrainConfig(
            model=args.model or "default", dataset=args.path, schema=args.schema,
            label_words=label_words or [], prompt_template=args.prompt_template,
            max_seq_len=args.max_seq_len))
        report = inspect(args.path, model=args.model, max_seq_len=args.max_seq_len,
                         schema=args.schema, label_words=label_words,
                         prompt_template=args.prompt_template)
    except UserError as exc:
        if not args.json:
            raise
        # A script asking for JSON always gets an object, a refusal included.
        report = {"path": args.path, "errors": [{"message": str(exc)}]}
        emit("result", json.dumps(report), **report)
        return EXIT_USER
    emit("result", json.dumps(report, indent=2) if args.json else _format_text(report), **report)
    return EXIT_USER if report["errors"] else 0


def _label_words(text: str | None) -> list[str] | None:
    if not text:
        return None
    try:
        words = json.loads(text)
    except json.JSONDecodeError:
        words = None
    if not isinstance(words, list) or not all(isinstance(word, str) for word in words):
        raise UserError(f"--label-words {text!r} is not a JSON list of words; give one word per "
                        """label, in label order, e.g. --label-words '[" terrible", " great"]'""")
    return words
