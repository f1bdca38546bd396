"""The paper's second experiment, reproduced small: GiantMIDI-Piano performances of Chopin, Debussy
and Liszt (../shared/data/giantmidi_piano), three ways:
  seed_replica        the original Keras model (configs/seed_replica.py) on `chord` tokens
  default_event       jaxcomposer's default model on `event` tokens (16th-note grid of the
                      files' nominal 120 qpm)
  default_performance jaxcomposer's default model on `performance` tokens (10 ms, velocities,
                      pedal)
  piano_performance   the "folder of piano MIDI files" recipe (configs/piano.py: its model, key
                      conditioning, time budget and early stopping) on `performance` tokens,
                      windows of 256 tokens (a few seconds of playing)
Every run trains on the same pieces for the same wall-clock budget (--minutes, default 5; pin one
run per core with `taskset -c N` and one XLA thread for a budget that is CPU time; the CPU
seconds of each training are read from the kernel and written beside the wall time), is
evaluated on the same held-out pieces (by file-name hash, valid_fraction 0.2) with its own
nats_per_token and the comparable nats_per_second (NLL / seconds of music), and writes one sample
(MIDI, score, WAV). Prints JSON lines and a markdown table; writes ROOT/giantmidi.{json,md}.

usage: python launch/giantmidi_experiment.py [--root runs/giantmidi] [--minutes 5]
       [--only seed_replica,piano_performance] [--stage train|sample|table]   (default: all)

The one core-hour runs of docs/giantmidi.md, one per core, each with its own --root (each
process writes ROOT/giantmidi.json when it ends):
  export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
  taskset -c 0 python launch/giantmidi_experiment.py --root runs/gm --minutes 60 \
      --only piano_performance &
  taskset -c 1 python launch/giantmidi_experiment.py --root runs/gm2 --minutes 60 \
      --only seed_replica
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default, piano, seed_replica  # noqa: E402
from jaxcomposer import config_lib  # noqa: E402
from jaxcomposer.core import atomic  # noqa: E402

CORPUS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "giantmidi_piano"
)
COMPOSERS = ("Chopin", "Debussy", "Liszt")
SAMPLE_TOKENS = {"seed_replica": 400, "default_event": 1500, "default_performance": 3000,
                 "piano_performance": 3000}  # by run


def composer_folder(root: str, corpus: str) -> str:
    """A folder of symbolic links to the three composers' files (the corpus is never copied)."""
    folder = os.path.join(root, "corpus")
    os.makedirs(folder, exist_ok=True)
    for name in sorted(os.listdir(corpus)):
        link = os.path.join(folder, name)
        if name.startswith(COMPOSERS) and name.endswith(".mid") and not os.path.exists(link):
            try:
                os.symlink(os.path.abspath(os.path.join(corpus, name)), link)
            except FileExistsError:  # another run with this root made it first
                pass
    return folder


def run_configs(minutes: float, midi_dir: str) -> dict[str, config_lib.Config]:
    budget = {"max_wall_seconds": 60.0 * minutes, "num_steps": 10**6}
    data = {"midi_dir": midi_dir, "valid_fraction": 0.2}
    # the original evaluates once per epoch; a short run needs more often, an hour about 20 times
    every = 50 if minutes <= 10 else 200
    seed = config_lib.replace(
        config_lib.freeze(seed_replica.get_config()),
        data=data,
        train={**budget, "eval_every": every, "checkpoint_every": every},
    )
    base = config_lib.replace(config_lib.freeze(default.get_config()), data=data, train=budget)
    recipe = config_lib.replace(
        config_lib.freeze(piano.get_config()),
        data=data,
        tokenizer={"name": "performance"},
        train={"budget_minutes": minutes, "seq_len": 256},
    )
    return {
        "seed_replica": seed,
        "default_event": base,
        "default_performance": config_lib.replace(base, tokenizer={"name": "performance"}),
        "piano_performance": recipe,
    }


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (the kernel's count)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train_and_evaluate(root: str, name: str, config: config_lib.Config) -> dict:
    from jaxcomposer.data import dataset
    from jaxcomposer.evaluation import evaluate
    from jaxcomposer.train import loop

    workdir = os.path.join(root, name)
    manifest = dataset.prepare(config, workdir, progress=False)
    started, cpu_started = time.perf_counter(), cpu_seconds()
    summary = loop.train(config, workdir, progress=False)
    wall, cpu = time.perf_counter() - started, cpu_seconds() - cpu_started
    result = evaluate.evaluate(workdir, progress=False)
    return {
        "tokenizer": config.tokenizer.name,
        "train_pieces": manifest["totals"]["train"]["pieces"],
        "valid_pieces": manifest["totals"]["valid"]["pieces"],
        "train_tokens": manifest["totals"]["train"]["tokens"],
        "steps": summary["step"],
        "train_minutes": round(wall / 60, 2),
        "train_cpu_minutes": round(cpu / 60, 2),
        "best_step": summary.get("best_step"),
        "stop_reason": summary.get("stop_reason"),
        "valid": {k: result["overall"].get(k) for k in
                  ("tokens", "seconds", "nats_per_token", "nats_per_second", "nats_per_beat")},
        "valid_names": sorted(result["pieces"]),
    }  # fmt: skip


def sample(root: str, name: str, config: config_lib.Config) -> dict:
    from jaxcomposer.sample import generate

    workdir = os.path.join(root, name)
    overrides = {"num_samples": 1, "num_steps": SAMPLE_TOKENS[name],
                 "num_bars": 0, "primer": "none"}  # fmt: skip
    out = generate.generate(workdir, out_dir=os.path.join(workdir, "samples"), seed=1,
                            overrides=overrides)  # fmt: skip
    info = out["samples"][0]
    return {k: info.get(k) for k in ("notes", "beats", "skipped_tokens", "synthesizer", "qpm")} | {
        "dir": out["out_dir"]
    }


def table(results: dict) -> str:
    head = ("| run | tokens | steps (best) | train wall / CPU min | held-out nats/token "
            "| held-out nats/second | sample: notes, seconds, skipped tokens |")  # fmt: skip
    lines = [head, "|" + "---|" * 7]
    for name, r in results.items():
        v, s = r["valid"], r.get("sample", {})
        seconds = s.get("beats", 0) * 60.0 / s["qpm"] if s.get("qpm") else float("nan")
        best = f" ({r['best_step']})" if r.get("best_step") is not None else ""
        cpu = r.get("train_cpu_minutes", "-")
        lines.append(
            f"| {name} | {r['tokenizer']} | {r['steps']}{best} | {r['train_minutes']} / {cpu} "
            f"| {v['nats_per_token']:.3f} | {v['nats_per_second']:.2f} "
            f"| {s.get('notes', '-')}, {seconds:.1f} s, {s.get('skipped_tokens', '-')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/giantmidi")
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall time per run")
    parser.add_argument("--corpus", default=os.path.abspath(CORPUS))
    parser.add_argument("--only", default="", help="comma-separated run names")
    parser.add_argument("--stage", default="all", choices=["all", "train", "sample", "table"])
    args = parser.parse_args()
    root = os.path.abspath(args.root)
    os.makedirs(root, exist_ok=True)
    configs = run_configs(args.minutes, composer_folder(root, args.corpus))
    wanted = [n for n in configs if not args.only or n in args.only.split(",")]
    path = os.path.join(root, "giantmidi.json")
    results = {}
    if os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
    for name in wanted:
        if args.stage in ("all", "train"):
            print(f"=== {name}: training for {args.minutes} min", flush=True)
            results[name] = train_and_evaluate(root, name, configs[name])
            print(json.dumps({"run": name, **results[name]["valid"]}), flush=True)
            atomic.write_json(path, results)
        if args.stage in ("all", "sample") and name in results:
            results[name]["sample"] = sample(root, name, configs[name])
            print(json.dumps({"run": name, **results[name]["sample"]}), flush=True)
            atomic.write_json(path, results)
    text = table({n: r for n, r in results.items() if n in configs})
    atomic.write_text(os.path.join(root, "giantmidi.md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
