r"""Does a key-conditioned model write in the key it is asked for? (issue 9; not a test)

For a trained workdir: `--per_key` samples of `--bars` bars in each of the 24 keys, for each
`--scales` mode, from BOS. Per mode it prints one JSON line:

  key_match        share of samples whose estimated key (keys.estimate_key on the decoded
                   notes: Aarden-Essen profiles plus the opening bass) equals the requested
                   key (goal >= 0.9)
  relative/parallel/other  shares of the mismatches that are the relative key (same signature),
                   the parallel key (same tonic) or anything else
  in_scale         share of notes (each note once) whose pitch class lies in the requested
                   key's scale, minor = natural + harmonic + melodic (goal >= 0.95 unmasked)
  entropy_overlap  overlapped area of the pitch-class entropy distributions of the samples and
                   of real pieces (evaluation/compare.py overlap_area; goal >= 0.7)
  mass_removed     mean probability the scale rule removed per pitch step (0 with 'off')

and, as the peer in the same script, the same figures for the real validation pieces cut to
the same number of bars, measured against their labelled keys.

  python launch/bench_keys.py --workdir=/tmp/i09_quick [--per_key=4 --bars=8 --scales=off,strict]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from jaxcomposer import workdir_lib  # noqa: E402
from jaxcomposer.data import dataset  # noqa: E402
from jaxcomposer.evaluation import musicstats  # noqa: E402
from jaxcomposer.evaluation.compare import overlap_area  # noqa: E402
from jaxcomposer.model import StepFunction  # noqa: E402
from jaxcomposer.music import keys  # noqa: E402
from jaxcomposer.sample import sampler  # noqa: E402
from jaxcomposer.sample.generate import decoder_settings  # noqa: E402
from jaxcomposer.tokenizers import BOS  # noqa: E402

MACHINE = "2-core AMD EPYC, 24 GiB, no GPU, Python 3.11, jax " + jax.__version__


def cut_bars(tokenizer, row: np.ndarray, bars: int) -> np.ndarray:
    """The tokens of the first `bars` bars (by the bar counter: BAR tokens, else 4/4 beats)."""
    counter = tokenizer.bar_counter()
    return row[counter.bars(row) <= bars]


def key_relation(estimated: int, requested: int) -> str:
    if estimated == requested:
        return "match"
    same_mode = (estimated >= 12) == (requested >= 12)
    if not same_mode and estimated % 12 == requested % 12:
        return "parallel"
    major, minor = (requested, estimated) if requested < 12 else (estimated, requested)
    if not same_mode and (major % 12 + 9) % 12 == minor % 12:
        return "relative"
    return "other"


def figures(pieces: list[tuple], real_entropy: list[float] | None) -> dict:
    """pieces: (notes, requested key). Key agreement, in-scale share, entropy values."""
    relations, inside, total, entropy = [], 0, 0, []
    for notes, key in pieces:
        if len(notes) == 0:
            relations.append("empty")
            continue
        relations.append(key_relation(keys.estimate_key(notes)[0], key))
        pcs = notes.pitch.astype(np.int64) % 12
        inside += int(keys.scale_pitch_classes(key)[pcs].sum())
        total += pcs.size
        entropy.append(musicstats.piece_stats(notes)["pitch_class_entropy"])
    n = len(relations)
    mismatches = max(n - relations.count("match"), 1)
    out = {
        "samples": n,
        "key_match": relations.count("match") / n,
        "mismatch_relative": relations.count("relative") / mismatches,
        "mismatch_parallel": relations.count("parallel") / mismatches,
        "mismatch_other": relations.count("other") / mismatches,
        "empty": relations.count("empty"),
        "in_scale": inside / max(total, 1),
        "notes": total,
        "mean_pitch_class_entropy": float(np.mean(entropy)) if entropy else math.nan,
    }
    if real_entropy is not None:
        out["entropy_overlap"] = overlap_area(np.asarray(entropy), np.asarray(real_entropy))
    return out, entropy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--per_key", type=int, default=4)
    parser.add_argument("--bars", type=int, default=8)
    parser.add_argument("--scales", default="off,soft,strict")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", default="best")
    parser.add_argument("--penalty", type=float, default=None,
                        help="soft: nats off out-of-scale logits (default: the workdir's "
                             "sample.scale_penalty)")  # fmt: skip
    args = parser.parse_args()

    restored = workdir_lib.restore_for_inference(args.workdir, args.checkpoint)
    config, tokenizer = restored.config, restored.tokenizer
    if not restored.spec.uses_key:
        print(f"note: {args.workdir} is not key-conditioned (model.condition=none)", flush=True)

    valid = dataset.load_split(args.workdir, "valid")
    real = []
    for i, piece in enumerate(valid.pieces()):
        if valid.keys is None:
            sys.exit(f"{args.workdir}: the dataset has no key labels; run --mode=prepare again")
        label = int(valid.keys[valid.offsets[i] + 1])
        real.append((tokenizer.decode(cut_bars(tokenizer, piece, args.bars)).notes, label))
    real_figures, real_entropy = figures(real, None)
    print(json.dumps({"set": "real validation pieces", "bars": args.bars, **real_figures}))

    # Tokens per bar of the real pieces, with headroom, sets the number of sampling steps.
    counter = tokenizer.bar_counter()
    per_bar = valid.tokens.size / max(sum(counter.bars(p)[-1] for p in valid.pieces()), 1)
    num_steps = math.ceil(args.bars * per_bar * 1.6)
    batch = 24 * args.per_key
    requested = [k % 24 for k in range(batch)]
    primers = np.full((batch, 1), BOS, np.int32)
    states = sampler.grammar_states_after(tokenizer.grammar, primers)
    settings = decoder_settings(config.sample)
    penalty = config.sample.scale_penalty if args.penalty is None else args.penalty
    results = {}
    for scale in args.scales.split(","):
        ks = sampler.key_settings(tokenizer, restored.spec, scale, penalty)
        inputs = sampler.key_inputs(tokenizer, ks, primers, [[(1, k)] for k in requested])
        started = time.perf_counter()
        tokens, removed, pitch = jax.device_get(
            sampler.sample_keyed(
                restored.variables, primers, states, tokenizer.grammar.next_state,
                jax.random.key(args.seed), inputs, step_fn=StepFunction(restored.model),
                num_steps=num_steps, settings=settings, ks=ks,
            )
        )  # fmt: skip
        seconds = time.perf_counter() - started
        rows = np.concatenate([primers, np.asarray(tokens)], axis=1)
        decoded = [tokenizer.decode(cut_bars(tokenizer, row, args.bars)) for row in rows]
        pieces = [(d.notes, k) for d, k in zip(decoded, requested, strict=True)]
        got, _ = figures(pieces, real_entropy)
        removed, pitch = np.asarray(removed), np.asarray(pitch)
        results[scale] = dict(
            set="samples", scale=scale, penalty=penalty if scale == "soft" else None,
            condition=restored.spec.condition, checkpoint_step=restored.step,
            bars=args.bars, per_key=args.per_key, steps=num_steps, **got,
            mass_removed=float(removed[pitch].mean()) if pitch.any() else 0.0,
            skipped_tokens=int(sum(d.skipped for d in decoded)),
            sample_seconds=round(seconds, 2), machine=MACHINE,
        )  # fmt: skip
        print(json.dumps(results[scale]), flush=True)
    for scale, r in results.items():
        print(json.dumps({
            "ratio": f"{scale} vs real", "key_match": r["key_match"] / real_figures["key_match"],
            "in_scale": r["in_scale"] / real_figures["in_scale"],
        }))  # fmt: skip


if __name__ == "__main__":
    main()
