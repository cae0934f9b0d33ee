"""The corpus of bad inputs: each case builds its files in its own folder and returns the
`python -m engine …` arguments that must fail with a clear message (the fragments it must name).
Run through the CLI by tests/engine/test_bad_inputs.py and through the window by
tests/app/test_window_reliability.py.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from conftest import write_gguf

from engine.api import config as config_io

LABEL_WORDS = ("--label-words", '[" terrible", " great"]')
GOOD_ROWS = [{"text": f"review {i}: it was {'good' if i % 2 else 'bad'}", "label": i % 2}
             for i in range(40)]


@dataclass
class Ctx:
    """One case's folder and the good inputs a case changes one thing of."""

    dir: Path
    model: Path
    data: Path

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def jsonl(self, name: str, rows: list) -> Path:
        return self.write(name, "".join(json.dumps(r) + "\n" for r in rows))

    def overrides(self, **changes) -> list[str]:
        """key=value overrides of a fast run; `optimizer__q=0` sets optimizer.q, None drops a key."""
        values = {
            "model": self.model, "dataset": self.data, "task": "classification",
            "label_words": "[' terrible', ' great']", "output_dir": self.dir / "run",
            "steps": 1, "batch_size": 2, "max_seq_len": 48, "eval_every": 0, "eval_rows": 8,
            "checkpoint_every": 0, "threads": 1, "optimizer.q": 2, "lora.rank": 4,
        }
        for key, value in changes.items():
            key = key.replace("__", ".")
            if value is None:
                values.pop(key, None)
            else:
                values[key] = value
        return [f"{key}={value}" for key, value in values.items()]

    def train(self, *extra: str, **changes) -> list[str]:
        return ["train", *self.overrides(**changes), *extra]


@dataclass
class Case:
    id: str
    build: Callable[[Ctx], list[str]]
    expect: tuple[str, ...]  # fragments the message must contain
    inspect_args: tuple[str, ...] = ()  # extra inspect-dataset arguments (dataset cases)


CASES: list[Case] = []
DATASET_CASES: list[Case] = []


def case(*expect: str, dataset: bool = False, inspect_args: tuple[str, ...] = ()):
    def register(build: Callable[[Ctx], list[str]]):
        CASES.append(Case(build.__name__, build, expect, inspect_args))
        if dataset:
            DATASET_CASES.append(CASES[-1])
        return build
    return register


def dataset_case(*expect: str, inspect_args: tuple[str, ...] = ()):
    """A case whose build returns the bad dataset path; trained on with the good model."""
    def register(make: Callable[[Ctx], Path]):
        def build(ctx: Ctx) -> list[str]:
            return ctx.train(dataset=make(ctx))
        build.__name__ = make.__name__
        build.make_dataset = make
        return case(*expect, dataset=True, inspect_args=inspect_args)(build)
    return register


# ---- datasets -------------------------------------------------------------------------------

@dataset_case("empty.jsonl", "empty")
def empty_file(ctx):
    return ctx.write("empty.jsonl", "")


@dataset_case("blank.jsonl", "empty")
def only_blank_lines(ctx):
    return ctx.write("blank.jsonl", "\n   \n\n")


@dataset_case("blob.jsonl", "binary")
def binary_file(ctx):
    return ctx.write("blob.jsonl", bytes(range(256)) * 64)


@dataset_case("reviews.docx", "unsupported file type", ".jsonl")
def wrong_extension(ctx):
    return ctx.write("reviews.docx", json.dumps(GOOD_ROWS[0]) + "\n")


@dataset_case("reviews", "(no extension)")
def no_extension(ctx):
    return ctx.write("reviews", json.dumps(GOOD_ROWS[0]) + "\n")


@dataset_case("bad.jsonl:7", "not valid JSON", "skip_bad_rows")
def one_bad_jsonl_line(ctx):
    lines = [json.dumps(r) for r in GOOD_ROWS[:12]]
    lines[6] = '{"text": "cut off in the midd'
    return ctx.write("bad.jsonl", "\n".join(lines) + "\n")


@dataset_case("missing.jsonl:5", '"label" missing')
def missing_label_field(ctx):
    rows = [dict(r) for r in GOOD_ROWS[:12]]
    del rows[4]["label"]
    return ctx.jsonl("missing.jsonl", rows)


@dataset_case("null.jsonl:3", '"text"')
def null_text_field(ctx):
    rows = [dict(r) for r in GOOD_ROWS[:12]]
    rows[2]["text"] = None
    return ctx.jsonl("null.jsonl", rows)


@dataset_case("columns.jsonl:1", "cannot tell the schema", "body")
def unknown_columns(ctx):
    return ctx.jsonl("columns.jsonl", [{"body": "x", "stars": 5}] * 4)


@dataset_case("mixed.jsonl", "mixed schemas", "line 4")
def mixed_schemas(ctx):
    rows = [*GOOD_ROWS[:3], {"prompt": "2+2=", "completion": " 4"}, *GOOD_ROWS[3:8]]
    return ctx.jsonl("mixed.jsonl", rows)


@dataset_case("labels.jsonl", "label_words", "3 distinct labels", inspect_args=LABEL_WORDS)
def labels_outside_the_verbalizer(ctx):
    rows = [{"text": f"row {i}", "label": ["good", "bad", "meh"][i % 3]} for i in range(12)]
    return ctx.jsonl("labels.jsonl", rows)


@dataset_case("ids.jsonl", "label outside label_words", "'7'", inspect_args=LABEL_WORDS)
def label_id_outside_the_verbalizer(ctx):
    rows = [dict(r) for r in GOOD_ROWS[:12]]
    rows[9]["label"] = 7
    return ctx.jsonl("ids.jsonl", rows)


@dataset_case("latin1.jsonl:3", "UTF-8")
def not_utf8(ctx):
    lines = [json.dumps(r).encode() for r in GOOD_ROWS[:6]]
    lines[2] = '{"text": "caf\u00e9 cr\u00e8me", "label": 1}'.encode("latin-1")
    return ctx.write("latin1.jsonl", b"\n".join(lines) + b"\n")


@dataset_case("huge.jsonl:1", "not valid JSON")
def ten_megabyte_single_line(ctx):
    return ctx.write("huge.jsonl", "x" * (10 * 2**20))


@dataset_case("ragged.csv:4", "3 fields but the header has 2")
def ragged_csv(ctx):
    return ctx.write("ragged.csv", "text,label\ngood one,1\nbad one,0\nan, extra comma,1\n")


@dataset_case("tabs.csv", "rename it to .tsv")
def tab_separated_named_csv(ctx):
    return ctx.write("tabs.csv", "text\tlabel\ngood\t1\nbad\t0\n")


@dataset_case("header.csv", "no rows")
def csv_with_only_a_header(ctx):
    return ctx.write("header.csv", "text,label\n")


@dataset_case("broken.parquet", "not a readable Parquet file")
def corrupt_parquet(ctx):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = ctx.dir / "broken.parquet"
    pq.write_table(pa.Table.from_pylist(GOOD_ROWS), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@dataset_case("object.json", "array of objects")
def json_object_not_array(ctx):
    return ctx.write("object.json", json.dumps({"text": "a", "label": 1}))


@dataset_case("array.jsonl:1", "name it .json")
def json_array_named_jsonl(ctx):
    return ctx.write("array.jsonl", json.dumps(GOOD_ROWS[:4]))


@dataset_case("prefs.jsonl", "preference data")
def preference_pairs(ctx):
    return ctx.jsonl("prefs.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "b"}] * 4)


@dataset_case("no train file", "train.jsonl")
def folder_without_train_file(ctx):
    ctx.write("folder/notes.txt", "hello\n")
    return ctx.dir / "folder"


@dataset_case("not found", "nowhere.jsonl")
def missing_dataset(ctx):
    return ctx.dir / "nowhere.jsonl"


@dataset_case("not found", "dangling.jsonl")
def dangling_symlink(ctx):
    link = ctx.dir / "dangling.jsonl"
    link.symlink_to(ctx.dir / "gone.jsonl")
    return link


@dataset_case("ünïcode file.jsonl:2", "not valid JSON")
def spaces_and_unicode_in_the_path(ctx):
    return ctx.write("my data ü/ünïcode file.jsonl", json.dumps(GOOD_ROWS[0]) + "\n{oops\n")


@case("too few rows")
def a_single_row(ctx):
    return ctx.train(dataset=ctx.jsonl("one.jsonl", GOOD_ROWS[:1]), batch_size=1)


@case("sft.jsonl", "task is classification", "prompt_completion")
def task_does_not_match_the_rows(ctx):
    rows = [{"prompt": f"{i}+1=", "completion": f" {i + 1}"} for i in range(12)]
    return ctx.train(dataset=ctx.jsonl("sft.jsonl", rows))


@case("not found", "held-out.jsonl")
def missing_eval_dataset(ctx):
    return ctx.train(eval_dataset=ctx.dir / "held-out.jsonl")


# ---- models ---------------------------------------------------------------------------------

def _copy_model(ctx: Ctx, keep: Callable[[str], bool]) -> Path:
    folder = ctx.dir / "model copy"
    folder.mkdir()
    for file in ctx.model.iterdir():
        if keep(file.name):
            (folder / file.name).write_bytes(file.read_bytes())
    return folder


@case("model copy", "no config.json")
def model_folder_without_config(ctx):
    return ctx.train(model=_copy_model(ctx, lambda name: name != "config.json"))


@case("model copy", "no weights")
def model_folder_without_weights(ctx):
    return ctx.train(model=_copy_model(ctx, lambda name: not name.endswith(".safetensors")))


@case("model copy", "cannot load")
def model_weights_truncated(ctx):
    folder = _copy_model(ctx, lambda name: True)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    return ctx.train(model=folder)


@case("model copy", "cannot load")
def model_config_not_json(ctx):
    folder = _copy_model(ctx, lambda name: True)
    (folder / "config.json").write_text("{ this is not json")
    return ctx.train(model=folder)


def config_json(ctx: Ctx, change: Callable[[dict], object]) -> Path:
    """A copy of the good model whose config.json is `change(config)` (a str is written as is)."""
    folder = _copy_model(ctx, lambda name: True)
    config = json.loads((folder / "config.json").read_text())
    changed = change(config)
    (folder / "config.json").write_text(changed if isinstance(changed, str) else json.dumps(changed))
    return folder


def encoder(config: dict) -> dict:
    return {**config, "model_type": "bert", "architectures": ["BertForMaskedLM"]}


@case("BertForMaskedLM", "not a decoder-only", "causal language model")
def model_is_an_encoder(ctx):
    return ctx.train(model=config_json(ctx, encoder))


@case("cut.gguf", "truncated or corrupt", "download it again")
def gguf_truncated(ctx):
    path = write_gguf(ctx.dir / "cut.gguf", "llama")
    path.write_bytes(path.read_bytes()[:-4000])
    return ctx.train(model=path)


@case("bert.gguf", "architecture 'bert'", "Hugging Face folder")
def gguf_of_an_unsupported_architecture(ctx):
    return ctx.train(model=write_gguf(ctx.dir / "bert.gguf", "bert"))


@case("fake.gguf", "not a GGUF file")
def gguf_that_is_not_gguf(ctx):
    return ctx.train(model=ctx.write("fake.gguf", "I am a text file\n"))


@case("missing.gguf", "not found")
def gguf_missing(ctx):
    return ctx.train(model=ctx.dir / "missing.gguf")


@case("someone/not-cached-model", "HF_HUB_OFFLINE", "local folder")
def hub_id_while_offline(ctx):
    return ctx.train(model="someone/not-cached-model")


@case("weights.bin", "neither a folder nor a .gguf file")
def model_is_a_plain_file(ctx):
    return ctx.train(model=ctx.write("weights.bin", b"\x00" * 64))


@case("./no/such/model", "not a folder, a .gguf file or a hub id")
def model_path_missing(ctx):
    return ctx.train(model="./no/such/model")


# ---- configs --------------------------------------------------------------------------------

@case('"lerning_rate"', "known fields")
def unknown_key(ctx):
    return ctx.train("lerning_rate=0.1")


@case('"optimizer.lrr"')
def unknown_nested_key(ctx):
    return ctx.train("optimizer.lrr=0.1")


@case('"optimizer.lr"', "> 0.0")
def negative_lr(ctx):
    return ctx.train(optimizer__lr=-0.01)


@case('"optimizer.q"', ">= 1")
def q_zero(ctx):
    return ctx.train(optimizer__q=0)


@case('"optimizer.eps"', "> 0.0")
def eps_zero(ctx):
    return ctx.train(optimizer__eps=0)


@case('"steps"', "expected int")
def steps_not_a_number(ctx):
    return ctx.train(steps="many")


@case('"optimizer"', "mapping")
def section_given_a_value(ctx):
    return ctx.train("optimizer=3")


@case('"batch_size"', "lower batch_size")
def batch_larger_than_the_dataset(ctx):
    return ctx.train(batch_size=1000)


@case('"max_seq_len"', "256", "lower max_seq_len")
def max_seq_len_beyond_the_context(ctx):
    return ctx.train(max_seq_len=1024)


@case('"device"', "no CUDA device", "device=auto")
def device_cuda_without_one(ctx):
    return ctx.train(device="cuda")


@case('"device"', "no MPS device", "device=auto")
def device_mps_without_one(ctx):
    return ctx.train(device="mps")


@case("memory_budget_gb", "GiB")
def budget_smaller_than_the_weights(ctx):
    return ctx.train(memory_budget_gb=0.01)


@case('"dtype"', "float32")
def float16_on_cpu(ctx):
    return ctx.train(dtype="float16")


@case('"model"', "empty")
def empty_model(ctx):
    return ctx.train(model="")


@case('"label_words"', "duplicates")
def duplicate_label_words(ctx):
    return ctx.train(label_words="[' good', ' good']")


@case('"prompt_template"', "{text}")
def template_without_text(ctx):
    return ctx.train(prompt_template="'Review: It was'")


@case('"prompt_template"', "{label}", "{{")
def template_with_another_field(ctx):
    return ctx.train(prompt_template="'{text} {label}'")


@case('"prompt_template"', "literal brace")
def template_with_a_lone_brace(ctx):
    return ctx.train(prompt_template="'Review: {text'")


@case("lora.targets", "foo_proj")
def lora_targets_match_nothing(ctx):
    return ctx.train(lora__targets="foo_proj")


@case("not key=value")
def override_without_equals(ctx):
    config = ctx.write("run.yaml", "steps: 1\n")
    return ["train", str(config), "steps"]


@case("broken.yaml", "not valid YAML")
def config_not_yaml(ctx):
    return ["train", str(ctx.write("broken.yaml", "steps: [1, 2\nmodel: x\n"))]


@case("list.yaml", "mapping")
def config_is_a_list(ctx):
    return ["train", str(ctx.write("list.yaml", "- steps\n- model\n"))]


@case("absent.yaml", "not found")
def config_file_missing(ctx):
    return ["train", str(ctx.dir / "absent.yaml")]


@case("a folder", "cannot be read", "Is a directory", "YAML file")
def config_is_a_folder(ctx):
    (ctx.dir / "a folder").mkdir()
    return ["train", str(ctx.dir / "a folder")]


@case("latin1.yaml", "UTF-8")
def config_not_utf8(ctx):
    return ["train", str(ctx.write("latin1.yaml", "model: caf\u00e9\n".encode("latin-1")))]


# ---- paths and run folders ------------------------------------------------------------------

def _fake_run(ctx: Ctx, manifest: dict | None = None, config_extra: str = "") -> Path:
    """A run folder as an earlier `train` leaves it: config.yaml and one checkpoint."""
    import torch
    from safetensors.torch import save_file

    out = ctx.dir / "run"
    out.mkdir()
    config = config_io.load(None, ctx.overrides())
    config_io.save(config, out / "config.yaml")
    with (out / "config.yaml").open("a") as handle:
        handle.write(config_extra)
    step = out / "checkpoints" / "step-00000001"
    step.mkdir(parents=True)
    save_file({"theta": torch.zeros(4)}, str(step / "state.safetensors"))
    (step / "manifest.json").write_text(json.dumps(manifest or {}))
    return out


@case("already holds a run", "--resume", "nothing was overwritten")
def existing_run_without_resume(ctx):
    _fake_run(ctx)
    return ctx.train()


@case("holds no run to resume")
def resume_an_empty_folder(ctx):
    (ctx.dir / "run").mkdir()
    return ctx.train("--resume")


@case("step-00000001", "newer EdgeTune")
def resume_a_checkpoint_from_a_newer_version(ctx):
    _fake_run(ctx, manifest={"format": 99, "step": 1, "files": {}})
    return ctx.train("--resume")


@case("config.yaml", '"adapter_dropout"')
def resume_a_run_folder_from_a_newer_version(ctx):
    _fake_run(ctx, config_extra="adapter_dropout: 0.1\n")
    return ctx.train("--resume")


@case("config differs", "config.yaml")
def resume_with_another_seed(ctx):
    _fake_run(ctx)
    return ctx.train("--resume", seed=7)


@case("notes.txt", "output_dir")
def output_dir_is_a_file(ctx):
    return ctx.train(output_dir=ctx.write("notes.txt", "my notes\n"))


# ---- the harness ----------------------------------------------------------------------------

def snapshot(*roots: Path) -> dict[str, str]:
    files = {}
    for root in roots:
        for path in [root] if root.is_file() else sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                files[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return files
