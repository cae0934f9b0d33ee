"""`python -m engine push`: the real adb binary with no phone, and adb's output as text.

What needs a phone (a push, the device-side checksums, free space) is tested through the
parsers and the comparison with the output files in tests/data/adb (see the README there for
which are captured and which are written in adb's layout), and whole pushes through
tests/fake_adb.py: an `adb` whose phone storage is a local folder, its shell this machine's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from conftest import REPO, needs_adb, write_gguf

from engine.api.errors import UserError
from engine.deploy import adb, phone_gguf, push

ADB_DATA = REPO / "tests" / "data" / "adb"
Q4_K_M, Q8_0 = gguf.LlamaFileType.MOSTLY_Q4_K_M, gguf.LlamaFileType.MOSTLY_Q8_0

def _push(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", "push", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def export_dir(tmp_path) -> Path:
    folder = tmp_path / "run-7" / "export" / "executorch"
    folder.mkdir(parents=True)
    (folder / "model.pte").write_bytes(os.urandom(4096))
    (folder / "metadata.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    return folder


@pytest.fixture
def gguf_export(tmp_path) -> Path:
    """RUN/export/ as the GGUF exports leave it: the adapter, the base it was converted to, and
    the merged model in Q4_K_M."""
    folder = tmp_path / "run-7" / "export"
    folder.mkdir(parents=True, exist_ok=True)  # export_dir's RUN/export/executorch may be there
    write_gguf(folder / "adapter.gguf", "llama", kind="adapter")
    write_gguf(folder / "base-f16.gguf", "llama", kind="model", file_type=1)
    write_gguf(folder / "merged-q4_k_m.gguf", "llama", kind="model", file_type=Q4_K_M)
    (folder / "merged-q4_k_m.Modelfile").write_text("FROM ./merged-q4_k_m.gguf\n")
    return folder


def _events(stdout: str) -> list[tuple[str, dict]]:
    return [(event["type"], event["data"]) for event in map(json.loads, stdout.splitlines())]


@needs_adb
def test_no_phone_is_said_plainly_by_list_and_push(own_adb_server, export_dir, gguf_export):
    listed = _push("--list", env=own_adb_server)
    assert listed.returncode == 0 and "no phone connected" in listed.stdout
    as_json = _push("--list", "--json", env=own_adb_server)
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == {"devices": []}
    pushed = _push(str(export_dir), env=own_adb_server)
    assert pushed.returncode == 2
    assert "error: no phone connected" in pushed.stderr and "USB debugging" in pushed.stderr
    assert "Traceback" not in pushed.stderr
    for model in (gguf_export, gguf_export / "merged-q4_k_m.gguf"):  # a valid GGUF export
        pushed = _push(str(model), env=own_adb_server)
        assert pushed.returncode == 2 and "error: no phone connected" in pushed.stderr


@needs_adb
def test_push_to_a_missing_device_reports_adbs_reason(own_adb_server, tmp_path):
    local = tmp_path / "model.pte"
    local.write_bytes(b"x" * 100)
    seen: list[int] = []
    with pytest.raises(UserError) as error:
        adb.push_file("NOPE123", local, "/data/local/tmp/edgetune/x/model.pte", seen.append)
    assert "could not push model.pte" in str(error.value)
    assert "device 'NOPE123' not found" in str(error.value)  # adb's own words, via the terminal
    assert seen == []


def test_missing_adb_names_the_package(export_dir):
    env = dict(os.environ, PATH=str(export_dir))  # a PATH without adb
    for args in (["--list"], [str(export_dir)]):
        result = _push(*args, env=env)
        assert result.returncode == 2
        assert "apt install adb" in result.stderr and "platform tools" in result.stderr


def test_device_list_parsing():
    assert adb.parse_devices((ADB_DATA / "devices-none.txt").read_text()) == []
    devices = adb.parse_devices((ADB_DATA / "devices-several.txt").read_text())
    assert [(d.serial, d.state, d.model, d.ready) for d in devices] == [
        ("0A1B2C3D4E5F", "device", "Pixel 4a", True),
        ("R58M12ABCDE", "unauthorized", "", False),
        ("emulator-5554", "offline", "", False),
        ("ZY22BCDEFG", "no permissions (user in plugdev group; are your udev rules wrong?); see "
                       "[http://developer.android.com/tools/device.html]", "", False),
    ]
    assert "accept the 'Allow USB debugging?' prompt" in devices[1].describe()
    assert "udev rule" in devices[3].describe()


def test_free_space_parsing():
    assert adb.parse_free_bytes((ADB_DATA / "df.txt").read_text()) == 71179520 * 1024
    assert adb.parse_free_bytes((ADB_DATA / "df-wrapped.txt").read_text()) == 17075488 * 1024
    assert adb.parse_free_bytes("df: /data/local/tmp: Permission denied\n") is None


def test_choosing_a_device():
    devices = adb.parse_devices((ADB_DATA / "devices-several.txt").read_text())
    with pytest.raises(UserError, match="no phone connected"):
        adb.choose_device([], None)
    with pytest.raises(UserError) as several:
        adb.choose_device(devices, None)
    assert "4 devices connected; pick one with --serial" in str(several.value)
    assert "0A1B2C3D4E5F  Pixel 4a" in str(several.value)
    assert adb.choose_device(devices, "0A1B2C3D4E5F").serial == "0A1B2C3D4E5F"
    assert adb.choose_device(devices[:1], None).serial == "0A1B2C3D4E5F"
    with pytest.raises(UserError, match="--serial XYZ: no such device"):
        adb.choose_device(devices, "XYZ")
    with pytest.raises(UserError, match="unauthorized: accept"):
        adb.choose_device(devices, "R58M12ABCDE")


def test_progress_parsing_across_reads():
    raw = (ADB_DATA / "push-progress.txt").read_bytes()
    parser = adb.ProgressParser()
    seen = []
    for start in range(0, len(raw), 37):  # reads split lines and escape codes anywhere
        seen += parser.feed(raw[start:start + 37])
    assert seen == [0, 3, 9, 17, 26, 38, 51, 63, 77, 88, 96, 100]
    text = parser.finish()
    assert "\x1b" not in text and text.strip().endswith("(650123456 bytes in 16.270s)")


def test_commands_are_argument_lists_and_device_paths_are_plain():
    local = Path("/tmp/a b/model.pte")
    assert adb.push_command("/usr/bin/adb", "0A1B", local, "/data/local/tmp/edgetune/x/model.pte") \
        == ["/usr/bin/adb", "-s", "0A1B", "push", "/tmp/a b/model.pte",
            "/data/local/tmp/edgetune/x/model.pte"]
    assert adb.device_path("/data/local/tmp/edgetune/my-model_1.0/") == \
        "/data/local/tmp/edgetune/my-model_1.0"
    for bad in ("relative/path", "/data/x; rm -rf /", "/data/$(reboot)", "/data/../system",
                "/data/a b"):
        with pytest.raises(UserError, match="--dest"):
            adb.device_path(bad)
    assert push.default_dest(Path("/runs/run-7/export/executorch")) == \
        "/data/local/tmp/edgetune/run-7-executorch"
    assert push.default_dest(Path("/somewhere/my export")) == "/data/local/tmp/edgetune/my_export"


def test_an_export_folder_is_required(tmp_path, export_dir):
    with pytest.raises(UserError, match="not an export to push.*merged-gguf"):
        push.export_files(tmp_path)
    with pytest.raises(UserError, match="not an export to push"):
        push.plan(tmp_path, None)
    assert [p.name for p in push.export_files(export_dir)] == \
        ["metadata.json", "model.pte", "tokenizer.json"]


def test_checksum_and_size_comparison():
    sums = adb.parse_sha256sum(
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  model.pte\n"
        "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae  ./metadata.json\n"
        "sha256sum: tokenizer.json: No such file or directory\n")
    sizes = adb.parse_sizes("4 model.pte\n3 metadata.json\n"
                              "stat: 'tokenizer.json': No such file or directory\n")
    assert sizes == {"model.pte": 4, "metadata.json": 3}
    local = {"model.pte": (4, "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"),
             "metadata.json": (3, "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae")}
    assert push.compare(local, sizes, sums) == []
    local["tokenizer.json"] = (2, "0" * 64)
    local["metadata.json"] = (3, "1" * 64)
    assert push.compare(local, sizes, sums) == [
        "metadata.json: sha256 differs (2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
        f" on the phone, {'1' * 64} here)",
        "tokenizer.json: missing on the phone",
    ]
    assert push.compare({"model.pte": (5, "x")}, sizes, sums) == [
        "model.pte: 4 bytes on the phone, 5 here"]


def test_a_merged_gguf_export_is_the_model_named_for_its_run_and_quantisation(gguf_export, tmp_path):
    for given in (gguf_export, gguf_export / "merged-q4_k_m.gguf"):
        upload = push.plan(given, None)
        assert upload.files == {"run-7-Q4_K_M.gguf": gguf_export / "merged-q4_k_m.gguf"}
        assert (upload.dest, upload.format) == ("/sdcard/Download", "merged-gguf")
        assert upload.landing == "/sdcard/Download/run-7-Q4_K_M.gguf"
        assert "PocketPal → Models → + → Add Local Model → pick run-7-Q4_K_M.gguf from " \
            "Download" in upload.next_step and "ChatterUI" in upload.next_step
    elsewhere = push.plan(gguf_export / "merged-q4_k_m.gguf", "/sdcard/Models")
    assert elsewhere.dest == "/sdcard/Models" and "from /sdcard/Models" in elsewhere.next_step
    # Outside a run's export folder the file's own name stays, with the quantisation said once.
    for name, file_type, phone_name in (("my model.gguf", Q8_0, "my_model-Q8_0.gguf"),
                                        ("tuned-q8_0.gguf", Q8_0, "tuned-q8_0.gguf"),
                                        ("plain.gguf", None, "plain.gguf")):
        model = write_gguf(tmp_path / name, "llama", kind="model", file_type=file_type)
        assert push.plan(model, None).files == {phone_name: model}
    # An ExecuTorch folder is still pushed whole to its own folder.
    executorch = gguf_export / "executorch"
    executorch.mkdir()
    (executorch / "model.pte").write_bytes(b"pte")
    (executorch / "metadata.json").write_text("{}")
    upload = push.plan(executorch, None)
    assert (upload.dest, upload.format, upload.next_step) == \
        ("/data/local/tmp/edgetune/run-7-executorch", "executorch", "")
    assert upload.landing == upload.dest and list(upload.files) == ["metadata.json", "model.pte"]


def test_a_lora_adapter_is_refused_for_the_phone_before_adb_is_asked(gguf_export):
    """PocketPal and ChatterUI cannot apply a LoRA adapter: the message names the file and the
    command that makes the merged model; no adb on PATH shows nothing reached the phone."""
    env = dict(os.environ, PATH=str(gguf_export))
    adapter = gguf_export / "adapter.gguf"
    (gguf_export / "merged-q4_k_m.gguf").unlink()
    for given in (adapter, gguf_export):
        result = _push(str(given), env=env)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        message = result.stderr
        assert f"{adapter} is a LoRA adapter, not a model" in message
        assert "cannot apply a LoRA adapter" in message
        assert f"python -m engine export {gguf_export.parent} --format merged-gguf --outtype " \
            "q4_k_m" in message
        assert "adb" not in message.replace("adb.py", "")  # refused before adb was looked for


def test_unclear_gguf_exports_are_refused_with_what_to_give(gguf_export):
    write_gguf(gguf_export / "merged-q8_0.gguf", "llama", kind="model", file_type=Q8_0)
    with pytest.raises(UserError) as several:
        push.plan(gguf_export, None)
    assert "holds 2 merged models (merged-q4_k_m.gguf, merged-q8_0.gguf); give the one to " \
        f"push, e.g. `python -m engine push {gguf_export / 'merged-q4_k_m.gguf'}`" in \
        str(several.value)
    assert push.plan(gguf_export / "merged-q8_0.gguf", None).files == \
        {"run-7-Q8_0.gguf": gguf_export / "merged-q8_0.gguf"}
    broken = gguf_export / "broken.gguf"
    broken.write_bytes(b"not a gguf at all")
    with pytest.raises(UserError, match="broken.gguf: not a readable GGUF file"):
        push.plan(broken, None)
    only_base = gguf_export / "only-base"
    only_base.mkdir()
    write_gguf(only_base / "base-f16.gguf", "llama", kind="model", file_type=1)
    with pytest.raises(UserError, match="not an export to push"):  # the base is no fine-tune
        push.plan(only_base, None)
    with pytest.raises(UserError, match="--dest"):
        push.plan(gguf_export / "merged-q8_0.gguf", "/sdcard/My Models")


def test_the_gguf_header_says_model_or_adapter_and_the_quantisation(gguf_export, tmp_path):
    assert phone_gguf.header(gguf_export / "merged-q4_k_m.gguf") == ("model", "Q4_K_M")
    assert phone_gguf.header(gguf_export / "adapter.gguf") == ("adapter", "")
    assert phone_gguf.header(gguf_export / "base-f16.gguf") == ("model", "F16")
    assert phone_gguf.header(write_gguf(tmp_path / "f32.gguf", "llama", file_type=0)) == \
        ("model", "F32")


def test_a_merged_gguf_lands_in_the_phones_download_folder_checked(gguf_export, fake_phone):
    phone = fake_phone
    result = _push(str(gguf_export), "--protocol")
    assert result.returncode == 0, result.stderr
    events = _events(result.stdout)
    statuses = [data["state"] for kind, data in events if kind == "status"]
    assert statuses == ["pushing", "verifying"]
    progress = [data for kind, data in events if kind == "progress"]
    assert [(p["file"], p["file_percent"]) for p in progress] == \
        [("run-7-Q4_K_M.gguf", 0), ("run-7-Q4_K_M.gguf", 50), ("run-7-Q4_K_M.gguf", 100)]
    assert progress[-1]["percent"] == 100.0
    artifact = next(data for kind, data in events if kind == "artifact")
    assert artifact["path"] == "FAKE0001:/sdcard/Download/run-7-Q4_K_M.gguf"
    assert (artifact["kind"], artifact["format"]) == ("device", "merged-gguf")
    assert "pick run-7-Q4_K_M.gguf from Download" in artifact["next_step"]
    logs = [data["message"] for kind, data in events if kind == "log"]
    assert any("verified (1 file, sizes and sha256 match)" in m for m in logs)
    assert artifact["next_step"] in logs
    landed = phone / "sdcard" / "Download"
    assert sorted(p.name for p in landed.iterdir()) == ["run-7-Q4_K_M.gguf"]  # no staging left
    assert (landed / "run-7-Q4_K_M.gguf").read_bytes() == \
        (gguf_export / "merged-q4_k_m.gguf").read_bytes()
    at_a_terminal = _push(str(gguf_export / "merged-q4_k_m.gguf"))
    assert at_a_terminal.returncode == 0
    assert at_a_terminal.stdout == "FAKE0001:/sdcard/Download/run-7-Q4_K_M.gguf\n"
    assert "On the phone: open PocketPal" in at_a_terminal.stderr


def test_a_copy_that_differs_on_the_phone_is_refused_and_not_put_in_place(gguf_export, fake_phone):
    phone = fake_phone
    result = _push(str(gguf_export), env=dict(os.environ, FAKE_PHONE_CORRUPT="1"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "the files on FAKE0001 under /sdcard/Download/.edgetune-partial differ from the " \
        "export: run-7-Q4_K_M.gguf: sha256 differs" in result.stderr
    assert not (phone / "sdcard" / "Download" / "run-7-Q4_K_M.gguf").exists()  # no app sees it


def test_an_executorch_folder_still_lands_whole_in_its_own_folder(export_dir, fake_phone):
    phone = fake_phone
    result = _push(str(export_dir), "--protocol")
    assert result.returncode == 0, result.stderr
    artifact = next(data for kind, data in _events(result.stdout) if kind == "artifact")
    assert artifact == {"kind": "device", "path": "FAKE0001:/data/local/tmp/edgetune/run-7-executorch",
                        "format": "executorch", "next_step": ""}
    landed = phone / "data" / "local" / "tmp" / "edgetune" / "run-7-executorch"
    assert sorted(p.name for p in landed.iterdir()) == ["metadata.json", "model.pte", "tokenizer.json"]
    assert (landed / "model.pte").read_bytes() == (export_dir / "model.pte").read_bytes()
