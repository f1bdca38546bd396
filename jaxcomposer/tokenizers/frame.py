"""`frame` tokens: a piano roll read frame by frame (Boulanger-Lewandowski et al. 2012).

A held-out benchmark scores this in nats per frame against published results, so the semantics
are fixed exactly: frame i covers beats [i/spb, (i+1)/spb), frames start at beat 0 and run to
the latest grid offset (no notes = no frames). A pitch sounds in frame i if some note of it has
q_start <= i < q_end. Each frame emits its sounding pitches in ascending order, then FRAME_END
(an empty frame is a lone FRAME_END), so count(FRAME_END) == number of frames.

With mark_onsets, a pitch struck in the frame (some note of it starts there) is ONSET(p) and one
held over is HOLD(p); without, every sounding pitch is NOTE(p), exactly the 2012 representation.
Overlapping notes of one pitch merge (their frames are united). Decoding turns maximal runs of a
pitch into notes, split at ONSET tokens; NOTE runs are never split.
"""

from __future__ import annotations

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
from jaxcomposer.tokenizers.geometry import NOMINAL_BARS, BarCounter, nominal_bar_lines
from jaxcomposer.tokenizers.grammar import Grammar, GrammarBuilder, allow_eos
from jaxcomposer.tokenizers.vocab import Vocab, make_vocab


class FrameTokenizer(Tokenizer):
    name = "frame"

    @property
    def pitch_ranges(self) -> tuple[str, ...]:
        return ("ONSET", "HOLD") if self.config.mark_onsets else ("NOTE",)

    def _build_vocab(self) -> Vocab:
        c = self.config
        ranges = [("FRAME_END", 1)] + [(name, self.num_pitches) for name in self.pitch_ranges]
        return make_vocab(
            self.name,
            ranges,
            pitch_min=c.pitch_min,
            pitch_max=c.pitch_max,
            mark_onsets=c.mark_onsets,
        )

    def _build_grammar(self) -> Grammar:
        # State "AFTER_j": pitch index j was the last (highest) emitted in the current frame.
        b = GrammarBuilder(self.vocab)
        frame_end = [self.vocab.token("FRAME_END")]
        b.allow("FRAME_START", frame_end, "FRAME_START")
        allow_eos(b, "FRAME_START")  # a piece ends only at a frame boundary
        for j in range(self.num_pitches):
            pitch_j = [self.vocab.token(name, j) for name in self.pitch_ranges]
            b.allow("FRAME_START", pitch_j, f"AFTER_{j}")
            for i in range(j):
                b.allow(f"AFTER_{i}", pitch_j, f"AFTER_{j}")
            b.allow(f"AFTER_{j}", frame_end, "FRAME_START")
        return b.build("FRAME_START")

    # --- encoding ----------------------------------------------------------------------------
    def _cells(
        self, piece: Piece
    ) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, dict[str, int]]:
        """(frames, frame, column, struck) of every sounding (frame, pitch) cell, in token order
        (by frame, then ascending pitch), plus the counts of notes merged in the roll. Sparse,
        so the cost follows the sounding cells, not the roll; notes of one pitch are united
        into runs first, so a pile of overlapping notes costs no more than one."""
        pitch, q_start, q_end = checked_grid(self, piece)
        frames = int(q_end.max()) if q_end.size else 0
        run_pitch, run_start, run_end, joins = _runs(pitch, q_start, q_end)
        if self.config.mark_onsets:
            losses = {"merged_on_grid_notes": same_onset_repeats(pitch, q_start)}
        else:
            losses = {"merged_in_roll_notes": int(joins.sum())}
        length = run_end - run_start
        run_of = np.repeat(np.arange(length.size), length)
        frame = (
            run_start[run_of]
            + np.arange(run_of.size)
            - np.repeat(np.cumsum(length) - length, length)
        )
        column = run_pitch[run_of] - self.config.pitch_min
        cell = np.sort(frame * self.num_pitches + column)  # runs of a pitch never share a cell
        onsets = q_start * self.num_pitches + pitch - self.config.pitch_min
        struck = np.isin(cell, onsets)
        return frames, cell // self.num_pitches, cell % self.num_pitches, struck, losses

    def encode_counted(self, piece: Piece) -> tuple[np.ndarray, dict[str, int]]:
        frames, frame, column, struck, losses = self._cells(piece)
        if self.config.mark_onsets:
            onset, hold = self.vocab.offset("ONSET"), self.vocab.offset("HOLD")
            pitch_tokens = np.where(struck, onset, hold) + column
        else:
            pitch_tokens = self.vocab.offset("NOTE") + column
        # Each frame's FRAME_END follows its pitches: a pitch token is shifted by the FRAME_ENDs
        # of the frames before it, and frame f's FRAME_END lands after f earlier ones.
        tokens = np.empty(pitch_tokens.size + frames, np.int32)
        tokens[np.arange(pitch_tokens.size) + frame] = pitch_tokens
        per_frame = np.bincount(frame, minlength=frames)
        tokens[np.cumsum(per_frame) + np.arange(frames)] = self.vocab.token("FRAME_END")
        return tokens, losses

    def quantize(self, piece: Piece) -> Notes:
        """Per pitch: the union of the notes' steps, split at onsets when mark_onsets (a sweep
        over intervals, independent of the piano-roll code that encode and decode use)."""
        pitch, q_start, q_end = checked_grid(self, piece)
        order = np.lexsort((q_end, q_start, pitch))
        out: list[tuple[int, int, int]] = []
        current: list[int] | None = None  # [pitch, start, end] of the note being grown
        for p, s, e in zip(
            pitch[order].tolist(), q_start[order].tolist(), q_end[order].tolist(), strict=True
        ):
            if current is not None and p == current[0] and s <= current[2]:
                if self.config.mark_onsets and s > current[1]:  # a new strike splits the run
                    out.append((p, current[1], s))
                    current = [p, s, max(current[2], e)]
                else:
                    current[2] = max(current[2], e)
                continue
            if current is not None:
                out.append(tuple(current))
            current = [p, s, e]
        if current is not None:
            out.append(tuple(current))
        arr = np.asarray(out, np.int64).reshape(-1, 3)
        return notes_from_steps(arr[:, 0], arr[:, 1], arr[:, 2], self.config.steps_per_beat)

    # --- decoding ----------------------------------------------------------------------------
    def _decode_body(self, tokens: np.ndarray, accepted: np.ndarray) -> Decoded:
        n = self.num_pitches
        body = tokens[accepted]
        is_end = body == self.vocab.token("FRAME_END")
        frame_of = np.cumsum(is_end) - is_end  # FRAME_ENDs before each token
        num_ends = int(is_end.sum())
        frames = num_ends + int(body.size > 0 and not is_end[-1])  # a cut frame still counts
        pitch_token = ~is_end
        index = body[pitch_token] - self.vocab.offset(self.pitch_ranges[0])
        struck_token = np.zeros(index.shape, bool)
        if self.config.mark_onsets:
            struck_token = index < n
            index = np.where(struck_token, index, index - n)
        # Column-major (pitch, frame) grids with a silent extra frame so that runs end inside.
        sounding = np.zeros((n, frames + 1), bool)
        struck = np.zeros((n, frames + 1), bool)
        sounding[index, frame_of[pitch_token]] = True
        struck[index, frame_of[pitch_token]] = struck_token
        before = np.zeros_like(sounding)
        before[:, 1:] = sounding[:, :-1]
        starts = sounding & (~before | struck)  # a HOLD after silence starts a note too
        after_start = np.zeros_like(starts)
        after_start[:, :-1] = starts[:, 1:]
        after = np.zeros_like(sounding)
        after[:, :-1] = sounding[:, 1:]
        ends = sounding & (~after | after_start)
        start_cells = np.flatnonzero(starts)
        end_cells = np.flatnonzero(ends)  # runs pair up in order: cells never straddle pitches
        notes = notes_from_steps(
            start_cells // (frames + 1) + self.config.pitch_min,
            start_cells % (frames + 1),
            end_cells % (frames + 1) + 1,
            self.config.steps_per_beat,
        )
        return Decoded(
            notes=notes, skipped=0, beats=frames / self.config.steps_per_beat, frames=num_ends
        )

    # --- geometry: frames of 1/steps_per_beat beats, no bars (nominal 4/4 bars) -------------
    time_unit = "beat"
    keeps_note_count = True  # each note not merged in the roll is one run of frames

    def bar_counter(self) -> BarCounter:
        """A FRAME_END closes its frame (not inclusive); 4 beats of frames make a bar."""
        advance = np.zeros(self.vocab.size, np.float32)
        advance[self.vocab.token("FRAME_END")] = 1.0
        return BarCounter(advance, False, 4.0 * self.config.steps_per_beat, 1, NOMINAL_BARS)

    def token_beats(self, tokens: np.ndarray) -> np.ndarray:
        """The start of the token's frame: FRAME_ENDs before it / steps_per_beat."""
        return self.bar_counter().units(tokens) / self.config.steps_per_beat

    def pitch_class_table(self) -> np.ndarray:
        """NOTE (ONSET, HOLD) tokens sound their pitch's class, FRAME_END none."""
        return pitch_range_classes(self, self.pitch_ranges)

    def cut_points(self, tokens: np.ndarray) -> np.ndarray:
        """At frame starts (the grammar's start state)."""
        return self._grammar_starts(tokens)

    def bar_lines(self, tokens: np.ndarray) -> np.ndarray:
        """Nominal 4/4 bar lines through the end of the last frame (frames hold no meter)."""
        return nominal_bar_lines(self.decode(tokens).beats)

    def meters(self, tokens: np.ndarray) -> tuple[TimeSignature, ...]:
        """Frames hold no meter."""
        return ()

    def meter_tokens(self) -> dict[tuple[int, int], int]:
        """Frames state no meter: none."""
        return {}

    def voice_tables(self) -> None:
        """Frames carry no voices: None."""
        return None

    def _shift_token(self, name: str, index: int, shift: int) -> tuple[str, int] | None:
        if name in self.pitch_ranges:
            moved = shift_pitch_index(index, shift, self.num_pitches)
            return None if moved is None else (name, moved)
        return name, index


def _runs(
    pitch: np.ndarray, q_start: np.ndarray, q_end: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per pitch, the maximal runs of steps its notes cover (notes that overlap or touch unite):
    (run pitch, run start, run end) int64 (R,) sorted by pitch then start, and `joins` bool
    (N,): whether each note, in that order, joined a run begun by an earlier note."""
    order = np.lexsort((q_start, pitch))
    p, s, e = pitch[order], q_start[order], q_end[order]
    if not p.size:
        return p, s, e, np.zeros(0, bool)
    # The latest end among each pitch's notes so far (a running maximum per pitch, made one
    # running maximum by lifting each pitch above the ones before it): a note joins the run
    # when it starts by then.
    group = np.cumsum(np.r_[False, p[1:] != p[:-1]])
    lift = group * (int(e.max()) + 1)
    reach = np.maximum.accumulate(e + lift) - lift
    joins = np.zeros(p.size, bool)
    joins[1:] = (p[1:] == p[:-1]) & (s[1:] <= reach[:-1])
    first = np.flatnonzero(~joins)
    last = np.r_[first[1:], p.size] - 1
    return p[first], s[first], reach[last], joins
