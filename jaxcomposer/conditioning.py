"""The music-theory vector M of the paper's section 8.3, appended to every input step: [X; M].

A conditioned model reads, with each input token, a float vector built from per-token labels:

  key    one-hot tonic pitch class (12) + one-hot mode (2: major, minor)   -> 14 values
  style  one-hot over the training set's style names (sub-folders of midi_dir)

Labels are int arrays aligned with the tokens: key = pretty_midi key number (0-11 major,
12-23 minor) or -1 (unknown: an all-zero key block), style = index into the style list or -1.
The same `vector` builds M in numpy (training batches) and in jitted JAX (the sampler's scan).

Where a label changes is decided by the token's position in the music. For generation, key
schedules are given in bars; `BarCounter` tracks the bar number from the tokens themselves:
the event tokenizer counts BAR tokens (bars follow the meter), the frame and chord tokenizers
have no bars, so their bars are 4 quarter beats (4/4) of frames or of onset groups.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from jaxcomposer import keys

CONDITIONS = ("none", "key", "key+style")
KEY_DIM = 14  # 12 tonic pitch classes + 2 modes


@dataclasses.dataclass(frozen=True)
class Spec:
    """What the vector holds. Hashable: a static argument of jitted code."""

    condition: str = "none"  # one of CONDITIONS
    styles: tuple[str, ...] = ()  # style names, index = label

    def __post_init__(self):
        if self.condition not in CONDITIONS:
            raise ValueError(f"model.condition must be one of {CONDITIONS}, got {self.condition!r}")

    @property
    def uses_key(self) -> bool:
        return self.condition != "none"

    @property
    def uses_style(self) -> bool:
        return self.condition == "key+style"

    @property
    def dim(self) -> int:
        if not self.uses_key:
            return 0
        return KEY_DIM + (len(self.styles) if self.uses_style else 0)


def vector(spec: Spec, key_labels, style_labels=None, xp=np):
    """float32 (..., spec.dim) from int key labels (...,) and optional style labels (...,).

    `xp` is numpy or jax.numpy (the same code runs on the host and inside jit)."""
    key_labels = xp.asarray(key_labels)
    known = (key_labels >= 0)[..., None]
    tonic = xp.where(key_labels >= 0, key_labels % 12, -1)
    mode = xp.where(key_labels >= 0, key_labels // 12, -1)
    parts = [
        (tonic[..., None] == xp.arange(12)) & known,
        (mode[..., None] == xp.arange(2)) & known,
    ]
    if spec.uses_style:
        styles = xp.full(key_labels.shape, -1) if style_labels is None else xp.asarray(style_labels)
        parts.append(styles[..., None] == xp.arange(len(spec.styles)))
    return xp.concatenate([p.astype(xp.float32) for p in parts], axis=-1)


# --- positions: beats of tokens, bars while sampling ------------------------------------------
@dataclasses.dataclass(frozen=True)
class BarCounter:
    """Bar number (from 1) of each input token, computed from the tokens alone.

    `units` counts marker tokens read so far (event: BAR; frame: FRAME_END; chord: onset
    groups). bar(t) = floor((units strictly before t + inclusive[token t]) / per_bar) + base:
    a BAR token opens its bar (inclusive), a FRAME_END closes its frame (not inclusive)."""

    unit_V: np.ndarray  # int32 (V,): 1 for marker tokens
    inclusive: bool  # the marker belongs to the unit it opens
    per_bar: float  # markers per bar
    base: int  # bar number at zero markers
    beats_per_unit: float  # for token_beats
    note: str  # how bars are counted, for users

    def bars(self, tokens: np.ndarray) -> np.ndarray:
        """int64 (n,): bar number of each token of `tokens` (a row starting with or without BOS)."""
        marks = self.unit_V[np.asarray(tokens, np.int64)]
        before = np.cumsum(marks) - marks
        return self.bar_of(before + (marks if self.inclusive else 0), np)

    def bar_of(self, units, xp=np):
        return xp.maximum(xp.floor(units / self.per_bar).astype(xp.int32) + self.base, 1)


def bar_counter(tokenizer) -> BarCounter:
    """The BarCounter of a tokenizer (event, frame or chord)."""
    if callable(getattr(tokenizer, "bar_counter", None)):  # the geometry interface (issue 19)
        return tokenizer.bar_counter()
    v, c = tokenizer.vocab, tokenizer.config
    unit = np.zeros(v.size, np.int32)
    names = dict(v.ranges)
    if "BAR" in names:
        unit[v.token("BAR")] = 1
        return BarCounter(unit, True, 1.0, 0, 0.0, "bars follow the meter (BAR tokens)")
    if "FRAME_END" in names:
        unit[v.token("FRAME_END")] = 1
        spb = c.steps_per_beat
        return BarCounter(unit, False, 4.0 * spb, 1, 1.0 / spb, "no bars: 4 beats = 1 bar (4/4)")
    for name in ("PITCH", "CHORD"):
        if name in names:
            unit[v.range_ids(name)] = 1
    step = c.chord_step_beats
    return BarCounter(unit, False, 4.0 / step, 1, step, "no bars: 4 beats = 1 bar (4/4)")


def token_beats(tokenizer, tokens: np.ndarray) -> np.ndarray:
    """float64 (n,): the beat at which each token (no BOS/EOS) sits in the music it encodes.

    event: the bar start for BAR/TIMESIG, the onset for POSITION and the note tokens after it;
    frame: the frame's start; chord: the group's index times chord_step_beats (its decoded
    onset)."""
    if callable(getattr(tokenizer, "token_beats", None)):  # the geometry interface (issue 19)
        return tokenizer.token_beats(tokens)
    tokens = np.asarray(tokens, np.int64)
    v, c = tokenizer.vocab, tokenizer.config
    if "BAR" not in dict(v.ranges):
        counter = bar_counter(tokenizer)
        marks = counter.unit_V[tokens]
        return (np.cumsum(marks) - marks) * counter.beats_per_unit
    # Event: walk the tokens as the decoder does, vectorised by bar.
    spb = c.steps_per_beat
    bar_id, pos_lo = v.token("BAR"), v.offset("POSITION")
    is_bar = tokens == bar_id
    timesig = (tokens >= v.offset("TIMESIG")) & (
        tokens < v.offset("TIMESIG") + len(tokenizer.meters)
    )
    is_pos = (tokens >= pos_lo) & (tokens < pos_lo + tokenizer.positions)
    bar_index = np.cumsum(is_bar) - 1  # -1 before the first BAR
    meter_len = np.full(max(int(is_bar.sum()), 1), 4 * spb, np.int64)
    current = 4 * spb
    for i in np.flatnonzero(is_bar | timesig):
        if timesig[i]:
            n, d = tokenizer.meters[int(tokens[i] - v.offset("TIMESIG"))]
            current = n * 4 * spb // d
        if bar_index[i] >= 0:
            meter_len[bar_index[i]] = current
    # Bar k starts after bars 0..k-1; the decoder sizes a bar by the meter read before its BAR,
    # which equals the bar's own length except across a change, where TIMESIG follows the BAR.
    starts = np.concatenate([[0], np.cumsum(meter_len)[:-1]])
    bar_start = np.where(bar_index >= 0, starts[np.maximum(bar_index, 0)], 0)
    last_pos = np.where(is_pos, tokens - pos_lo, -1)
    # Position in force: the latest POSITION since the bar line (0 at the bar line).
    seg = np.where(is_bar, 0, last_pos)
    idx = np.where(is_bar | is_pos, np.arange(tokens.size), 0)
    np.maximum.accumulate(idx, out=idx)
    offset = np.where(seg[idx] >= 0, seg[idx], 0)
    return (bar_start + offset) / spb


# --- scales -----------------------------------------------------------------------------------
def pitch_class_of_tokens(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(pcs_VxC bool (V, 12): the pitch classes each token sounds, is_pitch_V bool): pitch tokens
    (PITCH, NOTE, ONSET, HOLD, NOTE_ON) sound one class, CHORD tokens their set, others none
    (NOTE_OFF only ends a note, so a scale rule never needs to hold it back)."""
    if callable(getattr(tokenizer, "pitch_class_table", None)):  # the geometry interface
        pcs = tokenizer.pitch_class_table()
        return pcs, pcs.any(axis=1)
    v, c = tokenizer.vocab, tokenizer.config
    pcs = np.zeros((v.size, 12), bool)
    names = dict(v.ranges)
    for name in ("PITCH", "NOTE", "ONSET", "HOLD", "NOTE_ON"):
        if name in names:
            ids = v.range_ids(name)
            pcs[ids, (c.pitch_min + np.arange(ids.size)) % 12] = True
    if "CHORD" in names:
        from jaxcomposer.tokenizers.chord import chord_table

        masks = chord_table()[1]
        pcs[v.range_ids("CHORD")] = (masks[:, None] >> np.arange(12)) & 1 == 1
    return pcs, pcs.any(axis=1)


def in_scale_table(tokenizer) -> np.ndarray:
    """bool (24, V): token allowed in key k: not a pitch token, or every class it sounds lies in
    the key's scale (keys.scale_pitch_classes: minor admits natural, harmonic, melodic)."""
    pcs_VxC, _ = pitch_class_of_tokens(tokenizer)
    scales_KxC = np.stack([keys.scale_pitch_classes(k) for k in range(keys.NUM_KEYS)])
    outside_KxV = pcs_VxC[None, :, :] & ~scales_KxC[:, None, :]
    return ~outside_KxV.any(axis=2)


def schedule_arrays(schedules: list[list[tuple[int, int]]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample [(first bar, key)] lists -> (bars_BxN, keys_BxN) int32, padded by repeating
    the last entry (so 'the last entry with bar <= b' stays correct)."""
    width = max(len(s) for s in schedules)
    bars = np.array([[b for b, _ in s] + [s[-1][0]] * (width - len(s)) for s in schedules])
    keys_ = np.array([[k for _, k in s] + [s[-1][1]] * (width - len(s)) for s in schedules])
    return bars.astype(np.int32), keys_.astype(np.int32)


def key_at_bar(bars_BxN, keys_BxN, bar_B, xp=np):
    """Key in force at bar `bar_B` of each row: the last schedule entry starting at or before."""
    index = xp.sum(bars_BxN <= bar_B[:, None], axis=1) - 1
    index = xp.maximum(index, 0)
    return xp.take_along_axis(keys_BxN, index[:, None], axis=1)[:, 0]
