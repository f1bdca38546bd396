"""midi_io: beats through tempo maps, merging/filtering, write -> read round trips, bad files."""

import os

import midi_factory as mf
import mido
import numpy as np
import pretty_midi
import pytest
from midi_factory import pretty_midi_beats

from configs import tiny
from jaxcomposer import config_lib
from jaxcomposer.data import midi_io
from jaxcomposer.data.midi_io import MidiReadError
from jaxcomposer.music.notes import KeySignature, TimeSignature, make_notes

DATA = config_lib.freeze(tiny.get_config()).data


def data_with(**fields):
    import dataclasses

    return dataclasses.replace(DATA, **fields)


def sorted_tuples(notes):
    return sorted(notes.as_tuples())


def test_notes_come_back_in_beats_through_a_tempo_change(tmp_path):
    spec = [(60, 0, 1), (62, 2, 3), (64, 4, 5.5), (65, 7.25, 8)]
    events = [mf.tempo(0, 120), mf.tempo(2 * 480, 60), mf.tempo(5 * 480, 200)]
    path = mf.write_midi_file(tmp_path / "tempo.mid", [events + mf.notes(spec)])
    piece, stats = midi_io.read_midi(path, DATA)
    assert piece.notes.as_tuples() == [(p, float(a), float(b), 80) for p, a, b in spec]
    assert [(t.beat, round(t.qpm, 3)) for t in piece.tempos] == [(0, 120), (2, 60), (5, 200)]
    # pretty_midi puts beat 2 at 1.0 s and beat 4 at 3.0 s; mapped back, the same beats.
    assert pretty_midi_beats(path) == sorted_tuples(piece.notes)
    assert stats["notes"] == 4 and stats["resolution"] == 480


def test_odd_resolution_and_tempo_on_a_later_track(tmp_path):
    spec = [(60, 0, 1 / 3), (67, 1 / 3, 2 / 3), (72, 5 / 6, 7)]
    tracks = [[mf.tempo(0, 90)], mf.notes(spec, tpb=96) + [mf.tempo(96 * 3, 150)]]
    path = mf.write_midi_file(tmp_path / "late.mid", tracks, tpb=96)
    piece, _ = midi_io.read_midi(path, DATA)
    assert np.allclose(piece.notes.start, [0, 1 / 3, 5 / 6]) and np.allclose(
        piece.notes.end, [1 / 3, 2 / 3, 7]
    )
    # Unlike pretty_midi (track 0 only), a tempo event on any track counts.
    assert [round(t.qpm) for t in piece.tempos] == [90, 150]


def test_meter_and_key_events_in_beats(tmp_path):
    events = [
        (0, mido.MetaMessage("time_signature", numerator=3, denominator=4)),
        (0, mido.MetaMessage("key_signature", key="D")),
        (3 * 480, mido.MetaMessage("time_signature", numerator=6, denominator=8)),
        (3 * 480, mido.MetaMessage("key_signature", key="Bm")),
        (6 * 480, mido.MetaMessage("key_signature", key="Eb")),
    ]
    path = mf.write_midi_file(tmp_path / "meter.mid", [events + mf.notes([(60, 0, 9)])])
    piece, _ = midi_io.read_midi(path, DATA)
    assert piece.time_signatures == (TimeSignature(0.0, 3, 4), TimeSignature(3.0, 6, 8))
    pm = pretty_midi.PrettyMIDI(path)
    assert [k.key_number for k in piece.key_signatures] == [
        k.key_number for k in pm.key_signature_changes
    ]
    assert [k.beat for k in piece.key_signatures] == [0.0, 3.0, 6.0]
    assert [k.key_number for k in piece.key_signatures] == [2, 23, 3]


def test_drums_dropped_and_instruments_merged_with_programs(tmp_path):
    piano = [mf.program(0, 0, 0)] + mf.notes([(60, 0, 1), (64, 1, 2)], channel=0)
    strings = [mf.program(0, 40, 1)] + mf.notes([(72, 0, 2)], channel=1)
    drums = mf.notes([(36, 0, 0.5), (38, 1, 1.5), (42, 1, 1.25)], channel=9)
    path = mf.write_midi_file(tmp_path / "band.mid", [[mf.tempo(0, 100)], piano, strings, drums])
    piece, stats = midi_io.read_midi(path, DATA)
    assert stats["drum_notes"] == 3 and stats["notes"] == 3
    assert sorted(zip(piece.notes.pitch.tolist(), piece.notes.program.tolist(), strict=True)) == [
        (60, 0),
        (64, 0),
        (72, 40),
    ]
    assert not piece.notes.is_drum.any()
    assert pretty_midi_beats(path) == sorted_tuples(piece.notes)

    only_strings, stats = midi_io.read_midi(path, data_with(programs=(40,)))
    assert only_strings.notes.pitch.tolist() == [72] and stats["program_filtered_notes"] == 2
    with pytest.raises(MidiReadError, match="no pitched notes left.*other programs"):
        midi_io.read_midi(path, data_with(programs=(5,)))


def test_overlapping_same_pitch_notes_pair_like_pretty_midi(tmp_path):
    events = [  # a re-struck note, a note-off and note-on at one tick, a spurious note-off
        *mf.note(60, 0, 2),
        *mf.note(60, 1, 3),
        *mf.note(62, 0, 1),
        *mf.note(62, 1, 2),
        (5 * 480, mido.Message("note_off", note=70)),
    ]
    path = mf.write_midi_file(tmp_path / "overlap.mid", [events])
    piece, _ = midi_io.read_midi(path, DATA)
    assert pretty_midi_beats(path) == sorted_tuples(piece.notes)


def test_zero_length_notes_dropped_and_counted(tmp_path):
    path = mf.write_midi_file(
        tmp_path / "some.mid", [mf.notes([(60, 0, 1), (62, 1, 1), (64, 2, 2)])]
    )
    piece, stats = midi_io.read_midi(path, DATA)
    assert piece.notes.pitch.tolist() == [60] and stats["zero_length_notes"] == 2
    path = mf.write_midi_file(tmp_path / "all.mid", [mf.notes([(62, 1, 1), (64, 2, 2)])])
    with pytest.raises(MidiReadError, match=r"all\.mid.*no pitched notes left.*2 zero-length"):
        midi_io.read_midi(path, DATA)


def test_write_then_read_round_trip(tmp_path):
    notes = make_notes(
        [60, 64, 67, 40, 91],
        [0, 0.5, 1.25, 0, 3.0],
        [0.5, 1.25, 2, 4, 3 + 1 / 3],
        velocity=[10, 50, 90, 127, 64],
    )
    path = str(tmp_path / "out" / "song.mid")
    midi_io.write_midi(
        path,
        notes,
        qpm=90,
        time_signatures=[TimeSignature(0, 3, 4)],
        key_signatures=[KeySignature(0, 21)],
    )
    piece, _ = midi_io.read_midi(path, DATA)
    assert piece.notes.as_tuples() == [
        (p, a, b, v)
        for p, a, b, v in sorted(
            zip(
                [60, 40, 64, 67, 91],
                [0, 0, 0.5, 1.25, 3.0],
                [0.5, 4, 1.25, 2, 3 + 1 / 3],
                [10, 127, 50, 90, 64],
                strict=True,
            ),
            key=lambda t: (t[1], t[0]),
        )
    ]
    assert piece.tempos[0].qpm == pytest.approx(90, rel=1e-5)  # whole microseconds per beat
    assert piece.time_signatures == (TimeSignature(0.0, 3, 4),)
    assert piece.key_signatures == (KeySignature(0.0, 21),)
    assert os.listdir(tmp_path / "out") == ["song.mid"]  # no temporary file left behind


def test_write_split_hands_makes_two_instruments(tmp_path):
    notes = make_notes([48, 55, 60, 72, 59], [0, 1, 0, 1, 2], [1, 2, 1, 2, 3])
    path = str(tmp_path / "hands.mid")
    midi_io.write_midi(path, notes, split_hands_at=60)
    pm = pretty_midi.PrettyMIDI(path)
    assert [sorted(n.pitch for n in inst.notes) for inst in pm.instruments] == [
        [60, 72],
        [48, 55, 59],
    ]
    piece, _ = midi_io.read_midi(path, DATA)
    assert piece.notes == notes


def test_write_rejects_impossible_notes(tmp_path):
    with pytest.raises(ValueError, match="start < end"):
        midi_io.write_midi(str(tmp_path / "x.mid"), make_notes([60], [1.0], [1.0]))
    assert not os.path.exists(tmp_path / "x.mid")


def valid_bytes(tmp_path) -> bytes:
    path = mf.simple_file(tmp_path / "ok.mid", mf.melody(0, length=40))
    return open(path, "rb").read()


def raw_file(tmp_path, name, raw: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(raw)
    return str(path)


BAD_CASES = {
    "empty": (lambda ok: b"", "empty file"),
    "text": (lambda ok: b"this is not music\n" * 5, "not a MIDI file"),
    "png": (lambda ok: b"\x89PNG\r\n\x1a\n" + bytes(100), "not a MIDI file"),
    "truncated": (lambda ok: ok[: len(ok) // 2], "truncated"),
    "garbage_track": (lambda ok: ok[:22] + bytes([0x00, 0x45, 0x10]) + ok[25:], "corrupt track 0"),
    "bad_status": (lambda ok: ok[:22] + bytes([0x00, 0xF4, 0x10]) + ok[25:], "corrupt track 0"),
    "smpte": (lambda ok: ok[:12] + bytes([0xE7, 0x28]) + ok[14:], "SMPTE"),
    "header_only": (lambda ok: ok[:14], "truncated"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_bytes_raise_a_clear_error(tmp_path, case):
    make, reason = BAD_CASES[case]
    path = raw_file(tmp_path, f"{case}.mid", make(valid_bytes(tmp_path)))
    with pytest.raises(MidiReadError, match=reason) as info:
        midi_io.read_midi(path, DATA)
    assert path in str(info.value) and isinstance(info.value, ValueError)


def test_thousands_of_tracks_rejected_from_the_header(tmp_path):
    path = mf.write_midi_file(tmp_path / "tracks.mid", [[] for _ in range(5000)])
    with pytest.raises(MidiReadError, match="absurd: 5000 tracks"):
        midi_io.read_midi(path, DATA)


def test_drum_only_file(tmp_path):
    path = mf.write_midi_file(
        tmp_path / "drums.mid", [mf.notes([(36, 0, 1), (38, 1, 2)], channel=9)]
    )
    with pytest.raises(MidiReadError, match="drum-only"):
        midi_io.read_midi(path, DATA)


@pytest.mark.parametrize("qpm", [1e7, 4.0])
def test_extreme_tempo_is_absurd(tmp_path, qpm):
    path = mf.write_midi_file(tmp_path / "tempo.mid", [[mf.tempo(0, qpm)] + mf.notes([(60, 0, 1)])])
    with pytest.raises(MidiReadError, match="absurd tempo"):
        midi_io.read_midi(path, data_with(min_qpm=10.0))


def test_zero_tempo_is_absurd(tmp_path):
    path = mf.write_midi_file(
        tmp_path / "t0.mid",
        [[(0, mido.MetaMessage("set_tempo", tempo=0))] + mf.notes([(60, 0, 1)])],
    )
    with pytest.raises(MidiReadError, match="absurd tempo inf"):
        midi_io.read_midi(path, DATA)


def test_too_many_notes_or_beats_is_absurd(tmp_path):
    path = mf.simple_file(tmp_path / "long.mid", [(60 + i % 12, i, i + 1) for i in range(50)])
    with pytest.raises(MidiReadError, match="absurd: more than 20 notes"):
        midi_io.read_midi(path, data_with(max_notes=20))
    with pytest.raises(MidiReadError, match="absurd: 50 beats long"):
        midi_io.read_midi(path, data_with(max_beats=40.0))
    piece, _ = midi_io.read_midi(path, data_with(max_notes=50, max_beats=50.0))
    assert len(piece.notes) == 50


def test_damaged_files_only_ever_raise_midi_read_error(tmp_path):
    """Random byte damage: each file either reads or raises MidiReadError, never anything else."""
    ok = valid_bytes(tmp_path)
    rng = np.random.default_rng(0)
    outcomes = {"read": 0, "rejected": 0}
    for trial in range(300):
        damaged = bytearray(ok)
        for _ in range(int(rng.integers(1, 6))):
            damaged[int(rng.integers(0, len(damaged)))] = int(rng.integers(0, 256))
        if trial % 3 == 0:
            damaged = damaged[: int(rng.integers(0, len(damaged)))]
        try:
            midi_io.read_midi_bytes(bytes(damaged), DATA, path="damaged.mid", name="damaged.mid")
            outcomes["read"] += 1
        except MidiReadError as e:
            assert str(e).startswith("damaged.mid: ")
            outcomes["rejected"] += 1
    assert outcomes["read"] > 0 and outcomes["rejected"] > 0


def test_overlong_delta_time_is_corrupt(tmp_path):
    ok = valid_bytes(tmp_path)
    track = b"\xff" * 12 + b"\x7f" + b"\x90\x3c\x40" + b"\x00\xff\x2f\x00"
    raw = ok[:14] + b"MTrk" + len(track).to_bytes(4, "big") + track
    with pytest.raises(MidiReadError, match="impossible tick"):
        midi_io.read_midi_bytes(raw, DATA, path="long.mid", name="long.mid")
