"""Where tokens sit in the music: the pieces of the `Tokenizer` geometry interface.

Each tokenizer answers the geometry questions about its own tokens (tokenizers/base.py:
`time_unit`, `bar_counter`, `token_beats`, `pitch_class_table`, `cut_points`, `bar_lines`,
`meters`); this module holds what those answers are made of: `BarCounter` (the bar number of
every token, from the tokens alone, in numpy or inside jit) and bar lines under a meter map.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from jaxcomposer.music.notes import TimeSignature

DEFAULT_BAR_BEATS = 4.0  # 4/4, the meter of music that names none
# Nominal bars of tokens without bars (frame, chord, performance): 4 quarter beats (4/4).
NOMINAL_BARS = "no bars: 4 beats = 1 bar (4/4)"


@dataclasses.dataclass(frozen=True)
class BarCounter:
    """Bar number (from 1) of each input token, computed from the tokens alone.

    `advance_V[v]` is how many units token v moves the clock (event: BAR = 1 bar; frame:
    FRAME_END = 1 grid step; chord: each onset group = 1 group; performance: TIME_SHIFT(k) = k
    steps of 1/perf_steps_per_second s). bar(t) = floor((units strictly before t +
    inclusive * advance[token t]) / per_bar) + base, at least 1: a BAR token opens its bar
    (inclusive), a FRAME_END closes its frame and a TIME_SHIFT leads out of its instant (not
    inclusive). Numpy arrays and python scalars only, so the sampler can close over it in jit.
    Units are whole numbers held in float32, so sums stay exact (up to 2**24 units).
    """

    advance_V: np.ndarray  # float32 (V,): clock units each token advances
    inclusive: bool  # a token's own advance counts towards its bar
    per_bar: float  # units per bar
    base: int  # bar number at zero units
    note: str = ""  # how bars are counted, in words for users (samples.json)

    def units(self, tokens: np.ndarray) -> np.ndarray:
        """float64 (n,): units the clock has reached strictly before each token."""
        advance = self.advance_V[np.asarray(tokens, np.int64)].astype(np.float64)
        return np.cumsum(advance) - advance

    def bars(self, tokens: np.ndarray) -> np.ndarray:
        """int64 (n,): bar number of each token of `tokens` (a row starting with or without BOS)."""
        tokens = np.asarray(tokens, np.int64)
        before = self.units(tokens)
        own = self.advance_V[tokens] if self.inclusive else 0.0
        return self.bar_of(before + own, np).astype(np.int64)

    def bar_of(self, units, xp=np):
        """int32: bar number at a clock reading of `units` (numpy or jax.numpy as `xp`)."""
        return xp.maximum(xp.floor(units / self.per_bar).astype(xp.int32) + self.base, 1)


def bar_lines_of(meters: Sequence[TimeSignature], until: float) -> np.ndarray:
    """float64 beats of every bar line from 0 up to the first at or after `until` (at least two
    lines), each bar as long as the time signature in force at its start (a change takes effect
    at the next bar line at or after its beat, as the event tokenizer reads meters); 4/4 before
    any meter."""
    lines, beat = [0.0], 0.0
    changes = [(ts.beat, ts.bar_beats) for ts in meters]
    bar = changes[0][1] if changes and changes[0][0] <= 0 else DEFAULT_BAR_BEATS
    while beat < until - 1e-9 or len(lines) < 2:
        for at, length in changes:
            if at <= beat + 1e-9:
                bar = length
        beat += bar
        lines.append(beat)
    return np.asarray(lines)


def nominal_bar_lines(beats: float) -> np.ndarray:
    """float64: the 4/4 bar lines from 0 through the first at or after `beats` (tokens that
    carry no meter)."""
    return bar_lines_of((), beats)


# --- a melody held fixed under free voices (sample/constraints.py) ----------------------------
GIVEN, FREE_TOKEN, OPEN = 0, 1, 2  # MelodyTemplate item kinds


@dataclasses.dataclass(frozen=True, eq=False)
class MelodyTemplate:
    """How a tokenizer writes music whose top voice is a given melody: K items, in token order.

    kind_K int8: GIVEN (the token `token_K[k]`, fixed), FREE_TOKEN (one token of the model's
    choice from row `set_K[k]` of `allow_MxV`), OPEN (any number of tokens from that row, ended
    by the next item's token, which must be GIVEN and lie in the row); token_K int32 (-1 where
    not GIVEN); set_K int32 (0 = any token); allow_MxV bool (M, V), row 0 all True.
    `melody`: the given notes exactly as the tokens hold them (grid, monophonic, the tokenizer's
    caps). `drop_last`: scaffolding tokens at the end that close the last stretch (e.g. an event
    BAR after the last bar), to be dropped from every sample."""

    kind_K: np.ndarray
    token_K: np.ndarray
    set_K: np.ndarray
    allow_MxV: np.ndarray
    melody: object  # notes.Notes
    drop_last: int = 0


class TokenSets:
    """Rows of a MelodyTemplate's allow_MxV, made once per distinct set (row 0: all tokens)."""

    def __init__(self, vocab_size: int):
        self.rows: list[np.ndarray] = [np.ones(vocab_size, bool)]
        self.index: dict[bytes, int] = {self.rows[0].tobytes(): 0}

    def add(self, allowed_V: np.ndarray) -> int:
        key = np.asarray(allowed_V, bool).tobytes()
        if key not in self.index:
            self.index[key] = len(self.rows)
            self.rows.append(np.asarray(allowed_V, bool).copy())
        return self.index[key]

    def table(self) -> np.ndarray:
        return np.stack(self.rows)


def skyline(pitch: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The top voice of notes on a grid (int64 (N,) pitch, start and end steps): (kept note
    indices int64, by start; their end steps, each cut at the next kept onset). Onset by onset,
    the highest note starting there is kept unless a higher or equal kept note still sounds
    (then it lies under the melody); a kept note ends where the next kept one begins."""
    order = np.lexsort((-pitch, start))
    kept: list[int] = []
    ends: list[int] = []
    last_step = None
    for i in order.tolist():
        s = int(start[i])
        if s == last_step:
            continue  # a lower note of the same onset
        last_step = s
        if kept and ends[-1] > s and int(pitch[kept[-1]]) >= int(pitch[i]):
            continue  # under a melody note that still sounds
        if kept:
            ends[-1] = min(ends[-1], s)
        kept.append(i)
        ends.append(int(end[i]))
    return np.asarray(kept, np.int64), np.asarray(ends, np.int64)
