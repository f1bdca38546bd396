r"""Can a classifier tell a model's piano performances from the held-out ones? (issue 21; a
benchmark, not a test)

For a workdir trained on performances (launch/giantmidi_experiment.py), `--num_samples` samples
of `--tokens` tokens are written by the project's generate code (the workdir's settings, primer
none, plus any `--sample NAME=VALUE`), cut at `--bars` nominal bars (2 s each at the
performance tokenizer's 120 qpm: 8 bars = 16 s; a sample that ends sooner is counted), read
back from their MIDI files and compared with excerpts of the same length cut from the held-out
MIDI files the workdir names (its manifest's valid split), read as the data pipeline reads
them:

  classifier   evaluation/two_sample.py's logistic-regression two-sample test on the key-invariant
               piece features, with the excerpts of one held-out piece kept in one fold
               (groups_b): the classifier never sees a piece it is tested on. Up to
               --excerpts_per_piece excerpts per piece, evenly spaced from its first onset.
  control      the same test, held-out excerpts against training-piece excerpts (both real, by
               piece): what the features can tell apart between real pieces alone
  note length  median seconds of the samples' notes (whole samples, not cut) against the
               interquartile range of the held-out pieces' notes, with the sustain pedal applied
               where the tokenizer applies it (perf_sustain)
  velocity     standard deviation of MIDI velocity, samples vs data
  polyphony    mean number of notes sounding per 16th-note step where any sounds, samples vs data
  skipped_tokens  tokens the decoder could not place, summed (goal 0)

`--excerpt_dir DIR` also writes the first sample's score (PNG, from generate) and its first
8 seconds of audio as DIR/PREFIX.png and DIR/PREFIX_8s.wav (docs/giantmidi.md's excerpts).

  taskset -c 1 python launch/performance_bench.py --workdir=runs/gm/piano_performance \
      [--num_samples=40 --bars=8 --excerpt_dir=docs --prefix=giantmidi_piano_performance]

Prints a table and one JSON line; writes OUT_DIR/performance_bench.json (OUT_DIR defaults to
/tmp/performance_bench/<workdir name>; nothing is written into the workdir).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jaxcomposer import workdir_lib  # noqa: E402
from jaxcomposer.core import atomic  # noqa: E402
from jaxcomposer.data import midi_io  # noqa: E402
from jaxcomposer.evaluation import musicstats, two_sample  # noqa: E402
from jaxcomposer.music.notes import Notes, beats_to_seconds  # noqa: E402
from jaxcomposer.sample.bars import cut_at_beat  # noqa: E402
from jaxcomposer.tokenizers.performance import apply_sustain  # noqa: E402

BAR_BEATS = 4.0  # nominal 4/4 bars of the decoded 120 qpm
MACHINE = "2-core AMD EPYC VM, 24 GiB, no GPU, Python 3.11, jax 0.10.2"


def _parse_sample_flags(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def excerpts(notes: Notes, beats: float, count: int) -> list[Notes]:
    """Up to `count` excerpts of `beats` beats, evenly spaced from the first onset to the last
    start that leaves a whole excerpt, each shifted to start at 0 and cut at its end."""
    if not len(notes):
        return []
    # room from the last onset: a pedal held to the file's end would make the last window a tail
    first, last = float(notes.start.min()), float(notes.start.max())
    room = last - first - beats
    if room < 0:
        return []
    starts = first + np.linspace(0.0, room, count) if count > 1 else [first]
    out = []
    for t0 in starts:
        window = notes[(notes.start >= t0) & (notes.start < t0 + beats)]
        shifted = Notes(window.pitch, window.start - t0, window.end - t0, window.velocity,
                        window.program, window.is_drum)  # fmt: skip
        if len(shifted):
            out.append(cut_at_beat(shifted, beats))
    return out


def _seconds_lengths(notes: Notes, qpm: float = 120.0) -> np.ndarray:
    return (notes.end - notes.start) * 60.0 / qpm


def _read(path: str, config, name: str):
    piece = midi_io.read_midi(path, config.data, name)[0]
    return piece


def _as_120_qpm(piece, notes: Notes) -> Notes:
    """Beats through the piece's tempo map -> beats of 120 qpm (GiantMIDI files are already at
    one nominal 120 qpm; this makes any file's excerpts seconds-true)."""
    start = beats_to_seconds(notes.start, piece.tempos) * 2.0
    end = beats_to_seconds(notes.end, piece.tempos) * 2.0
    return Notes(notes.pitch, start, end, notes.velocity, notes.program, notes.is_drum)


def bench(workdir: str, *, num_samples: int = 40, bars: int = 8, seed: int = 0,
          excerpts_per_piece: int = 8, tokens: int = 2000, sample_overrides: dict | None = None,
          out_dir: str | None = None, permutations: int = 100) -> dict:  # fmt: skip
    """Generates, reads back and scores the samples (module docstring); returns the figures."""
    from jaxcomposer.sample import generate

    config = workdir_lib.load_config(workdir)
    with open(os.path.join(workdir, "data", "manifest.json")) as f:
        manifest = json.load(f)
    out_dir = out_dir or os.path.join(
        tempfile.gettempdir(), "performance_bench", os.path.basename(os.path.normpath(workdir))
    )
    # a fixed token count, then a cut at the excerpt's length: the bar-count estimate from BOS
    # alone can fall short of dense playing; a sample shorter than the excerpts is counted
    overrides = {"num_samples": num_samples, "num_bars": 0, "num_steps": tokens, "primer": "none",
                 **(sample_overrides or {})}  # fmt: skip
    started = time.perf_counter()
    result = generate.generate(workdir, out_dir=out_dir, seed=seed, overrides=overrides)
    generate_seconds = time.perf_counter() - started
    beats = bars * BAR_BEATS
    samples, whole_samples, unreadable, short = [], [], [], 0
    for info in result["samples"]:
        try:
            if not info.get("midi"):
                raise midi_io.MidiReadError(info["name"], "no MIDI file was written")
            piece = _read(os.path.join(out_dir, info["midi"]), config, info["name"])
        except midi_io.MidiReadError as err:  # an empty sample: reported, left out
            unreadable.append(f"{info['name']}: {err.reason}")
            continue
        notes = _as_120_qpm(piece, piece.notes)
        short += bool(len(notes) and notes.end.max() < beats - 1e-6)
        whole_samples.append(notes)  # note lengths before the cut (the data's are uncut too)
        samples.append(cut_at_beat(notes, beats))

    real = {"valid": ([], [], []), "train": ([], [], [])}  # excerpts, groups, whole pieces
    for g, entry in enumerate(manifest["files"]):
        if entry.get("split") not in real:
            continue
        folder = manifest.get("valid_dir") if entry["split"] == "valid" else ""
        path = os.path.join(folder or manifest["source"], entry["name"])
        piece = _read(path, config, entry["name"])
        # the notes as the model was trained on them: with the pedal only where it was applied
        pedal = getattr(config.tokenizer, "perf_sustain", False)
        sustained = apply_sustain(piece.notes, piece.sustain) if pedal else piece.notes
        whole = (_as_120_qpm(piece, piece.notes), _as_120_qpm(piece, sustained))
        cut = excerpts(whole[1], beats, excerpts_per_piece)
        bucket = real[entry["split"]]
        bucket[0].extend(cut)
        bucket[1].extend([g] * len(cut))
        bucket[2].append(whole)
    held, held_groups, held_whole = real["valid"]
    other, other_groups, _ = real["train"]

    spb = 4  # onsets on a 16th grid of 120 qpm (125 ms) for the features
    if not samples or not held or not other:
        raise SystemExit(f"{workdir}: nothing to compare ({len(samples)} readable samples, "
                         f"{len(held)} held-out and {len(other)} training excerpts)")
    feats = [np.stack([two_sample.piece_features(n, steps_per_beat=spb) for n in pieces])
             for pieces in (samples, held, other)]  # fmt: skip
    test = two_sample.classifier_two_sample_test(
        feats[0], feats[1], groups_b=np.asarray(held_groups), permutations=permutations, seed=seed
    )
    control = two_sample.classifier_two_sample_test(
        feats[1], feats[2], groups_a=np.asarray(held_groups), groups_b=np.asarray(other_groups),
        permutations=permutations, seed=seed,
    )  # fmt: skip

    def pooled(pieces, f):
        values = [f(n) for n in pieces if len(n)]
        return np.concatenate(values) if values else np.zeros(0)

    sample_len = pooled(whole_samples, _seconds_lengths)
    data_len = pooled([w[1] for w in held_whole], _seconds_lengths)
    data_len_raw = pooled([w[0] for w in held_whole], _seconds_lengths)
    q25, q75 = np.percentile(data_len, [25, 75])
    median = float(np.median(sample_len)) if len(sample_len) else float("nan")

    def polyphony(pieces):
        return float(np.mean([musicstats.polyphony(n, spb) for n in pieces if len(n)]))

    velocities = pooled(samples, lambda n: n.velocity.astype(np.float64))
    data_vel = pooled(held, lambda n: n.velocity.astype(np.float64))
    settings = result["settings"]
    return {
        "workdir": os.path.abspath(workdir),
        "checkpoint_step": settings["checkpoint_step"],
        "tokenizer": config.tokenizer.name,
        "samples": len(samples),
        "bars": bars,
        "seconds": beats / 2.0,
        "held_out_pieces": len(held_whole),
        "held_out_excerpts": len(held),
        "training_excerpts": len(other),
        "seed": seed,
        "sample_settings": {
            k: settings.get(k) for k in ("decoder", "temperature", "top_k", "top_p", "scale")
        },  # fmt: skip
        "classifier": test,
        "control": control,
        "note_seconds_median": median,
        "note_seconds_data_iqr": [float(q25), float(q75)],
        "note_seconds_data_median": float(np.median(data_len)),
        "note_seconds_data_iqr_without_pedal": [
            float(v) for v in np.percentile(data_len_raw, [25, 75])
        ],
        "median_inside_iqr": bool(q25 <= median <= q75),
        "velocity_std": float(velocities.std()) if len(velocities) else float("nan"),
        "velocity_std_data": float(data_vel.std()),
        "polyphony": polyphony(samples),
        "polyphony_data": polyphony(held),
        "notes_per_sample": float(np.mean([len(n) for n in samples])) if samples else 0.0,
        "notes_per_excerpt_data": float(np.mean([len(n) for n in held])),
        "skipped_tokens": int(sum(info["skipped_tokens"] for info in result["samples"])),
        "unreadable_samples": unreadable,
        "short_samples": short,
        "generate_seconds": round(generate_seconds, 1),
        "out_dir": out_dir,
        "first_sample": result["samples"][0] if result["samples"] else None,
        "machine": MACHINE,
    }


def write_excerpt(r: dict, excerpt_dir: str, prefix: str, seconds: float = 8.0) -> list[str]:
    """The first sample's score PNG and its first `seconds` of audio, into excerpt_dir."""
    import wave

    info, out = r["first_sample"] or {}, []
    os.makedirs(excerpt_dir, exist_ok=True)
    if info.get("png"):
        target = os.path.join(excerpt_dir, f"{prefix}.png")
        shutil.copyfile(os.path.join(r["out_dir"], info["png"]), target)
        out.append(target)
    if info.get("wav"):
        with wave.open(os.path.join(r["out_dir"], info["wav"]), "rb") as src:
            params = src.getparams()
            frames = src.readframes(int(seconds * params.framerate))
        target = os.path.join(excerpt_dir, f"{prefix}_8s.wav")
        with wave.open(target, "wb") as dst:
            dst.setparams(params)
            dst.writeframes(frames)
        out.append(target)
    return out


def table(r: dict) -> str:
    t, c = r["classifier"], r["control"]
    lo, hi = r["note_seconds_data_iqr"]
    return "\n".join([
        f"{r['samples']} samples of {r['seconds']:g} s from {r['workdir']} (step "
        f"{r['checkpoint_step']}, {r['sample_settings']}) vs {r['held_out_excerpts']} excerpts "
        f"of {r['held_out_pieces']} held-out pieces",
        f"classifier      {two_sample.describe(t)}",
        f"control         {two_sample.describe(c)}",
        f"note length     median {r['note_seconds_median']:.3f} s; data IQR {lo:.3f}-{hi:.3f} s "
        f"(median {r['note_seconds_data_median']:.3f}; inside: {r['median_inside_iqr']})",
        f"velocity std    {r['velocity_std']:.1f} (data {r['velocity_std_data']:.1f})",
        f"polyphony       {r['polyphony']:.2f} (data {r['polyphony_data']:.2f})",
        f"notes / {r['seconds']:g} s    {r['notes_per_sample']:.0f} "
        f"(data {r['notes_per_excerpt_data']:.0f})",
        f"skipped tokens  {r['skipped_tokens']}; unreadable {len(r['unreadable_samples'])}; "
        f"shorter than {r['seconds']:g} s: {r['short_samples']}",
    ])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num_samples", type=int, default=40)
    parser.add_argument("--bars", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--excerpts_per_piece", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=2000, help="tokens generated per sample")
    parser.add_argument("--permutations", type=int, default=100)
    parser.add_argument("--sample", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--out_dir", default=None)
    parser.add_argument("--excerpt_dir", default=None)
    parser.add_argument("--prefix", default=None, help="excerpt file names; default: workdir name")
    args = parser.parse_args()
    r = bench(args.workdir, num_samples=args.num_samples, bars=args.bars, seed=args.seed,
              excerpts_per_piece=args.excerpts_per_piece, tokens=args.tokens,
              sample_overrides=_parse_sample_flags(args.sample), out_dir=args.out_dir,
              permutations=args.permutations)  # fmt: skip
    if args.excerpt_dir:
        prefix = args.prefix or os.path.basename(os.path.normpath(args.workdir))
        r["excerpts"] = write_excerpt(r, args.excerpt_dir, prefix)
    atomic.write_json(os.path.join(r["out_dir"], "performance_bench.json"), r)
    print(table(r))
    print(json.dumps({k: v for k, v in r.items() if k != "first_sample"}))


if __name__ == "__main__":
    main()
