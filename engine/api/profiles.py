"""Device profiles (resources/profiles/*.yaml): device, dtype, threads and a memory budget."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from engine.api.config import TrainConfig, validate
from engine.api.errors import UserError

PROFILE_DIR = Path(__file__).resolve().parents[2] / "resources" / "profiles"


@dataclass(frozen=True)
class Profile:
    key: str  # file stem, e.g. "laptop-cpu"
    name: str
    device: str
    dtype: str
    threads: int
    memory_budget_gb: float
    description: str = ""
    # A CPU feature the profile needs (engine.model.device.cpu_features()); detection picks a
    # profile that needs one over a plain one for the same device when the machine has it.
    requires: str = ""


# What `requires` may name: "bf16", native bfloat16 matmuls (AVX512-BF16 or AMX).
FEATURES = ("bf16",)


def load_all(directory: Path = PROFILE_DIR) -> dict[str, Profile]:
    profiles = {}
    for path in sorted(directory.glob("*.yaml")):
        profiles[path.stem] = _read(path)
    return profiles


def _read(path: Path) -> Profile:
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"profile {path} is not valid YAML: {exc}") from None
    fields = [f for f in dataclasses.fields(Profile) if f.name != "key"]
    required = {f.name for f in fields if f.default is dataclasses.MISSING}
    if not isinstance(values, dict) or set(values) - {f.name for f in fields} or required - set(values):
        raise UserError(f"profile {path}: expected the fields {', '.join(f.name for f in fields)} "
                        "(all but description and requires required)")
    if values.get("requires", "") not in ("", *FEATURES):
        raise UserError(f"profile {path}: requires is {values['requires']!r}; allowed: "
                        f"{', '.join(FEATURES)} (or leave it out)")
    # The same choices and ranges as a run config, reported against the profile file.
    try:
        validate(TrainConfig(model="-", dataset="-", device=values["device"], dtype=values["dtype"],
                             threads=values["threads"], memory_budget_gb=values["memory_budget_gb"]))
    except UserError as exc:
        raise UserError(f"profile {path}: {exc}") from None
    return Profile(key=path.stem, **values)


def detect(available: Sequence[str], features: Sequence[str] = (),
           directory: Path = PROFILE_DIR) -> Profile:
    """The profile for the best device present (`available` from engine.model.device.available()),
    the one for a CPU feature present (`features`, from cpu_features()) before a plain one."""
    profiles = load_all(directory)
    for device in ("cuda", "mps", "cpu"):
        if device in available:
            usable = [p for p in profiles.values()
                      if p.device == device and (not p.requires or p.requires in features)]
            if usable:
                return max(usable, key=lambda p: bool(p.requires))
    raise UserError(f"no profile in {directory} matches this machine ({', '.join(available)})")


def apply(profile: Profile, config: TrainConfig) -> TrainConfig:
    return validate(dataclasses.replace(
        config, device=profile.device, dtype=profile.dtype, threads=profile.threads,
        memory_budget_gb=profile.memory_budget_gb,
    ))
