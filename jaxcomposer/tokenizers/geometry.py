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
