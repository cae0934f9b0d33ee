"""Every command the app starts speaks the protocol with --protocol (real processes): hello
first, done last, seq contiguous, the answer as a result or artifact event, and a user error as
an error event before done."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from conftest import REPO, engine_process, needs_adb
from lora_runs import make_random_adapter, make_run

from engine.api.protocol import EVENT_TYPES, STOP_COMMAND, Event, decode
from engine.session import EXIT_STOPPED, EXIT_USER


def stream(proc: subprocess.Popen, stdin: str = "", timeout: float = 240) -> list[Event]:
    """The events of a finished --protocol process, checked against the protocol's framing."""
    out, err = proc.communicate(stdin, timeout=timeout)
    events = [decode(line) for line in out.splitlines()]  # every stdout line is an event
    types = [e.type for e in events]
    assert types[0] == "hello" and types[-1] == "done" and types.count("done") == 1, (types, err)
    assert [e.seq for e in events] == list(range(len(events)))
    assert set(types) <= set(EVENT_TYPES)
    assert len({e.run_id for e in events}) == 1
    assert events[-1].data["exit_code"] == proc.returncode, err[-2000:]
    assert "Traceback" not in err
    return events


def of(events: list[Event], type: str) -> list[dict]:
    return [e.data for e in events if e.type == type]


@pytest.fixture(scope="module")
def run_folder(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    return make_run(root / "run", tiny_model, make_random_adapter(tiny_model, root / "adapter"),
                    label_words=[" terrible", " great"])


def test_inspect_dataset_answers_with_a_result(classification_data):
    events = stream(engine_process(["inspect-dataset", str(classification_data), "--protocol"]))
    (result,) = of(events, "result")
    assert result["task"] == "classification" and result["errors"] == []
    assert events[-1].data == {"status": "completed", "exit_code": 0}
    assert events[0].data["argv"] == ["inspect-dataset", str(classification_data), "--protocol"]


def test_probe_answers_with_a_result(tiny_model):
    events = stream(engine_process(["probe", str(tiny_model), "--protocol"]))
    (result,) = of(events, "result")
    assert result["architecture"] == "LlamaForCausalLM" and result["estimates"]


@pytest.mark.parametrize("argv, expect", [
    (["inspect-dataset", "{tmp}/absent.jsonl"], "not found"),
    (["probe", "{tmp}/absent-model"], "absent-model"),
    (["export", "{tmp}", "--format", "gguf"], "no config.yaml"),
    (["push", "{tmp}"], "not an export to push"),
    (["chat", "{tmp}/absent.gguf"], "not found"),  # a session: it loads before any request
    (["train", "model={tmp}/absent", "dataset={tmp}/absent.jsonl", "output_dir={tmp}/run"],
     "absent"),
], ids=["inspect-dataset", "probe", "export", "push", "chat", "train"])
def test_a_user_error_is_an_error_event_then_done(argv, expect, tmp_path):
    proc = engine_process([arg.format(tmp=tmp_path) for arg in argv] + ["--protocol"])
    events = stream(proc)
    assert proc.returncode == EXIT_USER
    assert [e.type for e in events][-2:] == ["error", "done"]
    error, done = events[-2].data, events[-1].data
    assert error["kind"] == "user" and expect in error["message"]
    assert (done["status"], done["exit_code"]) == ("failed", EXIT_USER)


def test_a_refused_command_line_still_ends_with_done():
    proc = engine_process(["probe", "--no-such-option", "--protocol"])
    events = stream(proc)
    assert proc.returncode == EXIT_USER and of(events, "error")[0]["kind"] == "user"


@needs_adb
def test_push_list_answers_with_the_devices(own_adb_server):
    events = stream(engine_process(["push", "--list", "--protocol"]))  # its own adb server
    (result,) = of(events, "result")
    assert isinstance(result["devices"], list)


def test_export_reports_stages_and_its_artifact(run_folder):
    events = stream(engine_process(["export", str(run_folder), "--format", "gguf",
                                    "--no-verify", "--protocol"]))
    stages = [(p["stage"], p["seconds"] is not None) for p in of(events, "progress")]
    count = of(events, "progress")[0]["stages"]
    # Each stage starts, then ends, in order: (1, start) (1, end) (2, start) …
    assert stages == [(i, ended) for i in range(1, count + 1) for ended in (False, True)]
    assert [s["state"] for s in of(events, "status")] == ["base", "adapter"]
    (artifact,) = of(events, "artifact")
    assert artifact["kind"] == "gguf" and artifact["path"] == str(run_folder / "export" / "adapter.gguf")
    assert (run_folder / "export" / "adapter.gguf").is_file()


def test_chat_streams_tokens(run_folder):
    events = stream(engine_process(["chat", "--adapter", str(run_folder), "--prompt", "Hi",
                                    "--max-tokens", "3", "--temperature", "0", "--protocol"]))
    assert [s["state"] for s in of(events, "status")] == ["loading", "generating"]
    assert of(events, "label_probs")[0]["words"] == [" terrible", " great"]
    done = events[-1].data
    assert done["status"] == "completed" and done["tokens"] == len(of(events, "token")) >= 1


def test_run_is_gone_train_protocol_is_the_one_spelling(tmp_path):
    proc = engine_process(["run", str(tmp_path / "c.yaml"), "--protocol"])
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "invalid choice: 'run'" in err


def test_stop_interrupts_a_command_that_does_not_poll_it():
    """`stop` on stdin ends a tool as Ctrl+C would: done/stopped, exit 130."""
    code = textwrap.dedent("""
        import sys, time
        from engine import session
        sys.exit(session.run(["sleeper"], lambda: time.sleep(60), protocol=True))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    started = time.monotonic()
    events = stream(proc, stdin=f"{STOP_COMMAND}\n", timeout=30)
    assert time.monotonic() - started < 10
    assert proc.returncode == EXIT_STOPPED
    assert events[-1].data == {"status": "stopped", "exit_code": EXIT_STOPPED}
