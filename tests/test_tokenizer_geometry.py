"""The tokenizer geometry interface, per tokenizer: the beat of every token, bar numbers, the
pitch classes a token sounds, clean cut points, bar lines and meters.

Each expectation is a second computation: the decoder's notes, or positions written out by hand
from the tokens' definitions; and a performance-token model fed a key schedule sees the key
change at the token whose time crosses into the scheduled bar."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from jaxcomposer.model import conditioning
from jaxcomposer.music.notes import Piece, Tempo, TimeSignature, make_notes
from jaxcomposer.sample import sampler
from jaxcomposer.tokenizers import BOS, NAMES, Tokenizer, get_tokenizer
from jaxcomposer.tokenizers.event import EventTokenizer

KEY_SPEC = conditioning.Spec("key")
CASES = {
    "event": {"name": "event"},
    "frame": {"name": "frame"},
    "frame_notes": {"name": "frame", "mark_onsets": False},
    "chord": {"name": "chord"},
    "chord_durations": {"name": "chord", "chord_durations": True},
    "performance": {"name": "performance"},
}


def make(case: str) -> Tokenizer:
    return get_tokenizer(tiny_config(tokenizer=CASES[case]).tokenizer)


def melody_piece(meters=(), qpm: float | None = None) -> Piece:
    """Onsets on and off the beat, a chord, a held note across bar lines, a rest, in beats."""
    rows = [(60, 0, 1), (64, 0, 1), (67, 0, 2), (62, 1.5, 2), (65, 2, 6), (69, 3, 3.5),
            (71, 4.5, 5), (72, 7, 8), (60, 9, 10), (67, 9.5, 11)]  # fmt: skip
    table = np.asarray(rows, np.float64)
    notes = make_notes(table[:, 0], table[:, 1], table[:, 2], np.full(len(rows), 80))
    tempos = (Tempo(0.0, qpm),) if qpm else ()
    return Piece("melody.mid", notes, tempos, tuple(meters))


# How the decoded onsets show in each tokenization: one token per note, per onset group, or
# (frames) the note's first frame among the frames it sounds in.
ONSETS = {"event": "notes", "frame": "frames", "frame_notes": "frames", "chord": "groups",
          "chord_durations": "groups", "performance": "notes"}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_token_beats_are_the_decoded_onsets(case):
    tokenizer = make(case)
    tokens = tokenizer.encode(melody_piece())
    beats = tokenizer.token_beats(tokens)
    assert beats.shape == tokens.shape and beats.dtype == np.float64
    assert (np.diff(beats) >= 0).all()  # the clock never runs backwards
    decoded = tokenizer.decode(np.r_[BOS, tokens]).notes
    sounds = tokenizer.pitch_class_table()[tokens].any(axis=1)
    if ONSETS[case] == "notes":
        np.testing.assert_allclose(beats[sounds], np.sort(decoded.start))
    elif ONSETS[case] == "groups":
        np.testing.assert_allclose(beats[sounds], np.unique(decoded.start))
    else:  # every note starts in a frame where a token of its pitch class sounds
        classes = tokenizer.pitch_class_table()[tokens].argmax(axis=1)
        heard = set(zip(classes[sounds].tolist(), beats[sounds].tolist(), strict=True))
        starts = set(zip((decoded.pitch % 12).tolist(), decoded.start.tolist(), strict=True))
        assert starts <= heard and len(starts) == len(decoded)


def test_performance_beats_are_seconds_at_the_decoded_tempo():
    """A performance's clock: eight 1-second TIME_SHIFTs put the next token 8 s (16 beats at 120
    qpm) in, in bar 5 of 2-second bars; the piece's beats at 60 qpm map onto the same clock."""
    tokenizer = make("performance")
    v = tokenizer.vocab
    shift = v.token("TIME_SHIFT", tokenizer.config.perf_max_shift_steps - 1)  # 1 s
    on, off = v.token("NOTE_ON", 10), v.token("NOTE_OFF", 10)
    tokens = np.array([on] + [shift] * 8 + [off])
    np.testing.assert_allclose(tokenizer.token_beats(tokens), [0, 0, 2, 4, 6, 8, 10, 12, 14, 16])
    np.testing.assert_array_equal(
        tokenizer.bar_counter().bars(tokens), [1, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    )
    assert tokenizer.time_unit == "second"
    slow = melody_piece(qpm=60.0)  # one beat = 1 s = 2 decoded beats
    slow = dataclasses.replace(slow, notes=slow.notes[slow.notes.start >= 1.5])  # first at 1.5
    np.testing.assert_allclose(tokenizer.token_time(slow, [1.5, 3.0, 9.5]), [0.0, 3.0, 16.0])
    encoded = tokenizer.encode(slow)
    first_at_9 = np.flatnonzero(tokenizer.token_beats(encoded) >= 15.0)[0]  # 7.5 s after 1.5
    assert encoded[first_at_9] == v.token("NOTE_ON", 60 - tokenizer.config.pitch_min)


@pytest.mark.parametrize("case", list(CASES))
def test_bars_are_counted_as_the_bar_lines_lie(case):
    """bar_counter().bars (clock units) against bar_lines (beats of the decoded music)."""
    tokenizer = make(case)
    piece = melody_piece([TimeSignature(0.0, 3, 4)])
    tokens = tokenizer.encode(piece)
    counter = tokenizer.bar_counter()
    assert counter.advance_V.dtype == np.float32 and counter.advance_V.shape == (
        tokenizer.vocab.size,
    )
    bars = counter.bars(tokens)
    lines = tokenizer.bar_lines(tokens)
    beats = tokenizer.token_beats(tokens)
    by_lines = np.searchsorted(lines, beats + 1e-9, side="right")  # lines at or before the beat
    np.testing.assert_array_equal(bars, by_lines)
    assert lines[0] == 0.0 and lines[-1] >= tokenizer.decode(np.r_[BOS, tokens]).beats - 1e-9


def test_bar_lines_and_meters_by_hand():
    piece = melody_piece([TimeSignature(0.0, 3, 4)])  # 11 beats: four 3/4 bars
    event = make("event")
    tokens = event.encode(piece)
    assert event.meters(tokens) == (TimeSignature(0.0, 3, 4),)
    np.testing.assert_array_equal(event.bar_lines(tokens), [0, 3, 6, 9, 12])
    # frame: 11 beats of frames; chord: 8 onset groups 0.5 beats apart = 4 beats.
    for case, lines in (("frame", [0, 4, 8, 12]), ("chord", [0, 4])):
        tokenizer = make(case)
        tokens = tokenizer.encode(piece)
        assert tokenizer.meters(tokens) == () and tokenizer.time_unit == "beat"
        np.testing.assert_array_equal(tokenizer.bar_lines(tokens), lines)
    perf = make("performance")  # no tempo: 120 qpm, 5.5 s = 11 decoded beats in 2-second bars
    tokens = perf.encode(piece)
    assert perf.meters(tokens) == ()
    np.testing.assert_array_equal(perf.bar_lines(tokens), [0, 4, 8, 12])
    bars_only = np.array([event.vocab.token("BAR")] * 2)  # no TIMESIG: the decoder's 4/4
    assert event.meters(bars_only) == (TimeSignature(0.0, 4, 4),)


def single_token_rows(tokenizer: Tokenizer) -> dict[int, list[int]]:
    """For each token that may sound a pitch: a short grammatical row in which it is the only
    note-making token (its pitch classes are those of the notes the row decodes to)."""
    v, name = tokenizer.vocab, tokenizer.name
    rows: dict[int, list[int]] = {}
    if name == "event":
        for t in v.range_ids("PITCH"):
            row = [v.token("BAR"), v.token("POSITION", 0), t, v.token("DURATION", 0)]
            rows[t] = row + ([v.token("VELOCITY", 0)] if "VELOCITY" in dict(v.ranges) else [])
    elif name == "frame":
        for r in tokenizer.pitch_ranges:
            for t in v.range_ids(r):
                rows[t] = [t, v.token("FRAME_END")]
    elif name == "chord":
        extra = [v.token("DURATION", 0)] if tokenizer.config.chord_durations else []
        for t in np.r_[v.range_ids("PITCH"), v.range_ids("CHORD")[::37]]:
            rows[t] = [t, *extra]
    else:
        shift = v.token("TIME_SHIFT", 0)
        for i, t in enumerate(v.range_ids("NOTE_ON")):
            rows[t] = [t, shift, v.token("NOTE_OFF", i)]
    return {int(t): row for t, row in rows.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_pitch_classes_are_those_the_decoder_sounds(case):
    tokenizer = make(case)
    table = tokenizer.pitch_class_table()
    assert table.shape == (tokenizer.vocab.size, 12) and table.dtype == bool
    rows = single_token_rows(tokenizer)
    for token, row in rows.items():
        notes = tokenizer.decode(np.r_[BOS, row]).notes
        assert set((notes.pitch % 12).tolist()) == set(np.flatnonzero(table[token]).tolist())
    others = np.setdiff1d(np.arange(tokenizer.vocab.size), list(rows))
    if tokenizer.name == "chord":  # CHORD tokens were sampled: the unsampled ones sound a set
        others = np.setdiff1d(others, tokenizer.vocab.range_ids("CHORD"))
    assert not table[others].any()  # specials, bars, positions, durations, NOTE_OFF, shifts...


def hand_cut_points(tokenizer: Tokenizer, tokens: np.ndarray) -> np.ndarray:
    """Cut points written out from each tokenization's definition."""
    v, name = tokenizer.vocab, tokenizer.name
    if name == "event":
        return tokens == v.token("BAR")
    if name == "frame":
        return np.r_[True, tokens[:-1] == v.token("FRAME_END")]
    if name == "chord":
        return (
            ~np.isin(tokens, v.range_ids("DURATION"))
            if tokenizer.config.chord_durations
            else (np.ones(tokens.size, bool))
        )
    sounding = np.cumsum(np.isin(tokens, v.range_ids("NOTE_ON"))) - np.cumsum(
        np.isin(tokens, v.range_ids("NOTE_OFF"))
    )
    before = np.r_[0, sounding[:-1]]
    after_velocity = np.r_[False, np.isin(tokens[:-1], v.range_ids("VELOCITY"))]
    return (before == 0) & ~after_velocity


@pytest.mark.parametrize("case", list(CASES))
def test_cut_points_are_clean_boundaries(case):
    tokenizer = make(case)
    tokens = tokenizer.encode(melody_piece())
    cuts = tokenizer.cut_points(tokens)
    assert cuts.shape == tokens.shape and cuts.dtype == bool
    np.testing.assert_array_equal(cuts, hand_cut_points(tokenizer, tokens))
    beats = tokenizer.token_beats(tokens)
    whole = tokenizer.decode(np.r_[BOS, tokens]).notes
    for i in np.flatnonzero(cuts)[1:]:
        tail = tokenizer.decode(np.r_[BOS, tokens[i:]])
        assert tail.skipped == 0
        if tokenizer.name in ("event", "performance"):  # no note crosses these cuts here
            later = whole[whole.start >= beats[i] - 1e-9]
            assert len(tail.notes) == len(later)


def test_a_tokenizer_must_answer_every_geometry_question():
    """No default: a tokenizer that leaves one out cannot be built."""

    class Partial(EventTokenizer):
        pass

    for missing in ("bar_counter", "token_beats", "pitch_class_table", "cut_points",
                    "bar_lines", "meters", "time_unit"):  # fmt: skip
        Partial.__abstractmethods__ = frozenset({missing})
        with pytest.raises(TypeError, match=missing):
            Partial(tiny_config().tokenizer)
    # every registered tokenizer has its geometry tests: here, and voices in test_voices_tokenizer
    assert set(NAMES) == {"event", "frame", "chord", "performance", "voices"}
    assert Tokenizer.__abstractmethods__ >= {
        "bar_counter",
        "token_beats",
        "pitch_class_table",
        "cut_points",
        "bar_lines",
        "meters",
        "time_unit",
    }


# --- a performance-token model fed a key schedule ----------------------------------------------
@dataclasses.dataclass(frozen=True)
class KeyEcho:
    """A step function whose next token says which key it was fed: a 1-second TIME_SHIFT while
    the [X; M] vector says C (tonic 0), a one-step TIME_SHIFT once it says G (tonic 7)."""

    long_shift: int
    short_shift: int
    vocab_size: int

    def __call__(self, variables, tokens_BxL, carry=None, cond_BxLxC=None):
        tonic = cond_BxLxC[..., :12]
        logits = jnp.zeros((*tokens_BxL.shape, self.vocab_size), jnp.float32)
        logits = logits.at[..., self.long_shift].set(10.0 * tonic[..., 0])
        logits = logits.at[..., self.short_shift].set(10.0 * tonic[..., 7])
        return logits, jnp.zeros(tokens_BxL.shape[:1], jnp.float32) if carry is None else carry


def test_performance_key_schedule_changes_at_the_token_that_enters_the_bar():
    tokenizer = make("performance")
    v = tokenizer.vocab
    long_shift = v.token("TIME_SHIFT", tokenizer.config.perf_max_shift_steps - 1)  # 1 s
    short_shift = v.token("TIME_SHIFT", 0)
    schedule = [(1, 0), (3, 7)]  # C major, then G major from bar 3 (at 4 s: 2-second bars)
    ks = sampler.key_settings(tokenizer, KEY_SPEC)
    primers = np.full((1, 1), BOS, np.int32)
    inputs = sampler.key_inputs(tokenizer, ks, primers, [schedule])
    states = sampler.grammar_states_after(tokenizer.grammar, primers)
    tokens, _, _ = sampler.sample_keyed(
        {}, jnp.asarray(primers), jnp.asarray(states), jnp.asarray(tokenizer.grammar.next_state),
        jax.random.key(0), inputs, step_fn=KeyEcho(long_shift, short_shift, v.size),
        num_steps=8, settings=sampler.DecoderSettings(decoder="argmax"), ks=ks,
        held=sampler.held_keys(tokenizer.grammar, primers),
    )  # fmt: skip
    # Shifts 1-5 start at 0, 1, 2, 3, 4 s; the fifth is the first token of bar 3, so G is fed
    # with it and the model answers with short shifts from then on.
    np.testing.assert_array_equal(np.asarray(tokens)[0], [long_shift] * 5 + [short_shift] * 3)
    # The primer path counts the same way: a primer of those tokens gets G from its fifth shift.
    row = np.r_[BOS, [long_shift] * 6]
    inputs = sampler.key_inputs(tokenizer, ks, row[None], [schedule])
    tonic = inputs.primer_cond_BxPxC[0, :, :12].argmax(-1)
    np.testing.assert_array_equal(tonic, [0, 0, 0, 0, 0, 7, 7])
