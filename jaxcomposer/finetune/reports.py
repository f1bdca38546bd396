"""Fine-tuning's reports: the progress line, the one-line summary and the learning curves."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from jaxcomposer.core import atomic
from jaxcomposer.train import reporting


def mean(records: list[dict], key: str) -> float | None:
    values = [r[key] for r in records if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def progress_line(step: int, num_steps: int, recent: list[dict], val: float | None) -> str:
    val_text = "-" if val is None else f"{val:.4f}"
    real = mean(recent, "real_nll")
    real_text = "" if real is None else f"  real nll {real:.4f}"
    walls = [r["wall_seconds"] for r in recent]
    # One record in the window has no interval to time: say nothing rather than "nan s/step".
    timing = f"  {(walls[-1] - walls[0]) / (len(walls) - 1):.2f} s/step" if len(walls) > 1 else ""
    matched = [k for k in recent[-1] if k.startswith("reward_match_")]
    match = np.mean([sum(r[k] for k in matched) for r in recent]) if matched else None
    match_text = "" if match is None else f" (batch rewards, unweighted: {match:+.3f} nats)"
    return (
        f"finetune {step}/{num_steps}  reward {mean(recent, 'reward'):.4f}{match_text}  "
        f"kl {mean(recent, 'kl'):.5f} nats/token{real_text}  val {val_text}  "
        f"|g| {mean(recent, 'grad_norm'):.3g}{timing}"
    )


def summary_text(summary: dict) -> str:
    def fmt(v):
        return "-" if v is None else f"{v:.4f}"

    return (
        f"fine-tuned to step {summary['step']} ({summary['stop_reason']}) from pretrained step "
        f"{summary['base_step']}: mean reward {fmt(summary['reward_first'])} -> "
        f"{fmt(summary['reward_last'])}, KL {fmt(summary['kl_last'])} nats/token, validation "
        f"NLL {fmt(summary['val_loss_first'])} -> {fmt(summary['val_loss_last'])} nats/token"
    )


def plot_curves(metrics_file: str, png_path: str) -> str | None:
    """Mean reward, KL(pi || pi_0) per token and validation NLL vs update, as one PNG."""
    records = reporting.read_metrics(metrics_file)
    train = sorted((r for r in records if r.get("kind") == "train"), key=lambda r: r["step"])
    valid = sorted((r for r in records if r.get("kind") == "valid"), key=lambda r: r["step"])
    if not train:
        return None
    steps = np.array([r["step"] for r in train])
    fig = Figure(figsize=(10, 3.2), dpi=110)
    axes = fig.subplots(1, 3)
    for ax, key, label in ((axes[0], "reward", "mean reward"),
                           (axes[1], "kl", "KL(policy || pretrained), nats/token")):  # fmt: skip
        values = np.array([r[key] for r in train])
        ax.plot(steps, values, lw=0.6, alpha=0.4)
        width = max(1, len(values) // 20)
        smooth = np.convolve(values, np.ones(width) / width, mode="valid")
        ax.plot(steps[width - 1 :], smooth, lw=1.5)
        ax.set_title(label, fontsize=9)
    axes[2].plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", markersize=3)
    axes[2].set_title("validation NLL, nats/token", fontsize=9)
    for ax in axes:
        ax.set_xlabel("update")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic.atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    return png_path
