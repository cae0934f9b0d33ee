"""`python -m engine bench WHAT`: the numbers behind docs/benchmarks.md.

    throughput  time of one plain forward at 1…64 rows, and the ideal P-RGE speed-up S*
    step        step time of prge dual/single, mezo and fo against plain forwards (S, S*, L)
    backend     prge dual step time: eager PyTorch against the lowered ExecuTorch training program
    pte         forward time of a run's exported .pte against eager PyTorch with the merged adapter
    memory      peak RSS of each optimiser and of inference, each in a fresh process
    accuracy    SST-2 held-out accuracy against steps and seconds for every optimiser
    plot        redraw the PNGs in docs/ from the JSON results

Each writes one JSON (machine, versions, git revision, threads, load average included) to
--results and redraws its plot. Benchmarks print numbers; they are not run by CI.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from engine.bench.common import DOCS, write_json

RESULTS = DOCS / "bench"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine bench", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--model", default="default",
                       help="model reference (default: SmolLM2-135M) or a random-init shape of "
                            "engine/model/tiny.py: tiny (2-layer Llama), llama-3.2-1b, gemma-3-270m")
        p.add_argument("--threads", type=int, default=2, help="torch threads, pinned (default 2)")
        p.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON results")
        p.add_argument("--plots", type=Path, default=DOCS, help="folder for the PNG plots")
        p.add_argument("--tag", default="", help="suffix of the result file name")

    p = sub.add_parser("throughput", help="plain forward time at 1…64 rows")
    common(p)
    p.add_argument("--seq-lens", type=int, nargs="+", default=[25, 32],
                   help="tokens per row (demo ≈ 25, SST-2 ≈ 32)")
    p.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--warmup", type=int, default=2)

    p = sub.add_parser("step", help="step time of every optimiser against plain forwards")
    common(p)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--qs", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--effective-batch", type=int, default=16, help="q·b for the first sweep")
    p.add_argument("--fixed-b", type=int, default=4, help="b for the second sweep (q ≤ 8)")
    p.add_argument("--fixed-b-max-q", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--baseline", metavar="REV",
                   help="also time prge dual and mezo as at git revision REV, interleaved (before/after)")
    p.add_argument("--profile", action="store_true",
                   help="also profile one prge dual step and one plain forward per q (top ops)")

    p = sub.add_parser("backend", help="P-RGE step time, eager PyTorch against the ExecuTorch program")
    common(p)
    p.add_argument("--q", type=int, default=4)
    p.add_argument("--b", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)

    p = sub.add_parser("pte", help="a run's exported .pte against eager PyTorch, forward time")
    p.add_argument("run", type=Path, help="run folder with export/executorch/model.pte")
    p.add_argument("--threads", type=int, default=2, help="torch and XNNPACK threads (default 2)")
    p.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON results")
    p.add_argument("--plots", type=Path, default=DOCS, help="folder for the PNG plots")
    p.add_argument("--tag", default="", help="suffix of the result file name")
    p.add_argument("--lengths", type=int, nargs="+", default=[1, 32, 128], help="tokens per forward")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)

    p = sub.add_parser("memory", help="peak RSS per optimiser against an inference-only process")
    common(p)
    p.add_argument("--q", type=int, default=4)
    p.add_argument("--b", type=int, default=4)
    p.add_argument("--seq-len", type=int, nargs="+", default=[32], help="tokens per row, each measured")
    p.add_argument("--steps", type=int, default=3, help="steps (forwards for inference) per process")
    from engine.bench.memory import DTYPES, VARIANTS

    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=VARIANTS)
    p.add_argument("--dtypes", nargs="+", choices=DTYPES, default=DTYPES[:1],
                   help="base precisions to measure (the config field dtype; θ stays float32)")
    p.add_argument("--reestimate", type=Path, metavar="RESULT",
                   help="measure nothing: redo RESULT's estimates with engine/api/estimate.py as it is now")

    p = sub.add_parser("accuracy", help="SST-2 accuracy against steps and seconds")
    common(p)
    from engine.bench.accuracy import SST2

    p.add_argument("--sst2", type=Path, default=SST2, help="SST-2 train.tsv (sentence<TAB>label)")
    p.add_argument("--steps", type=int, default=200, help="steps of the prge runs (mezo, fo: half)")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-rows", type=int, default=200)
    p.add_argument("--train-rows", type=int, default=10000)
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="run only these: an optimiser (prge, mezo, fo) or a run name ('prge q=4 b=4')")
    p.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="training seeds (directions, batch order); each runs every variant")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the runs (default runs/bench-accuracy-TIME)")

    p = sub.add_parser("convergence", help="held-out accuracy against training seconds, per estimator option")
    common(p)
    from engine.bench.convergence import TASKS, VARIANTS

    p.add_argument("--task", choices=sorted(TASKS), default="sst2")
    p.add_argument("--data", type=Path, default=None,
                   help="the task's TSV (default: its file in ../shared/data)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), metavar="NAME",
                   help=f"runs to make, in order; from: {', '.join(VARIANTS)}")
    p.add_argument("--minutes", type=float, default=10.0, help="training minutes per run (0: --steps)")
    p.add_argument("--steps", type=int, default=100_000, help="steps per run (an upper bound with --minutes)")
    p.add_argument("--step-costs", action="store_true",
                   help="instead of training runs: seconds per step of each variant, interleaved")
    p.add_argument("--reps", type=int, default=5, help="timed steps per variant (--step-costs)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps per variant (--step-costs)")
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--eval-rows", type=int, default=200)
    p.add_argument("--train-rows", type=int, default=10000)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", dest="extra", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides applied to every run after its variant's")
    p.add_argument("--work", type=Path, default=None,
                   help="folder for the runs (default runs/bench-convergence-TIME)")

    p = sub.add_parser("plot", help="redraw the plots from the JSON results")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--plots", type=Path, default=DOCS)
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.what == "plot":
        from engine.bench.plots import plot_all

        for path in plot_all(args.results, args.plots):
            print(path)
        return 0
    import torch

    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    suffix = f"-{args.tag}" if args.tag else ""
    if args.what == "accuracy":
        from engine.bench import accuracy

        work = args.work or Path("runs") / f"bench-accuracy-{time.strftime('%Y%m%d-%H%M%S')}"
        target = args.results / f"accuracy{suffix}.json"
        record = accuracy.run(args.model, args.sst2, args.steps, args.eval_every, args.eval_rows,
                              args.train_rows, args.threads, work, args.only, args.seeds,
                              save=lambda partial: write_json(partial, target))
    elif args.what == "convergence":
        from engine.bench import convergence

        work = args.work or Path("runs") / f"bench-convergence-{time.strftime('%Y%m%d-%H%M%S')}"
        target = args.results / f"convergence-{args.task}{suffix}.json"
        if args.step_costs:
            from engine.bench.common import finish
            from engine.bench.report import summary

            record = convergence.step_costs(args.model, args.task, args.data, args.variants, args.reps,
                                            args.warmup, args.threads, work)
            path = write_json(finish(record), args.results / f"step-costs-{args.task}{suffix}.json")
            print(summary(record))
            print(f"results: {path}")
            return 0
        record = convergence.run(args.model, args.task, args.data, args.variants, args.minutes,
                                 args.eval_every,
                                 args.eval_rows, args.train_rows, args.threads, work, args.seeds,
                                 args.extra, save=lambda partial: write_json(partial, target),
                                 steps=args.steps)
    elif args.what == "backend":
        from engine.bench import backend

        record = backend.run(args.model, args.q, args.b, args.seq_len, args.reps, args.warmup,
                             args.threads)
    elif args.what == "pte":
        from engine.bench import pte

        record = pte.run(args.run, args.lengths, args.reps, args.warmup, args.threads)
    elif args.what == "memory":
        from engine.bench import memory

        if args.reestimate:
            from engine.bench.common import read_json
            from engine.bench.report import summary

            path = write_json(memory.reestimate(read_json(args.reestimate)), args.reestimate)
            print(summary(read_json(path)))
            print(f"results: {path}")
            return 0
        target = args.results / f"memory{suffix}.json"
        record = memory.run(args.model, args.q, args.b, args.seq_len, args.steps, args.threads,
                            args.variants, args.dtypes, save=lambda partial: write_json(partial, target))
    else:
        from engine.bench import speed

        if args.what == "throughput":
            record = speed.throughput(args.model, args.seq_lens, args.rows, args.reps, args.warmup,
                                      args.threads)
        else:
            record = speed.step_times(args.model, args.seq_len, args.qs, args.effective_batch,
                                      args.fixed_b, args.fixed_b_max_q, args.reps, args.warmup,
                                      args.threads, args.profile, args.baseline)
    stem = f"convergence-{args.task}" if args.what == "convergence" else args.what
    path = write_json(record, args.results / f"{stem}{suffix}.json")
    from engine.bench.plots import plot_all
    from engine.bench.report import summary

    print(summary(record))
    print(f"results: {path}")
    for plot in plot_all(args.results, args.plots):
        print(f"plot: {plot}")
    return 0
