"""Feedback fine-tuning of the main job's quick model, and what it buys and costs.

CPU budget: at most 30 minutes on 2 cores (fine-tuning is capped by --minutes, default 15;
sampling, scoring and the statistics take a few minutes more).

    # the quick model first (README's main job, training only), then:
    python launch/finetune_quick.py --workdir=runs/quick

Fine-tunes WORKDIR's best checkpoint with `--mode=finetune`'s code (resuming if WORKDIR/finetune
holds a run), then samples --samples pieces from the pretrained and from the fine-tuned model
with the same sampler settings and seeds, and prints as JSON lines, then as a Markdown table:
mean reward and each component, validation nats/token (the fine-tuning run's fixed validation
windows), longest identical onset-group run, in-scale share, and the overlapped area (OA,
evaluation/compare.py, Yang & Lerch 2018) of each musical statistic with the held-out pieces'
openings of the same length (their first finetune.num_tokens tokens).
Writes the first sample of each model as a score PNG into --docs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import quick  # noqa: E402
from jaxcomposer import config_lib, workdir_lib  # noqa: E402
from jaxcomposer.data import dataset, midi_io  # noqa: E402
from jaxcomposer.evaluation import evaluate, musicstats  # noqa: E402
from jaxcomposer.finetune import loop as finetune  # noqa: E402
from jaxcomposer.finetune import rewards  # noqa: E402
from jaxcomposer.model import StepFunction  # noqa: E402
from jaxcomposer.render import outputs  # noqa: E402
from jaxcomposer.sample import keyplan, sampler  # noqa: E402
from jaxcomposer.tokenizers import BOS  # noqa: E402
from jaxcomposer.train import reporting  # noqa: E402


def sample_pieces(workdir: str, which: str, count: int, num_tokens: int, seed: int, key: str):
    """(restored, tokens, notes, requested keys or None): `count` decoded samples of
    `num_tokens` tokens from checkpoint `which`; the policy's own distribution (temperature 1,
    grammar mask on, no truncation), as fine-tuning samples it. A key-conditioned model is
    asked for `key` (finetune.key; "" = drawn from the training keys) per sample."""
    restored = workdir_lib.restore_for_inference(workdir, which)
    grammar = restored.tokenizer.grammar
    primer = np.full((count, 1), BOS, np.int32)
    args = (restored.variables, primer, np.full((count,), grammar.bos_state, np.int32),
            grammar.next_state, jax.random.key(seed))  # fmt: skip
    kwargs = dict(
        step_fn=StepFunction(restored.model),
        num_steps=num_tokens,
        settings=sampler.DecoderSettings(decoder="temperature", temperature=1.0),
    )
    requested = None
    if restored.spec.dim:
        sample = dataclasses.replace(
            restored.config.sample, key=key, style="", scale="off", num_samples=count
        )
        plan = keyplan.plan_keys(workdir, sample, restored.spec, [None] * count, seed)
        inputs, ks = keyplan.keyed_run(restored, sample, primer, plan)
        tokens = sampler.sample_keyed(*args, inputs, ks=ks, **kwargs)[0]
        requested = [s[0][1] for s in plan.schedules]
    else:
        tokens = sampler.sample(*args, **kwargs)
    tokens = np.asarray(jax.device_get(tokens))
    notes = [restored.tokenizer.decode(np.r_[BOS, row]).notes for row in tokens]
    return restored, tokens, notes, requested


def describe(workdir, config, which, args, context, user):
    restored, tokens, pieces, requested = sample_pieces(
        workdir, which, args.samples, config.finetune.num_tokens, args.seed, config.finetune.key
    )
    weights = dataclasses.asdict(config.finetune.weights)
    match = dataclasses.asdict(config.finetune.match)
    scores = finetune.score_tokens(
        restored.tokenizer, tokens, weights, context, user, key=requested, match=match
    )
    spb = config.tokenizer.steps_per_beat
    stats = [musicstats.piece_stats(n, steps_per_beat=spb) for n in pieces]
    folder = os.path.join(workdir_lib.finetune_dir(workdir), "compare", restored.source)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    for i, notes in enumerate(pieces):
        midi_io.write_midi(os.path.join(folder, f"s{i:02d}.mid"), notes, qpm=100.0)
    comparison = evaluate.compare_samples(
        workdir, folder, progress=False, real_tokens=config.finetune.num_tokens
    )
    row = {
        "model": f"{restored.source} (step {restored.step})",
        "reward": float(np.mean([s["total"] for s in scores])),
        **{f"reward_{k}": float(np.mean([s[k] for s in scores])) for k in scores[0]
           if k not in ("total", "key")},
        "longest_identical_run": float(np.nanmean([s["longest_repeat_run"] for s in stats])),
        "in_scale_share": float(np.nanmean([s["scale_consistency"] for s in stats])),
        **{f"oa_{k}": v["overlap_area"] for k, v in comparison["statistics"].items()},
    }  # fmt: skip
    return row, pieces


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default="runs/quick", help="the main job's workdir")
    parser.add_argument("--minutes", type=float, default=15.0, help="fine-tuning wall limit")
    parser.add_argument("--steps", type=int, default=150, help="fine-tuning updates")
    parser.add_argument("--samples", type=int, default=128, help="samples per model compared")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--docs", default="docs")
    parser.add_argument("--set", nargs="*", default=[], help="finetune.FIELD=VALUE overrides")
    args = parser.parse_args()
    workdir = os.path.abspath(args.workdir)

    c = quick.get_config()
    c.finetune.num_steps = args.steps
    c.finetune.max_wall_seconds = args.minutes * 60
    for item in args.set:
        field, value = item.split("=", 1)
        section = c.finetune
        *parents, leaf = field.split(".")
        for name in parents:
            section = section[name]
        section[leaf] = type(section[leaf])(json.loads(value))
    flags_config = config_lib.freeze(c)
    summary = finetune.finetune(flags_config, workdir, progress=False)
    print(json.dumps({"finetune": summary}), flush=True)

    config = dataclasses.replace(workdir_lib.load_config(workdir), finetune=flags_config.finetune)
    tokenizer = workdir_lib.restore_for_inference(workdir, "best").tokenizer
    context = finetune.reward_context(config, tokenizer, dataset.load_split(workdir, "train"))
    user = None
    if config.finetune.user_reward:
        user = (rewards.load_user_reward(config.finetune.user_reward),
                config.finetune.user_reward_weight)  # fmt: skip
    rows, firsts = [], []
    for which in ("best", "finetuned"):
        row, pieces = describe(workdir, config, which, args, context, user)
        rows.append(row)
        firsts.append(pieces[0])
    metrics = reporting.read_metrics(
        os.path.join(workdir_lib.finetune_dir(workdir), "metrics.jsonl")
    )
    valid = [r for r in metrics if r["kind"] == "valid"]
    rows[0]["valid_nats_per_token"], rows[1]["valid_nats_per_token"] = (
        valid[0]["loss"],
        valid[-1]["loss"],
    )
    for row in rows:
        print(json.dumps(row), flush=True)
    ratio = rows[1]["valid_nats_per_token"] / rows[0]["valid_nats_per_token"]
    oa_keys = [k for k in rows[0] if k.startswith("oa_")]
    deltas = {k: rows[1][k] - rows[0][k] for k in oa_keys}
    print(json.dumps({"valid_nll_ratio": ratio, "oa_better": sum(d > 0 for d in deltas.values()),
                      "oa_worse": sum(d < 0 for d in deltas.values()),
                      "oa_worst_drop": min(deltas.values())}), flush=True)  # fmt: skip
    print("\n| | " + " | ".join(r["model"] for r in rows) + " |\n|---|---|---|")
    for key in rows[0]:
        if key != "model":
            print(f"| {key} | " + " | ".join(f"{r[key]:.3f}" for r in rows) + " |")
    os.makedirs(args.docs, exist_ok=True)
    scratch = os.path.join(workdir_lib.finetune_dir(workdir), "compare", "scores")
    for name, notes in zip(("finetune_before", "finetune_after"), firsts, strict=True):
        info = outputs.render_sample(scratch, name, notes, title=name.replace("_", " "))
        if info.get("png"):
            shutil.copyfile(
                os.path.join(scratch, info["png"]), os.path.join(args.docs, f"{name}.png")
            )
            print(f"score: {os.path.join(args.docs, name + '.png')}", flush=True)


if __name__ == "__main__":
    main()
