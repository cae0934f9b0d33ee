"""Distributed P-RGE on this machine: 1 worker × 2 threads against 2 workers × 1 thread.

    python -m engine.bench.distributed --model tiny --steps 300 --repeats 2
    nice -n 10 python -m engine.bench.distributed --model default --steps 30 --repeats 1
    nice -n 19 python -m engine.bench.distributed --model tiny --q 1 --parts runs

With --q 1 the two workers share the step's one direction and split the batch's rows.

Each run is the ordinary `python -m engine train` of the demo's settings (q=4, b=4, LoRA-FA r=8,
max_seq_len 64; no evaluations or checkpoints inside the timed steps), the layouts interleaved.
Recorded per run: the median wall time between consecutive steps (metrics records, the first 5
skipped), the engine's payload count (`exchanged_bytes`), the TCP bytes each worker's sockets
actually carried between two points of the run (`ss -tinp`: gloo's pairs and headers included,
IP/TCP headers not), and the loss of every step, so the layouts' losses can be compared.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from engine.api.history import read_history
from engine.bench.common import DOCS, environment, finish, model_label, write_json

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "resources" / "configs" / "demo.yaml"
# 1 worker × 1 thread is the control: what one of the two workers would take alone.
LAYOUTS = {"1 worker x 2 threads": (1, 2), "2 workers x 1 thread": (2, 1),
           "1 worker x 1 thread": (1, 1)}


def socket_bytes(pids: set[int], store_port: int | None) -> tuple[int, int]:
    """(sent, received) TCP payload bytes of the sockets the processes hold, less their
    connections to the launcher's key-value store (used at start, not by the steps)."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, timeout=10).stdout
    sent = received = 0
    owner = None
    for line in out.splitlines():
        found = re.search(r"pid=(\d+)", line)
        if found:
            ports = {int(p) for p in re.findall(r":(\d+)\s", line)}
            owner = None if store_port in ports else int(found.group(1))
            continue
        if owner in pids:
            sent += int(m.group(1)) if (m := re.search(r"bytes_sent:(\d+)", line)) else 0
            received += int(m.group(1)) if (m := re.search(r"bytes_received:(\d+)", line)) else 0
    return sent, received


def _records(path: Path) -> list[dict]:
    return [r for r in read_history(path) if r.get("type") == "metrics"]


def _store_port(folder: Path) -> int | None:
    path = folder / "engine.log"
    found = re.search(r"rendezvous [^ ]*:(\d+)", path.read_text(encoding="utf-8")) if path.exists() else None
    return int(found.group(1)) if found else None


def _pids(folder: Path, workers: int) -> set[int]:
    found = set()
    for name in ["engine.log", *(f"worker-{r}.log" for r in range(1, workers))]:
        path = folder / name
        if path.exists():
            found |= {int(p) for p in re.findall(r"pid (\d+)", path.read_text(encoding="utf-8"))}
    return found


def run_once(overrides: list[str], workers: int, threads: int, steps: int, folder: Path) -> dict:
    command = [sys.executable, "-m", "engine", "train", str(DEMO), *overrides, f"output_dir={folder}",
               f"workers={workers}", f"threads={threads}", f"steps={steps}", "eval_every=0",
               "checkpoint_every=0", "eval_rows=16"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    marks = {steps // 4: None, 3 * steps // 4: None}
    while proc.poll() is None and workers > 1 and None in marks.values():
        done = len(_records(folder / "metrics.jsonl"))
        for mark in marks:
            if marks[mark] is None and done >= mark:
                marks[mark] = (done, socket_bytes(_pids(folder, workers), _store_port(folder)))
        time.sleep(0.05)
    _, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}): {' '.join(command)}\n{err[-2000:]}")
    metrics = _records(folder / "metrics.jsonl")
    gaps = [b["time"] - a["time"] for a, b in zip(metrics[5:], metrics[6:], strict=False)]
    result = {"workers": workers, "threads": threads, "steps": len(metrics),
              "median_step_seconds": statistics.median(gaps),
              "losses": [m["loss"] for m in metrics],
              "exchanged_bytes_median": statistics.median(m.get("exchanged_bytes", 0) for m in metrics)}
    if workers > 1 and None not in marks.values():
        (s0, (sent0, recv0)), (s1, (sent1, recv1)) = marks[steps // 4], marks[3 * steps // 4]
        # Both workers' sockets: each byte is counted once sent (by one) and once received.
        result["tcp_bytes_sent_per_step_all_workers"] = (sent1 - sent0) / max(s1 - s0, 1)
        result["tcp_bytes_received_per_step_all_workers"] = (recv1 - recv0) / max(s1 - s0, 1)
        result["tcp_sample_steps"] = [s0, s1]
    return result


def _latency_worker(rank: int, port: int, rounds: int, q: int, results) -> None:
    import os

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    piece = torch.zeros(2, q // 2, dtype=torch.float64)  # a two-sided step's losses, q/2 each
    pieces = [torch.empty_like(piece) for _ in range(2)]
    flags = torch.zeros(3, dtype=torch.int64)
    timings = {}
    for name, call in (("all_gather", lambda: dist.all_gather(pieces, piece)),
                       ("all_reduce_max", lambda: dist.all_reduce(flags, op=dist.ReduceOp.MAX))):
        for _ in range(50):
            call()
        seconds = []
        for _ in range(rounds):
            start = time.perf_counter()
            call()
            seconds.append(time.perf_counter() - start)
        timings[name] = statistics.median(seconds)
    if rank == 0:
        results.put(timings)
    dist.destroy_process_group()
    os._exit(0)


def collective_latency(q: int = 4, rounds: int = 2000) -> dict:
    """Median seconds of one step's two exchanges between 2 gloo workers over loopback."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.Queue()
    workers = [context.Process(target=_latency_worker, args=(r, port, rounds, q, results)) for r in range(2)]
    for w in workers:
        w.start()
    timings = results.get(timeout=300)
    for w in workers:
        w.join(timeout=60)
    return timings


def redraw_seconds(size: int, rounds: int = 20) -> float:
    """Median seconds to draw one z of `size` values and form its measured direction (what a
    worker does for each of the step's q directions in update_from_seeds), 1 thread."""
    import torch

    torch.set_num_threads(1)
    theta, z, out, point = (torch.zeros(size) for _ in range(4))
    generator = torch.Generator()
    seconds = []
    for i in range(rounds):
        start = time.perf_counter()
        generator.manual_seed(i)
        torch.randn(size, generator=generator, out=z)
        torch.add(theta, z, alpha=1e-2, out=out)
        out.sub_(torch.add(theta, z, alpha=-1e-2, out=point))
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine.bench.distributed",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tiny", help="'tiny' or a model reference ('default')")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--q", type=int, default=0,
                        help="directions per step (0: the demo's 4); 1 splits the batch's rows")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--results", type=Path, default=DOCS / "bench")
    parser.add_argument("--parts", default="runs,collectives,redraw",
                        help="comma-separated: runs (the two layouts), collectives (gloo latency "
                             "over loopback), redraw (time per redrawn direction)")
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    with tempfile.TemporaryDirectory(prefix="edgetune-dist-") as tmp:
        tmp = Path(tmp)
        model = args.model
        if model == "tiny":
            from engine.model.tiny import make_tiny_llama

            model = str(make_tiny_llama(tmp / "tiny"))
        record = {"benchmark": "distributed", "model": model_label(args.model), "q": args.q or 4,
                  "environment": environment(2), "runs": []}
        if "collectives" in parts:
            record["loopback_gloo_seconds"] = collective_latency()
            print(json.dumps(record["loopback_gloo_seconds"]), flush=True)
        if "redraw" in parts:
            # The LoRA-FA r=8 adapter of SmolLM2-135M on all seven projections: 30 layers ×
            # (576 + 192 + 192 + 576 + 1536 + 1536 + 576) outputs × rank 8.
            size = 30 * 5184 * 8
            record["redraw_seconds_per_direction"] = {"adapter_values": size,
                                                      "seconds": redraw_seconds(size)}
            print(json.dumps(record["redraw_seconds_per_direction"]), flush=True)
        for repeat in range(args.repeats if "runs" in parts else 0):
            for name, (workers, threads) in LAYOUTS.items():
                folder = tmp / f"run-{repeat}-{workers}x{threads}"
                overrides = [f"model={model}", *([f"optimizer.q={args.q}"] if args.q else [])]
                result = run_once(overrides, workers, threads, args.steps, folder)
                result["layout"] = name
                record["runs"].append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "losses"}), flush=True)
        if record["runs"]:
            first = record["runs"][0]["losses"]
            difference = record["max_abs_loss_difference_between_runs"] = max(
                abs(a - b) for run in record["runs"] for a, b in zip(first, run["losses"], strict=True))
            print(f"max |loss difference| between any two runs = {difference:.3g}")
        tag = ("tiny" if args.model == "tiny" else "smollm2") + (f"-q{args.q}" if args.q else "")
        path = write_json(finish(record), args.results / f"distributed-{tag}.json")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
