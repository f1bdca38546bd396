"""--num_bars follows the meter: bars are counted with the time signature in force (the event
tokens' own BAR/TIMESIG, else the primer file's, else 4/4) and a sample ends on a bar line.

Expected bar lines are written out by hand from each test's meter schedule."""

from __future__ import annotations

import numpy as np
from conftest import tiny_config

from jaxcomposer import config_lib
from jaxcomposer.music.notes import Piece, TimeSignature, make_notes
from jaxcomposer.sample import bars as bar_lib
from jaxcomposer.tokenizers import BOS, get_tokenizer


def piece(meters, beats: int) -> Piece:
    """One quarter note on every beat (alternating pitches) and the given (beat, n, d) meters."""
    starts = np.arange(beats, dtype=np.float64)
    notes = make_notes(60 + (np.arange(beats) % 5), starts, starts + 1.0)
    return Piece("p", notes, (), tuple(TimeSignature(b, n, d) for b, n, d in meters))


def cut_before_bar(tokenizer, tokens, bar_index: int) -> np.ndarray:
    """BOS + the tokens before the `bar_index`-th BAR token (0-based): a primer of whole bars."""
    bars = np.flatnonzero(tokens == tokenizer.vocab.token("BAR"))
    return np.concatenate([[BOS], tokens[: bars[bar_index]]]).astype(np.int32)


def event_case(meters, beats, primer_bars, num_bars):
    tokenizer = get_tokenizer(tiny_config().tokenizer)
    tokens = tokenizer.encode(piece(meters, beats))
    primer = cut_before_bar(tokenizer, tokens, primer_bars)
    row = np.concatenate([[BOS], tokens]).astype(np.int32)  # the "generated" continuation
    meters_in = bar_lib.meters_of(tokenizer, row)
    return tokenizer, primer, row, bar_lib.end_beat(tokenizer, primer, row, meters_in, num_bars)


def test_a_three_four_primer_gives_twelve_beats_for_four_bars():
    tokenizer, primer, row, (end, bars) = event_case([(0, 3, 4)], 30, 2, 4)
    assert tokenizer.decode(primer).beats == 6.0  # two 3/4 bars
    assert (end, bars) == (6.0 + 12.0, 4)
    notes = bar_lib.cut_at_beat(tokenizer.decode(row).notes, end)
    assert notes.end.max() == end and notes.start.max() == end - 1  # full last bar, no more
    # The sampler plans for the bars in the meter in force (+1 bar, 50% headroom) in tokens.
    sample = config_lib.replace(tiny_config(), sample={"num_bars": 4, "num_steps": 1}).sample
    needed = int(np.flatnonzero(row == tokenizer.vocab.token("BAR"))[6]) - primer.size + 1
    assert bar_lib.steps_for_bars(tokenizer, primer[None], sample, ()) >= needed


def test_bars_follow_meter_changes_in_the_tokens():
    # 3/4 for two bars (beats 0-6), 2/4 for one (6-8), then 6/8 (3 quarter beats) bars.
    meters = [(0, 3, 4), (6, 2, 4), (8, 6, 8)]
    tokenizer, primer, _, (end, bars) = event_case(meters, 26, 2, 4)
    assert tokenizer.decode(primer).beats == 6.0
    assert (end, bars) == (6.0 + 2 + 3 + 3 + 3, 4)
    # Asking for more bars than were generated ends on the last bar line, and says so.
    _, _, _, (end, bars) = event_case(meters, 26, 2, 40)
    assert bars < 40 and end in (8.0 + 3 * k for k in range(10))


def test_other_tokenizers_take_the_primer_files_meter():
    config = tiny_config(tokenizer={"name": "frame"})
    tokenizer = get_tokenizer(config.tokenizer)
    primer_piece = piece([(0, 3, 4)], 5)  # 5 beats: its second 3/4 bar is not complete
    primer = np.concatenate([[BOS], tokenizer.encode(primer_piece)]).astype(np.int32)
    meters = bar_lib.meters_of(tokenizer, primer, primer_piece)
    assert meters == primer_piece.time_signatures
    end, bars = bar_lib.end_beat(tokenizer, primer, primer, meters, 4)
    primer_end = tokenizer.decode(primer).beats
    assert 4.0 < primer_end <= 6.0
    assert (end, bars) == (6.0 + 12.0, 4)  # bars start at the bar line closing the primer
    # No meter anywhere: 4/4.
    assert bar_lib.end_beat(tokenizer, primer, primer, (), 2) == (8.0 + 8.0, 2)


def test_bar_lines_apply_a_change_at_the_next_bar_line():
    lines = bar_lib.bar_lines([TimeSignature(0, 3, 4), TimeSignature(4, 2, 4)], 10)
    assert lines.tolist() == [0, 3, 6, 8, 10]  # the change at beat 4 waits for the line at 6
