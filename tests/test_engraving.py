"""Engraving: the MusicXML a notation program opens (one Piano part, two staves, instrument,
tempo) and four-part music as four voices on two staves (MusicXML and MIDI), reopened by
music21 / pretty_midi and compared with the notes that went in."""

from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from jaxcomposer.music.notes import concat, make_notes
from jaxcomposer.render import outputs, score

QPM = 93.0


def four_part_piece():
    """Two bars of 4/4 in C major with known voices: a soprano note tied over the bar line, an
    alto rest, a tenor note struck twice (no tie), a bass eighth; the alto's F#4 then the
    soprano's F#4 in the same bar (one sharp on the staff is enough)."""
    voices = [
        [(69, 0, 1), (67, 1, 2), (66, 2, 3), (72, 3, 5), (71, 5, 6), (72, 6, 8)],  # soprano
        [(66, 0, 1), (62, 1, 2), (64, 3, 4), (65, 4, 6), (64, 6, 8)],  # alto: rest 2-3
        [(60, 0, 2), (60, 2, 4), (62, 4, 5), (59, 5, 6), (60, 6, 8)],  # tenor
        [(50, 0, 2), (48, 2, 4), (43, 4, 6), (48, 6, 7.5), (36, 7.5, 8)],  # bass
    ]
    parts = []
    for v, rows in enumerate(voices):
        p, a, b = zip(*rows, strict=True)
        parts.append(make_notes(p, a, b, voice=[v] * len(rows)))
    return concat(parts)


def _attacks(xml_part) -> dict:
    """music21 PartStaff -> {voice id: [(midi pitch, onset, duration in quarters)]}, ties
    joined (a continuation lengthens the note it continues)."""
    lines: dict = {}
    for measure in xml_part.getElementsByClass("Measure"):
        for voice in measure.voices:
            line = lines.setdefault(voice.id, [])
            for n in voice.notes:
                onset = float(measure.offset + n.offset)
                if n.tie is not None and n.tie.type in ("stop", "continue"):
                    pitch, start, length = line[-1]
                    assert pitch == n.pitch.midi and start + length == pytest.approx(onset)
                    line[-1] = (pitch, start, length + float(n.quarterLength))
                else:
                    line.append((int(n.pitch.midi), onset, float(n.quarterLength)))
    return lines


def _expected(notes, voice: int) -> list:
    line = notes[notes.voice == voice].sorted()
    return [
        (int(p), float(a), float(b - a))
        for p, a, b in zip(line.pitch, line.start, line.end, strict=True)
    ]


def _one_piano_part(path: str) -> ET.Element:
    """The MusicXML is a single Piano part on two staves with General MIDI program 1 and a tempo
    mark at QPM (a metronome direction plus <sound tempo>); returns that <part>."""
    root = ET.parse(path).getroot()
    (score_part,) = root.findall("part-list/score-part")
    assert score_part.findtext("part-name") == "Piano"
    assert score_part.findtext("score-instrument/instrument-name") == "Piano"
    assert score_part.findtext("midi-instrument/midi-program") == "1"
    (part,) = root.findall("part")
    assert part.get("id") == score_part.get("id")
    assert part.findtext("measure/attributes/staves") == "2"
    assert not part.findall(".//note/instrument")  # no instrument changes inside the part
    assert float(part.find("measure/direction/sound").get("tempo")) == QPM
    assert float(part.findtext("measure/direction/direction-type/metronome/per-minute")) == QPM
    return part


def _reopened_grand_staff(path: str):
    """music21 reads one part of two staves as two PartStaffs joined by a StaffGroup."""
    from music21 import clef, converter, layout, stream, tempo

    parsed = converter.parse(path)
    treble, bass = parsed.parts
    assert all(isinstance(p, stream.PartStaff) for p in (treble, bass))
    (group,) = parsed.getElementsByClass(layout.StaffGroup)
    assert list(group) == [treble, bass] and group.symbol == "brace"
    assert isinstance(treble.recurse().getElementsByClass(clef.Clef).first(), clef.TrebleClef)
    assert isinstance(bass.recurse().getElementsByClass(clef.Clef).first(), clef.BassClef)
    marks = list(parsed.recurse().getElementsByClass(tempo.MetronomeMark))
    assert [m.getQuarterBPM() for m in marks] == [QPM]
    return treble, bass


def test_piano_route_is_one_part_with_two_staves_an_instrument_and_the_tempo(tmp_path):
    # The right hand stops after bar 1, the left plays on: the treble staff gets a bar of rest,
    # and only the last bar ends with the final bar line.
    notes = make_notes([72, 76, 79, 48, 55, 43], [0, 1, 2, 0, 2, 4], [1, 2, 4, 2, 4, 8])
    path = str(tmp_path / "piano.musicxml")
    score.write_musicxml(path, notes, title="piano", qpm=QPM, key_number=0)
    part = _one_piano_part(path)
    measures = part.findall("measure")
    assert len(measures) == 2
    for measure in measures:
        assert {n.findtext("staff") for n in measure.iter("note")} == {"1", "2"}
    assert [m.findtext("barline/bar-style") for m in measures] == [None, "light-heavy"]
    treble, bass = _reopened_grand_staff(path)
    pitches = sorted(
        int(p.midi) for s in (treble, bass) for n in s.recurse().notes for p in n.pitches
    )
    assert pitches == sorted(notes.pitch.tolist())


@pytest.fixture(scope="module")
def four_part(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("voices"))
    notes = four_part_piece()
    info = outputs.render_sample(out_dir, "satb", notes, title="SATB", qpm=QPM, key_number=0)
    assert info["errors"] == {}
    return out_dir, notes, info


def test_four_voices_on_two_staves_with_their_pitches_stems_and_rests(four_part):
    out_dir, notes, info = four_part
    path = os.path.join(out_dir, info["musicxml"])
    _one_piano_part(path)
    treble, bass = _reopened_grand_staff(path)
    for staff, (upper, lower) in ((treble, (0, 1)), (bass, (2, 3))):
        lines = _attacks(staff)
        assert len(lines) == 2
        first, second = sorted(lines, key=int)
        assert lines[first] == _expected(notes, upper)  # the tie over the bar line is joined
        assert lines[second] == _expected(notes, lower)
        for measure in staff.getElementsByClass("Measure"):
            high, low = sorted(measure.voices, key=lambda v: int(v.id))
            assert {n.stemDirection for n in high.notes} == {"up"}
            assert {n.stemDirection for n in low.notes} == {"down"}
            for v in (high, low):  # every voice fills its bar (rests where it is silent)
                assert v.duration.quarterLength == measure.barDuration.quarterLength
    alto_bar_1 = sorted(
        treble.getElementsByClass("Measure").first().voices, key=lambda v: int(v.id)
    )[1]
    assert [type(e).__name__ for e in alto_bar_1.notesAndRests] == ["Note", "Note", "Rest", "Note"]
    # Tenor C4 struck twice: two notes, no tie; soprano C5 held over the bar line: a tie.
    tenor = _attacks(bass)[sorted(_attacks(bass), key=int)[0]]
    assert tenor[:2] == [(60, 0.0, 2.0), (60, 2.0, 2.0)]


def test_accidentals_count_for_the_whole_staff(four_part):
    # Bar 1 of the treble staff: the alto's F#4 (beat 1) shows a sharp; the soprano's F#4 on beat 3
    # of that bar needs none (an accidental holds for the staff to the bar line, in every voice).
    out_dir, _, info = four_part
    part = ET.parse(os.path.join(out_dir, info["musicxml"])).getroot().find("part")
    bar_1 = part.find("measure")
    f_sharps = [
        (n.findtext("voice"), n.findtext("accidental"))
        for n in bar_1.iter("note")
        if n.findtext("pitch/step") == "F" and n.findtext("pitch/octave") == "4"
    ]
    assert sorted(f_sharps) == [("1", None), ("2", "sharp")]


def test_midi_has_one_named_track_per_voice(four_part):
    import pretty_midi

    out_dir, notes, info = four_part
    pm = pretty_midi.PrettyMIDI(os.path.join(out_dir, info["midi"]))
    assert [i.name for i in pm.instruments] == list(score.VOICE_NAMES)
    assert pm.get_tempo_changes()[1].tolist() == [pytest.approx(QPM)]
    for v, track in enumerate(pm.instruments):
        got = [
            (n.pitch, round(n.start * QPM / 60, 3), round(n.end * QPM / 60, 3)) for n in track.notes
        ]
        assert got == [(p, a, a + d) for p, a, d in _expected(notes, v)]


def test_tempo_note_is_drawn_from_a_text_font_in_the_png(four_part):
    # verovio writes the tempo mark's note as a Leipzig private-use glyph, which cairosvg draws as
    # an empty box; the PNG gets the Unicode quarter note instead. The SVG pages keep the glyph.
    out_dir, _, info = four_part
    with open(os.path.join(out_dir, info["svg"][0]), encoding="utf-8") as f:
        svg = f.read()
    assert "\ueca5" in svg and "\u2669" not in svg
    fixed = score._unicode_music_text(svg)
    assert "\ueca5" not in fixed and fixed.count("\u2669") == svg.count("\ueca5") == 1


def test_four_voices_rules_and_assignment_by_rank_and_voice_leading():
    notes = four_part_piece()
    assert score.four_voices(notes) is notes
    unknown = make_notes(notes.pitch, notes.start, notes.end)
    assert score.four_voices(unknown) is None  # no guessing unless asked
    partly = make_notes(notes.pitch, notes.start, notes.end, voice=np.r_[notes.voice[:-1], -1])
    assert score.four_voices(partly, guess=True) is None
    five = make_notes([72, 67, 64, 60, 48], [0] * 5, [1] * 5)
    assert score.four_voices(five, guess=True) is None
    guessed = score.four_voices(unknown, guess=True)
    # The chorale texture comes back voice for voice (the alto's rest and the held notes too).
    assert sorted(zip(guessed.voice.tolist(), guessed.as_tuples(), strict=True)) == sorted(
        zip(notes.sorted().voice.tolist(), notes.as_tuples(), strict=True)
    )
    # By hand: at beat 1 the soprano E5 is held and F4, B2 come in: the free voices are alto
    # (last G4), tenor (C4) and bass (C3); alto + bass move least (2 + 1 semitones), so the tenor
    # rests, where filling the free voices from the top by rank would give F4 alto, B2 tenor.
    small = make_notes([76, 67, 60, 48, 65, 47], [0, 0, 0, 0, 1, 1], [2, 1, 1, 1, 2, 2])
    assert score.assign_voices(small).voice.tolist() == [3, 2, 1, 0, 3, 1]


def test_voice_lines_are_single_lines():
    notes = make_notes([72, 71, 67, 48], [0, 0, 0.5, 0], [2, 1, 1, 1], voice=[0, 0, 0, 3])
    lines = score.voice_lines(notes)
    # The soprano keeps its higher note at beat 0 and is cut at its next onset (beat 0.5).
    assert lines.as_tuples() == [(48, 0.0, 1.0, 80), (72, 0.0, 0.5, 80), (67, 0.5, 1.0, 80)]


def test_a_bach_chorale_keeps_every_voice(tmp_path):
    """bwv269 from music21's corpus (offline, in the wheel), voices from its parts."""
    from music21 import corpus

    chorale = corpus.parse("bach/bwv269")
    parts = []
    for v, part in enumerate(chorale.parts):
        flat = part.stripTies(inPlace=False).flatten().notes
        rows = np.array([(n.pitch.midi, n.offset, n.offset + n.quarterLength) for n in flat], float)
        parts.append(make_notes(rows[:, 0], rows[:, 1], rows[:, 2], voice=[v] * len(rows)))
    notes = concat(parts)
    path = str(tmp_path / "bwv269.musicxml")
    score.write_musicxml(path, notes, title="bwv269", qpm=QPM, key_number=7)
    treble, bass = _reopened_grand_staff(path)
    got = {**_attacks(treble), **_attacks(bass)}
    assert sorted(got, key=int) == ["1", "2", "5", "6"]
    for voice_id, v in zip(sorted(got, key=int), range(4), strict=True):
        assert got[voice_id] == _expected(notes, v), score.VOICE_NAMES[v]


def test_a_sample_at_the_default_written_tempo_is_marked_100(tmp_path):
    # generate() writes samples without a primer at 100 quarter notes per minute; the MusicXML
    # says so twice (MuseScore plays <sound tempo>, prints the metronome mark) and names the
    # one instrument MuseScore looks for (part-name, score-instrument, midi-instrument).
    notes = make_notes([72, 76, 48, 55], [0, 1, 0, 2], [1, 2, 2, 4])
    info = outputs.render_sample(str(tmp_path), "s", notes, title="s", skip=("png", "roll"))
    assert info["qpm"] == 100.0 and not info["errors"]
    root = ET.parse(tmp_path / info["musicxml"]).getroot()
    (score_part,) = root.findall("part-list/score-part")
    assert score_part.findtext("part-name") == "Piano"
    (instrument,) = score_part.findall("score-instrument")
    midi = score_part.find("midi-instrument")
    assert midi.get("id") == instrument.get("id") and midi.findtext("midi-program") == "1"
    assert [s.get("tempo") for s in root.iter("sound") if s.get("tempo")] == ["100"]
    assert root.findtext(".//direction-type/metronome/per-minute") == "100"
    assert root.findtext("part/measure/attributes/staves") == "2"


def test_a_score_engraves_from_a_thread_other_than_the_one_that_imported_verovio():
    """verovio 6 loads its fonts per thread: the studio's worker thread must engrave too."""
    import threading

    xml = os.path.join(tempfile.mkdtemp(), "t.musicxml")
    score.write_musicxml(xml, make_notes([60, 64, 67], [0, 1, 2], [1, 2, 4]), title="t")
    with open(xml, encoding="utf-8") as f:
        text = f.read()
    out = {}
    worker = threading.Thread(target=lambda: out.update(pages=score.engrave(text)))
    worker.start()
    worker.join()
    assert len(out["pages"]) == 1 and "<svg" in out["pages"][0]
