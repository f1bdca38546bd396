"""Bars of a generated row: the meter in force, where `--num_bars` bars end, key changes as beats.

The tokenizer answers where its own bar lines lie (`Tokenizer.bar_lines`, `Tokenizer.meters`);
tokens that hold no meter (frame, chord) take a primer file's meter, else 4/4, on a grid that
runs on past the music (`bar_lines`); tokens in real time never take a file's meter (their beats
are seconds at the decoded tempo).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jaxcomposer.config_lib import SampleConfig
from jaxcomposer.music.notes import KeySignature, Notes
from jaxcomposer.tokenizers import Tokenizer
from jaxcomposer.tokenizers.geometry import DEFAULT_BAR_BEATS, bar_lines_of

MAX_BAR_BEATS = 16.0  # longest bar a MIDI meter can declare that the sampler plans for
bar_lines = bar_lines_of  # (meters, until) -> float64 beats of the bar lines up to `until`


def meters_of(tokenizer: Tokenizer, row: np.ndarray, primer_piece=None) -> tuple:
    """The time signatures in force along a token row: the tokens' own (`Tokenizer.meters`),
    else the primer file's (for score tokens that carry no meter), else () which means 4/4. A
    tuple of notes.TimeSignature sorted by beat."""
    own = tokenizer.meters(row)
    if own or tokenizer.time_unit != "beat":
        return tuple(own)  # performances: beats are seconds, a primer's meter means nothing
    if primer_piece is not None:
        return tuple(sorted(primer_piece.time_signatures, key=lambda ts: ts.beat))
    return ()


def row_bar_lines(tokenizer: Tokenizer, row: np.ndarray, meters, until: float) -> np.ndarray:
    """float64 beats of the bar lines of a row: the tokens' own when they hold a meter
    (`Tokenizer.bar_lines`), else the grid of `meters` (4/4 if none) up to `until`."""
    if tokenizer.meters(row):
        return tokenizer.bar_lines(row)
    return bar_lines(meters, until)


def end_beat(tokenizer: Tokenizer, primer: np.ndarray, row: np.ndarray, meters, bars: int):
    """(beat where `bars` bars after the primer end, bars actually available). Bars are counted
    from the bar line that closes the primer's last bar, in the meter in force."""
    primer_end = tokenizer.decode(primer).beats
    lines = row_bar_lines(tokenizer, row, meters, primer_end + (bars + 1) * MAX_BAR_BEATS)
    first = int(np.searchsorted(lines, primer_end - 1e-9))
    available = min(bars, len(lines) - 1 - first)
    return float(lines[first + available]), available


def key_changes(tokenizer: Tokenizer, row: np.ndarray, meters, schedule) -> tuple:
    """The key changes of a [(first bar, key number)] schedule after its first entry, as
    KeySignature events at the beats where those bars start (bars counted from the row's start,
    as the sampler counts them); changes past the music are dropped by the renderer."""
    if len(schedule) < 2:
        return ()
    lines = row_bar_lines(tokenizer, row, meters, tokenizer.decode(row).beats)
    return tuple(
        KeySignature(float(lines[bar - 1]), int(key))
        for bar, key in schedule[1:]
        if 0 < bar <= len(lines)
    )


def cut_at_beat(notes: Notes, end_beat: float) -> Notes:
    """Notes starting before `end_beat`, each ended by it at the latest."""
    kept = notes[notes.start < end_beat]
    return dataclasses.replace(kept, end=np.minimum(kept.end, end_beat))


def steps_for_bars(
    tokenizer: Tokenizer, primers: np.ndarray, sample: SampleConfig, meters=()
) -> int:
    """Tokens to generate for `num_bars` bars: measured tokens per beat of the primer (or a
    conservative default) times the beats of num_bars + 1 bars in the meter in force at the
    primer's end (at least 4/4 when the tokens hold their own meter, whose bars may change
    later; the + 1 completes the primer's last bar), with 50% headroom; extra music is cut at
    the bar line."""
    if sample.num_bars <= 0:
        return sample.num_steps
    beats = tokenizer.decode(primers[0]).beats
    per_beat = primers.shape[1] / beats if beats >= 4 else 4.0 * tokenizer.config.steps_per_beat
    in_force = [ts.bar_beats for ts in meters if ts.beat <= beats] or [DEFAULT_BAR_BEATS]
    floor = DEFAULT_BAR_BEATS if tokenizer.meters(primers[0]) else 0.0
    bar = max(in_force[-1], floor)
    return max(sample.num_steps, math.ceil((sample.num_bars + 1) * bar * per_beat * 1.5))


def corpus_meter(tokenizer: Tokenizer, tokens: np.ndarray) -> tuple[int, int] | None:
    """(numerator, denominator) of the meter token stated most often in `tokens` (int, any
    shape: e.g. a split's concatenated pieces), or None when they state none."""
    table = tokenizer.meter_tokens()
    if not table:
        return None
    ids = np.fromiter(table.values(), np.int64)
    counts = np.bincount(np.ravel(tokens).astype(np.int64), minlength=int(ids.max()) + 1)[ids]
    if not counts.any():
        return None
    return list(table)[int(np.argmax(counts))]


def held_meters(
    tokenizer: Tokenizer, rule: str, primers: np.ndarray, primer_piece=None, default=None
):  # fmt: skip
    """The meter each row holds while sampling (sample.meter; issue 24: a user continuing a
    waltz expects a waltz): "free" -> None (meter tokens unmasked); "hold" -> per row the last
    meter in force at its primer's end (`meters_of`: its tokens', else the primer file's), else
    `default` (generate passes the training music's commonest meter, `corpus_meter`, so that an
    unprimed sample of a young model does not hold a 1/16 it happened to draw first), else None
    to hold the first meter the row samples; "N/D" ->
    that meter for every row. Returns None as well when the tokens state no meter. Raises
    UsageError for an explicit meter the tokens cannot state (or cannot hold: tokens that state
    no meter follow a primer file's, else 4/4)."""
    from jaxcomposer import config_lib
    from jaxcomposer.core.errors import UsageError

    if rule == "free":
        return None
    if not tokenizer.meter_tokens():
        if rule != "hold":
            raise UsageError(
                f"--meter={rule}: {type(tokenizer).__name__} tokens state no meter (their bars "
                "follow the primer file's meter, else 4/4); use --meter=hold or free"
            )
        return None
    if rule != "hold":
        meter = config_lib.parse_meter(rule)
        if meter not in tokenizer.meter_tokens():
            known = ", ".join(f"{n}/{d}" for n, d in tokenizer.meter_tokens())
            raise UsageError(f"--meter={rule}: not a meter these tokens state ({known})")
        return [meter] * len(primers)
    held = []
    for row in np.asarray(primers):
        own = meters_of(tokenizer, row, primer_piece)
        held.append((own[-1].numerator, own[-1].denominator) if own else default)
    return held
