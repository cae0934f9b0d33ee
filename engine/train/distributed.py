"""One run across several worker processes on torch.distributed (torchrun).

Zeroth-order steps need almost nothing from each other: the directions come from seeds
(engine/optim/base.py direction_seed), so worker r evaluates its block of the step's q
directions (with fewer directions than workers, its block of the batch's rows for the direction
its group shares: engine/api/workers.py), the workers all-gather the per-direction losses (as
float64, so a float32 loss travels exactly), and every worker applies the same update with the
other workers' z drawn again from their seeds. θ stays identical everywhere; a checksum
compared at every checkpoint proves it.

Worker 0 writes everything a run leaves (metrics.jsonl, checkpoints, the adapter, the protocol
events); the others write only their own log, OUTPUT_DIR/worker-<rank>.log. Decisions that end
the loop (a stop request, the time budget, the memory guard) are agreed by one MAX all-reduce
per step, so no worker waits in an exchange its peers never enter.

Outside torchrun (no RANK / WORLD_SIZE in the environment) the world is one worker, every
exchange is the identity, and nothing of torch.distributed is touched.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import logging
import os
import socket
import sys
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch

from engine.api import workers
from engine.api.errors import UserError
from engine.api.workers import block
from engine.model import device as devices

log = logging.getLogger(__name__)

JOIN_KEY = "edgetune/joined/{rank}"


class WorkerLost(UserError):
    """An exchange failed: a peer stopped, was killed, or did not answer in time."""


class WorkersDiverged(UserError):
    """θ differs between workers (it must be bit-identical after every step)."""


class LaunchFailed(UserError):
    """torch's launcher could not start the local workers: no worker speaks for the run."""


def in_worker() -> bool:
    """True inside a process started by torchrun (or by hand with its environment)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    return int(os.environ.get("RANK", 0)) if in_worker() else 0


def log_name() -> str:
    """The log file of this process in the run folder: engine.log for worker 0."""
    return "engine.log" if rank() == 0 else f"worker-{rank()}.log"


class World:
    """The run's workers as the optimiser and the trainer see them.

    With one worker every method is the identity and no collective is made, so a run without
    torch.distributed computes exactly what it always did.
    """

    def __init__(self, rank: int = 0, size: int = 1, device: torch.device | None = None,
                 timeout_seconds: float = 0.0) -> None:
        self.rank, self.size = rank, size
        self.device = device or torch.device("cpu")
        self.timeout_seconds = timeout_seconds
        self._exchange_device = devices.collective_device(self.device)
        # Payload bytes this worker sent and received since the last `take_exchanged_bytes`.
        self._exchanged_bytes = 0

    @property
    def primary(self) -> bool:
        return self.rank == 0

    def share(self, count: int) -> range:
        return block(count, self.rank, self.size)

    def directions(self, q: int) -> range:
        """The step's directions this worker evaluates (engine/api/workers.py)."""
        return workers.directions(q, self.rank, self.size)

    def rows(self, q: int, batch_rows: int) -> range:
        """The rows of the step's batch this worker evaluates its directions on."""
        return workers.rows(q, batch_rows, self.rank, self.size)

    # ---- exchanges ---------------------------------------------------------------------
    def gather(self, local: torch.Tensor, count: int) -> torch.Tensor:
        """`local` (rows, len(share(count))): this worker's values for its share of `count`
        items → (rows, count) of every worker's values in item order, same dtype and device."""
        if self.size == 1:
            return local
        width = -(-count // self.size)
        padded = torch.zeros(local.shape[0], width, dtype=torch.float64, device=self._exchange_device)
        padded[:, :local.shape[1]] = local.to(self._exchange_device, torch.float64)
        pieces = self._all_gather(padded, "exchanging the step's losses")
        values = [pieces[r][:, :len(block(count, r, self.size))] for r in range(self.size)]
        return torch.cat(values, dim=1).to(local.device, local.dtype)

    def gather_directions(self, local: torch.Tensor, q: int) -> torch.Tensor:
        """The step's per-direction values: `local` (rows, len(directions(q))) → (rows, q).

        With fewer directions than workers each worker's values are its rows' part of the
        batch's mean for its one direction, and a direction's value is the sum of its group's
        parts, added in float64 by the same operation on every worker and returned in float64
        whatever the local dtype (a worker alone on its direction holds float32 means, the
        others float64 parts), so all get the same numbers."""
        if self.size == 1 or not workers.splits_rows(q, self.size):
            return self.gather(local, q)
        parts = self._all_gather(local.to(self._exchange_device, torch.float64),
                                 "exchanging the step's losses")
        summed = [parts[list(workers.group(q, i, self.size))].sum(0) for i in range(q)]
        return torch.cat(summed, dim=1).to(local.device)

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag is true for everyone if it is true for anyone (one MAX all-reduce)."""
        if self.size == 1:
            return tuple(flags)
        import torch.distributed as dist

        tensor = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=self._exchange_device)
        self._collective(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.MAX), "agreeing to stop")
        self._exchanged_bytes += 2 * tensor.numel() * tensor.element_size()
        return tuple(bool(v) for v in tensor.tolist())

    def checksum(self, tensors: dict[str, torch.Tensor], step: int) -> str:
        """sha256 of the tensors' bytes (θ and the optimiser state), the same on every worker
        or a WorkersDiverged error on all of them."""
        digest = hashlib.sha256()
        for name in sorted(tensors):
            digest.update(name.encode())
            # reshape(-1): a 0-dim tensor (AdamW's step count) cannot be viewed as bytes.
            digest.update(tensors[name].detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                          .numpy().tobytes())
        text = digest.hexdigest()
        if self.size == 1:
            return text
        mine = torch.tensor([int.from_bytes(digest.digest()[i:i + 8], "little", signed=True)
                             for i in (0, 8)], dtype=torch.int64, device=self._exchange_device)
        every = self._all_gather(mine, f"comparing θ checksums at step {step}")
        differ = [r for r in range(self.size) if not torch.equal(every[r], every[0])]
        if differ:
            raise WorkersDiverged(
                f"θ differs between workers at step {step}: worker(s) "
                f"{', '.join(map(str, differ))} disagree with worker 0 (checksum on worker "
                f"{self.rank}: {text[:16]}). The run stops before writing this checkpoint; the "
                "previous one is intact. Workers must run on identical hardware and software "
                "(CPU or GPU model, torch version), which float results depend on"
            )
        return text

    def same_everywhere(self, value: int, what: str) -> None:
        """An integer every worker must agree on (the step a resume starts from)."""
        if self.size == 1:
            return
        every = self._all_gather(torch.tensor([value], dtype=torch.int64, device=self._exchange_device),
                                 f"comparing {what}")
        values = [int(v) for v in every.flatten().tolist()]
        if len(set(values)) > 1:
            raise WorkersDiverged(f"the workers disagree on {what}: "
                                  + ", ".join(f"worker {r}: {v}" for r, v in enumerate(values)))

    def latest(self, seconds: float) -> float:
        """The largest of the workers' `seconds` (one MAX all-reduce): the training time a
        time-budget schedule follows must read alike everywhere, or the workers' learning rates,
        and then their θ, would differ."""
        if self.size == 1:
            return seconds
        import torch.distributed as dist

        tensor = torch.tensor([seconds], dtype=torch.float64, device=self._exchange_device)
        self._collective(lambda: dist.all_reduce(tensor, op=dist.ReduceOp.MAX),
                         "agreeing on the training time")
        self._exchanged_bytes += 2 * tensor.element_size()
        return float(tensor.item())

    def take_exchanged_bytes(self) -> int:
        """Payload bytes sent and received since the last call (collective headers excluded)."""
        taken, self._exchanged_bytes = self._exchanged_bytes, 0
        return taken

    def _all_gather(self, tensor: torch.Tensor, what: str) -> torch.Tensor:
        import torch.distributed as dist

        out = [torch.empty_like(tensor) for _ in range(self.size)]
        self._collective(lambda: dist.all_gather(out, tensor), what)
        # Ring all-gather: each worker sends its piece on and receives every other one.
        self._exchanged_bytes += 2 * (self.size - 1) * tensor.numel() * tensor.element_size()
        return torch.stack(out)

    def _collective(self, call: Callable[[], object], what: str) -> None:
        try:
            call()
        except RuntimeError as exc:  # gloo/nccl: a closed connection or a timeout
            # gloo's message goes on with advice for its own developers.
            reason = str(exc).split(". This is typically")[0]
            raise WorkerLost(
                f"worker {self.rank} lost contact with the other workers while {what} ({reason}). "
                "A worker stopped, was killed or did not answer within worker_timeout_seconds="
                f"{self.timeout_seconds:g}; its log is in the run folder (engine.log for worker "
                "0, worker-N.log for the others). The last checkpoint is intact: continue with "
                "--resume, with any number of workers"
            ) from exc

    def close(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def join(device: torch.device, timeout_seconds: float) -> World:
    """This process's world: one worker outside torchrun; inside it, connect to the others and
    name any worker that cannot connect."""
    if not in_worker() or int(os.environ["WORLD_SIZE"]) == 1:
        return World(device=device)
    import torch.distributed as dist

    rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    device = devices.for_worker(device, local_rank)
    timeout = timedelta(seconds=timeout_seconds)
    address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    host = socket.gethostname()
    try:
        store = _store(rank, size, timeout)
    except (RuntimeError, ValueError, KeyError) as exc:  # DistNetworkError, DistStoreError, bad variables
        raise UserError(
            f"worker {rank} of {size} (on {host}) could not connect to the run's rendezvous at "
            f"{address} within {timeout_seconds:g} s ({exc}); check that worker 0's machine is "
            "up and reachable from this one on that port"
        ) from exc
    store.set(JOIN_KEY.format(rank=rank), host)
    keys = [JOIN_KEY.format(rank=r) for r in range(size)]
    try:
        store.wait(keys, timeout)
    except RuntimeError as exc:
        missing = [r for r, key in enumerate(keys) if not store.check([key])]
        raise UserError(
            f"worker(s) {', '.join(map(str, missing))} of {size} did not connect to {address} "
            f"within worker_timeout_seconds={timeout_seconds:g}: start them (the same torchrun "
            "command on every machine) or lower the worker count"
        ) from exc
    dist.init_process_group(devices.collective_backend(device), store=store, rank=rank,
                            world_size=size, timeout=timeout)
    log.info("worker %d of %d on %s, pid %d (%s, backend %s, rendezvous %s)", rank, size, host,
             os.getpid(), device, devices.collective_backend(device), address)
    return World(rank, size, device, timeout_seconds)


def _store(rank: int, size: int, timeout: timedelta):
    """The key-value store the workers meet in: torchrun's own (its agent hosts it), or, for
    workers started by hand with RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, one hosted by worker 0
    that does not wait for the others, so the join below can name whoever is missing."""
    import torch.distributed as dist

    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        return next(dist.rendezvous("env://", rank, size, timeout=timeout))[0]
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), size,
                         is_master=rank == 0, timeout=timeout, wait_for_workers=False)


# ---- starting the workers -------------------------------------------------------------------

def enter(args: argparse.Namespace, load_config: Callable[[], object]) -> int | None:
    """Called first by `train`. With `workers` > 1 outside torchrun: start the local
    workers through torch's own launcher and return its exit code. In a worker other than 0:
    send this process's stdout and stderr to its own log (stdin stays with worker 0, which
    reads the stop command) and return None, as everywhere else."""
    try:
        config = load_config()
    except Exception:  # the command loads it again inside its error boundary and reports it
        return None
    if in_worker():
        if rank() > 0:
            _own_log(Path(config.output_dir) / log_name())
        return None
    if config.workers <= 1:
        return None
    return launch_local(config.workers, worker_argv(args, config.output_dir))


def worker_argv(args: argparse.Namespace, output_dir: str) -> list[str]:
    """The command line each worker runs, with the run folder fixed (the demo's is dated)."""
    argv = [args.command, *([args.config] if args.config else []), *args.overrides,
            f"output_dir={output_dir}"]
    return argv + [flag for flag, on in (("--resume", args.resume), ("--demo", args.demo),
                                         ("--protocol", args.protocol)) if on]


def launch_local(workers: int, argv: list[str]) -> int:
    """`torchrun --standalone --nproc-per-node WORKERS -m engine ARGV` in this process: the
    launcher watches the workers and ends them all as soon as one fails (no restarts).
    LaunchFailed when the launcher itself cannot start them."""
    try:
        from torch.distributed.elastic.multiprocessing import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import parse_args, run
    except ImportError as exc:
        raise LaunchFailed(
            f"workers={workers} runs on torch.distributed, which this torch build lacks ({exc}); "
            "set workers=1, or install a torch build with distributed support") from exc

    launch = ["--standalone", f"--nproc-per-node={workers}", "--max-restarts=0", "-m", "engine", *argv]
    log.info("starting %d workers: torchrun %s", workers, " ".join(launch))
    said = io.StringIO()
    try:
        # The launcher reads settings from PET_* variables too; argparse's refusal of one would
        # print torchrun's usage, which names no option of ours.
        with contextlib.redirect_stderr(said):
            parsed = parse_args(launch)
    except SystemExit as exc:
        lines = said.getvalue().strip().splitlines() or [f"exit code {exc.code}"]
        raise _launch_failed(workers, lines[-1].split(": error: ", 1)[-1]) from None
    try:
        run(parsed)
    except ChildFailedError as exc:
        failures = sorted(exc.failures.items())
        for worker, failure in failures:
            how = f"signal {-failure.exitcode}" if failure.exitcode < 0 else f"exit code {failure.exitcode}"
            print(f"worker {worker} failed ({how})", file=sys.stderr)
        # Worker 0's code says what happened to the run (2: a user error it already reported).
        codes = [f.exitcode for _, f in failures if f.exitcode > 0]
        return codes[0] if codes else 1
    except SignalException as exc:
        # SIGTERM / SIGINT: the launcher passed it on, so each worker finished its step and
        # worker 0 wrote a checkpoint (its `done` event says so), as one process does on a stop;
        # a worker still busy 30 s later was killed, which its last checkpoint survives.
        print(f"stopped by signal {exc.sigval.name}", file=sys.stderr)
    except Exception as exc:  # the launcher's own: its store, its log folder, forking workers
        log.error("torch's launcher failed", exc_info=exc)
        # c10d's messages go on with the C++ stack; its first line says what failed.
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise _launch_failed(workers, f"{type(exc).__name__}: {first_line}") from None
    return 0


def _launch_failed(workers: int, reason: str) -> LaunchFailed:
    settings = sorted(name for name in os.environ if name.startswith("PET_"))
    named = f" ({', '.join(settings)} set here)" if settings else ""
    return LaunchFailed(
        f"torch's launcher could not start the {workers} local workers: {reason}. It takes "
        f"settings from PET_* environment variables{named}: unset any not meant for this run; "
        "it also needs a free TCP port on localhost (a firewall or sandbox may block one). Or "
        "set workers=1 to train in this one process")


def _own_log(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdin = open(os.devnull, encoding="utf-8")  # noqa: SIM115 - lives as long as the process
