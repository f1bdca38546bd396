"""Notes -> sheet music: MusicXML (a grand staff), engraved SVG pages and a PNG.

Route (see shared library notes): a two-hand MIDI split at middle C is parsed by music21 with
quantisation to 16ths and triplets, which beams and ties far better than streams built by hand;
verovio engraves the MusicXML (it cannot read MIDI) and cairosvg rasterises the SVG.
music21/verovio/cairosvg are imported inside the functions: importing music21 costs ~1 s.
"""

from __future__ import annotations

import bisect
import copy
import dataclasses
import importlib.resources
import itertools
import logging
import os
import re
import tempfile
from collections.abc import Sequence

import cairosvg
import numpy as np
import verovio
from music21 import (
    bar,
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
from jaxcomposer.music.notes import KeySignature, Notes, TimeSignature, concat

__all__ = [
    "MIDDLE_C", "estimate_key", "key_name", "playable_notes", "chords_per_hand", "meter_map",
    "key_map", "VOICE_NAMES", "assign_voices", "four_voices", "voice_lines", "build_score",
    "write_musicxml", "engrave", "write_svg_pages", "stack_pages", "write_png", "render_score",
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
    return dataclasses.replace(notes, end=end)


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
    return dataclasses.replace(notes, end=end)


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


def _rest_part(template, part_class=stream.Part):
    """A part with the template's measures filled by whole-measure rests (for an empty hand)."""
    part = part_class()
    for m in template.getElementsByClass(stream.Measure):
        measure = stream.Measure(number=m.number)
        measure.append(note.Rest(quarterLength=m.barDuration.quarterLength))
        part.append(measure)
    return part


def _one_bar_of_rest(time_signature: tuple[int, int]):
    part = stream.Part()
    measure = stream.Measure(number=1)
    measure.append(meter.TimeSignature(f"{time_signature[0]}/{time_signature[1]}"))
    measure.append(note.Rest(quarterLength=measure.barDuration.quarterLength))
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
    template = by_hand["right"] or by_hand["left"] or _one_bar_of_rest(time_signature)
    return [by_hand[h] or _rest_part(template) for h in ("right", "left")]


# --- four voices --------------------------------------------------------------------------------

VOICE_NAMES = ("Soprano", "Alto", "Tenor", "Bass")  # voice index 0-3, top to bottom
# Notes without voices count as four-part music when at least this share of their onsets has
# exactly four notes sounding and none has more (a chorale texture, not piano writing).
FOUR_PART_SHARE = 0.75
# Where a voice has not sung yet, its pitch is taken as the middle of its usual range (MIDI).
_VOICE_CENTRES = (67, 62, 55, 48)


def _sounding_at_onsets(notes: Notes) -> np.ndarray:
    """int (O,): how many notes sound at each distinct onset (start <= onset < end)."""
    onsets = np.unique(notes.start)
    begun = np.searchsorted(np.sort(notes.start), onsets, side="right")
    ended = np.searchsorted(np.sort(notes.end), onsets, side="right")
    return begun - ended


def assign_voices(notes: Notes, num_voices: int = 4) -> Notes:
    """Voices by pitch rank with voice leading: at each onset the new notes, highest first, go to
    the voices that are free there (their last note has ended) in top-to-bottom order, choosing
    among the free voices the ones whose last pitches are nearest (sum of |semitones|; a voice
    that has not sung yet sits at the middle of its range). A held note keeps its voice.
    Returns the notes (canonical order) with `voice` in 0..num_voices-1.
    Raises ValueError when more than `num_voices` notes sound at once."""
    notes = notes.sorted()
    voice = np.full(len(notes), -1, np.int8)
    busy_until = np.full(num_voices, -np.inf)
    last_pitch = np.array(_VOICE_CENTRES[:num_voices], np.float64)
    onsets, first = np.unique(notes.start, return_index=True)
    for onset, lo, hi in zip(onsets, first, np.r_[first[1:], len(notes)], strict=True):
        new = np.arange(lo, hi)[::-1]  # sorted by pitch within an onset: highest first
        free = [v for v in range(num_voices) if busy_until[v] <= onset + 1e-9]
        if new.size > len(free):
            raise ValueError(f"{new.size + num_voices - len(free)} notes sound at beat {onset:g}")
        best = min(
            itertools.combinations(free, new.size),
            key=lambda vs: np.abs(last_pitch[list(vs)] - notes.pitch[new]).sum(),
        )
        for index, v in zip(new, best, strict=True):
            voice[index] = v
            busy_until[v] = notes.end[index]
            last_pitch[v] = notes.pitch[index]
    return dataclasses.replace(notes, voice=voice)


def four_voices(notes: Notes, *, guess: bool = False) -> Notes | None:
    """The notes as four voices (Soprano, Alto, Tenor, Bass = voice 0-3), or None (piano).

    Notes whose voices are all known (0-3, at least two different ones) keep them. With
    `guess`, notes whose voices are all unknown (-1) get `assign_voices` when they look
    four-part (`FOUR_PART_SHARE`). Off by default: a melody over block triads looks so too,
    and a pianist reads that better as two hands. A mixture, drums, more than four: None."""
    if len(notes) == 0 or notes.is_drum.any():
        return None
    voice = notes.voice
    if np.all(voice >= 0):
        return notes if voice.max() < len(VOICE_NAMES) and np.unique(voice).size >= 2 else None
    if np.any(voice >= 0) or not guess:
        return None
    sounding = _sounding_at_onsets(notes)
    if sounding.max() > len(VOICE_NAMES) or np.mean(sounding == 4) < FOUR_PART_SHARE:
        return None
    return assign_voices(notes, len(VOICE_NAMES))


def voice_lines(notes: Notes) -> Notes:
    """Each voice as a single line: one note per onset (the highest for the upper voice of a
    staff, the lowest for the lower one, so unisons with other voices stay), cut at the voice's
    next onset. `notes.voice` must be 0-3 (`four_voices`)."""
    kept = []
    for v in range(len(VOICE_NAMES)):
        line = notes[notes.voice == v]
        line = line[np.lexsort((line.pitch if v % 2 else -line.pitch, line.start))]
        line = line[np.r_[True, line.start[1:] != line.start[:-1]]] if len(line) else line
        end = np.minimum(line.end, np.r_[line.start[1:], np.inf])
        kept.append(dataclasses.replace(line, end=end))
    return concat(kept).sorted()


# --- shared notation ----------------------------------------------------------------------------


def _parse_quantized(notes: Notes, *, qpm: float, meters, keys, **midi_options):
    """Notes -> MIDI -> music21 Score quantised to 16ths and triplets (see module docstring)."""
    with tempfile.TemporaryDirectory(prefix="jaxcomposer-score-") as tmp:
        midi_path = os.path.join(tmp, "score.mid")
        # music21 cuts the bars by every time signature in the file, so they come out right.
        midi_io.write_midi(
            midi_path, notes, qpm=qpm, time_signatures=meters, key_signatures=keys, **midi_options
        )
        # forceSource/storePickle: never music21's pickle cache (see data/corpus.read_score).
        return converter.parse(
            midi_path, format="midi", quantizePost=True, quarterLengthDivisors=(4, 3),
            forceSource=True, storePickle=False,
        )  # fmt: skip


def _strip(score) -> None:
    """Removes what music21's MIDI reader put in: metronome marks, instruments (set again
    below), clefs, keys and metres (set again once per staff, at bar lines)."""
    drop = (tempo.MetronomeMark, key.KeySignature, clef.Clef, meter.TimeSignature)
    for element in list(score.recurse().getElementsByClass((*drop, instrument.Instrument))):
        element.activeSite.remove(element)


def _staff_accidentals(measure, k, past_measure: list) -> None:
    """Accidentals of one staff's measure under key `k`, over all its voices in time order (an
    alto F# then a soprano F in the bar needs a natural), by music21's updateAccidentalDisplay:
    shown on a chromatic note, not again in the bar (unless another spelling of that step came
    between), not on a tie's continuation; courtesy naturals after last bar's accidentals."""
    events = sorted(
        ((float(n.getOffsetInHierarchy(measure)), n) for n in measure.recurse().notes),
        key=lambda e: e[0],
    )
    past: list = []
    altered = k.alteredPitches
    for _, n in events:
        tied = n.tie is not None and n.tie.type in ("stop", "continue")
        for p in n.pitches:
            p.updateAccidentalDisplay(
                pitchPast=past, pitchPastMeasure=past_measure, alteredPitches=altered,
                cautionaryPitchClass=True, overrideStatus=True, lastNoteWasTied=tied,
                cautionaryNotImmediateRepeat=False,  # an accidental holds to the bar line
            )  # fmt: skip
            past.append(p)


def _notate_staff(part, part_clef, meters, keys) -> None:
    """Clef, key and time signatures at their bar lines; notes spelled in the key; accidentals."""
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
        _staff_accidentals(measure, k, past)
        past = [p for n in measure.recurse().notes for p in n.pitches]


def _grand_staff(score, staves: list, *, title: str, qpm: float, meters, keys) -> None:
    """Puts two staves (treble over bass) into `score` as ONE Piano part: music21 writes the
    PartStaffs of a StaffGroup as a single <part> with <staves>2</staves>. Adds the instrument
    (General MIDI program 1 in MusicXML's 1-based numbering), the tempo mark (a metronome
    direction with <sound tempo>) and the title."""
    _pad_measures(staves)
    for staff in staves:  # music21 ends each part with a final bar line: only the last keeps it
        measures = list(staff.getElementsByClass(stream.Measure))
        for measure in measures:
            measure.rightBarline = None
        measures[-1].rightBarline = bar.Barline("final")
    parts = []
    for staff, part_clef in zip(staves, (clef.TrebleClef(), clef.BassClef()), strict=True):
        part = stream.PartStaff(list(staff.getElementsByClass(stream.Measure)))
        _notate_staff(part, part_clef, meters, keys)
        score.insert(0, part)
        parts.append(part)
    piano = instrument.Piano()
    piano.partName, piano.partAbbreviation = "Piano", "Pno."
    piano.midiProgram = 0  # 0-based here; MusicXML shows 1
    for part in parts:  # the same instrument on both staves, or music21 writes a second one
        part.insert(0, copy.deepcopy(piano))
    mark = tempo.MetronomeMark(number=round(qpm, 1), referent=1.0)  # quarter = qpm
    mark.placement = "above"  # MuseScore otherwise sets it between the staves
    parts[0].getElementsByClass(stream.Measure).first().insert(0, mark)
    score.insert(0, layout.StaffGroup(parts, name="Piano", symbol="brace", barTogether=True))
    score.metadata = metadata.Metadata(title=title, composer="jaxcomposer")


def _pad_measures(parts: list) -> None:
    """Gives every part as many measures as the longest (rests), so voices line up bar by bar."""
    longest = max(parts, key=lambda p: len(p.getElementsByClass(stream.Measure)))
    template = list(longest.getElementsByClass(stream.Measure))
    for part in parts:
        have = len(part.getElementsByClass(stream.Measure))
        for m in template[have:]:
            measure = stream.Measure(number=m.number)
            measure.append(note.Rest(quarterLength=m.barDuration.quarterLength))
            part.append(measure)


def _voice_staves(score, names: list, time_signature: tuple[int, int]) -> list:
    """[treble, bass] parts from the four voice parts of `score` (`names`: each part's name,
    one of `VOICE_NAMES`): soprano and alto as voices 1 and 2 of the treble staff (stems up,
    down), tenor and bass as voices 5 and 6 of the bass staff (MuseScore's numbering, 4 per
    staff), by music21's partsToVoices; a silent voice gets rests."""
    by_name = {}
    for part, name in zip(list(score.parts), names, strict=True):
        by_name[name] = part
        score.remove(part)
    found = [by_name.get(name) for name in VOICE_NAMES]
    template = next((p for p in found if p is not None), None) or _one_bar_of_rest(time_signature)
    parts = [p if p is not None else _rest_part(template) for p in found]
    _pad_measures(parts)
    for part in parts:
        # A voice is one line: music21 makes inner voices only for overlaps, which voice_lines
        # has removed (a quantisation overlap may leave one); flatten any back into the bar.
        for measure in part.getElementsByClass(stream.Measure):
            if measure.hasVoices():
                measure.flattenUnnecessaryVoices(force=True, inPlace=True)
    staves = list(stream.Score(parts).partsToVoices(voiceAllocation=2, setStems=True).parts)
    for staff, first_id in zip(staves, (1, 5), strict=True):
        for measure in staff.getElementsByClass(stream.Measure):
            for number, voice in enumerate(measure.voices):
                voice.id = str(first_id + number)
            _share_rests(measure)
    return staves


def _share_rests(measure) -> None:
    """Where both voices of a staff rest together for the same time, one rest is printed (the
    lower voice's is hidden, as engravers do); the MusicXML still has both voices' rests."""
    if len(measure.voices) != 2:
        return
    upper, lower = measure.voices
    upper_rests = {
        (float(r.offset), float(r.quarterLength)) for r in upper.getElementsByClass(note.Rest)
    }
    for rest in lower.getElementsByClass(note.Rest):
        if (float(rest.offset), float(rest.quarterLength)) in upper_rests:
            rest.style.hideObjectOnPrint = True


LOWEST_NOTATABLE = 12  # C0: MusicXML has no octave -1 (MIDI 0-11)


def notatable(notes: Notes) -> Notes:
    """`notes` with every pitch below C0 (MIDI 0-11) raised an octave (to MIDI 12-23), and a
    warning saying how many; the MIDI and audio keep the pitches as played."""
    low = notes.pitch < LOWEST_NOTATABLE
    if not low.any():
        return notes
    raised = notes.pitch.astype(np.int64)
    raised[low] += 12
    logging.getLogger(__name__).warning(
        "%d notes below C0 (MIDI %d) are engraved an octave higher: MusicXML has no "
        "octave -1", int(low.sum()), LOWEST_NOTATABLE,
    )  # fmt: skip
    return dataclasses.replace(notes, pitch=raised.astype(notes.pitch.dtype))


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
    voices: bool = True,
    guess_voices: bool = False,
    given: Notes | None = None,
):
    """music21 Score: one Piano part on a braced grand staff (treble over bass), with key and
    time signatures, the instrument and a tempo mark (quarter = `qpm`).

    Four-part music (`four_voices(notes, guess=guess_voices)`, unless `voices=False`) is
    engraved as a short score:
    soprano and alto as two voices of the treble staff (stems up, down), tenor and bass of the
    bass staff, each voice with its own rests and ties. Other music goes to the two hands,
    split at middle C; `one_voice_per_hand` engraves `chords_per_hand(notes)`: far easier to
    read than the extra voices music21 makes for every overlap (and twice as fast to build).
    `time_signature` and `key_number` hold from beat 0 until the first of `time_signatures` /
    `key_signatures` (beats); each change is engraved at the first bar line at or after it, on
    both staves. `given`: notes fixed in advance (a melody harmonized, the kept bars of an
    infill; beats), whose noteheads are engraved in GIVEN_COLOUR (`mark_given`). Notes below C0
    (MIDI 12) are engraved an octave or more higher, with a warning: MusicXML's <octave> runs
    from 0 to 9 (`notatable`)."""
    notes = notatable(notes)
    voiced = four_voices(notes, guess=guess_voices) if voices else None
    if voiced is not None:
        notes = voice_lines(voiced)
    else:
        notes = playable_notes(notes)
        if one_voice_per_hand:
            notes = chords_per_hand(notes)
    end = float(notes.end.max(initial=0.0))
    meters = meter_map(time_signature, time_signatures, end)
    keys = key_map(key_number, key_signatures, end)
    first = (meters[0].numerator, meters[0].denominator)  # rests need the metres
    if voiced is not None:
        score = _parse_quantized(notes, qpm=qpm, meters=meters, keys=keys, voice_names=VOICE_NAMES)
        names = [part.partName for part in score.parts]  # from the instruments _strip removes
        _strip(score)
        staves = _voice_staves(score, names, first)
    else:
        score = _parse_quantized(notes, qpm=qpm, meters=meters, keys=keys, split_hands_at=MIDDLE_C)
        _strip(score)
        staves = _two_hands(score, first)
    for part in list(score.parts):
        score.remove(part)
    _grand_staff(score, staves, title=title, qpm=qpm, meters=meters, keys=keys)
    if given is not None and len(given):
        mark_given(score, given)
    return score


GIVEN_COLOUR = "#c0392b"  # noteheads of the notes fixed in advance (red)


def mark_given(score, given: Notes, colour: str = GIVEN_COLOUR) -> int:
    """Colours every note of the music21 `score` that starts a note of `given` (same pitch and
    onset, beats = quarter notes) or continues one by a tie (a given note tied over a bar line
    is coloured in both bars); MusicXML writes the colour and verovio engraves it. A note of
    another voice struck with the same pitch at the same onset is coloured too. Returns the
    number of noteheads coloured."""
    spans: dict[int, list[tuple[float, float]]] = {}
    for p, a, b in zip(given.pitch.tolist(), given.start.tolist(), given.end.tolist(),
                       strict=True):  # fmt: skip
        spans.setdefault(int(p), []).append((float(a) - 1e-6, float(b) - 1e-6))
    coloured = 0
    for element in score.recurse().notes:
        onset = float(element.getOffsetInHierarchy(score))
        for n in getattr(element, "notes", None) or [element]:
            tied = n.tie is not None and n.tie.type in ("stop", "continue")
            if any(abs(onset - a - 1e-6) < 1e-4 or (tied and a <= onset < b)
                   for a, b in spans.get(int(n.pitch.midi), ())):  # fmt: skip
                n.style.color = colour
                coloured += 1
    return coloured


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
    voices: bool = True,
    guess_voices: bool = False,
    given: Notes | None = None,
) -> int:
    """Writes a grand-staff MusicXML score (one Piano part, two staves, tempo mark; four voices
    for four-part music); returns the opening key number (estimated if None).
    Time and key signatures, `voices`, `guess_voices` and `given` as `build_score` takes them."""
    if key_number is None:
        key_number, _ = estimate_key(notes)
    score = build_score(
        notes, title=title, qpm=qpm, time_signature=time_signature, key_number=key_number,
        one_voice_per_hand=one_voice_per_hand, time_signatures=time_signatures,
        key_signatures=key_signatures, voices=voices, guess_voices=guess_voices, given=given,
    )  # fmt: skip
    atomic.write_bytes(path, GeneralObjectExporter(score).parse())
    return key_number


VEROVIO_DATA = str(importlib.resources.files("verovio") / "data")


def engrave(musicxml: str, options: dict | None = None) -> list[str]:
    """MusicXML text -> one SVG document per page (verovio). ValueError when verovio cannot
    load its fonts or the MusicXML, or engraves no pages."""
    # verovio 6 loads its fonts per thread from the resource path set at import: a toolkit made
    # in another thread (the studio's worker) finds none, so every toolkit is pointed at the
    # package's data itself.
    toolkit = verovio.toolkit(False)
    if not toolkit.setResourcePath(VEROVIO_DATA):
        raise ValueError(f"verovio could not load its fonts from {VEROVIO_DATA}")
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


# SMuFL metronome glyphs (private-use code points of verovio's Leipzig text font, which cairosvg
# cannot load: it draws an empty box) -> the Unicode music symbols of DejaVu Sans, Debian's default.
_SMUFL_TEXT = {"\ueca5": "\u2669", "\ueca7": "\u266a", "\uecb7": "."}
_SMUFL_TSPAN = re.compile(
    r'<tspan font-family="Leipzig" font-size="(\d+(?:\.\d+)?)px">([\ueca5\ueca7\uecb7]+)</tspan>'
)


def _unicode_music_text(svg: str) -> str:
    """The tempo mark's note as a text-font glyph (2/3 of the music font's size looks right)."""
    return _SMUFL_TSPAN.sub(
        lambda m: (
            f'<tspan font-family="DejaVu Sans" font-size="{float(m.group(1)) * 2 / 3:g}px">'
            + "".join(_SMUFL_TEXT[c] for c in m.group(2))
            + "</tspan>"
        ),
        svg,
    )


def write_png(pages: list[str], png_path: str, *, scale: float = PNG_SCALE) -> None:
    """All pages, stacked, as one PNG on white; the tempo mark's note drawn from a text font
    (the SVG pages keep verovio's embedded music font, which browsers show)."""
    png = cairosvg.svg2png(
        bytestring=_unicode_music_text(stack_pages(pages)).encode("utf-8"),
        background_color="white",
        scale=scale,
    )
    atomic.write_bytes(png_path, png)


def render_score(musicxml_path: str, svg_stem: str, png_path: str) -> list[str]:
    """MusicXML file -> SVG pages (stem-N.svg) + a PNG of all pages; returns the SVG paths."""
    with open(musicxml_path, encoding="utf-8") as f:
        pages = engrave(f.read())
    paths = write_svg_pages(pages, svg_stem)
    write_png(pages, png_path)
    return paths
