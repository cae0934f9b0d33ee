"""`python -m engine launch CONFIG [key=value …] --nodes K --print`: the commands that start one
run on K machines with tools people already have — the torchrun command for every machine, and
a SkyPilot task (`sky launch -c edgetune task.yaml`) that provisions the machines and runs it.

EdgeTune starts nothing here: torchrun and SkyPilot own the processes, and every worker runs the
ordinary `python -m engine train` (docs/distributed.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import shlex
from pathlib import Path

from engine.api import config as config_io
from engine.api.errors import UserError
from engine.session import emit

PORT = 29500


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine launch", description=__doc__.split("\n")[0])
    parser.add_argument("config", help="YAML config file (the same path must exist on every machine)")
    parser.add_argument("overrides", nargs="*", help="key=value or section.key=value")
    parser.add_argument("--nodes", type=int, required=True, help="machines")
    parser.add_argument("--workers-per-node", type=int, default=0,
                        help="worker processes per machine (default: the config's workers, or 1 per "
                             "GPU on CUDA)")
    parser.add_argument("--host", default="$MASTER_ADDR",
                        help="address of machine 0 that the others reach (default: $MASTER_ADDR)")
    parser.add_argument("--port", type=int, default=PORT, help=f"rendezvous port on machine 0 ({PORT})")
    parser.add_argument("--print", action="store_true", dest="print_only",
                        help="print the torchrun command and the SkyPilot task")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if not args.print_only:
        raise UserError("launch prints the commands that start a multi-machine run (torchrun, "
                        "SkyPilot); add --print")
    if args.nodes < 1:
        raise UserError(f"--nodes is {args.nodes}; give at least 1 machine")
    config = config_io.load(args.config, args.overrides)
    per_node = args.workers_per_node or config.workers
    total = args.nodes * per_node
    try:
        config_io.validate(dataclasses.replace(config, workers=total))
    except UserError as exc:
        raise UserError(f"{args.nodes} machines × {per_node} workers = {total} workers: {exc}") from None
    train = ["-m", "engine", "train", str(Path(args.config).resolve()), *args.overrides]
    torchrun = torchrun_command(args.nodes, per_node, args.host, args.port, run_id(config), train)
    skypilot = skypilot_task(config, args.nodes, per_node, args.port,
                             ["-m", "engine", "train", _workdir_path(args.config), *args.overrides])
    emit("result", f"{torchrun}\n\n{skypilot}".rstrip("\n"), nodes=args.nodes,
         workers_per_node=per_node, workers=total, torchrun=torchrun, skypilot=skypilot)
    return 0


def run_id(config: config_io.TrainConfig) -> str:
    """The rendezvous id: the same on every machine for the same run folder."""
    return "edgetune-" + hashlib.sha256(config.output_dir.encode()).hexdigest()[:8]


def torchrun_command(nodes: int, per_node: int, host: str, port: int, rdzv_id: str,
                     train: list[str]) -> str:
    """c10d rendezvous: machines need no rank of their own and may start in any order; no
    restarts, so a failed worker ends the run (resume it with --resume)."""
    command = ["torchrun", f"--nnodes={nodes}", f"--nproc-per-node={per_node}",
               "--rdzv-backend=c10d", f"--rdzv-endpoint={host}:{port}", f"--rdzv-id={rdzv_id}",
               "--max-restarts=0", *train]
    # A $VARIABLE host stays unquoted so the shell of each machine expands it.
    quoted = " ".join(part if "=$" in part else shlex.quote(part) for part in command)
    where = f"{host[1:]} set to the address of machine 0" if host.startswith("$") else \
        f"machine 0 at {host}"
    return (f"# On each of the {nodes} machines (the same EdgeTune, torch, config, data and model "
            f"paths), with {where}, reachable on port {port}:\n" + quoted)


def skypilot_task(config: config_io.TrainConfig, nodes: int, per_node: int, port: int,
                  train: list[str]) -> str:
    # device=cuda asks for a GPU per worker (name the type); otherwise CPUs for every thread.
    resources = {"accelerators": f"<GPU>:{per_node}"} if config.device == "cuda" else \
        {"cpus": f"{max(per_node * max(config.threads, 1), 2)}+"}
    torchrun = " ".join([
        "torchrun", "--nnodes=$SKYPILOT_NUM_NODES", f"--nproc-per-node={per_node}",
        "--node-rank=$SKYPILOT_NODE_RANK", "--master-addr=$MASTER_ADDR", f"--master-port={port}",
        "--max-restarts=0", *(shlex.quote(part) for part in train)])
    resource = "\n".join(f"  {key}: {value}" for key, value in resources.items())
    return f"""# SkyPilot task: sky launch -c edgetune task.yaml, from the EdgeTune folder (workdir syncs it
# to every machine, so the config, data and model paths must lie inside it or exist on every one)
name: {run_id(config)}
num_nodes: {nodes}
resources:
{resource}
workdir: .
setup: |
  make setup
run: |
  source .venv/bin/activate
  MASTER_ADDR=$(echo "$SKYPILOT_NODE_IPS" | head -n1)
  {torchrun}
"""


def _workdir_path(config: str) -> str:
    """The config's path relative to the working directory SkyPilot syncs, if it lies inside."""
    path = Path(config).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)
