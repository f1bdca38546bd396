"""Engraves a Bach chorale from music21's corpus (offline, inside the music21 wheel) through the
sample renderer: four voices from the score's four parts (Soprano, Alto, Tenor, Bass = voice
0-3), the opening pickup kept as rests so the bar lines fall where Bach put them. Writes every
file of a sample (MIDI with a track per voice, MusicXML, SVG, PNG, WAV, piano roll) and prints
the files and seconds per stage. docs/chorale_voices.png came from:

    python launch/chorale_score.py --chorale bach/bwv269 --out /tmp/chorale
    (then the PNG, shrunk: see docs/engraving.md)

usage: python launch/chorale_score.py [--chorale bach/bwv269] [--qpm 80] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def chorale_notes(name: str):
    """(Notes with voices 0-3, pickup beats, opening time signature) of a corpus chorale."""
    from music21 import corpus, meter

    from jaxcomposer.music.notes import concat, make_notes

    chorale = corpus.parse(name)
    parts = list(chorale.parts)
    if len(parts) != 4:
        raise ValueError(f"{name}: {len(parts)} parts, not four")
    first_bar = parts[0].getElementsByClass("Measure").first()
    ts = parts[0].recurse().getElementsByClass(meter.TimeSignature).first()
    bar = ts.barDuration.quarterLength
    # A pickup bar is short by paddingLeft: starting the notes that much later puts the first
    # full bar on a bar line (the first bar then opens with rests).
    shift = float(bar - first_bar.duration.quarterLength) if first_bar.paddingLeft else 0.0
    voices = []
    for v, part in enumerate(parts):
        flat = part.stripTies(inPlace=False).flatten().notes
        rows = np.array([(n.pitch.midi, n.offset, n.offset + n.quarterLength) for n in flat], float)
        voices.append(
            make_notes(rows[:, 0], rows[:, 1] + shift, rows[:, 2] + shift, voice=[v] * len(rows))
        )
    return concat(voices), shift, (ts.numerator, ts.denominator)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chorale", default="bach/bwv269")
    parser.add_argument("--qpm", type=float, default=80.0)
    parser.add_argument("--out", default="chorale_out")
    args = parser.parse_args(argv)
    from jaxcomposer.render import outputs

    try:
        notes, shift, time_signature = chorale_notes(args.chorale)
    except Exception as e:  # music21 raises many types for a missing or bad score
        print(f"error: {args.chorale}: {e}", file=sys.stderr)
        return 1
    stem = args.chorale.rsplit("/", 1)[-1]
    info = outputs.render_sample(
        args.out, stem, notes, title=f"{stem} (four voices)", qpm=args.qpm,
        time_signature=time_signature,
    )  # fmt: skip
    print(json.dumps({k: info[k] for k in ("midi", "musicxml", "svg", "png", "key", "errors")}))
    print(json.dumps({"notes": len(notes), "pickup_shift_beats": shift, **info["seconds"]}))
    return 1 if info["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
