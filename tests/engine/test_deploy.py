"""`python -m engine push`: the real adb binary with no phone, and adb's output as text.

What needs a phone (a push, the device-side checksums, free space) is tested through the
parsers and the comparison with the output files in tests/data/adb (see the README there for
which are captured and which are written in adb's layout).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, needs_adb

from engine.api.errors import UserError
from engine.deploy import adb, push

ADB_DATA = REPO / "tests" / "data" / "adb"

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


@needs_adb
def test_no_phone_is_said_plainly_by_list_and_push(own_adb_server, export_dir):
    listed = _push("--list", env=own_adb_server)
    assert listed.returncode == 0 and "no phone connected" in listed.stdout
    as_json = _push("--list", "--json", env=own_adb_server)
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == {"devices": []}
    pushed = _push(str(export_dir), env=own_adb_server)
    assert pushed.returncode == 2
    assert "error: no phone connected" in pushed.stderr and "USB debugging" in pushed.stderr
    assert "Traceback" not in pushed.stderr


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
    with pytest.raises(UserError, match="not an export folder"):
        push.export_files(tmp_path)
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
