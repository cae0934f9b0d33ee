"""Device profiles (resources/profiles/*.yaml): device, dtype, threads and a memory budget."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import yaml

from engine.config import TrainConfig, validate
from engine.errors import UserError

PROFILE_DIR = Path(__file__).resolve().parent.parent / "resources" / "profiles"


@dataclass(frozen=True)
class Profile:
    key: str  # file stem, e.g. "laptop-cpu"
    name: str
    device: str
    dtype: str
    threads: int
    memory_budget_gb: float
    description: str = ""


def load_all(directory: Path = PROFILE_DIR) -> dict[str, Profile]:
    profiles = {}
    for path in sorted(directory.glob("*.yaml")):
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        try:
            profiles[path.stem] = Profile(key=path.stem, **values)
        except TypeError as exc:
            raise UserError(f"profile {path}: {exc}") from None
    return profiles


def detect(available: list[str], directory: Path = PROFILE_DIR) -> Profile:
    """The profile for the best device present (`available` from engine.device.available())."""
    profiles = load_all(directory)
    for device in ("cuda", "mps", "cpu"):
        if device in available:
            for profile in profiles.values():
                if profile.device == device:
                    return profile
    raise UserError(f"no profile in {directory} matches this machine ({', '.join(available)})")


def apply(profile: Profile, config: TrainConfig) -> TrainConfig:
    return validate(dataclasses.replace(
        config, device=profile.device, dtype=profile.dtype, threads=profile.threads,
        memory_budget_gb=profile.memory_budget_gb,
    ))
