"""`event` tokens: a REMI-like score, bar by bar (the default tokenizer).

Per bar: BAR, TIMESIG(k) in the first bar and wherever the meter changes, then for each distinct
onset step in the bar, ascending: POSITION(step within the bar), and per note there by ascending
pitch: PITCH(p - pitch_min), DURATION(d - 1) (d grid steps, capped at max_duration_steps)
[, VELOCITY(velocity * bins // 128)]. Bars run up to the one holding the last onset; empty bars are
a lone BAR. Notes of one pitch with one grid onset collapse into one (longest capped duration,
then highest velocity).

Meter: the piece's time signatures (4/4 when it has none). The first one applies from beat 0 if
it comes before the first (4/4) bar line; any other change takes effect at the first bar line at
or after its (grid-rounded) beat, so a mid-bar change never truncates a bar. The TIMESIG range is
TIME_SIGNATURES below: numerators 1-16 over denominators 2, 4, 8, 16, ordered by denominator
then numerator, keeping those whose bar is at most max_bar_beats quarter beats and a whole
number of grid steps.
"""

from __future__ import annotations

import numpy as np

from jaxcomposer.music.notes import DEFAULT_VELOCITY, Notes, Piece, TimeSignature, grid_round
from jaxcomposer.tokenizers.base import Decoded, EncodingError, Tokenizer
from jaxcomposer.tokenizers.common import (
    checked_grid,
    notes_from_steps,
    pitch_range_classes,
    shift_pitch_index,
)
from jaxcomposer.tokenizers.geometry import BarCounter, bar_lines_of
from jaxcomposer.tokenizers.grammar import Grammar, GrammarBuilder, allow_eos
from jaxcomposer.tokenizers.vocab import Vocab, make_vocab

DENOMINATORS = (2, 4, 8, 16)
MAX_NUMERATOR = 16
DEFAULT_METER = (4, 4)


def time_signature_table(max_bar_beats: int, steps_per_beat: int) -> tuple[tuple[int, int], ...]:
    """The declared TIMESIG range: (numerator, denominator) by denominator, then numerator."""
    return tuple(
        (n, d)
        for d in DENOMINATORS
        for n in range(1, MAX_NUMERATOR + 1)
        if n * 4 <= max_bar_beats * d and (n * 4 * steps_per_beat) % d == 0
    )


def velocity_centres(bins: int) -> np.ndarray:
    """int64 (bins,): the middle MIDI velocity of each bin (bin = velocity * bins // 128), >= 1."""
    b = np.arange(bins)
    low = -(-b * 128 // bins)  # smallest velocity in the bin
    high = -(-(b + 1) * 128 // bins) - 1  # largest
    return np.maximum((low + high) // 2, 1)


class EventTokenizer(Tokenizer):
    name = "event"

    def _build_vocab(self) -> Vocab:
        c = self.config
        if c.max_duration_steps < 1 or c.max_bar_beats < 1:
            raise ValueError("max_duration_steps and max_bar_beats must be >= 1")
        if not 0 <= c.num_velocity_bins <= 128:
            raise ValueError(f"num_velocity_bins must be in [0, 128], got {c.num_velocity_bins}")
        self.meter_table = time_signature_table(c.max_bar_beats, c.steps_per_beat)
        self.meter_index = {m: i for i, m in enumerate(self.meter_table)}
        self.positions = c.max_bar_beats * c.steps_per_beat
        ranges = [
            ("BAR", 1),
            ("TIMESIG", len(self.meter_table)),
            ("POSITION", self.positions),
            ("PITCH", self.num_pitches),
            ("DURATION", c.max_duration_steps),
        ]
        if c.num_velocity_bins:
            ranges.append(("VELOCITY", c.num_velocity_bins))
        return make_vocab(
            self.name,
            ranges,
            pitch_min=c.pitch_min,
            pitch_max=c.pitch_max,
            steps_per_beat=c.steps_per_beat,
            max_bar_beats=c.max_bar_beats,
            max_duration_steps=c.max_duration_steps,
            num_velocity_bins=c.num_velocity_bins,
            time_signatures=[f"{n}/{d}" for n, d in self.meter_table],
        )

    def _build_grammar(self) -> Grammar:
        # Positions at or past the current bar's length are grammatical (the grammar does not
        # track meters); they never occur in encoded data and decode as onsets past the bar.
        v, b = self.vocab, GrammarBuilder(self.vocab)
        bar, pitch, duration = [v.token("BAR")], v.range_ids("PITCH"), v.range_ids("DURATION")
        b.allow("BEGIN", bar, "HEAD")
        allow_eos(b, "BEGIN")  # the empty piece
        b.allow("HEAD", v.range_ids("TIMESIG"), "METER")
        for state in ("HEAD", "METER"):
            b.allow(state, bar, "HEAD")
            allow_eos(b, state)
            for q in range(self.positions):
                b.allow(state, [v.token("POSITION", q)], f"POS_{q}")
        for p in range(self.positions):
            b.allow(f"POS_{p}", pitch, f"PITCH_{p}")
            if self.config.num_velocity_bins:
                b.allow(f"PITCH_{p}", duration, f"DURATION_{p}")
                b.allow(f"DURATION_{p}", v.range_ids("VELOCITY"), f"DONE_{p}")
            else:
                b.allow(f"PITCH_{p}", duration, f"DONE_{p}")
            b.allow(f"DONE_{p}", pitch, f"PITCH_{p}")
            for q in range(p + 1, self.positions):
                b.allow(f"DONE_{p}", [v.token("POSITION", q)], f"POS_{q}")
            b.allow(f"DONE_{p}", bar, "HEAD")
            allow_eos(b, f"DONE_{p}")
        return b.build("BEGIN")

    # --- encoding ----------------------------------------------------------------------------
    def _notes(
        self, piece: Piece
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
        """(pitch, onset step, capped duration steps, velocity bin), one note per (onset, pitch),
        sorted by onset then pitch; plus the counts of notes merged and durations capped."""
        c = self.config
        pitch, q_start, q_end = checked_grid(self, piece)
        length = q_end - q_start
        duration = np.minimum(length, c.max_duration_steps)
        velocity = piece.notes.velocity.astype(np.int64)
        if c.num_velocity_bins:
            bad = (velocity < 0) | (velocity > 127)
            if bad.any():
                raise EncodingError(
                    f"{piece.name}: velocity {int(velocity[bad][0])} is not in 0-127"
                )
        order = np.lexsort((-velocity, -duration, pitch, q_start))
        pitch, q_start, duration, velocity, length = (
            x[order] for x in (pitch, q_start, duration, velocity, length)
        )
        keep = np.ones(order.size, bool)
        keep[1:] = (pitch[1:] != pitch[:-1]) | (q_start[1:] != q_start[:-1])
        vbin = velocity * c.num_velocity_bins // 128  # all 0 (and unused) without bins
        losses = {
            "merged_on_grid_notes": int((~keep).sum()),
            "duration_capped_notes": int((length[keep] > c.max_duration_steps).sum()),
        }
        return pitch[keep], q_start[keep], duration[keep], vbin[keep], losses

    def _meter_segments(self, piece: Piece, last_onset: int) -> list[tuple[int, tuple[int, int]]]:
        """[(first step, (numerator, denominator))] of each stretch of constant meter."""
        return meter_segments(piece, last_onset, self.config, self.meter_index)

    def _bars(self, piece: Piece, last_onset: int) -> tuple[np.ndarray, np.ndarray]:
        """(bar start steps, TIMESIG index or -1 where the meter does not change) per bar."""
        return bar_grid(piece, last_onset, self.config, self.meter_index)

    def encode_counted(self, piece: Piece) -> tuple[np.ndarray, dict[str, int]]:
        v = self.vocab
        pitch, onset, duration, vbin, losses = self._notes(piece)
        if not onset.size:
            return np.zeros(0, np.int32), losses
        bar_start, bar_meter = self._bars(piece, int(onset[-1]))
        changes = bar_meter >= 0
        new_position = np.r_[True, onset[1:] != onset[:-1]]
        position_step = onset[new_position]
        bar_of = np.searchsorted(bar_start, position_step, side="right") - 1
        note_tokens = [
            v.offset("PITCH") + pitch - self.config.pitch_min,
            v.offset("DURATION") + duration - 1,
        ]
        if self.config.num_velocity_bins:
            note_tokens.append(v.offset("VELOCITY") + vbin)
        # Every token gets a sort key (step, kind, pitch, slot); lexsort interleaves them.
        parts = [  # (token ids, step, kind, pitch, slot)
            (np.full(bar_start.size, v.token("BAR")), bar_start, 0, 0, 0),
            (v.offset("TIMESIG") + bar_meter[changes], bar_start[changes], 1, 0, 0),
            (v.offset("POSITION") + position_step - bar_start[bar_of], position_step, 2, 0, 0),
        ] + [(tokens, onset, 3, pitch, slot) for slot, tokens in enumerate(note_tokens)]
        ids, step, kind, pitch_key, slot = (
            np.concatenate([np.broadcast_to(np.asarray(part[i]), part[1].shape) for part in parts])
            for i in range(5)
        )
        return ids[np.lexsort((slot, pitch_key, kind, step))].astype(np.int32), losses

    def quantize(self, piece: Piece) -> Notes:
        """Grid onsets, capped durations, collapsed duplicates and binned velocities (no bars:
        onsets do not depend on the meter)."""
        pitch, onset, duration, vbin, _ = self._notes(piece)
        if self.config.num_velocity_bins:
            velocity = velocity_centres(self.config.num_velocity_bins)[vbin]
        else:
            velocity = np.full(pitch.shape, DEFAULT_VELOCITY)
        return notes_from_steps(
            pitch, onset, onset + duration, self.config.steps_per_beat, velocity
        )

    # --- decoding ----------------------------------------------------------------------------
    def _decode_body(self, tokens: np.ndarray, accepted: np.ndarray) -> Decoded:
        c, v = self.config, self.vocab
        names = [name for name, _ in v.ranges]
        range_of, index_of = v.range_of(), v.index_of()
        centres = velocity_centres(c.num_velocity_bins) if c.num_velocity_bins else None
        meter, bar_start, onset, pitch, duration = None, None, 0, 0, 0
        notes: list[tuple[int, int, int, int]] = []
        changes: list[TimeSignature] = []
        for token in tokens[accepted].tolist():
            kind, index = names[range_of[token]], int(index_of[token])
            if kind == "BAR":
                length = self._bar_length(meter)
                bar_start = 0 if bar_start is None else bar_start + length
                onset = bar_start
            elif kind == "TIMESIG":
                if self.meter_table[index] != meter:
                    n, d = self.meter_table[index]
                    changes.append(TimeSignature(bar_start / c.steps_per_beat, n, d))
                meter = self.meter_table[index]
            elif kind == "POSITION":
                onset = bar_start + index
            elif kind == "PITCH":
                pitch = c.pitch_min + index
            elif kind == "DURATION":
                duration = index + 1
                if centres is None:
                    notes.append((pitch, onset, onset + duration, DEFAULT_VELOCITY))
            elif kind == "VELOCITY":
                notes.append((pitch, onset, onset + duration, int(centres[index])))
        arr = np.asarray(notes, np.int64).reshape(-1, 4)
        decoded = notes_from_steps(arr[:, 0], arr[:, 1], arr[:, 2], c.steps_per_beat, arr[:, 3])
        end = 0 if bar_start is None else bar_start + self._bar_length(meter)
        return Decoded(decoded, 0, end / c.steps_per_beat, None, tuple(changes))

    # --- geometry --------------------------------------------------------------------------
    time_unit = "beat"
    keeps_note_count = True  # one PITCH token per note

    def bar_counter(self) -> BarCounter:
        """Bars follow the meter: each BAR token opens the next bar (inclusive)."""
        advance = np.zeros(self.vocab.size, np.float32)
        advance[self.vocab.token("BAR")] = 1.0
        return BarCounter(advance, True, 1.0, 0, "bars follow the meter (BAR tokens)")

    def token_beats(self, tokens: np.ndarray) -> np.ndarray:
        """The bar start for BAR/TIMESIG, the onset for POSITION and the note tokens after it
        (walking the tokens as the decoder does, vectorised by bar)."""
        tokens = np.asarray(tokens, np.int64)
        v, spb = self.vocab, self.config.steps_per_beat
        bar_id, pos_lo, sig_lo = v.token("BAR"), v.offset("POSITION"), v.offset("TIMESIG")
        is_bar = tokens == bar_id
        timesig = (tokens >= sig_lo) & (tokens < sig_lo + len(self.meter_table))
        is_pos = (tokens >= pos_lo) & (tokens < pos_lo + self.positions)
        bar_index = np.cumsum(is_bar) - 1  # -1 before the first BAR
        meter_len = np.full(max(int(is_bar.sum()), 1), 4 * spb, np.int64)
        current = 4 * spb
        for i in np.flatnonzero(is_bar | timesig):
            if timesig[i]:
                n, d = self.meter_table[int(tokens[i] - sig_lo)]
                current = n * 4 * spb // d
            if bar_index[i] >= 0:
                meter_len[bar_index[i]] = current
        # Bar k starts after bars 0..k-1; the decoder sizes a bar by the meter read before its
        # BAR, which equals the bar's own length except across a change, where TIMESIG follows.
        starts = np.concatenate([[0], np.cumsum(meter_len)[:-1]])
        bar_start = np.where(bar_index >= 0, starts[np.maximum(bar_index, 0)], 0)
        last_pos = np.where(is_pos, tokens - pos_lo, -1)
        # Position in force: the latest POSITION since the bar line (0 at the bar line).
        seg = np.where(is_bar, 0, last_pos)
        idx = np.where(is_bar | is_pos, np.arange(tokens.size), 0)
        np.maximum.accumulate(idx, out=idx)
        offset = np.where(seg[idx] >= 0, seg[idx], 0)
        return (bar_start + offset) / spb

    def pitch_class_table(self) -> np.ndarray:
        """PITCH tokens sound their pitch's class; BAR, TIMESIG, POSITION, DURATION, VELOCITY
        none."""
        return pitch_range_classes(self, ("PITCH",))

    def cut_points(self, tokens: np.ndarray) -> np.ndarray:
        """Before a BAR (a bar line), or where the grammar is back at the start."""
        tokens = np.asarray(tokens, np.int64)
        return self._grammar_starts(tokens) | (tokens == self.vocab.token("BAR"))

    def bar_lines(self, tokens: np.ndarray) -> np.ndarray:
        """The start of each bar the BAR tokens open and the end of the last one, each bar as
        long as the TIMESIG in force in it; [0.0] when the tokens hold no BAR."""
        tokens = np.asarray(tokens, np.int64)
        decoded = self.decode(tokens)
        bars = int(np.count_nonzero(tokens == self.vocab.token("BAR")))
        if not bars:
            return np.zeros(1)
        return bar_lines_of(decoded.time_signatures, decoded.beats)[: bars + 1]

    def meter_tokens(self) -> dict[tuple[int, int], int]:
        """The TIMESIG range, one token per meter of the meter table."""
        lo = self.vocab.offset("TIMESIG")
        return {tuple(m): lo + i for i, m in enumerate(self.meter_table)}

    def voice_tables(self) -> None:
        """Event tokens write the notes of an onset in pitch order, with no voices: None."""
        return None

    def meters(self, tokens: np.ndarray) -> tuple[TimeSignature, ...]:
        """The TIMESIG tokens' meters where they change; 4/4 at beat 0 when the tokens hold
        bars but no TIMESIG (the decoder's default)."""
        tokens = np.asarray(tokens, np.int64)
        found = self.decode(tokens).time_signatures
        if found or not (tokens == self.vocab.token("BAR")).any():
            return tuple(found)
        return (TimeSignature(0.0, *DEFAULT_METER),)

    def _bar_length(self, meter: tuple[int, int] | None) -> int:
        n, d = DEFAULT_METER if meter is None else meter
        return n * 4 * self.config.steps_per_beat // d

    def _shift_token(self, name: str, index: int, shift: int) -> tuple[str, int] | None:
        if name == "PITCH":
            moved = shift_pitch_index(index, shift, self.num_pitches)
            return None if moved is None else (name, moved)
        return name, index


def meter_segments(
    piece: Piece, last_step: int, config, meter_index: dict[tuple[int, int], int]
) -> list[tuple[int, tuple[int, int]]]:
    """[(first step, (numerator, denominator))] of each stretch of constant meter up to grid
    step `last_step`, read as the module docstring says (also used by the voices tokenizer).
    `config` is a TokenizerConfig; raises EncodingError for a meter outside `meter_index`."""
    spb = config.steps_per_beat
    bar_steps = lambda meter: meter[0] * 4 * spb // meter[1]
    segments = [(0, DEFAULT_METER)]
    events = sorted(piece.time_signatures, key=lambda ts: ts.beat)
    for i, ts in enumerate(events):
        step = int(grid_round(ts.beat, spb))
        if step > last_step:
            break  # takes effect after the last onset, if ever
        meter = (ts.numerator, ts.denominator)
        if meter not in meter_index:
            raise EncodingError(
                f"{piece.name}: time signature {meter[0]}/{meter[1]} at beat {ts.beat:g} "
                f"is not in the vocabulary (bars of at most {config.max_bar_beats} "
                f"beats and a whole number of the {spb} steps per beat)"
            )
        if i == 0 and step < bar_steps(DEFAULT_METER):
            segments = [(0, meter)]  # the opening meter, a little late
            continue
        start, current = segments[-1]
        # No bar line lies in [step, start) when step <= start: the change that opened the
        # latest stretch came earlier in the same bar, so this one overrides it.
        length = bar_steps(current)
        at = start if step <= start else start + -(-(step - start) // length) * length
        if at == start:
            segments[-1] = (start, meter)
            if len(segments) > 1 and segments[-2][1] == meter:
                segments.pop()
        elif meter != current:
            segments.append((at, meter))
    if DEFAULT_METER not in meter_index and segments[0][1] == DEFAULT_METER:
        raise EncodingError(f"{piece.name}: the default 4/4 meter is not in the vocabulary")
    return segments


def bar_grid(
    piece: Piece, last_step: int, config, meter_index: dict[tuple[int, int], int]
) -> tuple[np.ndarray, np.ndarray]:
    """(bar start steps int64, TIMESIG index or -1 where the meter does not change) of every
    bar up to the one holding grid step `last_step`."""
    spb = config.steps_per_beat
    segments = [s for s in meter_segments(piece, last_step, config, meter_index)
                if s[0] <= last_step]  # fmt: skip
    starts, meters = [], []
    for k, (start, meter) in enumerate(segments):
        stop = segments[k + 1][0] if k + 1 < len(segments) else last_step + 1
        length = meter[0] * 4 * spb // meter[1]
        count = -(-(stop - start) // length)
        starts.append(start + length * np.arange(count))
        meters.append(np.r_[meter_index[meter], np.full(count - 1, -1)])
    return np.concatenate(starts), np.concatenate(meters).astype(np.int64)
