"""Training data: read a file, detect its schema, turn rows into examples the objective scores.

Files: JSONL, JSON (array of objects), CSV, TSV, Parquet, plain text (one example per line), or
a folder holding `train.*` and optionally `valid.*`/`test.*` (the MLX-LM convention).

Schemas (detected from the columns, or forced with `schema=`):
- classification: `text` or `sentence` + `label`; each label maps to a label word (inferred when
  labels are words, required when they are ids) scored at the answer position.
- prompt_completion: `prompt` + `completion`, used as written.
- alpaca: `instruction` (+ `input`) + `output`.
- messages: OpenAI chat, a list of {role: system|user|assistant, content}.
- conversations: ShareGPT, a list of {from: system|human|gpt, value}.
- text: `text` alone (or a .txt line): the whole text is the completion.
- preference data (`chosen`/`rejected`) is recognised and refused.

An example is model-agnostic until rendered: chat-shaped rows (alpaca, messages,
conversations) keep their turns and become prompt + completion text when `Dataset.render` gets
the model's tokenizer (its chat template applied); the completion is the last assistant turn.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.api.errors import UserError

EXTENSIONS = {
    ".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
    ".txt": "text",
}
SCHEMAS = ("classification", "prompt_completion", "alpaca", "messages", "conversations", "text")
CHAT_SCHEMAS = ("alpaca", "messages", "conversations")
BAD_ROWS_SHOWN = 5
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant",
                  "assistant": "assistant"}


@dataclass(frozen=True)
class Example:
    prompt: str
    completion: str = ""
    label: int | None = None
    # Chat-shaped rows before rendering: ((role, content), …) ending with the assistant turn.
    turns: tuple[tuple[str, str], ...] = ()


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
    skipped_rows: int = 0

    def subset(self, indices: list[int]) -> Dataset:
        return replace(self, examples=[self.examples[i] for i in indices])

    def render(self, tokenizer) -> Dataset:
        """Chat-shaped examples become prompt/completion text with the model's chat template."""
        if self.schema not in CHAT_SCHEMAS:
            return self
        return replace(self, examples=[render_turns(e.turns, tokenizer) for e in self.examples])


def render_prompt(template: str, text: str) -> str:
    """A classification prompt: `template` (config field prompt_template) with the row's text.

    `{text}` is the text, `{{` and `}}` are literal braces; config validation admits no other
    field. The one renderer wherever a prompt is built: training, evaluation, the held-out
    prompts an export is verified on, chat's label probabilities.
    """
    return template.format(text=text)


def render_turns(turns: tuple[tuple[str, str], ...], tokenizer) -> Example:
    history = [{"role": role, "content": content} for role, content in turns[:-1]]
    answer = turns[-1][1]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
        return Example(prompt=prompt, completion=answer, turns=turns)
    # No chat template: a plain, documented layout.
    prompt = "".join(f"{role.capitalize()}: {content}\n" for role, content in turns[:-1])
    return Example(prompt=prompt + "Assistant:", completion=" " + answer, turns=turns)


# ---- reading files -------------------------------------------------------------------------

def file_format(path: Path) -> str:
    fmt = EXTENSIONS.get(path.suffix.lower())
    if fmt is None:
        raise UserError(
            f"{path.name}: unsupported file type {path.suffix or '(no extension)'}; use one of "
            f"{', '.join(EXTENSIONS)} or a folder with train.jsonl"
        )
    return fmt


def _check_bytes(path: Path) -> None:
    with path.open("rb") as handle:
        head = handle.read(8192)
    if not head.strip():
        raise UserError(f"{path.name}: the file is empty; it needs at least one row")
    if path.suffix.lower() != ".parquet" and b"\x00" in head:
        raise UserError(
            f"{path.name}: this is a binary file, not text; save the data as JSONL, CSV or "
            "Parquet (with a .parquet extension)"
        )


def _not_utf8(path: Path, line: int) -> UserError:
    return UserError(
        f"{path.name}:{line}: not UTF-8 text; re-save the file as UTF-8 (e.g. in your editor's "
        "'Save with encoding' menu)"
    )


def iter_rows(path: Path, limit: int | None = None) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line or row number, row) pairs; `limit` stops early (inspection reads a prefix)."""
    fmt = file_format(path)
    _check_bytes(path)
    reader = {"jsonl": _jsonl, "json": _json, "csv": _delimited, "tsv": _delimited,
              "parquet": _parquet, "text": _text}[fmt]
    for count, item in enumerate(reader(path)):
        if limit is not None and count >= limit:
            return
        yield item


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield number, raw.decode("utf-8")
            except UnicodeDecodeError:
                raise _not_utf8(path, number) from None


def _jsonl(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            hint = " (if the file is one JSON array, name it .json)" if number == 1 and \
                line.lstrip().startswith("[") else ""
            yield number, {"__error__": f"not valid JSON ({exc.msg} at column {exc.colno}){hint}"}
            continue
        if isinstance(row, list):
            yield number, {"__error__": "expected one JSON object per line, got an array (if the "
                                        "file is one JSON array, name it .json)"}
            continue
        yield number, row if isinstance(row, dict) else {"__error__": "expected a JSON object"}


def _json(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise _not_utf8(path, 1) from None
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{path.name}:{exc.lineno}: not valid JSON ({exc.msg}); a .json file must hold one "
            "array of objects (one object per line is .jsonl)"
        ) from None
    if isinstance(data, dict):
        data = next((v for v in data.values() if isinstance(v, list)), None)
    if not isinstance(data, list):
        raise UserError(f"{path.name}: expected a JSON array of objects")
    for number, row in enumerate(data, start=1):
        yield number, row if isinstance(row, dict) else {"__error__": "expected a JSON object"}


def _delimited(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    lines = (line for _, line in _lines(path))
    reader = csv.reader(lines, delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return
    header = [h.strip() for h in header]
    if len(header) == 1 and delimiter == "," and "\t" in "".join(header):
        raise UserError(f"{path.name}: the columns are separated by tabs; rename it to .tsv")
    for row in reader:
        number = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield number, {"__error__": f"{len(row)} fields but the header has {len(header)} "
                                        "(a missing or extra delimiter, or an unquoted one)"}
            continue
        yield number, dict(zip(header, row, strict=True))


def _parquet(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:
        raise UserError(f"{path.name}: not a readable Parquet file ({str(exc)[:120]})") from None
    number = 0
    for batch in parquet.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def _text(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in _lines(path):
        if line.strip():
            yield number, {"text": line.rstrip("\n")}


def count_rows(path: Path, fmt: str) -> int:
    """Exact row count (for Parquet from the footer; otherwise by reading the file)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return sum(1 for _ in iter_rows(path))


# ---- schemas -------------------------------------------------------------------------------

def row_schema(row: dict[str, Any]) -> str | None:
    keys = set(row)
    if {"chosen", "rejected"} <= keys:
        return "preference"
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "conversations"
    if {"instruction", "output"} <= keys:
        return "alpaca"
    if {"prompt", "completion"} <= keys:
        return "prompt_completion"
    if "label" in keys and ("text" in keys or "sentence" in keys):
        return "classification"
    if "text" in keys:
        return "text"
    return None


def detect_schema(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> str:
    """The schema of the rows; rows that match none are left to fail per row (missing field)."""
    seen: dict[str, int] = {}
    unknown: tuple[int, dict[str, Any]] | None = None
    for number, row in rows:
        if "__error__" in row:
            continue
        schema = row_schema(row)
        if schema is None:
            unknown = unknown or (number, row)
            continue
        seen.setdefault(schema, number)
    # A text row among classification rows is one that lacks its label.
    if set(seen) == {"classification", "text"}:
        del seen["text"]
    if not seen:
        if unknown is None:
            number, row = rows[0]
            raise UserError(f"{path.name}:{number}: {row['__error__']}; no row could be read")
        number, row = unknown
        raise UserError(
            f"{path.name}:{number}: cannot tell the schema from the columns {sorted(row)}; "
            "expected e.g. text+label, prompt+completion, instruction+output, messages, or "
            "conversations (or set schema= and rename the columns)"
        )
    if "preference" in seen:
        raise UserError(
            f"{path.name}: preference data (chosen/rejected) is not supported: EdgeTune trains "
            "on prompts with one answer. Keep the chosen answers as prompt/completion rows"
        )
    if len(seen) > 1:
        first, second = sorted(seen.items(), key=lambda item: item[1])[:2]
        raise UserError(
            f"{path.name}: mixed schemas: line {first[1]} looks like {first[0]} but line "
            f"{second[1]} looks like {second[0]}; keep one shape of row per file"
        )
    return next(iter(seen))


def task_of(schema: str) -> str:
    return "classification" if schema == "classification" else "sft"


def _text_field(row: dict[str, Any], key: str) -> str:
    value = row.get(key)
    if value is None:
        raise ValueError(f'field "{key}" missing')
    if not isinstance(value, str):
        raise ValueError(f'field "{key}" is {type(value).__name__}, expected text')
    return value


def _turns(row: dict[str, Any], schema: str) -> tuple[tuple[str, str], ...]:
    if schema == "alpaca":
        instruction = _text_field(row, "instruction")
        extra = row.get("input") or ""
        user = f"{instruction}\n\n{extra}" if extra else instruction
        return (("user", user), ("assistant", _text_field(row, "output")))
    key, role_key, text_key = (("messages", "role", "content") if schema == "messages"
                               else ("conversations", "from", "value"))
    turns = row.get(key)
    if not isinstance(turns, list) or not turns:
        raise ValueError(f'field "{key}" missing or not a list of turns')
    result = []
    for index, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ValueError(f'field "{key}" turn {index} is not an object')
        role = SHAREGPT_ROLES.get(str(turn.get(role_key)))
        content = turn.get(text_key)
        if role is None:
            raise ValueError(f'field "{key}" turn {index}: "{role_key}" is {turn.get(role_key)!r}; '
                             "expected system, user/human or assistant/gpt")
        if not isinstance(content, str):
            raise ValueError(f'field "{key}" turn {index}: "{text_key}" missing or not text')
        result.append((role, content))
    if result[-1][0] != "assistant":
        raise ValueError(f'field "{key}": the last turn must be the assistant\'s answer')
    return tuple(result)


def _example(row: dict[str, Any], schema: str, prompt_template: str) -> Example:
    if "__error__" in row:
        raise ValueError(row["__error__"])
    if schema == "prompt_completion":
        return Example(prompt=_text_field(row, "prompt"), completion=_text_field(row, "completion"))
    if schema == "text":
        return Example(prompt="", completion=_text_field(row, "text"))
    if schema == "classification":
        key = "text" if "text" in row else "sentence"
        return Example(prompt=render_prompt(prompt_template, _text_field(row, key)))
    return Example(prompt="", turns=_turns(row, schema))


# ---- loading -------------------------------------------------------------------------------

def train_file(path: Path) -> Path:
    """A dataset path as given, or the `train.*` file of an MLX-LM style folder."""
    if not path.is_dir():
        return path
    for ext in EXTENSIONS:
        candidate = path / f"train{ext}"
        if candidate.exists():
            return candidate
    raise UserError(f"dataset folder {path} has no train file (train.jsonl, train.csv, …)")


def find_eval_file(path: str | Path) -> Path | None:
    """`valid.*` (else `test.*`) beside `train.*` in a dataset folder."""
    path = Path(path)
    if not path.is_dir():
        return None
    for stem in ("valid", "validation", "test"):
        for ext in EXTENSIONS:
            if (path / f"{stem}{ext}").exists():
                return path / f"{stem}{ext}"
    return None


def load_dataset(
    path: str | Path,
    *,
    task: str = "auto",
    label_words: list[str] | None = None,
    prompt_template: str = "{text} It was",
    schema: str = "auto",
    skip_bad_rows: bool = False,
) -> Dataset:
    """Read and validate every row; raise UserError naming file, line and field for bad input."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"dataset {path} not found; check the path")
    path = train_file(path)
    fmt = file_format(path)
    rows = list(iter_rows(path))
    if not rows:
        raise UserError(f"{path.name}: the file holds no rows")
    if schema == "auto":
        schema = detect_schema(path, rows)
    elif schema not in SCHEMAS:
        raise UserError(f'config field "schema" is {schema!r}; allowed: auto, {", ".join(SCHEMAS)}')
    data_task = task_of(schema)
    if task not in ("auto", data_task):
        raise UserError(f"{path.name}: task is {task} but the rows look like {schema} ({data_task})")
    examples: list[Example] = []
    labels: list[str] = []
    bad: list[str] = []
    for number, row in rows:
        try:
            example = _example(row, schema, prompt_template)
            if schema == "classification":
                if row.get("label") is None or str(row["label"]).strip() == "":
                    raise ValueError('field "label" missing')
                labels.append(str(row["label"]).strip())
        except ValueError as exc:
            bad.append(f"{path.name}:{number}: {exc}; rows look like {schema}")
            continue
        examples.append(example)
    if bad and not skip_bad_rows:
        shown = "\n  ".join(bad[:BAD_ROWS_SHOWN])
        more = f"\n  … and {len(bad) - BAD_ROWS_SHOWN} more" if len(bad) > BAD_ROWS_SHOWN else ""
        raise UserError(
            f"{path.name}: {len(bad)} of {len(rows)} rows are malformed:\n  {shown}{more}\n"
            "Fix them, or set skip_bad_rows=true to train without them"
        )
    if not examples:
        raise UserError(f"{path.name}: no usable rows")
    dataset = Dataset(str(path), fmt, schema, data_task, examples, skipped_rows=len(bad))
    if schema == "classification":
        return _attach_labels(dataset, labels, label_words or [])
    return dataset


def _is_id(name: str) -> bool:
    return name.lstrip("-").isdigit()


def _attach_labels(dataset: Dataset, labels: list[str], label_words: list[str]) -> Dataset:
    name = Path(dataset.path).name
    names = sorted(set(labels), key=lambda n: (0, int(n)) if _is_id(n) else (1, n))
    ids = all(_is_id(n) for n in names)
    if not label_words:
        if ids:
            raise UserError(
                f"{name}: labels are ids {names}; set label_words to the word for each label in "
                """order, e.g. label_words='[" terrible", " great"]'"""
            )
        label_words = [" " + n for n in names]
    if ids:
        index = {str(i): i for i in range(len(label_words))}
    else:
        if len(names) != len(label_words):
            raise UserError(
                f"{name}: {len(names)} distinct labels {names} but {len(label_words)} label_words "
                f"{label_words}; give one word per label, in sorted label order"
            )
        index = {n: i for i, n in enumerate(names)}
    outside = [(i, n) for i, n in enumerate(labels) if n not in index]
    if outside:
        row, label = outside[0]
        raise UserError(
            f"{name}: {len(outside)} rows have a label outside label_words (first: row {row + 1}, "
            f'field "label" is {label!r}); allowed labels: {sorted(index, key=index.__getitem__)}'
        )
    examples = [replace(e, label=index[n]) for e, n in zip(dataset.examples, labels, strict=True)]
    return replace(dataset, examples=examples, label_words=list(label_words),
                   label_names=sorted(index, key=index.__getitem__))


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

