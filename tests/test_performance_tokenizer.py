"""The `performance` tokenizer: hand-written token lists, the sustain rule against note-seq's,
round trips (hypothesis) against an independent quantization, rejected values, the held-key
grammar rule, and old config.json files without the new fields."""

from __future__ import annotations

import dataclasses
import functools
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs import default
from jaxcomposer import config_lib
from jaxcomposer.music.notes import Piece, Tempo, beats_to_seconds, make_notes
from jaxcomposer.tokenizers import BOS, EOS, EncodingError, get_tokenizer
from jaxcomposer.tokenizers.event import velocity_centres
from jaxcomposer.tokenizers.performance import apply_sustain

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


@functools.cache
def tok(**overrides):
    config = config_lib.freeze(default.get_config()).tokenizer
    return get_tokenizer(dataclasses.replace(config, name="performance", **overrides))


def names(t, tokens) -> list[str]:
    return [t.vocab.describe(x) for x in tokens]


def tiny_performance(sustain=((4.1, 5.0),)) -> Piece:
    """At 120 qpm (beats = 2 s): 60 and 64 overlap, then 1.25 s of silence, then 67 softer,
    released at 2.1 s under a pedal held from 2.05 s to 2.5 s."""
    notes = make_notes([60, 64, 67], [0.0, 0.5, 4.0], [1.0, 1.5, 4.2], velocity=[100, 100, 40])
    return Piece("tiny.mid", notes, tempos=(Tempo(0.0, 120.0),), sustain=sustain)


def test_hand_written_tokens():
    t = tok()
    tokens = t.encode(tiny_performance())
    assert names(t, tokens) == [
        "VELOCITY(25)",  # 100 * 32 // 128
        "NOTE_ON(39)",  # 60 - 21
        "TIME_SHIFT(24)",  # 25 steps = 0.25 s
        "NOTE_ON(43)",  # same velocity bin: no VELOCITY
        "TIME_SHIFT(24)",
        "NOTE_OFF(39)",
        "TIME_SHIFT(24)",
        "NOTE_OFF(43)",
        "TIME_SHIFT(99)",  # 1.25 s = a full 1 s shift + 0.25 s
        "TIME_SHIFT(24)",
        "VELOCITY(10)",  # 40 * 32 // 128
        "NOTE_ON(46)",
        "TIME_SHIFT(49)",  # released at 2.1 s, but the pedal holds it to 2.5 s
        "NOTE_OFF(46)",
    ]
    decoded = t.decode(tokens)
    assert decoded.skipped == 0
    loud, soft = int(velocity_centres(32)[25]), int(velocity_centres(32)[10])
    assert (loud, soft) == (101, 41)
    assert decoded.notes.as_tuples() == [
        (60, 0.0, 1.0, loud), (64, 0.5, 1.5, loud), (67, 4.0, 5.0, soft),
    ]  # fmt: skip
    assert decoded.beats == 5.0


def test_pedal_off_keeps_the_written_release():
    t = tok(perf_sustain=False)
    tail = names(t, t.encode(tiny_performance()))[-2:]
    assert tail == ["TIME_SHIFT(9)", "NOTE_OFF(46)"]  # 0.1 s after the onset


def test_clock_starts_at_the_first_onset_and_tempo_map_gives_seconds():
    t = tok()
    notes = make_notes([60, 62], [10.0, 12.0], [11.0, 13.0], velocity=[64, 64])
    # 60 qpm until beat 11, then 240 qpm: beat 12 is 1 s + 0.25 s after beat 10.
    piece = Piece("tempo.mid", notes, tempos=(Tempo(0.0, 60.0), Tempo(11.0, 240.0)))
    assert names(t, t.encode(piece)) == [
        "VELOCITY(16)", "NOTE_ON(39)", "TIME_SHIFT(99)", "NOTE_OFF(39)", "TIME_SHIFT(24)",
        "NOTE_ON(41)", "TIME_SHIFT(24)", "NOTE_OFF(41)",
    ]  # fmt: skip


def note_seq_sustain(notes, sustain):
    """note-seq's apply_sustain_control_changes transcribed with objects (dicts), one instrument,
    as a second implementation to compare with."""
    ns = [dict(pitch=int(p), start=float(s), end=float(e)) for p, s, e in
          zip(notes.pitch, notes.start, notes.end, strict=True)]  # fmt: skip
    events = [(n["end"], 3, n) for n in ns] + [(n["start"], 2, n) for n in ns]
    events += [(a, 0, None) for a, _ in sustain] + [(b, 1, None) for _, b in sustain]
    events.sort(key=lambda e: e[:2])
    active, on, to_delete, time = [], False, [], 0.0
    for time, kind, note in events:
        if kind == 0:
            on = True
        elif kind == 1:
            on = False
            still = []
            for n in active:
                if n["end"] < time:
                    n["end"] = time
                else:
                    still.append(n)
            active = still
        elif kind == 2:
            if on:
                still = []
                for n in active:
                    if n["pitch"] == note["pitch"]:
                        n["end"] = time
                        if n["start"] == n["end"]:
                            to_delete.append(n)
                    else:
                        still.append(n)
                active = still
            active.append(note)
        elif not on and any(n is note for n in active):
            active = [n for n in active if n is not note]
    for n in active:
        n["end"] = time
    kept = [n for n in ns if not any(n is d for d in to_delete)]
    return sorted((n["pitch"], n["start"], n["end"]) for n in kept)


@SETTINGS
@given(
    notes=st.lists(
        st.tuples(st.sampled_from([60, 62, 64]), st.integers(0, 20), st.integers(1, 8)),
        max_size=12,
    ),
    pedals=st.lists(st.tuples(st.integers(0, 24), st.integers(1, 6)), max_size=3),
)
def test_sustain_matches_a_transcription_of_note_seq(notes, pedals):
    p, s, d = zip(*notes, strict=True) if notes else ([], [], [])
    n = make_notes(p, np.asarray(s, float) / 2, (np.asarray(s) + np.asarray(d)) / 2)
    spans = []
    for a, length in sorted(pedals):  # disjoint, as midi_io delivers them
        if spans and a <= spans[-1][1]:
            continue
        spans.append((a / 2, (a + length) / 2))
    got = sorted((int(a), float(b), float(c)) for a, b, c, _ in
                 apply_sustain(n, tuple(spans)).as_tuples())  # fmt: skip
    assert got == note_seq_sustain(n, spans)


# --- round trips -----------------------------------------------------------------------------
times = st.one_of(st.floats(0.0, 30.0, allow_nan=False), st.integers(0, 60).map(lambda k: k / 4))
lengths = st.one_of(st.sampled_from([1e-4, 0.004, 0.01, 0.5]), st.floats(1e-4, 8.0))
note_lists = st.lists(
    st.tuples(st.integers(21, 108), times, lengths, st.integers(1, 127)), max_size=30
)
tempo_maps = st.lists(st.tuples(st.floats(0.0, 20.0), st.floats(30.0, 300.0)), max_size=3).map(
    lambda ts: tuple(Tempo(b, q) for b, q in sorted(ts))
)
pedal_lists = st.lists(st.tuples(st.floats(0.0, 30.0), st.floats(0.01, 5.0)), max_size=4)


def disjoint(pedals):
    spans = []
    for a, length in sorted(pedals):
        if not spans or a > spans[-1][1]:
            spans.append((a, a + length))
    return tuple(spans)


def piece_of(notes, tempos=(), pedals=()) -> Piece:
    p, s, d, v = zip(*notes, strict=True) if notes else ([], [], [], [])
    return Piece("random.mid", make_notes(p, s, np.add(s, d), velocity=v), tempos=tempos,
                 sustain=disjoint(pedals))  # fmt: skip


@pytest.mark.parametrize("overrides", [{}, dict(perf_max_shift_steps=7, perf_velocity_bins=5)])
@SETTINGS
@given(notes=note_lists, tempos=tempo_maps, pedals=pedal_lists)
def test_round_trip(overrides, notes, tempos, pedals):
    t = tok(**overrides)
    piece = piece_of(notes, tempos, pedals)
    tokens = t.encode(piece)
    _, accepted = t.grammar.walk(np.r_[BOS, tokens, EOS], state=0)
    assert accepted.all()
    decoded = t.decode(tokens)
    assert decoded.skipped == 0
    assert decoded.notes == t.quantize(piece)
    again = Piece("again.mid", decoded.notes, tempos=(Tempo(0.0, t.decoded_qpm),))
    assert t.encode(again).tolist() == tokens.tolist()


@SETTINGS
@given(notes=note_lists, qpm=st.floats(30.0, 300.0))
def test_round_trip_is_the_10ms_32_bin_quantization(notes, qpm):
    """With one note per pitch and no pedal, decoding gives each note rounded to 10 ms (from the
    first onset) and its velocity bin's centre: computed here directly, in seconds."""
    notes = list({n[0]: n for n in notes}.values())  # one note per pitch
    t = tok()
    piece = piece_of(notes, (Tempo(0.0, qpm),))
    decoded = t.decode(t.encode(piece)).notes
    if not notes:
        assert len(decoded) == 0
        return
    p, s, d, v = (np.asarray(x) for x in zip(*notes, strict=True))
    spb = 60.0 / qpm  # seconds per beat (products in the order the tempo map uses)
    start_s, end_s = s * spb, (s + d) * spb
    on = np.floor((start_s - start_s.min()) * 100 + 0.5)
    off = np.maximum(np.floor((end_s - start_s.min()) * 100 + 0.5), on + 1)
    expected = sorted(
        (int(a), o / 100, f / 100, int(velocity_centres(32)[b * 32 // 128]))
        for a, o, f, b in zip(p, on, off, v, strict=True)
    )
    got = sorted((a, b / 2, c / 2, vel) for a, b, c, vel in decoded.as_tuples())  # in seconds
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert g[0] == e[0] and g[3] == e[3]
        assert g[1] == pytest.approx(e[1], abs=1e-9) and g[2] == pytest.approx(e[2], abs=1e-9)


def test_transposition_matches_encoding_the_shifted_piece():
    t = tok()
    piece = tiny_performance()
    up = dataclasses.replace(
        piece, notes=dataclasses.replace(piece.notes, pitch=piece.notes.pitch + 5)
    )
    assert t.transpose(t.encode(piece), 5).tolist() == t.encode(up).tolist()


# --- bad input -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "notes, tempos, message",
    [
        (make_notes([60], [0], [1], velocity=[0]), (), "bad.mid: velocity 0 is not in 1-127"),
        (make_notes([60], [-1.0], [1]), (), "bad.mid: note start -1.0 beats"),
        (make_notes([60], [0], [np.inf]), (), "bad.mid: note end inf beats"),
        (make_notes([120], [0], [1]), (), "bad.mid: 1 note(s) outside the pitch range"),
        (make_notes([60], [0], [1]), (Tempo(0.0, -5.0),), "bad.mid: tempo -5.0 qpm"),
    ],
)
def test_encode_rejects_impossible_values(notes, tempos, message):
    with pytest.raises(EncodingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tok().encode(Piece("bad.mid", notes, tempos=tempos))


# --- grammar ---------------------------------------------------------------------------------
def test_decoding_skips_and_counts_what_does_not_fit():
    t = tok()
    on, off, vel = (
        functools.partial(t.vocab.token, n) for n in ("NOTE_ON", "NOTE_OFF", "VELOCITY")
    )
    shift = functools.partial(t.vocab.token, "TIME_SHIFT")
    tokens = [
        off(39),  # nothing sounds: the table forbids it
        vel(3),
        shift(0),  # a VELOCITY must be followed by a NOTE_ON
        on(39),
        on(39),  # already sounding: the held-key rule forbids it
        off(40),  # something sounds, but not 40: the held-key rule forbids it
        shift(9),
        on(41),  # left sounding at the end: closed there, one step long at least
    ]
    decoded = t.decode(np.asarray(tokens))
    assert decoded.skipped == 4
    centre = int(velocity_centres(32)[3])
    assert decoded.notes.as_tuples() == [(60, 0.0, 0.2, centre), (62, 0.2, 0.22, centre)]


def test_config_json_without_the_performance_fields_loads_with_their_defaults():
    config = config_lib.freeze(default.get_config())
    stored = json.loads(config_lib.to_json(config))
    for key in [k for k in stored["tokenizer"] if k.startswith("perf_")]:
        del stored["tokenizer"][key]
    again = config_lib.from_json(json.dumps(stored))
    assert again == config
    with pytest.raises(KeyError, match="unknown keys"):
        config_lib.from_json(json.dumps({**stored, "tokenizer": {**stored["tokenizer"], "x": 1}}))


def test_time_through_the_tempo_map():
    tempos = (Tempo(0.0, 120.0), Tempo(4.0, 60.0))
    np.testing.assert_allclose(beats_to_seconds(np.array([0.0, 2.0, 4.0, 5.0]), tempos),
                               [0.0, 1.0, 2.0, 3.0])  # fmt: skip
