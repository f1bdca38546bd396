r"""Learning curves for the "folder of piano MIDI files" recipe (configs/piano.py): validation NLL
against CPU minutes on the 92-file corpus, for two model sizes, with and without key conditioning.

    python launch/piano_curves.py --root runs/piano_curves --minutes 8 [--core 1]

Each run is `python -m jaxcomposer.main --mode=train --config=configs/piano.py`, pinned to one
core (`taskset -c CORE`) with one XLA thread, for --minutes of wall time (train.max_wall_seconds)
with a cosine schedule sized to end near that time (--steps_small / --steps_large: set them from
the step time this machine measures; budget_minutes is not used here so every run's schedule is
known before it starts). The runs go one after another on the same core. The CPU time of each
run is read from the kernel (resource.getrusage of the child); the curve's x axis is the run's
wall seconds at each evaluation scaled by CPU seconds / wall seconds of that run, which is exact
when the process had the core to itself and an estimate otherwise (the table says the ratio).

Prints a markdown table and writes ROOT/curves.json, ROOT/curves.md and ROOT/curves.png.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CORPUS = os.path.join(ROOT, "..", "..", "shared", "data", "final_fantasy")
if not os.path.isdir(CORPUS):  # a worktree sits two folders below /work
    CORPUS = os.path.join(ROOT, "..", "shared", "data", "final_fantasy")

# name: (config overrides). "small" = configs/quick.py's model, "large" = configs/default.py's.
SMALL = ("--config.model.embed_dim=128", "--config.model.hidden_size=256",
         "--config.model.dropout=0.1")  # fmt: skip
LARGE = ("--config.model.embed_dim=256", "--config.model.hidden_size=512",
         "--config.model.dropout=0.2")  # fmt: skip
KEY = ("--config.model.condition=key", "--config.model.condition_logits=true")
NONE = ("--config.model.condition=none", "--config.model.condition_logits=false")
RUNS = {
    "small_key": (SMALL, KEY),
    "small_none": (SMALL, NONE),
    "large_key": (LARGE, KEY),
    "large_none": (LARGE, NONE),
}


def one_thread_env() -> dict:
    return dict(
        os.environ,
        PYTHONPATH=ROOT,
        XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
        OMP_NUM_THREADS="1",
    )


def run_one(root: str, name: str, args) -> dict:
    model, cond = RUNS[name]
    steps = args.steps_small if name.startswith("small") else args.steps_large
    every = max(steps // 12, 10)
    workdir = os.path.join(root, name)
    cmd = [
        "taskset", "-c", str(args.core), sys.executable, "-m", "jaxcomposer.main",
        "--mode=train", "--config=configs/piano.py", f"--workdir={workdir}", "--noprogress",
        f"--config.data.midi_dir={os.path.abspath(args.midi_dir)}", "--config.data.num_workers=1",
        f"--config.train.num_steps={steps}", f"--config.train.eval_every={every}",
        f"--config.train.checkpoint_every={every}", f"--config.train.log_every={every}",
        f"--config.train.max_wall_seconds={60.0 * args.minutes}",
        "--config.train.early_stop_patience=0", "--config.train.budget_minutes=0",
        *model, *cond,
    ]  # fmt: skip
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, env=one_thread_env(), capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise RuntimeError(f"{name} failed: {done.stderr.strip()[-1500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    from jaxcomposer.train import reporting

    records = reporting.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    valid = [r for r in records if r.get("kind") == "valid"]
    with open(os.path.join(workdir, "train_summary.json")) as f:
        summary = json.load(f)
    scale = cpu / wall  # share of the core the process had, prepare and compile included
    return {
        "name": name,
        "num_steps": steps,
        "steps_done": summary["step"],
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(cpu, 1),
        "cpu_per_wall": round(scale, 3),
        "curve": [
            {
                "step": r["step"],
                "cpu_minutes": round(r["wall_seconds"] * scale / 60, 2),
                "val_loss": r["loss"],
            }
            for r in valid
        ],  # fmt: skip
        "best_val_loss": summary["best_val_loss"],
    }


def table(results: dict) -> str:
    lines = [
        "| run | steps done / scheduled | CPU min (whole process) | CPU/wall | best valid "
        "nats/token | valid nats/token at each evaluation (CPU min) |",
        "|" + "---|" * 6,
    ]
    for name, r in results.items():
        pts = ", ".join(f"{p['val_loss']:.3f} ({p['cpu_minutes']:.1f})" for p in r["curve"])
        lines.append(
            f"| {name} | {r['steps_done']} / {r['num_steps']} | {r['cpu_seconds'] / 60:.1f} "
            f"| {r['cpu_per_wall']:.2f} | {r['best_val_loss']:.3f} | {pts} |"
        )
    return "\n".join(lines)


def plot(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, r in results.items():
        ax.plot([p["cpu_minutes"] for p in r["curve"]], [p["val_loss"] for p in r["curve"]],
                marker="o", label=name)  # fmt: skip
    ax.set_xlabel("CPU minutes (one core)")
    ax.set_ylabel("validation NLL (nats/token)")
    ax.set_title("92-file piano corpus, event tokens")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="runs/piano_curves")
    parser.add_argument("--minutes", type=float, default=10.0, help="wall minutes per run")
    parser.add_argument("--midi_dir", default=os.path.abspath(CORPUS))
    parser.add_argument("--core", type=int, default=1, help="the core every run is pinned to")
    parser.add_argument("--steps_small", type=int, default=1500)
    parser.add_argument("--steps_large", type=int, default=400)
    parser.add_argument("--only", default="", help="comma-separated run names")
    args = parser.parse_args()
    root = os.path.abspath(args.root)
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "curves.json")
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    for name in RUNS:
        if args.only and name not in args.only.split(","):
            continue
        results[name] = run_one(root, name, args)
        print(json.dumps({k: v for k, v in results[name].items() if k != "curve"}), flush=True)
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
    text = table(results)
    with open(os.path.join(root, "curves.md"), "w") as f:
        f.write(text + "\n")
    plot(results, os.path.join(root, "curves.png"))
    print(text)


if __name__ == "__main__":
    main()
