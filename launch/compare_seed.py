"""The comparison a reader of the paper wants: the original model vs jaxcomposer's, same CPU time.

On the 92-file corpus (../shared/data/final_fantasy), three runs each get the same wall-clock
training budget (--minutes, default 10 minutes each on this machine's 2 CPU cores; ~35 minutes
in all with evaluation and sampling):
  seed_replica   the original Keras model (chord tokens, scalar input, one target per window)
  default_chord  jaxcomposer's default model and recipe on the same chord tokens
  default_event  jaxcomposer's default model on its default event tokens
Each is evaluated on the validation split (NLL per token; per beat where the tokenizer has
timing -- chord tokens carry no timing, so their per-beat figure is by the fixed 0.5-beat step),
sampled with argmax and with the default decoder (nucleus, top_p 0.95), and the samples'
statistics are compared with the held-out real pieces. Prints a markdown table and writes it,
with all the numbers, to ROOT/comparison.md and ROOT/comparison.json.

usage: python launch/compare_seed.py [--root runs/compare] [--minutes 10] [--samples 8]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import default, seed_replica  # noqa: E402
from jaxcomposer import config_lib  # noqa: E402
from jaxcomposer.core import atomic  # noqa: E402

CORPUS = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "final_fantasy"
)
# Tokens per sample, by run: the chord runs 500 (500 onset groups, as the original), event 1000.
SAMPLE_TOKENS = {"seed_replica": 500, "default_chord": 500, "default_event": 1000}
STATS = ("longest_repeat_run", "distinct_4gram_share", "pitch_class_entropy", "scale_consistency")


def run_configs(minutes: float, midi_dir: str) -> dict[str, config_lib.Config]:
    budget = {"max_wall_seconds": 60.0 * minutes, "num_steps": 10**6}
    seed = config_lib.freeze(seed_replica.get_config())
    seed = config_lib.replace(
        seed,
        data={"midi_dir": midi_dir},
        train={**budget, "eval_every": 100, "checkpoint_every": 100},
    )
    base = config_lib.freeze(default.get_config())
    base = config_lib.replace(base, data={"midi_dir": midi_dir}, train=budget)
    chord = config_lib.replace(base, tokenizer={"name": "chord"})
    return {"seed_replica": seed, "default_chord": chord, "default_event": base}


def sample_and_compare(
    workdir: str, name: str, decoder: dict, num_samples: int, tokens: int
) -> dict:
    from jaxcomposer.evaluation import evaluate
    from jaxcomposer.sample import generate

    out_dir = os.path.join(workdir, f"samples_{name}")
    overrides = {"num_samples": num_samples, "num_steps": tokens, "num_bars": 0, **decoder}
    generate.generate(workdir, out_dir=out_dir, seed=0, overrides=overrides)
    report = evaluate.compare_samples(workdir, out_dir, progress=False)
    return {
        stat: {
            "generated": report["statistics"][stat]["generated"]["mean"],
            "real": report["statistics"][stat]["real"]["mean"],
            "overlap_area": report["statistics"][stat]["overlap_area"],
        }
        for stat in STATS
    } | {"score_png": os.path.join(out_dir, "sample_00.png")}


def one_run(root: str, name: str, config: config_lib.Config, num_samples: int) -> dict:
    from jaxcomposer.data import dataset
    from jaxcomposer.evaluation import evaluate
    from jaxcomposer.train import loop

    workdir = os.path.join(root, name)
    dataset.prepare(config, workdir, progress=False)
    started = time.perf_counter()
    summary = loop.train(config, workdir, progress=False)
    wall = time.perf_counter() - started
    nll = evaluate.evaluate(workdir, progress=False)["overall"]
    tokens = SAMPLE_TOKENS[name]
    decoders = {
        "argmax": {"decoder": "argmax", "primer": "valid", "primer_tokens": 100},
        "nucleus": {"decoder": "temperature", "temperature": 1.0, "top_p": 0.95, "primer": "valid",
                    "primer_tokens": 100, "grammar_mask": True},
    }  # fmt: skip
    samples = {
        d: sample_and_compare(workdir, d, settings, num_samples, tokens)
        for d, settings in decoders.items()
    }
    return {"train": summary, "train_wall_seconds": wall, "nll": nll, "samples": samples}


def table(results: dict) -> str:
    """One row per run and decoder; the held-out pieces' values follow each run, since they are
    decoded through that run's tokenizer (chord tokens fix every step to 0.5 beats)."""
    head = ("| run | steps | val nats/token | val nats/beat | decoder | longest identical run "
            "| distinct 4-grams | pitch-class entropy | scale consistency |")  # fmt: skip
    lines = [head, "|" + "---|" * 9]
    for name, r in results.items():
        nll = r["nll"]
        for decoder, s in r["samples"].items():
            cells = " | ".join(
                f"{s[k]['generated']:.3f} (OA {s[k]['overlap_area']:.2f})" for k in STATS
            )
            lines.append(
                f"| {name} | {r['train']['step']} | {nll['nats_per_token']:.3f} "
                f"| {nll.get('nats_per_beat', float('nan')):.3f} | {decoder} | {cells} |"
            )
        real = " | ".join(f"{s[k]['real']:.3f}" for k in STATS)
        lines.append(f"| held-out pieces ({name} tokens) | | | | | {real} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", default="runs/compare")
    parser.add_argument("--minutes", type=float, default=10.0, help="training wall time per run")
    parser.add_argument("--samples", type=int, default=8, help="samples per run and decoder")
    parser.add_argument("--midi_dir", default=os.path.abspath(CORPUS))
    parser.add_argument("--only", default="", help="comma-separated run names")
    parser.add_argument("--table_only", action="store_true", help="print the table of ROOT")
    args = parser.parse_args()
    root = os.path.abspath(args.root)
    configs = run_configs(args.minutes, args.midi_dir)
    wanted = [n for n in configs if not args.only or n in args.only.split(",")]
    results = {}
    if args.table_only:  # re-print the table of a finished comparison
        with open(os.path.join(root, "comparison.json")) as f:
            results = json.load(f)
        wanted = []
    for name in wanted:
        print(f"=== {name}: training for {args.minutes} min", flush=True)
        results[name] = one_run(root, name, configs[name], args.samples)
        atomic.write_json(os.path.join(root, "comparison.json"), results)
    text = table(results)
    atomic.write_text(os.path.join(root, "comparison.md"), text + "\n")
    print(text)


if __name__ == "__main__":
    main()
