"""The embedded default corpus: the Bach chorales that ship inside the music21 wheel (offline).

`bach_chorale_sources()` lists them (name relative to music21's corpus folder, e.g.
"bach/bwv269.mxl", and the path); `read_score()` turns one score file into a `Piece` in beats.
music21 is slow (~0.2 s per chorale), so the dataset step runs `read_score` in worker processes
and caches the result; the list itself is cached too, so a cached run never imports music21
(its import alone takes 2.5 s here, so its functions import it where they need it).
"""

from __future__ import annotations

import importlib.metadata
import json
import os

import numpy as np

from jaxcomposer.config_lib import DataConfig
from jaxcomposer.core import atomic
from jaxcomposer.data.midi_io import MidiReadError, finish_piece
from jaxcomposer.music.notes import (
    DEFAULT_VELOCITY,
    KeySignature,
    Piece,
    Tempo,
    TimeSignature,
    make_notes,
)


def music21_version() -> str:
    return importlib.metadata.version("music21")


def bach_chorale_sources(cache_dir: str | None = None) -> list[tuple[str, str]]:
    """(name, path) of every distinct Bach chorale in music21's corpus, sorted by name."""
    listing = (
        os.path.join(cache_dir, f"bach-chorales-{music21_version()}.json") if cache_dir else ""
    )
    if listing and os.path.exists(listing):
        try:
            with open(listing, encoding="utf-8") as f:
                sources = [tuple(item) for item in json.load(f)]
            if sources and all(os.path.exists(path) for _, path in sources):
                return sources
        except (OSError, ValueError, TypeError):
            pass  # a damaged listing is rebuilt below
    sources = _list_chorales()
    if listing:
        try:
            atomic.write_json(listing, sources)
        except OSError:
            pass  # an unwritable cache only costs time
    return sources


def _list_chorales() -> list[tuple[str, str]]:
    from music21 import corpus
    from music21.corpus import chorales

    root = os.path.dirname(corpus.__file__)
    found: dict[str, str] = {}
    for work in dict.fromkeys(chorales.Iterator(returnType="filename")):
        paths = corpus.getWork(work)
        if isinstance(paths, list):  # several files match one BWV number: prefer MusicXML
            if not paths:
                continue
            paths = sorted(paths, key=lambda p: (not str(p).endswith(".mxl"), str(p)))[0]
        path = str(paths)
        found[os.path.relpath(path, root).replace(os.sep, "/")] = path
    return sorted(found.items())


def read_score(path: str, data: DataConfig, name: str) -> tuple[Piece, dict]:
    """A score music21 can parse (MusicXML, Humdrum, ...) -> Piece in beats; ties joined, each
    note's `voice` = its part's index in score order (soprano 0 ... bass 3 in a chorale).
    Raises MidiReadError (the shared "unusable file" error) naming the file."""
    from music21 import converter, key, meter, tempo

    try:
        # Never music21's pickle cache (its scratch folder, shared by every user of the
        # machine): a planted pickle there would run code on thaw, and a stale one would be read.
        score = converter.parse(path, forceSource=True, storePickle=False)
        # Parts in score order are the voices (part 0 = the top staff's soprano); a score
        # without parts names no voices (-1).
        parts = list(getattr(score, "parts", ()))
        voiced = [(v, part) for v, part in enumerate(parts)] if parts else [(-1, score)]
        rows = [
            (p.midi, float(el.offset), float(el.offset + el.quarterLength), _velocity(el), v)
            for v, part in voiced
            for el in part.stripTies(inPlace=False).flatten().notes
            for p in el.pitches
        ]
        flat = score.flatten()
        time_signatures = [
            TimeSignature(float(ts.offset), int(ts.numerator), int(ts.denominator))
            for ts in flat.getElementsByClass(meter.TimeSignature)
        ]
        keys = [
            KeySignature(float(ks.offset), _key_number(ks.sharps, getattr(ks, "mode", "major")))
            for ks in flat.getElementsByClass(key.KeySignature)
        ]
        tempos = [
            Tempo(float(mm.offset), float(mm.getQuarterBPM()))
            for mm in flat.getElementsByClass(tempo.MetronomeMark)
            if mm.getQuarterBPM()
        ]
        stats = {"parts": len(getattr(score, "parts", ()))}
    except Exception as e:  # music21 raises many unrelated types for a bad score
        raise MidiReadError(path, f"music21 cannot read the score ({type(e).__name__}: {e})") from e
    table = np.asarray(rows, np.float64).reshape(-1, 5)
    notes = make_notes(table[:, 0], table[:, 1], table[:, 2], table[:, 3], voice=table[:, 4])
    piece = Piece(
        name=name,
        notes=notes,
        tempos=_first_per_beat(tempos),
        time_signatures=_first_per_beat(time_signatures),
        key_signatures=_first_per_beat(keys),
    )
    return finish_piece(piece, data, path, stats)


def _velocity(element) -> int:
    velocity = element.volume.velocity if element.volume is not None else None
    return int(velocity) if velocity else DEFAULT_VELOCITY


def _key_number(sharps: int, mode: str | None) -> int:
    tonic = (7 * int(sharps)) % 12  # the major key with this many sharps (pretty_midi numbering)
    return (tonic + 9) % 12 + 12 if mode == "minor" else tonic


def _first_per_beat(events) -> tuple:
    """Every part repeats the score's meter and key: keep one event per beat, in beat order."""
    seen: dict[float, object] = {}
    for event in events:
        seen.setdefault(event.beat, event)
    return tuple(seen[b] for b in sorted(seen))
