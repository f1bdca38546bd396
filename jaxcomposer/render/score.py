"""Notes -> sheet music: MusicXML (a grand staff), engraved SVG pages and a PNG.

Route (see shared library notes): a two-hand MIDI split at middle C is parsed by music21 with
quantisation to 16ths and triplets, which beams and ties far better than streams built by hand;
verovio engraves the MusicXML (it cannot read MIDI) and cairosvg rasterises the SVG.
music21/verovio/cairosvg are imported inside the functions: importing music21 costs ~1 s.
"""

from __future__ import annotations

import bisect
import dataclasses
import os
import re
import tempfile
from collections.abc import Sequence

import cairosvg
import numpy as np
import verovio
from music21 import (
    clef,
    converter,
    instrument,
    key,
    layout,
    metadata,
    meter,
    note,
    pitch,
    stream,
    tempo,
)
from music21.musicxml.m21ToXml import GeneralObjectExporter

from jaxcomposer.core import atomic
from jaxcomposer.data import midi_io
from jaxcomposer.music.keys import estimate_key, key_name
from jaxcomposer.music.notes import KeySignature, Notes, TimeSignature

__all__ = [
    "MIDDLE_C", "estimate_key", "key_name", "playable_notes", "chords_per_hand", "meter_map",
    "key_map", "build_score", "write_musicxml", "engrave", "write_svg_pages", "stack_pages",
    "write_png", "render_score",
]  # fmt: skip

MIDDLE_C = 60  # right hand plays pitches >= this, left hand the rest


# Verovio layout: A4 portrait (units are tenths of mm); scale 40 fits ~4 bars per system.
VEROVIO_OPTIONS = {
    "pageWidth": 2100,
    "pageHeight": 2970,
    "scale": 40,
    "adjustPageHeight": True,
    "footer": "none",
    "breaks": "auto",
}
PNG_SCALE = 1.5  # 840 px SVG page -> 1260 px PNG (rasterising time hardly depends on it)


def playable_notes(notes: Notes) -> Notes:
    """What one piano can show: no drums, one note per (pitch, onset) (the longest), and a note
    cut where the same pitch is struck again (a repeated key cannot still be sounding)."""
    notes = notes[~notes.is_drum]
    notes = notes[np.lexsort((-notes.end, notes.start, notes.pitch))]
    repeat = np.zeros(len(notes), bool)  # same pitch and onset as the (longer) note before
    repeat[1:] = (notes.pitch[1:] == notes.pitch[:-1]) & (notes.start[1:] == notes.start[:-1])
    notes = notes[~repeat]
    end = notes.end.copy()
    restruck = np.flatnonzero(notes.pitch[1:] == notes.pitch[:-1])  # sorted by pitch, start
    end[restruck] = np.minimum(end[restruck], notes.start[restruck + 1])
    return Notes(notes.pitch, notes.start, end, notes.velocity, notes.program, notes.is_drum)


def chords_per_hand(notes: Notes, split_at: int = MIDDLE_C) -> Notes:
    """Each hand as a plain sequence of chords and rests, which engraves without extra voices:
    the notes struck together end together (at the longest one) and every note ends by the
    next onset in its hand. Only the score is simplified so; MIDI and audio keep the notes."""
    end = notes.end.copy()
    for hand in (notes.pitch >= split_at, notes.pitch < split_at):
        index = np.flatnonzero(hand)
        if index.size == 0:
            continue
        start = notes.start[index]
        onsets, group = np.unique(start, return_inverse=True)
        group_end = np.full(onsets.size, -np.inf)
        np.maximum.at(group_end, group, notes.end[index])
        next_onset = np.r_[onsets[1:], np.inf][group]
        end[index] = np.minimum(group_end[group], next_onset)
    return Notes(notes.pitch, notes.start, end, notes.velocity, notes.program, notes.is_drum)


def meter_map(
    time_signature: tuple[int, int], time_signatures: Sequence[TimeSignature], end: float
) -> tuple[TimeSignature, ...]:
    """Every time signature in force before beat `end` (the music's end; 0 = no notes), in beat
    order, the last one at a beat winning. `time_signature` is the meter from beat 0 until the
    first of `time_signatures` (all of it when there are none)."""
    return _changes(TimeSignature(0.0, *time_signature), time_signatures, end)


def key_map(
    key_number: int, key_signatures: Sequence[KeySignature], end: float
) -> tuple[KeySignature, ...]:
    """As `meter_map`, for keys: `key_number` holds until the first of `key_signatures`."""
    return _changes(KeySignature(0.0, key_number), key_signatures, end)


def _changes(opening, events: Sequence, end: float) -> tuple:
    events = sorted(events, key=lambda e: e.beat)
    if not events or events[0].beat > 0:
        events.insert(0, opening)
    kept: list = []
    for event in events:
        if event.beat > 0 and event.beat >= end:
            break  # takes effect after the music: no bar shows it
        if kept and kept[-1].beat == event.beat:
            kept[-1] = event
        elif not kept or dataclasses.astuple(kept[-1])[1:] != dataclasses.astuple(event)[1:]:
            kept.append(event)
    return tuple(kept)


def _measure_index(offsets: list[float], beat: float) -> int | None:
    """The first measure that starts at or after `beat` (a change engraves at a bar line)."""
    i = bisect.bisect_left(offsets, beat - 1e-6)
    return i if i < len(offsets) else None


def _music21_key(key_number: int):
    tonic, mode = key_name(key_number).split()
    step, accidental = tonic[0], tonic[1:].replace("b", "-")  # music21 writes flats as '-'
    return key.Key(step.lower() + accidental if mode == "minor" else step + accidental)


# Chromatic notes as altered scale degrees, by semitones above the tonic: (degree, alteration).
# Major: b2 b3 #4 b6 b7; minor (natural + leading tone): b2, raised 3, #4, raised 6.
_CHROMATIC = {
    "major": {1: (2, -1), 3: (3, -1), 6: (4, 1), 8: (6, -1), 10: (7, -1)},
    "minor": {1: (2, -1), 4: (3, 1), 6: (4, 1), 9: (6, 1)},
}

_HARD_TO_READ = {"C-", "F-", "B#", "E#"}  # as chromatic notes; fine where the key has them


def _spelling_by_pitch_class(k) -> list[str]:
    """Pitch-class -> note name in key `k`: scale notes as in the key (plus the leading tone in
    minor), chromatic notes as the usual altered degrees (Bb, not A#, in D major); where that
    would need a double accidental or a Cb/Fb/B#/E#, sharps in sharp keys, flats in flat keys."""
    sharps = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]
    flats = ["C", "D-", "D", "E-", "E", "F", "G-", "G", "A-", "A", "B-", "B"]
    names = list(sharps if k.sharps >= 0 else flats)
    tonic = k.tonic.pitchClass
    for semitones, (degree, shift) in _CHROMATIC[k.mode].items():
        scale_note = k.pitchFromDegree(degree)
        name = pitch.Pitch(scale_note.step, accidental=scale_note.alter + shift).name
        if name not in _HARD_TO_READ and abs(scale_note.alter + shift) <= 1:
            names[(tonic + semitones) % 12] = name
    for p in k.getPitches():
        names[p.pitchClass] = p.name
    if k.mode == "minor":
        leading = k.getLeadingTone()
        names[leading.pitchClass] = leading.name
    return names


def _respell(notes, k) -> None:
    names = _spelling_by_pitch_class(k)
    for n in notes:
        for p in n.pitches:
            midi = p.ps
            p.name = names[p.pitchClass]
            p.octave += round((midi - p.ps) / 12)  # B#/Cb belong to the neighbouring octave


def _rest_part(template):
    """A part with the template's measures filled by whole-measure rests (for an empty hand)."""
    part = stream.Part()
    for m in template.getElementsByClass(stream.Measure):
        measure = stream.Measure(number=m.number)
        measure.append(note.Rest(quarterLength=m.barDuration.quarterLength))
        part.append(measure)
    return part


def _two_hands(score, time_signature: tuple[int, int]) -> list:
    """[right, left] parts; a hand without notes gets rests so the grand staff is complete."""
    by_hand = {"right": None, "left": None}
    for part in list(score.parts):
        pitches = [p.ps for n in part.recurse().notes for p in n.pitches]
        if pitches:
            by_hand["right" if np.median(pitches) >= MIDDLE_C else "left"] = part
        score.remove(part)
    template = by_hand["right"] or by_hand["left"]
    if template is None:  # no notes at all: one bar of rest
        template = stream.Part()
        bar = stream.Measure(number=1)
        bar.append(meter.TimeSignature(f"{time_signature[0]}/{time_signature[1]}"))
        bar.append(note.Rest(quarterLength=bar.barDuration.quarterLength))
        template.append(bar)
    parts = [by_hand[h] or _rest_part(template) for h in ("right", "left")]
    for part in parts:
        score.insert(0, part)
    return parts


def build_score(
    notes: Notes,
    *,
    title: str,
    qpm: float,
    time_signature: tuple[int, int],
    key_number: int,
    one_voice_per_hand: bool = True,
    time_signatures: Sequence[TimeSignature] = (),
    key_signatures: Sequence[KeySignature] = (),
):
    """music21 Score: a braced grand staff, treble over bass, with key and time signatures.
    `time_signature` and `key_number` hold from beat 0 until the first of `time_signatures` /
    `key_signatures` (beats); each change is engraved at the first bar line at or after it, on
    both staves. `one_voice_per_hand` engraves `chords_per_hand(notes)`: far easier to read than
    the extra voices music21 makes for every overlap (and twice as fast to build)."""
    notes = playable_notes(notes)
    if one_voice_per_hand:
        notes = chords_per_hand(notes)
    end = float(notes.end.max(initial=0.0))
    meters = meter_map(time_signature, time_signatures, end)
    keys = key_map(key_number, key_signatures, end)
    with tempfile.TemporaryDirectory(prefix="jaxcomposer-score-") as tmp:
        midi_path = os.path.join(tmp, "hands.mid")
        # music21 cuts the bars by every time signature in the file, so they come out right.
        midi_io.write_midi(
            midi_path, notes, qpm=qpm, time_signatures=meters, key_signatures=keys,
            split_hands_at=MIDDLE_C,
        )  # fmt: skip
        score = converter.parse(
            midi_path, format="midi", quantizePost=True, quarterLengthDivisors=(4, 3)
        )
    first = meters[0]
    parts = _two_hands(score, (first.numerator, first.denominator))  # rests need the metres
    # Metronome marks render as an empty box through cairosvg (SMuFL glyph in a text font);
    # clefs, keys and metres are set again below, once per staff, at bar lines.
    drop = (tempo.MetronomeMark, key.KeySignature, clef.Clef, meter.TimeSignature)
    for element in list(score.recurse().getElementsByClass((*drop, instrument.Instrument))):
        element.activeSite.remove(element)
    for part, part_clef in zip(parts, (clef.TrebleClef(), clef.BassClef()), strict=True):
        part.partName = None
        part.partAbbreviation = None
        measures = list(part.getElementsByClass(stream.Measure))
        offsets = [float(m.offset) for m in measures]
        key_at = [None] * len(measures)  # the music21 key each measure starts under
        for ks in keys:
            index = _measure_index(offsets, ks.beat)
            if index is not None:
                key_at[index] = _music21_key(ks.key_number)
        for ts in meters:
            index = _measure_index(offsets, ts.beat)
            if index is not None:  # a later change for the same bar line replaces an earlier
                for old in measures[index].getElementsByClass(meter.TimeSignature):
                    measures[index].remove(old)
                measures[index].insert(0, meter.TimeSignature(f"{ts.numerator}/{ts.denominator}"))
        measures[0].insert(0, part_clef)
        k = key_at[0] = key_at[0] or _music21_key(keys[0].key_number)
        past: list = []
        for measure, change in zip(measures, key_at, strict=True):
            if change is not None and (change is key_at[0] or change.sharps != k.sharps):
                measure.insert(0, change)
            k = change or k
            _respell(measure.recurse().notes, k)
            stream.makeNotation.makeAccidentalsInMeasureStream(
                measure, pitchPastMeasure=past, useKeySignature=k, overrideStatus=True
            )
            past = list(measure.pitches)
    score.insert(0, layout.StaffGroup(parts, name="Piano", symbol="brace", barTogether=True))
    score.metadata = metadata.Metadata(title=title, composer="jaxcomposer")
    return score


def write_musicxml(
    path: str,
    notes: Notes,
    *,
    title: str,
    qpm: float = 120.0,
    time_signature: tuple[int, int] = (4, 4),
    key_number: int | None = None,
    one_voice_per_hand: bool = True,
    time_signatures: Sequence[TimeSignature] = (),
    key_signatures: Sequence[KeySignature] = (),
) -> int:
    """Writes a grand-staff MusicXML score; returns the opening key number (estimated if None).
    Time and key signatures as `build_score` takes them."""
    if key_number is None:
        key_number, _ = estimate_key(notes)
    score = build_score(
        notes, title=title, qpm=qpm, time_signature=time_signature, key_number=key_number,
        one_voice_per_hand=one_voice_per_hand, time_signatures=time_signatures,
        key_signatures=key_signatures,
    )  # fmt: skip
    atomic.write_bytes(path, GeneralObjectExporter(score).parse())
    return key_number


def engrave(musicxml: str, options: dict | None = None) -> list[str]:
    """MusicXML text -> one SVG document per page (verovio)."""
    toolkit = verovio.toolkit()
    toolkit.setOptions(dict(VEROVIO_OPTIONS, **(options or {})))
    if not toolkit.loadData(musicxml):
        raise ValueError("verovio could not load the MusicXML")
    pages = [toolkit.renderToSVG(page) for page in range(1, toolkit.getPageCount() + 1)]
    if not pages:
        raise ValueError("verovio engraved no pages")
    return pages


def write_svg_pages(pages: list[str], svg_stem: str) -> list[str]:
    """Writes stem-1.svg, stem-2.svg, ...; removes pages left over from an earlier, longer score."""
    paths = []
    for number, svg in enumerate(pages, start=1):
        paths.append(f"{svg_stem}-{number}.svg")
        atomic.write_text(paths[-1], svg)
    stale = len(pages) + 1
    while os.path.exists(f"{svg_stem}-{stale}.svg"):
        os.remove(f"{svg_stem}-{stale}.svg")
        stale += 1
    return paths


_SVG_SIZE = re.compile(r'<svg\b[^>]*?\bwidth="([\d.]+)(?:px)?"[^>]*?\bheight="([\d.]+)(?:px)?"')


def stack_pages(pages: list[str]) -> str:
    """One SVG with the pages one under the other (nested <svg> elements)."""
    if len(pages) == 1:
        return pages[0]
    bodies, width, height = [], 0.0, 0.0
    for svg in pages:
        svg = re.sub(r"^\s*<\?xml[^>]*\?>", "", svg)
        size = _SVG_SIZE.search(svg)
        if size is None:
            raise ValueError("SVG page without width/height")
        bodies.append(svg.replace("<svg", f'<svg y="{height}"', 1))
        width = max(width, float(size.group(1)))
        height += float(size.group(2))
    return (
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
        f'version="1.1" width="{width}px" height="{height}px">' + "".join(bodies) + "</svg>"
    )


def write_png(pages: list[str], png_path: str, *, scale: float = PNG_SCALE) -> None:
    """All pages, stacked, as one PNG on white."""
    png = cairosvg.svg2png(
        bytestring=stack_pages(pages).encode("utf-8"), background_color="white", scale=scale
    )
    atomic.write_bytes(png_path, png)


def render_score(musicxml_path: str, svg_stem: str, png_path: str) -> list[str]:
    """MusicXML file -> SVG pages (stem-N.svg) + a PNG of all pages; returns the SVG paths."""
    with open(musicxml_path, encoding="utf-8") as f:
        pages = engrave(f.read())
    paths = write_svg_pages(pages, svg_stem)
    write_png(pages, png_path)
    return paths
