"""The `voices` tokenizer (DeepBach-style parts on a grid): round trips and transposition on
random music (hypothesis), the grammar's voice order, HOLD and bar rules, decoding of random and
grammar-walked sequences, the geometry methods on a hand-built piece, voice assignment by hand,
key conditioning's tables, and the readers' voices (music21 chorale parts, MIDI tracks)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from configs import default
from jaxcomposer import config_lib
from jaxcomposer.data import labels
from jaxcomposer.data.midi_io import read_midi
from jaxcomposer.model import conditioning
from jaxcomposer.music import keys
from jaxcomposer.music.notes import Piece, TimeSignature, make_notes
from jaxcomposer.tokenizers import BOS, EOS, TranspositionError, get_tokenizer
from jaxcomposer.tokenizers.base import LOST_NOTE_COUNTS, SHORTENED_NOTE_COUNTS
from jaxcomposer.tokenizers.voices import assign_voices, given_voices
from tests import midi_factory

PITCH_MIN, PITCH_MAX = 21, 108
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
CONFIGS = {
    "spb2": dict(steps_per_beat=2),
    "spb4": dict(steps_per_beat=4),
    "spb3-3voices": dict(steps_per_beat=3, num_voices=3, max_bar_beats=6),
    "spb2-per-voice": dict(steps_per_beat=2, per_voice_tokens=True),
}


@functools.cache
def tokenizer(key: str = "spb2"):
    config = config_lib.freeze(default.get_config()).tokenizer
    return get_tokenizer(dataclasses.replace(config, name="voices", **CONFIGS[key]))


def voiced_tuples(notes) -> list[tuple]:
    """(pitch, start, end, velocity, voice) per note, sorted: `Notes ==` ignores voices."""
    return sorted(
        (int(p), float(a), float(b), int(v), int(u))
        for p, a, b, v, u in zip(
            notes.pitch, notes.start, notes.end, notes.velocity, notes.voice, strict=True
        )
    )


grid_times = st.integers(0, 96).map(lambda k: k / 8)
any_times = st.floats(0.0, 12.0, allow_nan=False)
lengths = st.one_of(st.sampled_from([1e-3, 0.25, 0.5, 1.0, 2.0]), st.floats(1e-4, 6.0))
pitches = st.one_of(st.sampled_from([48, 60, 64, 67, 72]), st.integers(PITCH_MIN, PITCH_MAX))
note_rows = st.lists(
    st.tuples(pitches, st.one_of(grid_times, any_times), lengths, st.integers(0, 3)), max_size=30
)


@st.composite
def pieces(draw, tok):
    """Random pieces; half of them name voices (every voice 0..V-1 used), half do not."""
    rows = draw(note_rows)
    voices = tok.config.num_voices
    named = draw(st.booleans()) and len(rows) >= voices
    p, s, d, u = zip(*rows, strict=True) if rows else ([], [], [], [])
    voice = None
    if named:
        voice = [k % voices for k in range(len(rows))]  # every voice present
        voice = [voice[i] if i < voices else u[i] % voices for i in range(len(rows))]
    meters = draw(st.lists(st.tuples(any_times, st.sampled_from(tok.meter_table)), max_size=3))
    return Piece(
        "random.mid",
        make_notes(p, s, np.add(s, d), voice=voice),
        time_signatures=tuple(TimeSignature(b, n, m) for b, (n, m) in meters),
    )


# --- round trips -----------------------------------------------------------------------------
@pytest.mark.parametrize("key", list(CONFIGS))
@SETTINGS
@given(data=st.data())
def test_round_trip_keeps_notes_and_voices(key, data):
    tok = tokenizer(key)
    piece = data.draw(pieces(tok))
    tokens, counts = tok.encode_counted(piece)
    assert set(counts) <= set(LOST_NOTE_COUNTS) | set(SHORTENED_NOTE_COUNTS)
    _, accepted = tok.grammar.walk(np.r_[BOS, tokens, EOS], state=0)
    assert accepted.all()
    decoded = tok.decode(tokens)
    assert decoded.skipped == 0
    quantized = tok.quantize(piece)
    assert decoded.notes == quantized
    assert voiced_tuples(decoded.notes) == voiced_tuples(quantized)
    lost = sum(counts[k] for k in LOST_NOTE_COUNTS if k in counts)
    assert len(quantized) == len(piece.notes) - lost  # every note is held or counted
    # Voice tokens: V per grid step, the steps filling whole bars of the declared meters.
    v = tok.vocab
    markers = np.r_[v.token("BAR"), v.range_ids("TIMESIG")]
    voice_tokens = int((~np.isin(tokens, markers)).sum())
    assert voice_tokens == decoded.beats * tok.config.steps_per_beat * tok.config.num_voices
    if len(quantized):
        assert decoded.beats >= quantized.end.max()
    # Re-encoding the decoded music gives the same tokens when it names every voice.
    if np.array_equal(np.unique(decoded.notes.voice), np.arange(tok.config.num_voices)):
        again = Piece(piece.name, decoded.notes, time_signatures=decoded.time_signatures)
        assert tok.encode(again).tolist() == tokens.tolist()


@SETTINGS
@given(data=st.data(), k=st.integers(-14, 14))
def test_transposition(data, k):
    tok = tokenizer()
    piece = data.draw(pieces(tok))
    tokens = tok.encode(piece)
    moved = piece.notes.pitch.astype(int) + k
    quantized = tok.quantize(piece)
    if not ((moved >= PITCH_MIN) & (moved <= PITCH_MAX)).all():
        kept_moved = quantized.pitch.astype(int) + k
        if not ((kept_moved >= PITCH_MIN) & (kept_moved <= PITCH_MAX)).all():
            with pytest.raises(TranspositionError):
                tok.transpose(tokens, k)
        return
    shifted = tok.decode(tok.transpose(tokens, k)).notes
    expected = dataclasses.replace(quantized, pitch=(quantized.pitch + k).astype(np.int16))
    assert voiced_tuples(shifted) == voiced_tuples(expected)
    if np.array_equal(np.unique(piece.notes.voice), np.arange(4)):  # own voices: same tokens
        notes = dataclasses.replace(piece.notes, pitch=moved.astype(np.int16))
        assert (
            tok.transpose(tokens, k).tolist()
            == tok.encode(dataclasses.replace(piece, notes=notes)).tolist()
        )


# --- grammar ---------------------------------------------------------------------------------
def grammar_walk(tok, rng: np.random.Generator, max_steps: int) -> np.ndarray:
    g, state, out = tok.grammar, tok.grammar.bos_state, []
    for _ in range(int(rng.integers(0, max_steps))):
        token = int(rng.choice(np.flatnonzero(g.allowed(state))))
        if token == EOS:
            break
        out.append(token)
        state = int(g.next_state[state, token])
    return np.asarray(out, np.int64)


@pytest.mark.parametrize("key", list(CONFIGS))
def test_grammar_walks_decode_without_skips_into_monophonic_voices(key):
    tok = tokenizer(key)
    rng = np.random.default_rng(sum(map(ord, key)))
    voices = tok.config.num_voices
    for _ in range(20):
        tokens = grammar_walk(tok, rng, max_steps=600)
        decoded = tok.decode(np.r_[BOS, tokens])
        assert decoded.skipped == 0
        notes = decoded.notes
        assert ((notes.voice >= 0) & (notes.voice < voices)).all()
        for u in range(voices):  # one note at a time in each voice
            mine = notes[notes.voice == u].sorted()
            assert (mine.start[1:] >= mine.end[:-1]).all()
        # Each note is one NOTE token.
        assert len(notes) == int(tok.pitch_class_table()[tokens].any(axis=1).sum())


@SETTINGS
@given(data=st.data())
def test_decode_never_raises_on_random_tokens(data):
    tok = tokenizer()
    ids = st.one_of(st.integers(-3, tok.vocab.size + 3), st.integers(-(2**62), 2**62))
    tokens = np.asarray(data.draw(st.lists(ids, max_size=200)), np.int64)
    decoded = tok.decode(tokens)
    assert 0 <= decoded.skipped <= tokens.size
    assert (decoded.notes.end > decoded.notes.start).all()


def names_to_tokens(tok, names: list[str]) -> np.ndarray:
    v = tok.vocab

    def one(name):
        if "(" in name:
            kind, index = name[:-1].split("(")
            if kind == "TIMESIG":
                n, d = index.split("/")
                return v.token(kind, tok.meter_table.index((int(n), int(d))))
            return v.token(kind, int(index) - tok.config.pitch_min)
        return v.token(name)

    return np.array([one(n) for n in names], np.int64)


def test_grammar_rules_by_hand():
    """Two voices, 1 step per beat, 2/4 bars: order, HOLD, bar length and EOS placement."""
    config = config_lib.freeze(default.get_config()).tokenizer
    tok = get_tokenizer(dataclasses.replace(config, name="voices", steps_per_beat=1, num_voices=2))
    good = ["BAR", "TIMESIG(2/4)", "NOTE(72)", "NOTE(48)", "HOLD", "REST",
            "BAR", "TIMESIG(2/4)", "HOLD", "NOTE(50)", "NOTE(74)", "HOLD"]  # fmt: skip
    tokens = names_to_tokens(tok, good)
    _, accepted = tok.grammar.walk(np.r_[tokens, EOS])
    assert accepted.all()
    decoded = tok.decode(tokens)
    assert decoded.skipped == 0
    assert voiced_tuples(decoded.notes) == [
        (48, 0.0, 1.0, 80, 1), (50, 2.0, 4.0, 80, 1), (72, 0.0, 3.0, 80, 0), (74, 3.0, 4.0, 80, 0)
    ]  # fmt: skip
    assert decoded.beats == 4.0
    bad = {  # position of the token the grammar must refuse
        "HOLD before any note of the voice": (["BAR", "TIMESIG(2/4)", "HOLD"], 2),
        "HOLD after a REST of the voice": (
            ["BAR", "TIMESIG(2/4)", "REST", "NOTE(48)", "HOLD", "HOLD"], 4),
        "BAR in the middle of a step": (["BAR", "TIMESIG(2/4)", "NOTE(60)", "BAR"], 3),
        "BAR before the bar is full": (
            ["BAR", "TIMESIG(2/4)", "NOTE(60)", "REST", "BAR"], 4),
        "EOS in the middle of a bar": (
            ["BAR", "TIMESIG(2/4)", "NOTE(60)", "REST", "EOS"], 4),
        "a voice token before the meter": (["BAR", "NOTE(60)"], 1),
        "a note before the first BAR": (["NOTE(60)"], 0),
    }  # fmt: skip
    for why, (names, where) in bad.items():
        tokens = names_to_tokens(tok, [n for n in names if n != "EOS"])
        if "EOS" in names:
            tokens = np.r_[tokens, EOS]
        _, accepted = tok.grammar.walk(tokens)
        assert accepted[:where].all() and not accepted[where], why


# --- geometry --------------------------------------------------------------------------------
def hand_piece() -> Piece:
    """Four voices, 2 steps per beat: a 3/4 bar, then 2/4; the soprano's D ties over the bar."""
    return Piece(
        "hand.mid",
        make_notes(
            [74, 67, 59, 43, 72, 64, 55, 48],
            [0.0, 0.0, 0.0, 0.0, 4.0, 3.0, 3.0, 3.0],
            [4.0, 3.0, 3.0, 3.0, 5.0, 5.0, 5.0, 5.0],
            voice=[0, 1, 2, 3, 0, 1, 2, 3],
        ),
        time_signatures=(TimeSignature(0.0, 3, 4), TimeSignature(3.0, 2, 4)),
    )


def test_geometry_on_a_hand_built_piece():
    tok = tokenizer("spb2")
    tokens = tok.encode(hand_piece())
    names = [tok.vocab.describe(t) for t in tokens]
    # Bar 1 (3/4): 6 steps x 4 voices; bar 2 (2/4): 4 steps x 4 voices.
    assert len(tokens) == 2 + 24 + 2 + 16
    assert names[:6] == ["BAR", "TIMESIG(6)", "NOTE(53)", "NOTE(46)", "NOTE(38)", "NOTE(22)"]
    assert names[26:32] == ["BAR", "TIMESIG(5)", "HOLD", "NOTE(43)", "NOTE(34)", "NOTE(27)"]
    assert tok.meter_table[6] == (3, 4) and tok.meter_table[5] == (2, 4)
    assert tok.time_unit == "beat"
    beats = tok.token_beats(tokens)
    assert beats[0] == beats[1] == 0.0 and beats[2:6].tolist() == [0.0] * 4
    assert beats[6] == 0.5 and beats[26] == beats[27] == beats[28] == 3.0
    assert beats[-1] == 4.5
    cuts = tok.cut_points(tokens)
    assert np.flatnonzero(cuts).tolist() == [0, *range(2, 26, 4), 26, *range(28, 44, 4)]
    assert tok.bar_lines(tokens).tolist() == [0.0, 3.0]
    assert tok.bar_lines(np.r_[BOS, tokens, EOS]).tolist() == [0.0, 3.0]
    assert tok.meters(tokens) == (TimeSignature(0.0, 3, 4), TimeSignature(3.0, 2, 4))
    counter = tok.bar_counter()
    bars = counter.bars(tokens)
    assert bars[:26].tolist() == [1] * 26 and bars[26:].tolist() == [2] * 18
    table = tok.pitch_class_table()
    assert table.shape == (tok.vocab.size, 12)
    note = tok.vocab.token("NOTE", 74 - tok.config.pitch_min)
    assert np.flatnonzero(table[note]).tolist() == [2]  # D
    for other in ("BAR", "HOLD", "REST"):
        assert not table[tok.vocab.token(other)].any()


def test_key_conditioning_tables_and_labels():
    tok = tokenizer("spb2")
    in_scale = conditioning.in_scale_table(tok)
    c_major = keys.parse_key("C major")
    v = tok.vocab
    assert in_scale[:, [v.token("HOLD"), v.token("REST"), v.token("BAR")]].all()
    assert in_scale[c_major, v.token("NOTE", 60 - tok.config.pitch_min)]
    assert not in_scale[c_major, v.token("NOTE", 61 - tok.config.pitch_min)]
    tokens = tok.encode(hand_piece())
    key_labels = labels.token_labels(tok, tokens, [(0.0, 7), (3.0, 2)])
    assert key_labels[:26].tolist() == [7] * 26 and key_labels[26:].tolist() == [2] * 18
    # Transposing the tokens moves NOTE tokens only; their classes move with them.
    up = tok.transpose(tokens, 2)
    is_note = np.isin(tokens, v.range_ids("NOTE"))
    assert (up[~is_note] == tokens[~is_note]).all()
    pcs = tok.pitch_class_table()
    assert np.array_equal(np.roll(pcs[tokens[is_note]], 2, axis=1), pcs[up[is_note]])


def test_per_voice_tokens_name_their_voice():
    shared, own = tokenizer("spb2"), tokenizer("spb2-per-voice")
    assert own.vocab.size == shared.vocab.size + 3 * (shared.num_pitches + 2)  # 3 more voices
    piece = hand_piece()
    a, b = shared.encode(piece), own.encode(piece)
    assert a.size == b.size
    described = [own.vocab.describe(t) for t in b]
    voice_slots = [d for d in described if d.split("(")[0] not in ("BAR", "TIMESIG")]
    for i, name in enumerate(voice_slots):  # slot i of a step belongs to voice i % 4
        assert name.split("(")[0].endswith(f"_{i % 4}")
    assert [d.replace("_0", "").replace("_1", "").replace("_2", "").replace("_3", "")
            for d in described] == [shared.vocab.describe(t) for t in a]  # fmt: skip
    assert voiced_tuples(own.decode(b).notes) == voiced_tuples(shared.decode(a).notes)
    # The soprano's slot refuses the alto's tokens.
    head = b[:2]
    alto_note = own.vocab.token("NOTE_1", 60 - own.config.pitch_min)
    _, accepted = own.grammar.walk(np.r_[head, alto_note])
    assert accepted[:2].all() and not accepted[2]
    up = own.transpose(b, 3)
    assert voiced_tuples(own.decode(up).notes) == [
        (p + 3, a_, e, vel, u) for p, a_, e, vel, u in voiced_tuples(own.decode(b).notes)
    ]


# --- voice assignment ------------------------------------------------------------------------
def test_assign_voices_by_hand():
    # Grid steps. A four-note chord; then the bass holds while three voices move; then a
    # fifth note at once, which must be counted; then a lone high note goes to the soprano.
    pitch = np.array([72, 67, 64, 48, 74, 65, 60, 79, 76, 71, 62, 50, 45, 80])
    start = np.array([0, 0, 0, 0, 2, 2, 2, 4, 4, 4, 4, 4, 4, 8])
    end = np.array([2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6, 6, 6, 9])
    voice, new_end, counts = assign_voices(pitch, start, end, 4)
    assert voice[:4].tolist() == [0, 1, 2, 3]
    assert voice[4:7].tolist() == [0, 1, 2]  # the held bass keeps voice 3
    # Six new notes at step 4: the top three and the lowest are kept, 62 and 50 are beyond.
    assert voice[[7, 8, 9, 12]].tolist() == [0, 1, 2, 3] and voice[[10, 11]].tolist() == [-1, -1]
    assert counts["beyond_voices_notes"] == 2
    assert voice[13] == 0 and counts["voice_cut_notes"] == 0
    assert (new_end == end).all()


def test_assign_voices_cuts_the_nearest_held_note_and_merges_repeats():
    # Four held notes; a new 59 at step 1 ends the held note nearest in pitch (60, the tenor).
    pitch = np.array([76, 67, 60, 48, 59, 59])
    start = np.array([0, 0, 0, 0, 1, 1])
    end = np.array([4, 4, 4, 4, 2, 3])
    voice, new_end, counts = assign_voices(pitch, start, end, 4)
    assert counts == {"merged_on_grid_notes": 1, "beyond_voices_notes": 0, "voice_cut_notes": 1}
    assert new_end[2] == 1 and voice[2] == 2
    assert voice[5] == 2 and voice[4] == -1  # the longer of the two 59s is the one kept


def test_given_voices_merge_and_cut():
    pitch = np.array([72, 76, 60, 62, 48, 47])
    start = np.array([0, 0, 0, 2, 0, 0])
    end = np.array([4, 4, 4, 4, 4, 4])
    voice = np.array([0, 0, 1, 1, 3, 3])
    out, new_end, counts = given_voices(pitch, start, end, voice, 4)
    # Soprano keeps its highest, bass its lowest; the alto's 60 ends where its 62 begins.
    assert out.tolist() == [-1, 0, 1, 1, -1, 3]
    assert new_end.tolist() == [4, 4, 2, 4, 4, 4]
    assert counts == {"merged_in_voice_notes": 2, "voice_cut_notes": 1}


def test_config_bounds():
    values = default.get_config()
    values.tokenizer.name = "voices"
    values.tokenizer.num_voices = 9
    with pytest.raises(config_lib.ConfigError, match="num_voices"):
        config_lib.freeze(values)


# --- readers ---------------------------------------------------------------------------------
def test_chorale_parts_are_voices():
    pytest.importorskip("music21")
    from jaxcomposer.data import corpus

    data = config_lib.freeze(default.get_config()).data
    tok = tokenizer("spb4")
    for name, path in corpus.bach_chorale_sources()[:2]:
        piece, stats = corpus.read_score(path, data, name)
        assert stats["parts"] == 4
        voice = piece.notes.voice
        assert sorted(np.unique(voice).tolist()) == [0, 1, 2, 3]
        means = [piece.notes.pitch[voice == u].mean() for u in range(4)]
        assert means == sorted(means, reverse=True)  # soprano above alto above tenor above bass
        tokens, counts = tok.encode_counted(piece)
        assert sum(counts[k] for k in LOST_NOTE_COUNTS if k in counts) == 0
        decoded = tok.decode(tokens)
        assert decoded.skipped == 0
        assert voiced_tuples(decoded.notes) == voiced_tuples(tok.quantize(piece))
        # Each decoded voice is the part's own notes (on the grid).
        for u in range(4):
            assert int((decoded.notes.voice == u).sum()) == int((voice == u).sum())


def test_midi_tracks_that_are_voices(tmp_path):
    data = config_lib.freeze(default.get_config()).data
    lines = {  # track order deliberately not top-down: voices follow the parts' mean pitch
        "bass": [(48, 0, 2), (43, 2, 4)],
        "soprano": [(72, 0, 1), (74, 1, 2), (76, 2, 4)],
        "alto": [(67, 0, 2), (67, 2, 4)],
        "tenor": [(64, 0, 2), (59, 2, 4)],
    }
    tracks = [midi_factory.notes(spec) for spec in lines.values()]
    path = midi_factory.write_midi_file(
        tmp_path / "satb.mid", [[midi_factory.tempo(0, 100)]] + tracks
    )
    piece, stats = read_midi(path, data)
    assert stats["voice_parts"] == 4
    by_pitch = {int(p): int(u) for p, u in zip(piece.notes.pitch, piece.notes.voice, strict=True)}
    assert by_pitch[72] == by_pitch[76] == 0 and by_pitch[67] == 1
    assert by_pitch[64] == 2 and by_pitch[48] == by_pitch[43] == 3
    # A track of chords is not a voice: the file names no voices.
    chords = [midi_factory.notes([(60, 0, 2), (64, 0, 2), (67, 0, 2)]), tracks[0]]
    path = midi_factory.write_midi_file(tmp_path / "piano.mid", chords)
    piece, stats = read_midi(path, data)
    assert stats["voice_parts"] == 0 and (piece.notes.voice == -1).all()
