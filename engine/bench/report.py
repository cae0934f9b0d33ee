"""Results as text tables: what `python -m engine bench` prints and docs/benchmarks.md quotes."""

from __future__ import annotations

from engine.bench.common import model_label


def summary(record: dict) -> str:
    env = record["environment"]
    head = (f"{record['benchmark']}: {model_label(record['model'])} on {env['cpu']}, {env['torch_threads']} "
            f"threads, torch {env['torch']}, rev {env['git_revision']}, load average "
            f"{_load(env['load_average_at_start'])} → {_load(env.get('load_average_at_end'))}")
    body = {"throughput": _throughput, "step": _step, "accuracy": _accuracy,
            "memory": _memory, "backend": _backend, "pte": _pte,
            "convergence": _convergence, "step-costs": _step_costs}[record["benchmark"]]
    return head + "\n" + "\n".join(body(record))


def _load(values: list[float] | None) -> str:
    return "/".join(f"{v:.1f}" for v in values) if values else "?"


def _ms(timing: dict) -> str:
    return f"{timing['median_s'] * 1e3:.1f} ({timing['min_s'] * 1e3:.1f}–{timing['max_s'] * 1e3:.1f})"


def _throughput(record: dict) -> list[str]:
    lines = []
    for curve in record["curves"]:
        lines.append(f"\nseq_len {curve['seq_len']}: rows | forward ms median (min–max) | ms per row")
        for point in curve["points"]:
            lines.append(f"  {point['rows']:4d} | {_ms(point['timing'])} | "
                         f"{point['timing']['median_s'] * 1e3 / point['rows']:.2f}")
        lines.append("  ideal speed-up S* = 2q·t(b)/t(2q·b): "
                     + ", ".join(f"q={s['q']} b={s['b']}: {s['ideal_speedup']:.2f}"
                                 for s in curve["ideal_speedups"]))
    return lines


def _step(record: dict) -> list[str]:
    lines = []
    for sweep in record["sweeps"]:
        lines.append(f"\n{sweep['name']} (seq_len {record['seq_len']}), ms median (min–max):")
        lines.append("  q  b | prge dual | prge single | mezo | fo | forward 2qb | forward b "
                     "| S | S* | S/S* | L")
        for row in sweep["rows"]:
            t = row["timings"]
            lines.append(
                f"  {row['q']:2d} {row['b']:2d} | {_ms(t['prge dual'])} | {_ms(t['prge single'])} | "
                f"{_ms(t['mezo'])} | {_ms(t['fo'])} | {_ms(t['forward 2qb'])} | "
                f"{_ms(t['forward b'])} | {row['speedup']:.2f} | {row['ideal_speedup']:.2f} | "
                f"{row['speedup'] / row['ideal_speedup']:.2f} | {row['limit_ratio']:.3f}")
            if "gain_over_baseline" in row:
                rev = record["baseline"]
                lines.append("        at " + rev + ": " + ", ".join(
                    f"{name} {_ms(t[f'{name} @{rev}'])} ({gain:.2f}x now)"
                    for name, gain in row["gain_over_baseline"].items()))
    for entry in record.get("profiles", []):
        lines.append(f"\nprofile q={entry['q']} b={entry['b']} ({entry['what']}), self CPU ms:")
        lines += [f"  {op['self_ms']:8.1f}  {op['calls']:5d}x  {op['name']}" for op in entry["top"]]
    return lines


def _accuracy(record: dict) -> list[str]:
    lines = [f"\nzero-shot accuracy: {record.get('zero_shot_accuracy', float('nan')):.3f} "
             f"on {record['eval_rows']} held-out rows",
             "run | seed | steps | train seconds | accuracy at each eval"]
    for run in record["runs"]:
        last = run["curve"][-1]
        lines.append(f"  {run['name']} | {run['seed']} | {last['step']} | {last['train_seconds']:.0f} | "
                     + " ".join(f"{p['accuracy']:.3f}@{p['step']}" for p in run["curve"]))
    return lines


def _memory(record: dict) -> list[str]:
    lines = [f"\nq={record['q']} b={record['b']}, {record['steps']} steps per fresh process; peaks "
             "from the end of the model load: dtype | tokens | variant | weights MiB | load peak "
             "MiB | peak RSS MiB | estimate MiB | error"]
    for point in record["points"]:
        for v in point["variants"]:
            predicted = point["estimate"].get(v["variant"])
            lines.append(f"  {point['dtype']} | {point['seq_len']} | {v['variant']} | "
                         f"{v['weights_bytes'] / 2**20:.0f} | {v['load_peak_rss_bytes'] / 2**20:.0f} | "
                         f"{v['peak_rss_bytes'] / 2**20:.0f} | "
                         + (f"{predicted / 2**20:.0f} | {point['estimate_error'][v['variant']]:+.1%}"
                            if predicted else "— | —"))
        for key, label in (("prge_dual_over_inference", "prge dual / inference"),
                           ("fo_over_prge_dual_above_weights", "fo / prge dual above the weights")):
            if point[key] is not None:
                lines.append(f"  {point['dtype']} {point['seq_len']} tokens, {label}: {point[key]:.2f}")
    return lines


def _backend(record: dict) -> list[str]:
    t = record["timings"]
    return [f"\nprge dual q={record['q']} b={record['b']} seq_len {record['seq_len']}, ms median (min–max):",
            f"  pytorch (eager) | {_ms(t['pytorch'])}",
            f"  executorch (program) | {_ms(t['executorch'])}",
            f"  executorch speed-up over eager: {record['speedup_executorch_over_pytorch']:.2f}x",
            f"  program: {record['program_bytes'] / 2**20:.1f} MiB, exported and lowered in "
            f"{record['lower_seconds']:.1f} s",
            f"  max |Δθ| after {record['steps_per_backend']} steps each: "
            f"{record['max_theta_difference']:.3g} (max |θ| {record['max_theta']:.3g})"]


def _pte(record: dict) -> list[str]:
    lines = [f"\n{record['run']}/export/executorch/model.pte ({record['program_bytes'] / 2**20:.1f} MiB), "
             "one forward, ms median (min–max):",
             "  tokens | executorch | pytorch (merged adapter) | speed-up | max |Δlogit|"]
    for row in record["lengths"]:
        t = row["timings"]
        lines.append(f"  {row['tokens']:6d} | {_ms(t['executorch'])} | {_ms(t['pytorch'])} | "
                     f"{row['speedup_executorch_over_pytorch']:.2f}x | {row['max_abs_logit_difference']:.2g}")
    return lines


def _convergence(record: dict) -> list[str]:
    budget = (f"{record['minutes']:g} training minutes per run" if record["minutes"]
              else f"{record.get('steps')} steps per run")
    lines = [f"{record['task']}, {budget}, {record['eval_rows']} held-out rows",
             "run | seed | ended by | steps | held-out accuracy at (step, training s) … | adapter step"]
    for run in record["runs"]:
        points = " ".join(f"{p['accuracy']:.3f}@({p['step']},{p['train_seconds']:.0f}s)"
                          for p in run["curve"])
        extra = f" [{' '.join(run['extra'])}]" if run.get("extra") else ""
        lines.append(f"  {run['name']}{extra} | {run['seed']} | {run['reason']} | {run['steps_run']} | "
                     f"{points} | {run['adapter_step']}")
    return lines


def _step_costs(record: dict) -> list[str]:
    base = record["variants"][0]["timing"]["median_s"]
    lines = [f"{record['task']}: seconds per step, interleaved, {record['reps']} timed steps each",
             f"variant | step ms median (min–max) | vs {record['variants'][0]['name']}"]
    for variant in record["variants"]:
        timing = variant["timing"]
        lines.append(f"  {variant['name']} | {_ms(timing)} | {base / timing['median_s']:.2f}x")
    return lines
