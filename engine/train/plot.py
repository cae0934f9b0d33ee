"""A PNG of a run's loss and eval curves, drawn from its metrics.jsonl."""

from __future__ import annotations

from pathlib import Path

from engine.api.history import read_history


def plot_run(output_dir: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    history = read_history(output_dir / "metrics.jsonl")
    train = [(r["step"], r["loss"]) for r in history if r["type"] == "metrics" and r.get("loss") is not None]
    evals = [r for r in history if r["type"] == "eval"]
    if not train:
        return None
    has_accuracy = any(r.get("accuracy") is not None for r in evals)
    fig, axes = plt.subplots(1, 2 if has_accuracy else 1, figsize=(10 if has_accuracy else 6, 4))
    axes = list(axes) if has_accuracy else [axes]
    steps, losses = zip(*train, strict=True)
    axes[0].plot(steps, losses, alpha=0.35, label="train loss")
    window = max(1, len(losses) // 20)
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    axes[0].plot(steps, smooth, label=f"train loss (mean of {window})")
    axes[0].plot([r["step"] for r in evals], [r["loss"] for r in evals], "o-", label="eval loss")
    axes[0].set_xlabel("step")
    axes[0].legend()
    if has_accuracy:
        axes[1].plot([r["step"] for r in evals], [r["accuracy"] for r in evals], "o-")
        axes[1].set_xlabel("step")
        axes[1].set_ylabel("held-out accuracy")
    fig.tight_layout()
    path = output_dir / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
