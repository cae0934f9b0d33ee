"""Datasets: every schema in every file format, the error messages, the inspection tool."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

from engine.api.errors import UserError
from engine.data.dataset import find_eval_file, load_dataset, render_prompt, split
from engine.data.inspection import inspect

ROWS = {
    "classification": [{"text": "great phone", "label": "positive"},
                       {"text": "awful phone", "label": "negative"}] * 3,
    "prompt_completion": [{"prompt": "2+2=", "completion": " 4"}, {"prompt": "3+3=", "completion": " 6"}],
    "alpaca": [{"instruction": "Add", "input": "2 and 2", "output": "4"},
               {"instruction": "Greet", "input": "", "output": "Hello"}],
    "messages": [{"messages": [{"role": "user", "content": "hi"},
                               {"role": "assistant", "content": "hello"}]}] * 2,
    "conversations": [{"conversations": [{"from": "human", "value": "hi"},
                                         {"from": "gpt", "value": "yo"}]}] * 2,
    "text": [{"text": "a plain paragraph"}, {"text": "another one"}],
}
FLAT = ("classification", "prompt_completion", "alpaca", "text")


def write(path: Path, rows: list[dict]) -> Path:
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows))
    elif suffix in (".csv", ".tsv"):
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]),
                                    delimiter="\t" if suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows(rows)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("fmt", [".jsonl", ".json", ".csv", ".tsv", ".parquet"])
@pytest.mark.parametrize("schema", list(ROWS))
def test_every_schema_in_every_format(tmp_path, fmt, schema):
    if schema not in FLAT and fmt in (".csv", ".tsv"):
        pytest.skip("nested turns do not fit a flat table")
    path = write(tmp_path / f"data{fmt}", ROWS[schema])
    data = load_dataset(path)
    assert data.schema == schema
    assert data.file_format == fmt[1:]
    assert len(data.examples) == len(ROWS[schema])
    assert inspect(path)["schema"] == schema


def test_plain_text_lines_are_text_rows(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first line\n\nsecond line\n")
    data = load_dataset(path)
    assert data.schema == "text" and [e.completion for e in data.examples] == ["first line", "second line"]


def test_chat_rows_render_with_the_chat_template(tiny_model, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model))
    data = load_dataset(write(tmp_path / "c.jsonl", ROWS["conversations"])).render(tokenizer)
    example = data.examples[0]
    assert example.prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert example.completion == "yo"


def test_classification_label_words_inferred_or_required(tmp_path):
    data = load_dataset(write(tmp_path / "w.jsonl", ROWS["classification"]))
    assert data.label_words == [" negative", " positive"] and data.examples[0].label == 1
    ids = [{"text": "x", "label": 0}, {"text": "y", "label": 1}]
    with pytest.raises(UserError, match="labels are ids"):
        load_dataset(write(tmp_path / "ids.jsonl", ids))
    data = load_dataset(tmp_path / "ids.jsonl", label_words=[" bad", " good"])
    assert [e.label for e in data.examples] == [0, 1]
    with pytest.raises(UserError, match=r"row 2, field \"label\" is '7'"):
        load_dataset(write(tmp_path / "out.jsonl", [{"text": "x", "label": 0}, {"text": "y", "label": 7}]),
                     label_words=[" bad", " good"])


def test_braces_in_a_template_are_literal(tmp_path):
    data = load_dataset(write(tmp_path / "b.jsonl", ROWS["classification"]),
                        prompt_template="{{x}} {text} It was")
    text = ROWS["classification"][0]["text"]
    assert data.examples[0].prompt == f"{{x}} {text} It was" == render_prompt("{{x}} {text} It was", text)


def test_folder_with_train_and_valid(tmp_path):
    folder = tmp_path / "mlx"
    folder.mkdir()
    write(folder / "train.jsonl", ROWS["prompt_completion"])
    write(folder / "valid.jsonl", ROWS["prompt_completion"][:1])
    assert load_dataset(folder).schema == "prompt_completion"
    assert find_eval_file(folder) == folder / "valid.jsonl"
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(UserError, match="no train file"):
        load_dataset(empty)


ERRORS = {
    "bad_line": ('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": \n', "x.jsonl",
                 "x.jsonl:2: not valid JSON"),
    "missing_field": ('{"instruction": "a", "output": "b"}\n{"instruction": "c", "input": "d"}\n', "x.jsonl",
                      None),
    "preference": ('{"prompt": "a", "chosen": "b", "rejected": "c"}\n', "x.jsonl", "not supported"),
    "mixed": ('{"prompt": "a", "completion": "b"}\n{"text": "t", "label": "x"}\n', "x.jsonl",
              "mixed schemas: line 1 looks like prompt_completion but line 2 looks like classification"),
    "unknown_columns": ('{"foo": 1}\n', "x.jsonl", "x.jsonl:1: cannot tell the schema"),
    "ragged_csv": ("prompt,completion\na,b\nc,d,e\n", "x.csv", "x.csv:3: 3 fields but the header has 2"),
    "wrong_ext": ("a,b\n", "x.docx", "unsupported file type .docx"),
    "json_array_as_jsonl": ('[{"prompt": "a", "completion": "b"}]\n', "x.jsonl", "name it .json"),
}


@pytest.mark.parametrize("case", list(ERRORS))
def test_errors_name_file_line_and_field(tmp_path, case):
    text, name, pattern = ERRORS[case]
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError) as info:
        load_dataset(path)
    message = str(info.value)
    if case == "missing_field":
        # Detection sees the first row (alpaca); the second lacks "output".
        assert 'x.jsonl:2: field "output" missing; rows look like alpaca' in message
    else:
        assert pattern in message, message


def test_bad_bytes_empty_and_binary_files(tmp_path):
    cases = {"empty.jsonl": b"", "binary.jsonl": b"\x00\x01\x02garbage\x00",
             "latin1.jsonl": '{"text": "caf\u00e9", "label": "a"}\n'.encode("latin-1"),
             "corrupt.parquet": b"PAR1 not really parquet"}
    expected = {"empty.jsonl": "is empty", "binary.jsonl": "binary file",
                "latin1.jsonl": "latin1.jsonl:1: not UTF-8", "corrupt.parquet": "not a readable Parquet file"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UserError, match=expected[name]):
            load_dataset(tmp_path / name)


def test_a_few_bad_rows_are_counted_and_skipping_is_explicit(tmp_path):
    rows = ['{"prompt": "p", "completion": "c"}'] * 20
    rows[4] = rows[9] = '{"prompt": "p"}'
    path = tmp_path / "some_bad.jsonl"
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(UserError) as info:
        load_dataset(path)
    message = str(info.value)
    assert "2 of 20 rows are malformed" in message
    assert 'some_bad.jsonl:5: field "completion" missing' in message and "skip_bad_rows" in message
    data = load_dataset(path, skip_bad_rows=True)
    assert len(data.examples) == 18 and data.skipped_rows == 2


def test_split_is_seeded_and_stratified(tmp_path):
    rows = [{"text": f"t{i}", "label": "a" if i % 4 else "b"} for i in range(200)]
    data = load_dataset(write(tmp_path / "s.jsonl", rows))
    train, held = split(data, 0.2, seed=3)
    again_train, again_held = split(data, 0.2, seed=3)
    assert [e.prompt for e in held.examples] == [e.prompt for e in again_held.examples]
    assert len(held.examples) == 40
    assert sum(e.label == 0 for e in held.examples) == 30  # 150 "a" rows → 30 held out


def test_bundled_datasets_detect(tiny_model):
    reviews = inspect(REPO / "resources/datasets/reviews.jsonl")
    assert reviews["schema"] == "classification" and reviews["rows"] == 600
    assert reviews["label_distribution"] == {"negative": 300, "positive": 300}
    chat = inspect(REPO / "resources/datasets/conversions.json", model=str(tiny_model))
    assert chat["schema"] == "messages" and chat["rows"] == 300
    assert chat["preview"][0]["prompt"].endswith("<|im_start|>assistant\n")
    assert chat["token_lengths"]["max"] >= chat["token_lengths"]["median"] > 0


def test_inspect_a_large_file_answers_fast(tmp_path):
    path = tmp_path / "big.jsonl"
    line = json.dumps({"prompt": "x" * 180, "completion": "y" * 60}) + "\n"
    with path.open("w") as handle:
        chunk = line * 10_000
        for _ in range(80):  # ~20 MB per 10 chunks → ~200 MB
            handle.write(chunk)
    started = time.perf_counter()
    report = inspect(path)
    seconds = time.perf_counter() - started
    print(f"inspect of {path.stat().st_size / 2**20:.0f} MiB: {seconds:.2f} s")
    assert seconds < 5
    assert report["rows_exact"] is False and abs(report["rows"] - 800_000) / 800_000 < 0.01


def test_inspect_cli_json_and_refusals(tmp_path):
    path = write(tmp_path / "d.jsonl", ROWS["alpaca"])
    out = subprocess.run([sys.executable, "-m", "engine", "inspect-dataset", str(path), "--json"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    report = json.loads(out.stdout)
    assert out.returncode == 0 and report["schema"] == "alpaca" and report["errors"] == []
    bad = tmp_path / "pref.jsonl"
    bad.write_text('{"chosen": "a", "rejected": "b"}\n')
    out = subprocess.run([sys.executable, "-m", "engine", "inspect-dataset", str(bad), "--json"],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2 and "not supported" in json.loads(out.stdout)["errors"][0]["message"]
    assert "Traceback" not in out.stderr
