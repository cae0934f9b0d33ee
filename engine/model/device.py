"""Everything that differs between CPU, CUDA and Apple MPS, in one place."""

from __future__ import annotations

import torch

from engine.api import profiles
from engine.api.errors import UserError


def available() -> list[str]:
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append("mps")
    return found


def cpu_features() -> list[str]:
    """CPU features the device profiles may require (engine.api.profiles.FEATURES): "bf16" where
    oneDNN runs bfloat16 matmuls natively (AVX512-BF16, AMX), about twice as fast as float32
    there (docs/convergence.md); elsewhere bfloat16 is emulated and slower than float32."""
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN
        native = False
    return ["bf16"] if native else []


def detected_profile() -> profiles.Profile:
    """The device profile for this machine: its best device, and its CPU's features."""
    return profiles.detect(available(), cpu_features())


def resolve(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU; an explicit device that is absent is an error."""
    present = available()
    if name == "auto":
        for candidate in ("cuda", "mps"):
            if candidate in present:
                return torch.device(candidate)
        return torch.device("cpu")
    if name not in present:
        raise UserError(
            f'config field "device" is {name!r} but this machine has no {name.upper()} device '
            f"(found: {', '.join(present)}); use device=auto or device=cpu"
        )
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype the base computes in (int8 bases hold int8 weights but compute in float32 on the
    CPU and MPS, bfloat16 on CUDA)."""
    if name in ("auto", "int8"):
        # bf16 halves memory and is fast on CUDA; CPU and MPS matmuls are most reliable in fp32.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise UserError('config field "dtype" is float16, which CPUs run slowly and inexactly; '
                        "use float32 or bfloat16 on the CPU")
    return dtype


def allocated_bytes(device: torch.device) -> int | None:
    """Memory held by torch on the accelerator (None on the CPU, where RSS says it all)."""
    if device.type == "cuda":
        return int(torch.cuda.memory_allocated(device))
    if device.type == "mps":
        return int(torch.mps.current_allocated_memory())
    return None


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so wall-clock step times are honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def collective_backend(device: torch.device) -> str:
    """The torch.distributed backend for workers on `device`: nccl between CUDA GPUs, gloo
    otherwise (CPU; MPS workers exchange their few scalars through the CPU)."""
    return "nccl" if device.type == "cuda" else "gloo"


def collective_device(device: torch.device) -> torch.device:
    """Where a worker's exchanged tensors live: nccl moves CUDA tensors, gloo CPU ones."""
    return device if collective_backend(device) == "nccl" else torch.device("cpu")


def for_worker(device: torch.device, local_rank: int) -> torch.device:
    """A worker's own device: CUDA worker k of a machine takes GPU k (nccl refuses two workers
    on one GPU); CPU and MPS workers share the machine's device."""
    if device.type != "cuda":
        return device
    count = torch.cuda.device_count()
    if local_rank >= count:
        raise UserError(
            f"worker {local_rank} on this machine has no GPU of its own ({count} found): start "
            f"at most {count} workers per machine, or use device=cpu"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)
