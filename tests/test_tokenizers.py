"""Tokenizers on hand-made examples: expected token lists written out, music21's normal order on
all 4095 pitch-class sets, meter handling, precise encoding errors, skipped-token counts."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from configs import default
from jaxcomposer import config_lib
from jaxcomposer.music.notes import Piece, TimeSignature, make_notes
from jaxcomposer.tokenizers import BOS, EOS, PAD, EncodingError, TranspositionError, get_tokenizer
from jaxcomposer.tokenizers.chord import chord_table, normal_order
from jaxcomposer.tokenizers.event import time_signature_table, velocity_centres


@functools.cache
def tokenizer(name: str, **overrides):
    config = config_lib.freeze(default.get_config()).tokenizer
    return get_tokenizer(dataclasses.replace(config, name=name, **overrides))


def piece(notes, name="song.mid", meters=()):
    """notes: (pitch, start, end[, velocity]) tuples in beats; meters: (beat, num, den)."""
    cols = list(zip(*notes, strict=True)) if notes else [[], [], []]
    return Piece(
        name=name,
        notes=make_notes(*cols[:3], velocity=cols[3] if len(cols) > 3 else None),
        time_signatures=tuple(TimeSignature(*m) for m in meters),
    )


def described(tok, tokens):
    return [tok.vocab.describe(t) for t in tokens]


# --- chord -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def music21_normal_orders():
    """{pc mask: music21 Chord.normalOrder} for all 4095 non-empty pitch-class sets."""
    from music21 import chord, pitch

    # Pitch objects, not ints: Chord(ints) spends ~40 s simplifying enharmonics.
    return {
        mask: tuple(
            chord.Chord(
                [pitch.Pitch(midi=60 + pc) for pc in range(12) if mask >> pc & 1]
            ).normalOrder
        )
        for mask in range(1, 4096)
    }


def test_normal_order_matches_music21_on_all_pitch_class_sets(music21_normal_orders):
    mismatches = {
        mask: (ours, ref)
        for mask, ref in music21_normal_orders.items()
        if (ours := normal_order([pc for pc in range(12) if mask >> pc & 1])) != ref
    }
    assert not mismatches
    assert normal_order([72, 60, 64, 76]) == (0, 4)  # octaves and duplicates ignored


def test_chord_range_is_every_set_by_size_then_normal_order(music21_normal_orders):
    orders, masks, index_of_mask = chord_table()
    assert list(orders) == sorted(music21_normal_orders.values(), key=lambda o: (len(o), o))
    assert orders[:13] == tuple((pc,) for pc in range(12)) + ((0, 1),)
    assert orders[-1] == tuple(range(12))
    assert sorted(masks.tolist()) == list(range(1, 4096))
    assert index_of_mask[masks].tolist() == list(range(4095))


def test_chord_hand_example(music21_normal_orders):
    tok = tokenizer("chord")
    ranked = sorted(music21_normal_orders.values(), key=lambda o: (len(o), o))
    v = tok.vocab
    p = piece(
        [
            (60, 0.0, 1.0), (64, 0.01, 1.0), (67, -0.05, 2.0),  # one grid onset (step 0)
            (60, 1.0, 2.0), (72, 1.0, 1.5),  # octave doubling: the one-class set {0}
            (61, 2.3, 2.4), (61, 2.26, 3.0),  # one distinct pitch -> PITCH
            (70, 3.0, 4.0), (62, 3.0, 4.0), (65, 3.0, 4.0),  # normal order 10.2.5
        ]
    )  # fmt: skip
    expected = [
        v.token("CHORD", ranked.index((0, 4, 7))),
        v.token("CHORD", ranked.index((0,))),
        v.token("PITCH", 61 - 21),
        v.token("CHORD", ranked.index((10, 2, 5))),
    ]
    assert tok.encode(p).tolist() == expected
    assert tok.encode(p).dtype == np.int32
    assert tok.describe_chord(ranked.index((10, 2, 5))) == "10.2.5"
    decoded = tok.decode(np.r_[BOS, expected, EOS])
    assert decoded.skipped == 0 and decoded.beats == 2.0
    assert decoded.notes.as_tuples() == sorted(
        [(60, 0.0, 0.5, 80), (64, 0.0, 0.5, 80), (67, 0.0, 0.5, 80)]
        + [(60, 0.5, 1.0, 80), (72, 0.5, 1.0, 80)]
        + [(61, 1.0, 1.5, 80), (70, 1.5, 2.0, 80), (62, 1.5, 2.0, 80), (65, 1.5, 2.0, 80)],
        key=lambda t: (t[1], t[0], t[2]),
    )


def test_chord_durations_hand_example():
    tok = tokenizer("chord", chord_durations=True, max_duration_steps=8)
    v = tok.vocab
    p = piece([(60, 0.0, 0.5), (61, 0.0, 1.0), (62, 1.0, 9.0), (62, 1.0, 1.1)])
    expected = [
        v.token("CHORD", 12),  # {0, 1} is the first two-class set
        v.token("DURATION", 4 - 1),  # the group's longest note: 4 steps
        v.token("PITCH", 62 - 21),
        v.token("DURATION", 8 - 1),  # 32 steps, clipped to 8
    ]
    assert tok.encode(p).tolist() == expected
    decoded = tok.decode(expected)
    assert decoded.notes.as_tuples() == [
        (60, 0.0, 1.0, 80), (61, 0.0, 1.0, 80), (62, 0.5, 2.5, 80),
    ]  # fmt: skip
    assert decoded.beats == 1.0


def test_chord_transposition_rotates_pitch_class_sets():
    tok = tokenizer("chord")
    orders, _, _ = chord_table()
    c_major = orders.index((0, 4, 7))
    table = tok.transpose_table(2)
    assert orders[table[tok.vocab.token("CHORD", c_major)] - tok.vocab.offset("CHORD")] == (2, 6, 9)
    assert tok.transpose_table(12)[tok.vocab.token("CHORD", c_major)] == tok.vocab.token(
        "CHORD", c_major
    )
    assert (tok.transpose_table(-7)[tok.vocab.range_ids("CHORD")] >= 0).all()
    top = [tok.vocab.token("PITCH", 108 - 21), tok.vocab.token("CHORD", c_major)]
    with pytest.raises(TranspositionError, match=r"\+1 semitones moves 1 token"):
        tok.transpose(np.array(top), 1)
    assert tok.transpose(np.array(top), -1)[0] == tok.vocab.token("PITCH", 107 - 21)


# --- frame -----------------------------------------------------------------------------------
FRAME_NOTES = [(60, 0.0, 1.0), (64, 0.5, 1.5), (60, 1.0, 1.5), (62, 2.5, 3.0)]


def test_frame_hand_example_with_onsets():
    tok = tokenizer("frame", steps_per_beat=2)
    v = tok.vocab
    on, hold, end = (lambda p: v.token("ONSET", p - 21)), (lambda p: v.token("HOLD", p - 21)), 3
    assert v.token("FRAME_END") == end
    expected = [
        on(60), end,
        hold(60), on(64), end,
        on(60), hold(64), end,  # a new strike of a sounding pitch is an ONSET
        end, end,  # empty frames
        on(62), end,
    ]  # fmt: skip
    assert tok.encode(piece(FRAME_NOTES)).tolist() == expected
    decoded = tok.decode(expected)
    assert decoded.notes.as_tuples() == sorted(
        [(60, 0.0, 1.0, 80), (60, 1.0, 1.5, 80), (64, 0.5, 1.5, 80), (62, 2.5, 3.0, 80)],
        key=lambda t: (t[1], t[0], t[2]),
    )
    assert (decoded.frames, decoded.beats, decoded.skipped) == (6, 3.0, 0)


def test_frame_hand_example_plain_notes():
    tok = tokenizer("frame", steps_per_beat=2, mark_onsets=False)
    note, end = (lambda p: tok.vocab.token("NOTE", p - 21)), tok.vocab.token("FRAME_END")
    expected = [note(60), end, note(60), note(64), end, note(60), note(64), end, end, end]
    expected += [note(62), end]
    assert tok.encode(piece(FRAME_NOTES)).tolist() == expected
    assert tok.decode(expected).notes.as_tuples() == [
        (60, 0.0, 1.5, 80),
        (64, 0.5, 1.5, 80),
        (62, 2.5, 3.0, 80),
    ]  # fmt: skip  (runs are never split without onsets)


def test_frame_decoding_of_holds_cut_frames_and_bad_tokens():
    tok = tokenizer("frame", steps_per_beat=2)
    v = tok.vocab
    on, hold, end = (lambda p: v.token("ONSET", p - 21)), (lambda p: v.token("HOLD", p - 21)), 3
    held = tok.decode([hold(50), end, hold(50), end])  # a HOLD after silence starts a note
    assert (held.notes.as_tuples(), held.skipped) == ([(50, 0.0, 1.0, 80)], 0)
    cut = tok.decode([end, on(40), on(45)])  # cut inside the second frame
    assert (cut.frames, cut.beats, cut.skipped) == (1, 1.0, 0)
    assert cut.notes.as_tuples() == [(40, 0.5, 1.0, 80), (45, 0.5, 1.0, 80)]
    bad = tok.decode([on(50), on(40), hold(50), end, PAD, BOS, 9999, -5, end, EOS, on(30)])
    assert bad.skipped == 5  # descending ONSET(40), repeated 50, BOS, two ids outside
    assert bad.notes.as_tuples() == [(50, 0.0, 0.5, 80)] and bad.frames == 2


def test_frame_of_no_notes_is_empty():
    tok = tokenizer("frame")
    assert tok.encode(piece([])).size == 0
    assert tok.decode([BOS, EOS]).frames == 0


# --- event -----------------------------------------------------------------------------------
def test_time_signature_table_order():
    table = time_signature_table(max_bar_beats=8, steps_per_beat=4)
    assert table[:6] == ((1, 2), (2, 2), (3, 2), (4, 2), (1, 4), (2, 4))
    assert (3, 4) in table and (16, 8) in table and (9, 4) not in table and (16, 16) in table
    assert time_signature_table(8, 1) == ((1, 2), (2, 2), (3, 2), (4, 2)) + tuple(
        (n, 4) for n in range(1, 9)
    ) + tuple((n, 8) for n in range(2, 17, 2)) + ((4, 16), (8, 16), (12, 16), (16, 16))


def test_event_hand_example():
    tok = tokenizer("event")
    v = tok.vocab
    assert tok.meter_table[6] == (3, 4) and tok.meter_table[5] == (2, 4)
    pitch = lambda p: v.token("PITCH", p - 21)
    dur = lambda d: v.token("DURATION", d - 1)
    pos = lambda q: v.token("POSITION", q)
    bar = v.token("BAR")
    p = piece(
        [
            (60, 0.0, 1.0), (64, 0.0, 0.5), (67, 1.25, 20.0),
            (60, 4.0, 5.0),
            (62, 6.5, 7.0), (62, 6.5, 6.75),  # same pitch and onset: the longer one is kept
            (65, 10.0, 10.01),  # a tiny note lasts one step
        ],
        meters=[(0, 3, 4), (4.0, 2, 4)],  # 2/4 arrives mid-bar: it starts at the bar line 6
    )  # fmt: skip
    expected = [
        bar, v.token("TIMESIG", 6), pos(0), pitch(60), dur(4), pitch(64), dur(2),
        pos(5), pitch(67), dur(32),  # 75 steps, capped
        bar, pos(4), pitch(60), dur(4),
        bar, v.token("TIMESIG", 5), pos(2), pitch(62), dur(2),
        bar,  # an empty bar
        bar, pos(0), pitch(65), dur(1),
    ]  # fmt: skip
    assert tok.encode(p).tolist() == expected
    decoded = tok.decode(expected)
    assert decoded.skipped == 0 and decoded.beats == 12.0
    assert decoded.time_signatures == (TimeSignature(0.0, 3, 4), TimeSignature(6.0, 2, 4))
    assert decoded.notes == tok.quantize(p)
    assert (62, 6.5, 7.0, 80) in decoded.notes.as_tuples()


def test_event_velocity_bins():
    tok = tokenizer("event", num_velocity_bins=8)
    v = tok.vocab
    assert velocity_centres(8).tolist() == [7, 23, 39, 55, 71, 87, 103, 119]
    tokens = tok.encode(piece([(60, 0.0, 1.0, 100), (60, 0.0, 0.5, 127), (62, 0.0, 1.0, 3)]))
    assert described(tok, tokens)[2:] == [
        "POSITION(0)", "PITCH(39)", "DURATION(3)", "VELOCITY(6)",  # longer wins over louder
        "PITCH(41)", "DURATION(3)", "VELOCITY(0)",
    ]  # fmt: skip
    assert tok.decode(tokens).notes.as_tuples() == [(60, 0.0, 1.0, 103), (62, 0.0, 1.0, 7)]
    assert v.range_size("VELOCITY") == 8


@pytest.mark.parametrize(
    "meters, expected_bars",
    [
        ((), [(0, "4/4"), (16, None)]),
        (((0.5, 3, 4),), [(0, "3/4"), (12, None)]),  # late first meter, from 0
        (((4.0, 3, 4),), [(0, "4/4"), (16, "3/4")]),  # at the first bar line
        (((0, 2, 4), (3.0, 3, 4)), [(0, "2/4"), (8, None), (16, "3/4")]),  # mid-bar: next bar
        (((0, 4, 4), (1.0, 3, 4), (2.0, 4, 4)), [(0, "4/4"), (16, None)]),  # changed back
        (((0, 4, 4), (1.0, 3, 4), (2.0, 2, 4)), [(0, "4/4"), (16, "2/4")]),  # last one wins
        (((0, 4, 4), (5.0, 17, 4)), [(0, "4/4"), (16, None)]),  # after the last onset: unused
    ],
)
def test_event_bars_follow_meter_changes(meters, expected_bars):
    tok = tokenizer("event")
    tokens = described(tok, tok.encode(piece([(60, 0.0, 1.0), (62, 4.5, 5.0)], meters=meters)))
    bars, step = [], 0
    lengths = {"4/4": 16, "3/4": 12, "2/4": 8}
    meter = None
    for i, t in enumerate(tokens):
        if t == "BAR":
            step = 0 if not bars else step + lengths[meter]
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
            change = tok.meter_table[int(nxt[8:-1])] if nxt.startswith("TIMESIG") else None
            meter = f"{change[0]}/{change[1]}" if change else meter
            bars.append((step, None if change is None else meter))
    assert bars == expected_bars


def test_event_positions_past_the_bar_decode_past_it():
    tok = tokenizer("event")
    v = tok.vocab
    tokens = [v.token("BAR"), v.token("TIMESIG", 5), v.token("POSITION", 10)]
    tokens += [v.token("PITCH", 39), v.token("DURATION", 0)]
    decoded = tok.decode(tokens)  # a 2/4 bar is 8 steps; position 10 lies in the next one
    assert decoded.notes.as_tuples() == [(60, 2.5, 2.75, 80)] and decoded.beats == 2.0


def test_event_skipped_counts():
    tok = tokenizer("event")
    v = tok.vocab
    bar, pitch, dur, pos = v.token("BAR"), v.token("PITCH", 39), v.token("DURATION", 3), 0
    pos = lambda q: v.token("POSITION", q)
    bad = [pos(0), bar, pitch, v.token("TIMESIG", 6), pos(4), pitch, dur, pos(4), pos(2)]
    bad += [v.token("TIMESIG", 1), dur, pitch, dur, bar, pitch]
    decoded = tok.decode(bad)
    # skipped: POSITION before BAR, PITCH right after BAR, repeated/earlier POSITIONs, TIMESIG
    # mid-bar, DURATION without PITCH; the trailing PITCH is an unfinished note, not a skip.
    assert decoded.skipped == 7
    assert decoded.notes.as_tuples() == [(60, 1.0, 2.0, 80), (60, 1.0, 2.0, 80)]
    assert decoded.beats == 6.0  # two 3/4 bars


# --- encoding errors and grammar corner cases ------------------------------------------------
@pytest.mark.parametrize("name", ["chord", "frame", "event"])
def test_out_of_range_pitch_is_a_precise_error(name):
    tok = tokenizer(name)
    with pytest.raises(
        EncodingError, match=r"^bad\.mid: 2 note\(s\) outside .*\[21, 108\], e\.g\. pitch 20$"
    ):
        tok.encode(piece([(60, 0, 1), (20, 1, 2), (109, 2, 3)], name="bad.mid"))
    with pytest.raises(EncodingError, match=r"^neg\.mid: 1 note\(s\) start before beat 0.*-1"):
        tok.encode(piece([(60, 0, 1), (62, -1.0, 2)], name="neg.mid"))


def test_unknown_time_signature_is_a_precise_error():
    tok = tokenizer("event")
    p = piece([(60, 0.0, 1.0), (62, 9.0, 10.0)], name="odd.mid", meters=[(0, 4, 4), (2.5, 9, 4)])
    with pytest.raises(
        EncodingError, match=r"^odd\.mid: time signature 9/4 at beat 2\.5 is not in"
    ):
        tok.encode(p)
    with pytest.raises(EncodingError, match=r"5/32"):
        tok.encode(dataclasses.replace(p, time_signatures=(TimeSignature(0, 5, 32),)))


def test_chord_skipped_counts_and_cut_groups():
    tok = tokenizer("chord", chord_durations=True)
    v = tok.vocab
    d0, p39, p40 = v.token("DURATION", 0), v.token("PITCH", 39), v.token("PITCH", 40)
    decoded = tok.decode([d0, p39, p40, v.token("DURATION", 1), p40])
    assert decoded.skipped == 2  # DURATION first; a second group before the DURATION
    assert decoded.notes.as_tuples() == [(60, 0.0, 0.5, 80)] and decoded.beats == 0.5


@pytest.mark.parametrize("name", ["chord", "frame", "event"])
def test_empty_piece_round_trip(name):
    tok = tokenizer(name)
    tokens = tok.encode(piece([]))
    assert tokens.size == 0 and tokens.dtype == np.int32
    assert tok.grammar.walk([BOS, EOS], state=0)[1].all()
    assert len(tok.decode(tokens).notes) == 0


def test_vocab_settings_declare_the_table():
    event = tokenizer("event", num_velocity_bins=4)
    settings = dict(event.vocab.settings)
    assert settings["time_signatures"][:2] == ("1/2", "2/2")
    assert [n for n, _ in event.vocab.ranges] == [
        "PAD", "BOS", "EOS", "BAR", "TIMESIG", "POSITION", "PITCH", "DURATION", "VELOCITY",
    ]  # fmt: skip
    assert event.vocab.range_size("POSITION") == 32
    frame = tokenizer("frame", mark_onsets=False)
    assert frame.vocab.ranges[3:] == (("FRAME_END", 1), ("NOTE", 88))
    assert frame.grammar.num_states == 88 + 3
    chord = tokenizer("chord")
    assert chord.vocab.ranges[3:] == (("PITCH", 88), ("CHORD", 4095))
