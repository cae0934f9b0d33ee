"""The PNGs in docs/, drawn from the JSON results (matplotlib: docs only; the app uses pyqtgraph)."""

from __future__ import annotations

from pathlib import Path

from engine.bench.common import model_label, read_json


def plot_all(results: Path, plots: Path) -> list[Path]:
    """Redraw every plot whose results exist; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    drawn = []
    for name, draw in (("throughput", _throughput), ("step", _step), ("accuracy", _accuracy),
                       ("convergence", _accuracy), ("memory", _memory)):
        for path in sorted(results.glob(f"{name}*.json")):
            record = read_json(path)
            if record and record.get("benchmark") == name:
                target = plots / f"bench-{path.stem}.png"
                draw(record, target)
                drawn.append(target)
    return drawn


def _save(fig, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(target, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)


def _throughput(record: dict, target: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for curve in record["curves"]:
        rows = [p["rows"] for p in curve["points"]]
        ms = [p["timing"]["median_s"] * 1e3 for p in curve["points"]]
        low = [p["timing"]["min_s"] * 1e3 for p in curve["points"]]
        high = [p["timing"]["max_s"] * 1e3 for p in curve["points"]]
        label = f"{curve['seq_len']} tokens/row"
        spread = [[m - lo for m, lo in zip(ms, low, strict=True)],
                  [hi - m for m, hi in zip(ms, high, strict=True)]]
        left.errorbar(rows, ms, yerr=spread, marker="o", label=label)
        right.plot(rows, [m / r for m, r in zip(ms, rows, strict=True)], marker="o", label=label)
    left.set(xscale="log", yscale="log", xlabel="rows in the batch", ylabel="forward ms (median, min–max)",
             title=f"one plain forward, {model_label(record['model'])}")
    right.set(xscale="log", xlabel="rows in the batch", ylabel="ms per row",
              title="cost per row: flat = no batching gain")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    _save(fig, target)


def _step(record: dict, target: Path) -> None:
    import matplotlib.pyplot as plt

    sweeps = record["sweeps"]
    fig, axes = plt.subplots(1, len(sweeps), figsize=(5.5 * len(sweeps), 4), squeeze=False)
    for axis, sweep in zip(axes[0], sweeps, strict=True):
        qs = [row["q"] for row in sweep["rows"]]
        names = ["prge dual", "prge single", "mezo", "fo", "forward 2qb"]
        if record.get("baseline"):
            names += [f"prge dual @{record['baseline']}", f"mezo @{record['baseline']}"]
        for name in names:
            axis.plot(qs, [row["timings"][name]["median_s"] * 1e3 for row in sweep["rows"]],
                      marker="o" if "@" not in name else "x", label=name,
                      linestyle="--" if name.startswith("forward") else ":" if "@" in name else "-")
        twin = axis.twinx()
        twin.plot(qs, [row["speedup"] for row in sweep["rows"]], color="black", marker="s",
                  label="S (prge dual vs mezo)")
        twin.plot(qs, [row["ideal_speedup"] for row in sweep["rows"]], color="grey", marker="^",
                  linestyle=":", label="S* (ideal, from forwards)")
        twin.set_ylabel("speed-up over mezo")
        axis.set(xscale="log", yscale="log", xlabel="q (directions)", ylabel="step ms (median)",
                 title=sweep["name"])
        axis.set_xticks(qs, [str(q) for q in qs])
        axis.set_xticks([], minor=True)
        axis.grid(alpha=0.3)
        axis.legend(loc="upper left", fontsize=8)
        twin.legend(loc="lower right", fontsize=8)
    fig.suptitle(f"step time, {model_label(record['model'])}, {record['seq_len']} tokens/row")
    _save(fig, target)


def _accuracy(record: dict, target: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    colours = {}
    for run in record["runs"]:
        curve = run["curve"]
        # One colour per variant, its seeds told apart by marker, so the spread between seeds shows.
        name = run["name"] + (f" [{' '.join(run['extra'])}]" if run.get("extra") else "")
        colour = colours.setdefault(name, f"C{len(colours) % 10}")
        marker = "osD^v"[record["seeds"].index(run["seed"]) % 5] if run["seed"] in record["seeds"] else "o"
        label = name if len(record["seeds"]) == 1 else f"{name} seed {run['seed']}"
        for axis, x in ((left, "step"), (right, "train_seconds")):
            axis.plot([p[x] for p in curve], [p["accuracy"] for p in curve], marker=marker,
                      color=colour, alpha=0.85, label=label)
    # Every adapter starts at B = 0: a run's step-0 evaluation is the zero-shot model.
    zero = record.get("zero_shot_accuracy") or (record["runs"][0]["curve"][0]["accuracy"]
                                                if record["runs"] else None)
    for axis, xlabel in ((left, "step"), (right, "training seconds (evaluation excluded)")):
        if zero is not None:
            axis.axhline(zero, color="grey", linestyle=":", label="zero-shot")
        axis.set(xlabel=xlabel, ylabel=f"held-out accuracy ({record['eval_rows']} rows)")
        axis.grid(alpha=0.3)
    left.legend(fontsize=8)
    seeds = ", ".join(str(seed) for seed in record["seeds"])
    task = {"sst2": "SST-2", "agnews": "AG News"}[record.get("task", "sst2")]
    fig.suptitle(f"{task}, {model_label(record['model'])}, training seed(s) {seeds}")
    _save(fig, target)


def _memory(record: dict, target: Path) -> None:
    """Peak RSS against tokens per row, one panel per base dtype, the estimate dashed."""
    import matplotlib.pyplot as plt

    dtypes = list(dict.fromkeys(p["dtype"] for p in record["points"]))
    fig, axes = plt.subplots(1, len(dtypes), figsize=(4.5 * len(dtypes), 4), sharey=True,
                             squeeze=False)
    for axis, dtype in zip(axes[0], dtypes, strict=True):
        points = [p for p in record["points"] if p["dtype"] == dtype]
        lengths = [p["seq_len"] for p in points]
        for i, variant in enumerate(v["variant"] for v in points[0]["variants"]):
            color = f"C{i}"
            axis.plot(lengths, [_peak(p, variant) / 2**30 for p in points], "o-", color=color,
                      label=variant)
            if all(variant in p["estimate"] for p in points):
                axis.plot(lengths, [p["estimate"][variant] / 2**30 for p in points], "--",
                          color=color, alpha=0.6)
        weights = points[0]["variants"][0]["weights_bytes"] / 2**30
        axis.axhline(weights, color="grey", lw=0.8)
        axis.set(xlabel="tokens per row", title=f"{dtype} base (grey: its weights)")
    axes[0][0].set_ylabel("peak RSS, GiB (dashed: engine/api/estimate.py)")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"peak memory, {model_label(record['model'])}, q={record['q']} b={record['b']}")
    _save(fig, target)


def _peak(point: dict, variant: str) -> int:
    return next(v["peak_rss_bytes"] for v in point["variants"] if v["variant"] == variant)
