"""Training data: read a file, detect its schema, turn rows into examples the objective scores.

An example is model-agnostic text: for classification the prompt (prompt_template applied) and
a label index whose label word is scored at the answer position; for SFT the prompt and the
completion whose tokens carry the loss.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import UserError


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str = ""
    label: int | None = None


@dataclass
class Dataset:
    path: str
    file_format: str
    schema: str
    task: str
    examples: list[Example]
    # Classification: the word scored for each label index, and the label as the file spells it.
    label_words: list[str] = field(default_factory=list)
    label_names: list[str] = field(default_factory=list)

    def subset(self, indices: list[int]) -> Dataset:
        return Dataset(
            self.path,
            self.file_format,
            self.schema,
            self.task,
            [self.examples[i] for i in indices],
            self.label_words,
            self.label_names,
        )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise UserError(
                        f"{path.name}:{number}: not valid JSON ({exc.msg} at column {exc.colno}); "
                        "each line must be one JSON object"
                    ) from None
                if not isinstance(row, dict):
                    raise UserError(f"{path.name}:{number}: expected a JSON object, got {row!r:.40}")
                rows.append(row)
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path.name}: not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        ) from None
    if not rows:
        raise UserError(f"{path.name}: the file holds no rows")
    return rows


def detect_schema(rows: list[dict[str, Any]]) -> str:
    keys = set(rows[0])
    if "label" in keys and ("text" in keys or "sentence" in keys):
        return "classification"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    raise UserError(
        f"cannot tell the schema from the columns {sorted(keys)}; expected text+label or "
        "prompt+completion"
    )


def load_dataset(
    path: str | Path,
    *,
    task: str = "auto",
    label_words: list[str] | None = None,
    prompt_template: str = "{text} It was",
) -> Dataset:
    path = Path(path)
    if not path.exists():
        raise UserError(f"dataset {path} not found; check the path")
    rows = read_jsonl(path)
    schema = detect_schema(rows)
    data_task = "classification" if schema == "classification" else "sft"
    if task not in ("auto", data_task):
        raise UserError(f"{path.name}: task is {task} but the rows look like {schema}")
    if data_task == "sft":
        examples = []
        for number, row in enumerate(rows, start=1):
            for key in ("prompt", "completion"):
                if not isinstance(row.get(key), str):
                    raise UserError(f'{path.name}:{number}: field "{key}" missing or not text')
            examples.append(Example(prompt=row["prompt"], completion=row["completion"]))
        return Dataset(str(path), "jsonl", schema, "sft", examples)
    return _classification(path, rows, label_words or [], prompt_template)


def _classification(
    path: Path, rows: list[dict[str, Any]], label_words: list[str], prompt_template: str
) -> Dataset:
    text_key = "text" if "text" in rows[0] else "sentence"
    names = sorted({str(row.get("label")) for row in rows}, key=_label_order)
    if not label_words:
        if all(name.lstrip("-").isdigit() for name in names):
            raise UserError(
                f"{path.name}: labels are ids {names}; set label_words to the word for each "
                'label in order, e.g. label_words=[" terrible"," great"]'
            )
        label_words = [" " + name for name in names]
    if len(names) > len(label_words):
        raise UserError(
            f"{path.name}: {len(names)} distinct labels {names} but {len(label_words)} label_words"
        )
    if all(name.lstrip("-").isdigit() for name in names):
        index = {str(i): i for i in range(len(label_words))}
    else:
        index = {name: i for i, name in enumerate(names)}
    examples = []
    for number, row in enumerate(rows, start=1):
        text, label = row.get(text_key), str(row.get("label"))
        if not isinstance(text, str):
            raise UserError(f'{path.name}:{number}: field "{text_key}" missing or not text')
        if label not in index:
            raise UserError(
                f'{path.name}:{number}: field "label" is {label!r}; expected one of {sorted(index)}'
            )
        examples.append(Example(prompt=prompt_template.format(text=text), label=index[label]))
    label_names = sorted(index, key=index.__getitem__)
    return Dataset(str(path), "jsonl", "classification", "classification", examples, label_words, label_names)


def _label_order(name: str) -> tuple[int, Any]:
    return (0, int(name)) if name.lstrip("-").isdigit() else (1, name)


def split(dataset: Dataset, eval_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Seeded train/eval split; stratified by label for classification."""
    rng = random.Random(seed)
    groups: dict[Any, list[int]] = {}
    for i, example in enumerate(dataset.examples):
        groups.setdefault(example.label, []).append(i)
    train, held_out = [], []
    for key in sorted(groups, key=str):
        indices = groups[key]
        rng.shuffle(indices)
        cut = max(1, round(len(indices) * eval_fraction))
        held_out += indices[:cut]
        train += indices[cut:]
    if not train:
        raise UserError(f"{dataset.path}: too few rows to hold out {eval_fraction:.0%} for evaluation")
    return dataset.subset(sorted(train)), dataset.subset(sorted(held_out))


def label_distribution(dataset: Dataset) -> dict[str, int]:
    counts = Counter(example.label for example in dataset.examples)
    return {dataset.label_names[k]: v for k, v in sorted(counts.items())}
