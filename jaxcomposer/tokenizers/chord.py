"""`chord` tokens: the original Classical-Piano-Composer representation, for replication.

One token per onset group (the notes sharing a grid onset): PITCH(p - pitch_min) when the group
holds one distinct pitch, else CHORD(c), the group's set of pitch classes (octave doublings such
as C4+C5 are the one-class set {0}). With `chord_durations`, a DURATION token (index d-1 = d grid
steps, the group's longest note, clipped) follows each group.

The CHORD range enumerates all 4095 non-empty pitch-class sets, sorted by size, then by their
normal order read as a tuple (C{0} < C#{1} < ... < {0,1} < {0,2} ...). A chord is described and
decoded by its normal order, computed as music21's `Chord.normalOrder` does (Forte's rule: the
most compact rotation; ties go to the rotation packed to the left, then to the lowest first pc).

Decoding has no timing information, as in the original: group k starts at k*chord_step_beats and
lasts chord_step_beats (or its DURATION); a chord sounds in octave 4 (MIDI 60+pc, as the
original's `note.Note(int(pc))`). One deviation: a one-class chord (an octave doubling) decodes
as the two notes 60+pc and 72+pc, so that it re-encodes to the same CHORD token rather than to a
PITCH. Re-encoding decoded music is the identity when chord_step_beats*steps_per_beat >= 1 (groups
land on distinct grid steps) and the pitch range holds MIDI 60-83.
"""

from __future__ import annotations

import functools

import numpy as np

from jaxcomposer.music.notes import Notes, Piece, TimeSignature
from jaxcomposer.tokenizers.base import Decoded, Tokenizer
from jaxcomposer.tokenizers.common import (
    checked_grid,
    notes_from_steps,
    pitch_range_classes,
    same_onset_repeats,
    shift_pitch_index,
)
from jaxcomposer.tokenizers.geometry import (
    DEFAULT_BAR_BEATS,
    NOMINAL_BARS,
    BarCounter,
    nominal_bar_lines,
)
from jaxcomposer.tokenizers.grammar import Grammar, GrammarBuilder, allow_eos
from jaxcomposer.tokenizers.vocab import Vocab, make_vocab

NUM_PITCH_CLASS_SETS = 4095  # non-empty subsets of the 12 pitch classes
CHORD_OCTAVE_BASE = 60  # decoded chords sound from middle C (octave 4) upwards
CHORD_ORDER = "size, then normal order as a tuple"


def normal_order(pitch_classes) -> tuple[int, ...]:
    """music21's normal order of a pitch-class collection (duplicates and octaves ignored).

    Among the rotations of the sorted classes, the one with the smallest span (first to last,
    mod 12) wins; ties are broken by the interval from the first class to the 2nd, then the 3rd,
    ... (Forte's "packed to the left"), and finally by the lowest first class.
    """
    pcs = sorted({int(p) % 12 for p in pitch_classes})
    n = len(pcs)
    best, best_key = (), None
    for r in range(n):
        rotation = tuple(pcs[(r + j) % n] for j in range(n))
        intervals = [(pc - rotation[0]) % 12 for pc in rotation]
        key = (intervals[-1], *intervals[1:-1])
        if best_key is None or key < best_key:  # strict: the lowest first pc keeps ties
            best, best_key = rotation, key
    return best


def mask_of(pitch_classes) -> int:
    """Bit mask (bit pc set) of a pitch-class collection."""
    return functools.reduce(lambda m, pc: m | (1 << (int(pc) % 12)), pitch_classes, 0)


@functools.cache
def chord_table() -> tuple[tuple[tuple[int, ...], ...], np.ndarray, np.ndarray]:
    """(normal orders by CHORD index, mask per CHORD index int64 (4095,), CHORD index per mask
    int64 (4096,), -1 for the empty mask)."""
    orders = sorted(
        (normal_order([pc for pc in range(12) if m >> pc & 1]) for m in range(1, 4096)),
        key=lambda o: (len(o), o),
    )
    masks = np.array([mask_of(o) for o in orders], np.int64)
    index_of_mask = np.full(4096, -1, np.int64)
    index_of_mask[masks] = np.arange(masks.size)
    return tuple(orders), masks, index_of_mask


def rotate_mask(mask: int, shift: int) -> int:
    """The pitch-class set of `mask` transposed by `shift` semitones."""
    k = shift % 12
    return ((mask << k) | (mask >> (12 - k))) & 0xFFF


class ChordTokenizer(Tokenizer):
    name = "chord"

    def _build_vocab(self) -> Vocab:
        c = self.config
        if not c.chord_step_beats > 0:
            raise ValueError(f"chord_step_beats must be > 0, got {c.chord_step_beats}")
        ranges = [("PITCH", self.num_pitches), ("CHORD", NUM_PITCH_CLASS_SETS)]
        settings = dict(pitch_min=c.pitch_min, pitch_max=c.pitch_max, chord_order=CHORD_ORDER)
        if c.chord_durations:
            if c.max_duration_steps < 1:
                raise ValueError(f"max_duration_steps must be >= 1, got {c.max_duration_steps}")
            ranges.append(("DURATION", c.max_duration_steps))
            settings["max_duration_steps"] = c.max_duration_steps
        settings["chord_durations"] = c.chord_durations
        return make_vocab(self.name, ranges, **settings)

    def _build_grammar(self) -> Grammar:
        b = GrammarBuilder(self.vocab)
        groups = np.concatenate([self.vocab.range_ids("PITCH"), self.vocab.range_ids("CHORD")])
        if self.config.chord_durations:
            b.allow("GROUP", groups, "NEED_DURATION")
            b.allow("NEED_DURATION", self.vocab.range_ids("DURATION"), "GROUP")
        else:
            b.allow("GROUP", groups, "GROUP")
        allow_eos(b, "GROUP")
        return b.build("GROUP")

    # --- encoding ----------------------------------------------------------------------------
    def _groups(
        self, piece: Piece
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
        """Per onset group, ascending: (lowest pitch, highest pitch, pc mask, longest steps);
        plus the counts of notes the groups cannot hold."""
        pitch, q_start, q_end = checked_grid(self, piece)
        order = np.argsort(q_start, kind="stable")
        q_sorted = q_start[order]
        first = np.flatnonzero(np.r_[True, q_sorted[1:] != q_sorted[:-1]]) if order.size else order
        p = pitch[order]
        low = np.minimum.reduceat(p, first) if first.size else p[:0]
        high = np.maximum.reduceat(p, first) if first.size else p[:0]
        mask = np.bitwise_or.reduceat(np.left_shift(1, p % 12), first) if first.size else p[:0]
        longest = np.maximum.reduceat((q_end - q_start)[order], first) if first.size else p[:0]
        return low, high, mask, longest, self._losses(pitch, q_start, q_end, low, high, mask)

    def _losses(self, pitch, q_start, q_end, low, high, mask: np.ndarray) -> dict[str, int]:
        """A group holds one pitch, or one note per pitch class of its chord: repeats of a pitch
        on its onset are merged on the grid, further pitches of a class in a chord (octave
        doublings) are merged into the class."""
        on_grid = same_onset_repeats(pitch, q_start)
        classes = np.array([bin(m).count("1") for m in mask.tolist()], np.int64)
        held = int(np.where(low == high, 1, classes).sum())
        losses = {
            "merged_on_grid_notes": on_grid,
            "merged_pitch_class_notes": int(pitch.size - on_grid - held),
        }
        if self.config.chord_durations:
            capped = (q_end - q_start) > self.config.max_duration_steps
            losses["duration_capped_notes"] = int(capped.sum())
        return losses

    def encode_counted(self, piece: Piece) -> tuple[np.ndarray, dict[str, int]]:
        low, high, mask, longest, losses = self._groups(piece)
        _, _, index_of_mask = chord_table()
        group_tokens = np.where(
            low == high,
            self.vocab.offset("PITCH") + low - self.config.pitch_min,
            self.vocab.offset("CHORD") + index_of_mask[mask],
        )
        if not self.config.chord_durations:
            return group_tokens.astype(np.int32), losses
        d = np.clip(longest, 1, self.config.max_duration_steps)
        duration_tokens = self.vocab.offset("DURATION") + d - 1
        tokens = np.stack([group_tokens, duration_tokens], axis=1).reshape(-1).astype(np.int32)
        return tokens, losses

    def quantize(self, piece: Piece) -> Notes:
        """Group k at k*chord_step_beats; pitch classes of chords put in octave 4 (doubled)."""
        c = self.config
        low, high, mask, longest, _ = self._groups(piece)
        pitches, group_of = [], []
        for k, (lo, hi, m) in enumerate(
            zip(low.tolist(), high.tolist(), mask.tolist(), strict=True)
        ):
            if lo == hi:
                chord = [lo]
            else:
                chord = [CHORD_OCTAVE_BASE + pc for pc in range(12) if m >> pc & 1]
                if len(chord) == 1:
                    chord.append(chord[0] + 12)
            pitches += chord
            group_of += [k] * len(chord)
        group_of = np.asarray(group_of, np.int64)
        if c.chord_durations:
            length = np.clip(longest, 1, c.max_duration_steps)[group_of] / c.steps_per_beat
        else:
            length = np.full(group_of.shape, c.chord_step_beats)
        return self._notes(np.asarray(pitches), group_of, length)

    def _notes(self, pitch: np.ndarray, group: np.ndarray, length_beats: np.ndarray) -> Notes:
        start = group * self.config.chord_step_beats
        # steps_per_beat=1 keeps the beat values as they are
        return notes_from_steps(pitch, start, start + length_beats, steps_per_beat=1)

    # --- decoding ----------------------------------------------------------------------------
    def _decode_body(self, tokens: np.ndarray, accepted: np.ndarray) -> Decoded:
        c = self.config
        body = tokens[accepted]
        if c.chord_durations:
            body = body[: body.size // 2 * 2]  # a trailing group without DURATION is dropped
            groups, durations = body[0::2], body[1::2] - self.vocab.offset("DURATION") + 1
        else:
            groups, durations = body, None
        orders, _, _ = chord_table()
        pitch_offset, chord_offset = self.vocab.offset("PITCH"), self.vocab.offset("CHORD")
        pitches, group_of = [], []
        for k, token in enumerate(groups.tolist()):
            if token < chord_offset:
                chord = [c.pitch_min + token - pitch_offset]
            else:
                chord = [CHORD_OCTAVE_BASE + pc for pc in orders[token - chord_offset]]
                if len(chord) == 1:  # an octave doubling
                    chord.append(chord[0] + 12)
            pitches += chord
            group_of += [k] * len(chord)
        group_of = np.asarray(group_of, np.int64)
        if durations is None:
            length = np.full(group_of.shape, c.chord_step_beats)
        else:
            length = durations[group_of] / c.steps_per_beat
        notes = self._notes(np.asarray(pitches), group_of, length)
        return Decoded(notes=notes, skipped=0, beats=groups.size * c.chord_step_beats)

    def _shift_token(self, name: str, index: int, shift: int) -> tuple[str, int] | None:
        if name == "PITCH":
            moved = shift_pitch_index(index, shift, self.num_pitches)
            return None if moved is None else (name, moved)
        if name == "CHORD":
            _, masks, index_of_mask = chord_table()
            return name, int(index_of_mask[rotate_mask(int(masks[index]), shift)])
        return name, index

    # --- geometry: onset groups chord_step_beats apart, no bars (nominal 4/4 bars) ----------
    time_unit = "beat"
    # A CHORD token decodes to its pitch classes in one octave (a one-class set to two notes),
    # whatever the octaves and doublings it was made from.
    keeps_note_count = False

    def bar_counter(self) -> BarCounter:
        """Each onset group takes chord_step_beats, counted at the token that completes it (its
        PITCH or CHORD token, or with chord_durations its DURATION); 4 beats make a bar."""
        advance = np.zeros(self.vocab.size, np.float32)
        ends = ("DURATION",) if self.config.chord_durations else ("PITCH", "CHORD")
        for name in ends:
            advance[self.vocab.range_ids(name)] = 1.0
        per_bar = DEFAULT_BAR_BEATS / self.config.chord_step_beats
        return BarCounter(advance, False, per_bar, 1, NOMINAL_BARS)

    def token_beats(self, tokens: np.ndarray) -> np.ndarray:
        """The decoded onset of the token's group: groups before it * chord_step_beats."""
        return self.bar_counter().units(tokens) * self.config.chord_step_beats

    def pitch_class_table(self) -> np.ndarray:
        """PITCH tokens sound their pitch's class, CHORD tokens their set, DURATION none."""
        pcs = pitch_range_classes(self, ("PITCH",))
        masks = chord_table()[1]
        pcs[self.vocab.range_ids("CHORD")] = (masks[:, None] >> np.arange(12)) & 1 == 1
        return pcs

    def cut_points(self, tokens: np.ndarray) -> np.ndarray:
        """At group starts (the grammar's start state)."""
        return self._grammar_starts(tokens)

    def bar_lines(self, tokens: np.ndarray) -> np.ndarray:
        """Nominal 4/4 bar lines through the end of the last group (groups hold no meter)."""
        return nominal_bar_lines(self.decode(tokens).beats)

    def meters(self, tokens: np.ndarray) -> tuple[TimeSignature, ...]:
        """Onset groups hold no meter."""
        return ()

    def meter_tokens(self) -> dict[tuple[int, int], int]:
        """Onset groups state no meter: none."""
        return {}

    def voice_tables(self) -> None:
        """Onset groups carry no voices: None."""
        return None

    def describe_chord(self, index: int) -> str:
        """A CHORD index as the original's token text, its normal order joined by '.'."""
        return ".".join(str(pc) for pc in chord_table()[0][index])
