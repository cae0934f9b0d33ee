"""Device profiles: every bundled file is valid, and a broken one is named with what is wrong."""

from __future__ import annotations

import shutil

import pytest

from engine.api import profiles
from engine.api.errors import UserError


def test_bundled_profiles_cover_cpu_cuda_and_mps_with_a_budget_each():
    found = profiles.load_all()
    assert {p.device for p in found.values()} == {"cpu", "cuda", "mps"}
    assert all(p.memory_budget_gb > 0 and p.dtype in ("float32", "bfloat16") for p in found.values())
    assert profiles.detect(["cpu"]).device == "cpu"
    assert profiles.detect(["cpu", "cuda"]).device == "cuda"
    assert profiles.detect(["cpu", "mps"]).device == "mps"


def test_a_cpu_with_native_bf16_gets_the_bf16_profile_and_others_float32():
    assert profiles.detect(["cpu"]).key == "laptop-cpu"
    assert profiles.detect(["cpu"]).dtype == "float32"
    chosen = profiles.detect(["cpu"], ["bf16"])
    assert (chosen.key, chosen.device, chosen.dtype) == ("cpu-bf16", "cpu", "bfloat16")
    assert profiles.detect(["cpu", "cuda"], ["bf16"]).key == "nvidia-cuda"  # the GPU still wins


@pytest.mark.parametrize("text, message", [
    ("name: x\ndevice: [cpu\n", "is not valid YAML"),
    ("name: x\ndevice: cpu\ndtype: float32\nthreads: 0\nmemory_budget_gb: 4\ncolour: red\n",
     "expected the fields name, device, dtype, threads, memory_budget_gb, description, requires"),
    ("name: x\ndevice: cpu\n", "all but description and requires required"),
    ("name: x\ndevice: cpu\ndtype: float32\nthreads: 0\nmemory_budget_gb: 4\nrequires: amx\n",
     "requires is 'amx'; allowed: bf16"),
    ("name: x\ndevice: tpu\ndtype: float32\nthreads: 0\nmemory_budget_gb: 4\n",
     'config field "device" is \'tpu\'; allowed: auto, cpu, cuda, mps'),
    ("name: x\ndevice: cpu\ndtype: float32\nthreads: -2\nmemory_budget_gb: 4\n",
     'config field "threads" is -2'),
])
def test_broken_profile_is_named_with_the_problem(tmp_path, text, message):
    shutil.copytree(profiles.PROFILE_DIR, tmp_path, dirs_exist_ok=True)
    (tmp_path / "mine.yaml").write_text(text)
    with pytest.raises(UserError, match="profile .*mine.yaml") as caught:
        profiles.load_all(tmp_path)
    assert message in str(caught.value)
