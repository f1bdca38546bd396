r"""Can a classifier tell a model's chorales from Bach's? (issue 20; a benchmark, not a test)

For a trained workdir: `--num_samples` samples of `--bars` bars written by the project's generate
code (sample/generate.py, the settings saved in the workdir plus any `--sample NAME=VALUE`; by
default the keys requested in turn are all 24), read back from the MIDI files it writes, and
scored against the workdir's validation pieces cut to the same number of bars:

  classifier       held-out balanced accuracy of the classifier two-sample test
                   (evaluation/two_sample.py: logistic regression on key-invariant features,
                   5-fold x 10 repeats), mean ± std over repeats, permutation p-value; 0.5 =
                   indistinguishable (goal <= 0.65)
  control          the same test on two random halves of real pieces (the validation pieces
                   pooled with as many training pieces as there are samples; goal <= 0.6)
  vertical_overlap 1 - total variation distance between the pooled vertical interval-class
                   distributions (musicstats.vertical_interval_counts: pairs sounding at an
                   onset, at least one starting there) of samples and validation pieces (goal
                   >= 0.8), with the training-vs-validation figure; vertical_overlap_struck is
                   the same for pairs struck together (both start at the onset)
  parallel_rate    outer-voice parallel fifths/octaves per transition (mean over pieces)
  chord_share      share of onsets that are triads/seventh chords or named parts (mean)
  key_match        share of samples whose estimated key is the requested one, with the key
                   bench's code (launch/bench_keys.py `figures`; the validation pieces' figure
                   against their labels alongside)
  skipped_tokens   tokens the decoder could not place, summed over the samples (goal 0)
  separating_features  the classifier features whose means differ most (Cohen's d): what
                   gives the samples away

Prints a table and one JSON line, and writes OUT_DIR/harmony_bench.json (OUT_DIR defaults to
/tmp/harmony_bench/<workdir name>; nothing is written into the workdir).

  taskset -c 1 python launch/harmony_bench.py --workdir=/work/runs/quick_base \
      [--num_samples=40 --bars=8 --seed=0 --sample scale=off --sample top_p=0.95]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_keys  # noqa: E402
import numpy as np  # noqa: E402

from jaxcomposer import workdir_lib
from jaxcomposer.data import dataset, midi_io  # noqa: E402
from jaxcomposer.evaluation import compare, musicstats, two_sample  # noqa: E402
from jaxcomposer.music import keys  # noqa: E402

ALL_KEYS = ";".join(keys.key_name(k) for k in range(keys.NUM_KEYS))


def _parse_sample_flags(pairs: list[str]) -> dict:
    """["top_p=0.95", "scale=off"] -> {"top_p": 0.95, "scale": "off"} (numbers read as such)."""
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep:
            sys.exit(f"--sample {pair!r}: expected NAME=VALUE, e.g. --sample top_p=0.95")
        for cast in (int, float):
            try:
                out[name] = cast(value)
                break
            except ValueError:
                continue
        else:
            out[name] = {"true": True, "false": False}.get(value.lower(), value)
    return out


def _mean(values) -> float:
    values = np.asarray([v for v in values if math.isfinite(v)], np.float64)
    return float(values.mean()) if len(values) else math.nan


def _harmony(pieces: list, spb: int) -> dict:
    counts = [musicstats.vertical_interval_counts(n, spb) for n in pieces]
    struck = [musicstats.vertical_interval_counts(n, spb, both_start=True) for n in pieces]
    return {
        "counts": counts,
        "struck": struck,
        "parallel_rate": _mean([musicstats.parallel_perfect_rate(n, spb) for n in pieces]),
        "chord_share": _mean([musicstats.chord_share(n, spb) for n in pieces]),
    }


def bench(
    workdir: str,
    *,
    num_samples: int = 40,
    bars: int = 8,
    seed: int = 0,
    sample_overrides: dict | None = None,
    out_dir: str | None = None,
    permutations: int = 100,
) -> dict:
    """Generates, reads back and scores the samples (module docstring); returns the figures."""
    from jaxcomposer.sample import generate

    config = workdir_lib.load_config(workdir)
    tokenizer = workdir_lib.restore_for_inference(workdir, "best").tokenizer
    spb = config.tokenizer.steps_per_beat
    out_dir = out_dir or os.path.join(
        tempfile.gettempdir(), "harmony_bench", os.path.basename(os.path.normpath(workdir))
    )
    overrides = {"num_samples": num_samples, "num_bars": bars, "primer": "none", "key": ALL_KEYS,
                 **(sample_overrides or {})}  # fmt: skip
    started = time.perf_counter()
    result = generate.generate(workdir, out_dir=out_dir, seed=seed, overrides=overrides)
    generate_seconds = time.perf_counter() - started
    samples, requested, skipped_files = [], [], []
    for info in result["samples"]:
        path = os.path.join(out_dir, info["midi"]) if info.get("midi") else None
        try:
            if path is None:
                raise midi_io.MidiReadError(info["name"], "no MIDI file was written")
            piece = midi_io.read_midi(path, config.data, info["name"])[0]
        except midi_io.MidiReadError as err:  # an empty sample: reported, left out
            skipped_files.append(f"{info['name']}: {err.reason}")
            continue
        samples.append(two_sample.first_bars(piece.notes, piece.time_signatures, bars))
        requested.append(info.get("key_number"))

    valid = dataset.load_split(workdir, "valid")
    real, labels = [], []
    for i, row in enumerate(valid.pieces()):
        decoded = tokenizer.decode(bench_keys.cut_bars(tokenizer, row, bars))
        real.append(two_sample.first_bars(decoded.notes, decoded.time_signatures, bars))
        labels.append(None if valid.keys is None else int(valid.keys[valid.offsets[i] + 1]))
    train = dataset.load_split(workdir, "train")
    train_rows = list(train.pieces())
    chosen = sorted(np.random.default_rng(seed).permutation(len(train_rows))[: len(samples)])
    others = []
    for i in chosen:
        decoded = tokenizer.decode(bench_keys.cut_bars(tokenizer, train_rows[i], bars))
        others.append(two_sample.first_bars(decoded.notes, decoded.time_signatures, bars))

    c2st = two_sample.generated_vs_real(
        samples, real, others, steps_per_beat=spb, permutations=permutations, seed=seed
    )
    gen_h, real_h, other_h = _harmony(samples, spb), _harmony(real, spb), _harmony(others, spb)
    telltales = separating_features(samples, real, spb)
    labels_list = musicstats.VERTICAL_CLASS_LABELS
    edges = np.arange(len(labels_list) + 1)
    vertical = compare.compare_histograms(gen_h["counts"], real_h["counts"], edges, labels_list)
    vertical_control = compare.compare_histograms(
        other_h["counts"], real_h["counts"], edges, labels_list
    )
    struck = compare.compare_histograms(gen_h["struck"], real_h["struck"], edges, labels_list)
    keyed = [(n, k) for n, k in zip(samples, requested, strict=True) if k is not None]
    key_figures = bench_keys.figures(keyed, None)[0] if keyed else None
    real_keyed = [(n, k) for n, k in zip(real, labels, strict=True) if k is not None]
    real_key_figures = bench_keys.figures(real_keyed, None)[0] if real_keyed else None
    settings = result["settings"]
    return {
        "workdir": os.path.abspath(workdir),
        "checkpoint_step": settings["checkpoint_step"],
        "samples": len(samples),
        "real_pieces": len(real),
        "bars": bars,
        "seed": seed,
        "sample_settings": {k: settings.get(k) for k in (
            "decoder", "temperature", "top_k", "top_p", "scale", "scale_penalty", "condition")},
        "classifier": c2st["test"],
        "control": c2st["control"],
        "vertical_overlap": vertical["overlap"],
        "vertical_overlap_real_vs_real": vertical_control["overlap"],
        "vertical_overlap_struck": struck["overlap"],
        "vertical_shares_struck": dict(zip(labels_list, struck["generated_share"], strict=True)),
        "vertical_shares_struck_real": dict(zip(labels_list, struck["real_share"], strict=True)),
        "vertical_shares": dict(zip(labels_list, vertical["generated_share"], strict=True)),
        "vertical_shares_real": dict(zip(labels_list, vertical["real_share"], strict=True)),
        "parallel_rate": gen_h["parallel_rate"],
        "parallel_rate_real": real_h["parallel_rate"],
        "chord_share": gen_h["chord_share"],
        "chord_share_real": real_h["chord_share"],
        "key_match": key_figures["key_match"] if key_figures else None,
        "key_match_real": real_key_figures["key_match"] if real_key_figures else None,
        "skipped_tokens": int(sum(info["skipped_tokens"] for info in result["samples"])),
        "short_samples": int(sum((info.get("bars") or bars) < bars for info in result["samples"])),
        "unreadable_samples": skipped_files,
        "separating_features": telltales,
        "generate_seconds": round(generate_seconds, 1),
        "out_dir": out_dir,
        "machine": bench_keys.MACHINE,
    }


def separating_features(samples, real, steps_per_beat: int, top: int = 6) -> list[dict]:
    """The classifier's features that differ most between the sets: standardised mean difference
    (Cohen's d with the pooled standard deviation) of two_sample.piece_features, largest |d|
    first, with both means: what gives the samples away."""
    a = np.stack([two_sample.piece_features(n, steps_per_beat=steps_per_beat) for n in samples])
    b = np.stack([two_sample.piece_features(n, steps_per_beat=steps_per_beat) for n in real])
    pooled = np.sqrt((a.var(0, ddof=1) + b.var(0, ddof=1)) / 2)
    d = np.where(pooled > 0, (a.mean(0) - b.mean(0)) / np.where(pooled > 0, pooled, 1), 0.0)
    order = np.argsort(-np.abs(d))[:top]
    return [{"feature": two_sample.FEATURE_NAMES[i], "d": round(float(d[i]), 2),
             "samples": round(float(a[:, i].mean()), 4), "real": round(float(b[:, i].mean()), 4)}
            for i in order]  # fmt: skip


def _f(x, digits=3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def table(r: dict) -> str:
    c, k = r["classifier"], r["control"]
    gen, ref = r["vertical_shares"], r["vertical_shares_real"]
    rows = [
        ("classifier accuracy (samples vs valid)",
         f"{_f(c['accuracy'])} ± {_f(c['accuracy_std'])} (perm. p {_f(c['permutation_p'], 3)})",
         "0.5"),
        ("control accuracy (real vs real)",
         f"{_f(k['accuracy'])} ± {_f(k['accuracy_std'])} (perm. p {_f(k['permutation_p'], 3)})",
         "0.5"),
        ("vertical interval overlap", _f(r["vertical_overlap"]),
         f"{_f(r['vertical_overlap_real_vs_real'])} (train vs valid)"),
        ("  share m2/M7", _f(gen["m2/M7"]), _f(ref["m2/M7"])),
        ("  share M2/m7", _f(gen["M2/m7"]), _f(ref["M2/m7"])),
        ("  share thirds/sixths", _f(gen["m3/M6"] + gen["M3/m6"]), _f(ref["m3/M6"] + ref["M3/m6"])),
        ("vertical overlap, struck together", _f(r["vertical_overlap_struck"]), ""),
        ("  share M2/m7, struck together", _f(r["vertical_shares_struck"]["M2/m7"]),
         _f(r["vertical_shares_struck_real"]["M2/m7"])),
        ("parallel 5ths/8ves per transition", _f(r["parallel_rate"], 4),
         _f(r["parallel_rate_real"], 4)),
        ("chord share of onsets", _f(r["chord_share"]), _f(r["chord_share_real"])),
        ("key match", _f(r["key_match"]), f"{_f(r['key_match_real'])} (valid vs labels)"),
        ("skipped tokens", str(r["skipped_tokens"]), "0"),
    ]  # fmt: skip
    width = max(len(row[0]) for row in rows)
    lines = [f"{r['samples']} samples of {r['bars']} bars from {r['workdir']} "
             f"(step {r['checkpoint_step']}) vs {r['real_pieces']} validation pieces"]  # fmt: skip
    lines += [f"{'figure':<{width}}  {'samples':<40}  real / chance"]
    lines += [f"{a:<{width}}  {b:<40}  {c_}" for a, b, c_ in rows]
    lines += ["what separates them most (Cohen's d, samples mean vs real mean): " + "; ".join(
        f"{t['feature']} {t['d']:+.1f} ({t['samples']:.3g} vs {t['real']:.3g})"
        for t in r.get("separating_features", []))]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num_samples", type=int, default=40)
    parser.add_argument("--bars", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--sample", action="append", default=[], metavar="NAME=VALUE",
                        help="a sample.* setting for generation, e.g. scale=off (repeatable)")
    parser.add_argument("--out_dir", default=None)
    parser.add_argument("--json", default=None, help="default OUT_DIR/harmony_bench.json")
    args = parser.parse_args()
    if not os.path.isdir(args.workdir):
        sys.exit(f"--workdir {args.workdir}: no such folder")
    started = time.process_time()
    r = bench(args.workdir, num_samples=args.num_samples, bars=args.bars, seed=args.seed,
              sample_overrides=_parse_sample_flags(args.sample), out_dir=args.out_dir,
              permutations=args.permutations)  # fmt: skip
    r["cpu_seconds"] = round(time.process_time() - started, 1)
    print(table(r), flush=True)
    path = args.json or os.path.join(r["out_dir"], "harmony_bench.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(r, f, indent=1)
    print(json.dumps({k: v for k, v in r.items() if not k.startswith("vertical_shares")}))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
