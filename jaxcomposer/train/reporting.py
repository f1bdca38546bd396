"""Training progress a person can follow: metrics.jsonl, log lines, a bar, the learning curve.

metrics.jsonl holds one JSON object per line: {"kind": "train"|"valid"|"start", "step", ...}.
A resumed run appends a "start" record; readers drop records of the earlier attempt at steps
past that point (they were recomputed), and ignore a torn last line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import numpy as np
from matplotlib.figure import Figure
from tqdm import tqdm

from jaxcomposer.core import atomic


def append_metrics(path: str, record: dict) -> None:
    atomic.append_line(path, json.dumps(atomic.to_jsonable(record)))


class TensorBoardLog:
    """TensorBoard event files (tensorboardX) in `folder`, beside metrics.jsonl: every numeric
    field of a "train" or "valid" record becomes the scalar `kind/field` at its step (loss and
    accuracy in nats/token and fraction, as in metrics.jsonl), so `tensorboard --logdir runs/`
    shows each workdir's curves. A resumed run (a "start" record at step S > 0: the checkpoint
    it restored) opens a new event file with purge_step=S+1: TensorBoard then hides the earlier
    attempt's events after S, as read_metrics drops its records. `open` returns None (after a
    one-line warning on stderr) where tensorboardX is not installed."""

    KINDS = ("train", "valid")

    def __init__(self, folder: str, writer_class):
        self.folder, self.writer_class, self.writer = folder, writer_class, None

    @classmethod
    def open(cls, folder: str) -> TensorBoardLog | None:
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            print(
                "warning: train.tensorboard: tensorboardX is not installed (pip install "
                "'jaxcomposer[tensorboard]'); writing metrics.jsonl only",
                file=sys.stderr, flush=True,
            )  # fmt: skip
            return None
        return cls(folder, SummaryWriter)

    def write(self, record: dict) -> None:
        kind, step = record.get("kind"), record.get("step")
        if kind == "start":
            self.close()
            purge = int(step) + 1 if step else None
            self.writer = self._writer(purge)
            return
        if kind not in self.KINDS or step is None:
            return
        if self.writer is None:
            self.writer = self._writer(None)
        for name, value in record.items():
            if name in ("kind", "step") or isinstance(value, bool):
                continue
            if isinstance(value, int | float | np.integer | np.floating) and np.isfinite(value):
                self.writer.add_scalar(f"{kind}/{name}", float(value), int(step))

    def _writer(self, purge_step: int | None):
        # The file name holds the second it was opened in; the suffix keeps two attempts in the
        # same second apart (and in order: TensorBoard reads a folder's files by name).
        suffix = f".{time.time_ns()}"
        return self.writer_class(logdir=self.folder, purge_step=purge_step, filename_suffix=suffix)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()  # flushes
            self.writer = None


def read_metrics(path: str) -> list[dict]:
    """Records in step order as the final run history sees them (see the module docstring)."""
    records: list[dict] = []
    if not os.path.exists(path):
        return records
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line torn by a crash
            if record.get("kind") == "start":
                records = [r for r in records if r.get("step", 0) <= record.get("step", 0)]
            records.append(record)
    return records


@dataclasses.dataclass
class Line:
    record: dict
    text: str


class Window:
    """Accumulates per-step training metrics between two log lines.

    The speed (tokens/s, ETA) is measured from `restart_clock`, so that the first step of a
    session, which includes compilation, does not distort it.
    """

    def __init__(self, step: int):
        self.reset(step)

    def reset(self, step: int) -> None:
        self.loss_sum = self.correct_sum = self.tokens = 0.0
        self.last: dict = {}
        self.restart_clock(step)

    def restart_clock(self, step: int) -> None:
        self.clock_step, self.clock_since, self.clock_tokens = step, time.perf_counter(), 0.0

    def add(self, step: int, values: dict) -> None:
        self.loss_sum += values["loss"] * values["tokens"]
        self.correct_sum += values["accuracy"] * values["tokens"]
        self.tokens += values["tokens"]
        if step > self.clock_step:
            self.clock_tokens += values["tokens"]
        self.last = values

    def flush(self, step: int, num_steps: int, val_loss, best: dict, wall_seconds: float) -> Line:
        seconds = max(time.perf_counter() - self.clock_since, 1e-9)
        steps = max(step - self.clock_step, 1)
        tokens = max(self.tokens, 1.0)
        record = {
            "kind": "train",
            "step": step,
            "loss": self.loss_sum / tokens,
            "accuracy": self.correct_sum / tokens,
            "grad_norm": self.last.get("grad_norm"),
            "param_norm": self.last.get("param_norm"),
            "learning_rate": self.last.get("learning_rate"),
            "tokens_per_second": self.clock_tokens / seconds,
            "seconds_per_step": seconds / steps,
            "wall_seconds": wall_seconds,
        }
        eta = (num_steps - step) * seconds / steps
        val = "-" if val_loss is None else f"{val_loss:.4f}"
        best_text = (
            ""
            if best.get("val_loss") is None
            else f" (best {best['val_loss']:.4f} @ {best['step']})"
        )
        text = (
            f"step {step}/{num_steps}  loss {record['loss']:.4f}  acc {record['accuracy']:.3f}  "
            f"val {val}{best_text}  lr {record['learning_rate']:.2e}  "
            f"|g| {record['grad_norm']:.3g}  {record['tokens_per_second']:,.0f} tok/s  "
            f"{record['seconds_per_step']:.3f} s/step  eta {format_seconds(eta)}"
        )
        self.reset(step)
        return Line(record, text)


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class _NoBar:
    """Without a terminal: plain log lines on stdout (they land in log files as they are)."""

    def update(self, n: int) -> None:
        pass

    def write(self, text: str) -> None:
        print(text, flush=True)

    def close(self) -> None:
        pass


def progress_bar(start: int, total: int, *, enabled: bool):
    """A tqdm bar on a terminal (log lines printed above it), else log lines only."""
    if not enabled:
        return _NoBar()
    return tqdm(
        total=total, initial=start, desc="train", unit="step", file=sys.stderr, dynamic_ncols=True
    )


def summary_text(summary: dict) -> str:
    best = summary.get("best_val_loss")
    if best is None:
        return f"trained to step {summary['step']} ({summary['stop_reason']}); no validation loss"
    return (
        f"trained to step {summary['step']} ({summary['stop_reason']}) in "
        f"{format_seconds(summary['train_seconds'])}; best validation loss {best:.4f} nats/token "
        f"at step {summary['best_step']}, reached after "
        f"{format_seconds(summary['seconds_to_best'])}"
    )


def plot_learning_curve(metrics_file: str, png_path: str) -> str | None:
    """Train and validation loss vs step as a PNG; None if there is nothing to plot yet."""
    records = read_metrics(metrics_file)
    curves = {}
    for kind in ("train", "valid"):
        by_step = {
            r["step"]: r["loss"]
            for r in records
            if r.get("kind") == kind and r.get("loss") is not None
        }
        curves[kind] = np.array(sorted(by_step.items()), float).reshape(-1, 2)
    if not any(len(c) for c in curves.values()):
        return None
    fig = Figure(figsize=(7, 4), dpi=120)  # no pyplot: no global backend state, Agg by default
    ax = fig.subplots()
    for kind, style in (("train", "-"), ("valid", "o-")):
        if len(curves[kind]):
            ax.plot(curves[kind][:, 0], curves[kind][:, 1], style, label=kind, markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic.atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    return png_path
