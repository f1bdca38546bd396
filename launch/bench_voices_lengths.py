"""Sequence length per chorale: the `voices` tokenizer at 2 and 4 steps per beat against `event`.

Reads the embedded music21 Bach chorales once (about a minute on one core), encodes each with
every tokenizer below and prints tokens per piece (mean, median, max), tokens per quarter beat and
the notes each loses or shortens. Usage:

    PYTHONPATH=$PWD taskset -c 1 python launch/bench_voices_lengths.py [--max_pieces=N]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np

from configs import default
from jaxcomposer import config_lib
from jaxcomposer.data import corpus
from jaxcomposer.tokenizers import get_tokenizer
from jaxcomposer.tokenizers.base import LOST_NOTE_COUNTS, SHORTENED_NOTE_COUNTS

TOKENIZERS = {
    "event spb4": dict(name="event", steps_per_beat=4),
    "event spb2": dict(name="event", steps_per_beat=2),
    "voices spb2": dict(name="voices", steps_per_beat=2),
    "voices spb4": dict(name="voices", steps_per_beat=4),
    "voices spb2 per-voice": dict(name="voices", steps_per_beat=2, per_voice_tokens=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max_pieces", type=int, default=0, help="0 = all chorales")
    args = parser.parse_args()
    config = config_lib.freeze(default.get_config())
    sources = corpus.bach_chorale_sources()
    if args.max_pieces:
        sources = sources[: args.max_pieces]
    began = time.process_time()
    pieces = [corpus.read_score(path, config.data, name)[0] for name, path in sources]
    print(f"read {len(pieces)} chorales in {time.process_time() - began:.1f} s CPU")
    beats = np.array([float(p.notes.end.max()) for p in pieces])
    notes = sum(len(p.notes) for p in pieces)
    print(f"{'tokenizer':<21} {'vocab':>5} {'mean':>7} {'median':>7} {'max':>6} "
          f"{'tok/beat':>8} {'lost':>6} {'shortened':>9}")  # fmt: skip
    print(f"(tokens per piece with BOS/EOS; notes lost or shortened of {notes})")
    for label, fields in TOKENIZERS.items():
        tok = get_tokenizer(dataclasses.replace(config.tokenizer, **fields))
        lengths, lost, shortened = [], 0, 0
        for piece in pieces:
            tokens, counts = tok.encode_counted(piece)
            lengths.append(tokens.size + 2)  # with BOS and EOS, as in the training stream
            lost += sum(counts.get(k, 0) for k in LOST_NOTE_COUNTS)
            shortened += sum(counts.get(k, 0) for k in SHORTENED_NOTE_COUNTS)
        n = np.asarray(lengths)
        print(f"{label:<21} {tok.vocab.size:>5} {n.mean():>7.1f} {np.median(n):>7.0f} "
              f"{n.max():>6} {n.sum() / beats.sum():>8.2f} {lost:>6} {shortened:>9}")  # fmt: skip


if __name__ == "__main__":
    main()
