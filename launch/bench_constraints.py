r"""Harmonizing a given soprano: forced greedy (BachBot) against SMC (issue 22; a benchmark, not a
test). Figures in docs/constraints.md.

For a trained four-part workdir (voices tokens; default the one-hour chorale model of
launch/harmony_levers.py), each of its validation chorales (the split the model never saw),
cut to its first `--bars` bars, gives its soprano (voice 0) as the melody
(`constraints.melody_request_for_piece`, exactly what `--mode=generate --melody=FILE
--melody_track=0` builds from a file) in the chorale's own meter and key (the key label of the
data; key-conditioned models get it as their condition). The alto, tenor and bass are written
under it twice:

  forced    BachBot: the given tokens forced, the others sampled from the model (temperature
            1, grammar mask, the token sets under the soprano), one particle, no resampling
  smc       sequential Monte Carlo (sample/smc.py) with `--particles` particles, resampling at
            ESS < N/2; one particle drawn by its final weight
  smc_parallels  the same, the target being the model under the sampler's soft parallels
            rule (3 nats off onsets moving two voices in parallel fifths/octaves)
  smcfree[_parallels]  SMC whose forced tokens weigh only the grammar (for a model with a
            constraint encoder, whose own distribution of the free tokens is the target)

and each set of harmonizations is scored against the real chorales (the same validation
pieces, same bars), with the measures of launch/harmony_bench.py (evaluation/musicstats.py,
evaluation/two_sample.py):

  soprano_kept      share of harmonizations whose soprano is the given one note for note
                    (pitch, onset, end: `constraints.given_kept` == 1)
  vertical_overlap  1 - total variation distance of the pooled vertical interval classes
                    (pairs sounding at an onset) against the real chorales (1 = same)
  parallel_rate     outer-voice parallel fifths/octaves per transition (real: alongside)
  classifier        held-out balanced accuracy of the classifier two-sample test (0.5 = the
                    classifier cannot tell them from Bach), with its control (real vs real)
  log_evidence      SMC's estimate of log p(soprano tokens) under the model, nats per chorale
                    (forced greedy's one-particle weight is the same quantity for its one path)
  ess               final effective sample size (of N), the lowest during the run, resamples
  seconds           wall time per chorale after compilation (every run has the shape of the
                    longest request, `--bars` bars: the time is that of a `--bars`-bar chorale),
                    median and max; cpu_seconds: the process's CPU time for the same calls
                    (with one XLA thread, the figure that other jobs on the machine disturb
                    least; wall time on a loaded machine is longer)

Pin one core and one XLA thread, as the other launch/ benchmarks do:

  XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
  PYTHONPATH=$PWD taskset -c 1 python launch/bench_constraints.py \
      [--workdir=/work/runs/levers/hour_voices_spb2_pv/seed0 --num_chorales=40 --bars=16]

Writes OUT_DIR/bench_constraints.json (default /tmp/bench_constraints) and a few MIDI files of
each decoder there; nothing is written into the workdir.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
os.environ.setdefault("XLA_FLAGS", ONE_THREAD)  # before jax starts
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_keys  # noqa: E402
import harmony_bench  # noqa: E402
import numpy as np  # noqa: E402

from jaxcomposer import workdir_lib  # noqa: E402
from jaxcomposer.data import dataset, midi_io  # noqa: E402
from jaxcomposer.evaluation import compare, musicstats, two_sample  # noqa: E402
from jaxcomposer.music.notes import Piece  # noqa: E402
from jaxcomposer.sample import constraints, smc  # noqa: E402
from jaxcomposer.tokenizers import PAD  # noqa: E402

DEFAULT_WORKDIR = "/work/runs/levers/hour_voices_spb2_pv/seed0"
VOICE_NAMES = ("Soprano", "Alto", "Tenor", "Bass")


def chorales(workdir: str, tokenizer, split: str, count: int, bars: int) -> list[dict]:
    """The first `count` pieces of a split, cut to `bars` bars: notes, meters, key, name."""
    data = dataset.load_split(workdir, split)
    out = []
    for i, row in enumerate(data.pieces()):
        if len(out) == count:
            break
        decoded = tokenizer.decode(bench_keys.cut_bars(tokenizer, row, bars))
        key = None if data.keys is None else int(data.keys[data.offsets[i] + 1])
        out.append(dict(name=str(data.names[i]), notes=decoded.notes,
                        meters=tuple(decoded.time_signatures), key=key))  # fmt: skip
    return out


PARALLELS_PENALTY = 3.0  # nats, the sampler's default (docs/harmony.md)


def decoder_settings(name: str, particles: int) -> tuple[smc.SMCSettings, float]:
    """(SMC settings, parallels penalty) of a decoder: forced, smc, smcfree (forced tokens weigh
    only the grammar: smc.SMCSettings.forced_weight, for constraint-encoder models), or any +
    "_parallels" (the target is the model under the soft parallels rule)."""
    penalty = PARALLELS_PENALTY if name.endswith("_parallels") else 0.0
    if name.startswith("forced"):  # force the given tokens, sample the others: one particle
        return smc.SMCSettings(num_particles=1, resample=False), penalty
    weight = "grammar" if name.startswith("smcfree") else "model"
    return smc.SMCSettings(num_particles=particles, forced_weight=weight), penalty


def harmonize(restored, requests, keys, decoder, seed: int, pad_ops: int, pad_steps: int):
    """Runs each request alone (one filter) with `decoder` = (settings, parallels penalty);
    returns per chorale (notes, facts), wall and CPU seconds, compile seconds."""
    tokenizer = restored.tokenizer
    spb = tokenizer.config.steps_per_beat
    settings, penalty = decoder
    run = lambda i: constraints.run(restored, requests[i], settings, [keys[i]], [-1], seed + i,
                                    pad_ops=pad_ops, pad_steps=pad_steps,
                                    parallels_penalty=penalty)  # fmt: skip
    started = time.perf_counter()
    run(0)  # compiles (every request has the same padded shapes)
    compile_seconds = time.perf_counter() - started
    out, seconds, cpu_seconds = [], [], []
    for i, request in enumerate(requests):
        started, cpu_started = time.perf_counter(), time.process_time()
        tokens, result, picks = run(i)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.process_time() - cpu_started)
        row = np.r_[request.primer, tokens[0]]
        decoded = tokenizer.decode(row[row != PAD])
        lw = np.asarray(result.log_weights_GxN)[0]
        out.append((decoded.notes, dict(
            name=request.describe,
            soprano_kept=constraints.given_kept(request, decoded.notes, spb),
            met=bool(picks[0] >= 0),
            skipped=int(decoded.skipped),
            log_evidence=float(np.asarray(result.log_evidence_G)[0]),
            final_ess=constraints.final_ess(lw),
            min_ess=float(np.asarray(result.ess_GxT)[0].min()),
            resamples=int(np.asarray(result.resampled_GxT)[0].sum()),
        )))  # fmt: skip
    return out, seconds, cpu_seconds, compile_seconds


def join_intervals(notes, gap: tuple[float, float], voices: int = 4) -> tuple[list, list]:
    """Per voice, the melodic interval (semitones, signed) into the gap (its first note after
    the last note before it) and out of it (the first note after it after the gap's last)."""
    lo, hi = gap[0] - 1e-9, gap[1] - 1e-9
    into, out = [], []
    for v in range(voices):
        n = notes[notes.voice == v].sorted()
        before, after = n[n.start < lo], n[n.start >= hi]
        inside = n[(n.start >= lo) & (n.start < hi)]
        if len(before) and len(inside):
            into.append(int(inside.pitch[0]) - int(before.pitch[-1]))
        if len(inside) and len(after):
            out.append(int(after.pitch[0]) - int(inside.pitch[-1]))
    return into, out


def interval_figures(intervals: list[int], real: list[int]) -> dict:
    """Mean |interval|, share of leaps (> 5 semitones) and the overlap sum(min(p, q)) of the
    |interval| histograms (0..12 semitones, larger pooled) against the real chorales'."""
    hist = lambda x: np.bincount(np.minimum(np.abs(x), 13), minlength=14) / max(len(x), 1)
    a, b = np.asarray(intervals, np.int64), np.asarray(real, np.int64)
    return dict(
        mean_abs=float(np.abs(a).mean()) if a.size else None,
        mean_abs_real=float(np.abs(b).mean()) if b.size else None,
        leap_share=float((np.abs(a) > 5).mean()) if a.size else None,
        leap_share_real=float((np.abs(b) > 5).mean()) if b.size else None,
        overlap=float(np.minimum(hist(a), hist(b)).sum()),
        count=int(a.size),
    )


def bench_infill(restored, real: list[dict], *, first: int, last: int, particles: int,
                 seed: int, decoders: list[str], spb: int) -> dict:  # fmt: skip
    """Bars first-last of each chorale (with a bar after them) rewritten: the joins."""
    tokenizer, config = restored.tokenizer, restored.config
    pieces, requests = [], []
    for c in real:
        piece = Piece(c["name"], c["notes"], time_signatures=c["meters"])
        try:
            requests.append(constraints.infill_request_for_piece(
                config, tokenizer, piece, [(first, last)], c["name"]))  # fmt: skip
        except constraints.UsageError:  # too short: no bar after the range
            continue
        pieces.append(c)
    keys = [-1 if c["key"] is None else c["key"] for c in pieces]
    pad_ops = max(r.program.op_K.size for r in requests)
    pad_steps = max(r.num_steps for r in requests)
    real_in, real_out = [], []
    for c, r in zip(pieces, requests, strict=True):
        into, out = join_intervals(c["notes"], r.gaps[0])
        real_in += into
        real_out += out
    report = dict(chorales=len(pieces), bars=f"{first}-{last}", decoders={},
                  parallel_rate_real=float(np.mean([musicstats.parallel_perfect_rate(
                      c["notes"], spb) for c in pieces])))  # fmt: skip
    for name in decoders:
        out, seconds, cpu_seconds, compile_seconds = harmonize(
            restored, requests, keys, decoder_settings(name, particles), seed, pad_ops, pad_steps
        )
        gen_in, gen_out = [], []
        for (notes, _), r in zip(out, requests, strict=True):
            into, after = join_intervals(notes, r.gaps[0])
            gen_in += into
            gen_out += after
        facts = [f for _, f in out]
        report["decoders"][name] = dict(
            kept=float(np.mean([f["soprano_kept"] == 1.0 for f in facts])),
            skipped_tokens=int(sum(f["skipped"] for f in facts)),
            into_gap=interval_figures(gen_in, real_in),
            out_of_gap=interval_figures(gen_out, real_out),
            parallel_rate=float(np.mean([musicstats.parallel_perfect_rate(n, spb)
                                         for n, _ in out])),  # fmt: skip
            final_ess_mean=float(np.mean([f["final_ess"] for f in facts])),
            resamples_mean=float(np.mean([f["resamples"] for f in facts])),
            seconds_median=float(np.median(seconds)),
            cpu_seconds_median=float(np.median(cpu_seconds)),
            compile_seconds=round(compile_seconds, 1),
        )
        r = report["decoders"][name]
        print(f"infill {name:8s} kept {r['kept']:.0%}  into: {_joins(r['into_gap'])}  out: "
              f"{_joins(r['out_of_gap'])}  parallels {_f(r['parallel_rate'])} (real "
              f"{_f(report['parallel_rate_real'])})  ESS {_f(r['final_ess_mean'], 1)}  "
              f"CPU {_f(r['cpu_seconds_median'], 2)} s", flush=True)  # fmt: skip
    return report


def _joins(j: dict) -> str:
    return (f"|int| {_f(j['mean_abs'], 2)} (real {_f(j['mean_abs_real'], 2)}) leaps "
            f"{_f(j['leap_share'])} (real {_f(j['leap_share_real'])}) overlap "
            f"{_f(j['overlap'])}")  # fmt: skip


def score(samples, real, others, spb: int, seed: int, permutations: int) -> dict:
    """harmony_bench's measures of `samples` against `real` (`others`: the control's pool)."""
    gen_h, real_h = harmony_bench._harmony(samples, spb), harmony_bench._harmony(real, spb)
    labels = musicstats.VERTICAL_CLASS_LABELS
    edges = np.arange(len(labels) + 1)
    vertical = compare.compare_histograms(gen_h["counts"], real_h["counts"], edges, labels)
    c2st = two_sample.generated_vs_real(
        samples, real, others, steps_per_beat=spb, permutations=permutations, seed=seed
    )
    return dict(
        vertical_overlap=vertical["overlap"],
        parallel_rate=gen_h["parallel_rate"],
        parallel_rate_real=real_h["parallel_rate"],
        chord_share=gen_h["chord_share"],
        chord_share_real=real_h["chord_share"],
        classifier=c2st["test"],
        control=c2st["control"],
    )


def bench(workdir: str, *, num_chorales: int, bars: int, particles: int, seed: int,
          decoders: list[str], out_dir: str, permutations: int,
          tasks: tuple[str, ...] = ("harmonize",),
          infill: tuple[int, int] = (5, 8)) -> dict:  # fmt: skip
    restored = workdir_lib.restore_for_inference(workdir, "best")
    tokenizer, config = restored.tokenizer, restored.config
    spb = config.tokenizer.steps_per_beat
    real = chorales(workdir, tokenizer, "valid", num_chorales, bars)
    others = [c["notes"] for c in chorales(workdir, tokenizer, "train", len(real), bars)]
    requests = [
        constraints.melody_request_for_piece(
            config, tokenizer, Piece(c["name"], c["notes"], time_signatures=c["meters"]), 0,
            f"chorale {c['name']}", f"soprano of {c['name']} (part 0",
        )  # fmt: skip
        for c in real
    ]
    keys = [-1 if c["key"] is None else c["key"] for c in real]
    pad_ops = max(r.program.op_K.size for r in requests)
    pad_steps = max(r.num_steps for r in requests)
    real_notes = [c["notes"] for c in real]
    report = dict(
        workdir=os.path.abspath(workdir), checkpoint_step=restored.step, chorales=len(real),
        bars=bars, particles=particles, seed=seed, steps_per_run=pad_steps,
        machine=bench_keys.MACHINE + " (one core pinned, one XLA thread; cores shared)",
        decoders={},
    )  # fmt: skip
    os.makedirs(out_dir, exist_ok=True)
    if "infill" in tasks:
        report["infill"] = bench_infill(restored, real, first=infill[0], last=infill[1],
                                        particles=particles, seed=seed, decoders=decoders,
                                        spb=spb)  # fmt: skip
    for name in decoders if "harmonize" in tasks else ():
        out, seconds, cpu_seconds, compile_seconds = harmonize(
            restored, requests, keys, decoder_settings(name, particles), seed, pad_ops, pad_steps
        )
        samples = [two_sample.first_bars(n, c["meters"], bars)
                   for (n, _), c in zip(out, real, strict=True)]  # fmt: skip
        facts = [f for _, f in out]
        figures = score(samples, real_notes, others, spb, seed, permutations)
        finite = [f["log_evidence"] for f in facts if math.isfinite(f["log_evidence"])]
        figures.update(
            soprano_kept=float(np.mean([f["soprano_kept"] == 1.0 for f in facts])),
            constraints_met=float(np.mean([f["met"] for f in facts])),
            skipped_tokens=int(sum(f["skipped"] for f in facts)),
            log_evidence_mean=float(np.mean(finite)) if finite else None,
            final_ess_mean=float(np.mean([f["final_ess"] for f in facts])),
            min_ess_mean=float(np.mean([f["min_ess"] for f in facts])),
            resamples_mean=float(np.mean([f["resamples"] for f in facts])),
            seconds_median=float(np.median(seconds)),
            seconds_max=float(np.max(seconds)),
            cpu_seconds_median=float(np.median(cpu_seconds)),
            cpu_seconds_max=float(np.max(cpu_seconds)),
            compile_seconds=round(compile_seconds, 1),
            per_chorale=facts,
        )
        report["decoders"][name] = figures
        for i in range(min(3, len(out))):
            midi_io.write_midi(os.path.join(out_dir, f"{name}_{i:02d}.mid"), out[i][0],
                               qpm=90.0, time_signatures=real[i]["meters"],
                               voice_names=VOICE_NAMES)  # fmt: skip
        print(table_row(name, figures), flush=True)
    with open(os.path.join(out_dir, "bench_constraints.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1, default=float)
    return report


def _f(x, digits=3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def table_row(name: str, r: dict) -> str:
    c = r["classifier"]
    return (
        f"{name:8s} soprano kept {r['soprano_kept']:.0%}  vertical overlap "
        f"{_f(r['vertical_overlap'])}  parallels {_f(r['parallel_rate'])} (real "
        f"{_f(r['parallel_rate_real'])})  classifier {_f(c['accuracy'])} ± "
        f"{_f(c['accuracy_std'])} (p {_f(c['permutation_p'])}) "
        f"(control {_f(r['control']['accuracy'])})  log Z {_f(r['log_evidence_mean'], 1)}  "
        f"ESS {_f(r['final_ess_mean'], 1)} (min {_f(r['min_ess_mean'], 1)}, "
        f"{_f(r['resamples_mean'], 1)} resamples)  {_f(r['seconds_median'], 2)} s/chorale "
        f"(max {_f(r['seconds_max'], 2)}; CPU {_f(r['cpu_seconds_median'], 2)} s, max "
        f"{_f(r['cpu_seconds_max'], 2)}; compile {r['compile_seconds']} s)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default=DEFAULT_WORKDIR)
    parser.add_argument("--num_chorales", type=int, default=40)
    parser.add_argument("--bars", type=int, default=16)
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decoders", default="forced,smc,smc_parallels")
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--out_dir", default="/tmp/bench_constraints")
    parser.add_argument("--tasks", default="harmonize", help="harmonize, infill or both (a,b)")
    parser.add_argument("--infill", default="5-8", help="the bars rewritten by the infill task")
    args = parser.parse_args()
    first, _, last = args.infill.partition("-")
    report = bench(
        args.workdir, num_chorales=args.num_chorales, bars=args.bars, particles=args.particles,
        seed=args.seed, decoders=args.decoders.split(","), out_dir=args.out_dir,
        permutations=args.permutations, tasks=tuple(args.tasks.split(",")),
        infill=(int(first), int(last or first)),
    )  # fmt: skip
    summary = {k: v for k, v in report.items() if k != "decoders"}
    summary["decoders"] = {
        name: {k: v for k, v in r.items() if k != "per_chorale"}
        for name, r in report["decoders"].items()
    }
    print(json.dumps(summary, default=float))


if __name__ == "__main__":
    main()
