"""`performance` tokens: the Performance RNN representation (Oore et al. 2018, section 3).

Events in time order: NOTE_ON(p - pitch_min), NOTE_OFF(p - pitch_min), TIME_SHIFT(k - 1) moving
the clock k steps of 1/perf_steps_per_second s (10 ms) forward, k <= perf_max_shift_steps (1 s;
a longer gap is several shifts, full ones first), and VELOCITY(velocity * bins // 128), emitted
before a NOTE_ON only when the bin differs from the current one (the first NOTE_ON always has
one). Within a step: every NOTE_OFF (ascending pitch), then every NOTE_ON (ascending pitch).

Canonical notes (`quantize`; what `decode(encode(piece))` gives back):
  1. With perf_sustain, the sustain pedal lengthens notes exactly as note-seq's
     `apply_sustain_control_changes` does: a note released while the pedal is down sounds until
     the pedal comes up or the same pitch is struck again (over every channel together).
  2. Beats -> seconds through the piece's tempo map; the clock starts at the first onset (GiantMIDI
     files cut from long recordings begin with up to 28 minutes of silence).
  3. Onsets and offsets rounded to the step grid (halves up); a note lasts >= 1 step.
  4. One pitch sounds at most once: notes of one pitch with one onset collapse (longest, then
     loudest), and a re-strike ends the previous note of that pitch (as a piano key does).
  5. Velocity -> bin -> the bin's middle velocity (as the `event` tokenizer's bins).

Decoded times are seconds written as beats of a fixed 120 qpm (beats = 2 * seconds), so the rest
of the pipeline (beats everywhere) works unchanged; `decoded_qpm` tells writers to use 120 qpm.

Grammar: the table tracks how many notes sound (0..num_pitches) and that a VELOCITY is followed
by a NOTE_ON, so NOTE_OFF needs some sounding note (one right after its NOTE_ON, which encoding
never writes, decodes as a note of one step) and EOS may come anywhere (a note still
sounding at the end is closed there). Which pitches sound is beyond any finite table (2^88
sets): the grammar's held-key rule (`Grammar.press/release`) adds it, forbidding NOTE_OFF(p) when
p is silent and NOTE_ON(p) when p sounds; decoding and the sampler apply it, the table-only
training/evaluation masks do not. The table also does not know the current velocity, so a
VELOCITY equal to it is accepted (redundant), and a NOTE_ON before any VELOCITY gets velocity
80.
"""

from __future__ import annotations

import numpy as np

from jaxcomposer.music.notes import DEFAULT_VELOCITY, Notes, Piece, TimeSignature, beats_to_seconds
from jaxcomposer.tokenizers.base import Decoded, EncodingError, Tokenizer
from jaxcomposer.tokenizers.common import pitch_range_classes, shift_pitch_index
from jaxcomposer.tokenizers.event import velocity_centres
from jaxcomposer.tokenizers.geometry import DEFAULT_BAR_BEATS, BarCounter, nominal_bar_lines
from jaxcomposer.tokenizers.grammar import Grammar, GrammarBuilder, allow_eos
from jaxcomposer.tokenizers.vocab import Vocab, make_vocab

BEATS_PER_SECOND = 2.0  # decoded notes are written at 120 qpm


def apply_sustain(notes: Notes, sustain: tuple[tuple[float, float], ...]) -> Notes:
    """Notes lengthened by the sustain pedal, note-seq's rule (magenta/note_seq,
    sequences_lib.apply_sustain_control_changes): events sorted by (time, kind) with kinds
    pedal down < pedal up < note on < note off; a note off while the pedal is down keeps the note
    sounding; pedal up ends such notes; a note on while the pedal is down ends earlier notes of
    its pitch (dropping one that would last zero time); notes still held at the end last until
    the last event. Times in any unit (beats here); returns notes in the input order."""
    if not sustain or len(notes) == 0:
        return notes
    start, end, pitch = notes.start.tolist(), notes.end.tolist(), notes.pitch.tolist()
    events = [(a, 0, -1) for a, _ in sustain] + [(b, 1, -1) for _, b in sustain]
    events += [(s, 2, i) for i, s in enumerate(start)] + [(e, 3, i) for i, e in enumerate(end)]
    events.sort(key=lambda e: (e[0], e[1]))  # stable: ties keep note order, as in note-seq
    new_end = list(end)
    active: dict[int, None] = {}  # insertion-ordered set of sounding notes
    dropped: set[int] = set()
    down, time = False, 0.0
    for time, kind, i in events:
        if kind == 0:
            down = True
        elif kind == 1:
            down = False
            for j in [j for j in active if new_end[j] < time]:
                new_end[j] = time
                del active[j]
        elif kind == 2:
            if down:
                for j in [j for j in active if pitch[j] == pitch[i]]:
                    new_end[j] = time
                    if start[j] == time:
                        dropped.add(j)
                    del active[j]
            active[i] = None
        elif not down:
            active.pop(i, None)
    for j in active:
        new_end[j] = time
    keep = np.array([i not in dropped for i in range(len(notes))], bool)
    out = Notes(
        notes.pitch, notes.start, np.asarray(new_end, np.float64), notes.velocity,
        notes.program, notes.is_drum,
    )  # fmt: skip
    return out[keep]


class PerformanceTokenizer(Tokenizer):
    name = "performance"
    decoded_qpm = 60.0 * BEATS_PER_SECOND

    def _build_vocab(self) -> Vocab:
        c = self.config
        if c.perf_steps_per_second < 1 or c.perf_max_shift_steps < 1:
            raise ValueError("perf_steps_per_second and perf_max_shift_steps must be >= 1")
        if not 1 <= c.perf_velocity_bins <= 128:
            raise ValueError(f"perf_velocity_bins must be in [1, 128], got {c.perf_velocity_bins}")
        ranges = [
            ("NOTE_ON", self.num_pitches),
            ("NOTE_OFF", self.num_pitches),
            ("TIME_SHIFT", c.perf_max_shift_steps),
            ("VELOCITY", c.perf_velocity_bins),
        ]
        return make_vocab(
            self.name,
            ranges,
            pitch_min=c.pitch_min,
            pitch_max=c.pitch_max,
            steps_per_second=c.perf_steps_per_second,
            max_shift_steps=c.perf_max_shift_steps,
            velocity_bins=c.perf_velocity_bins,
            sustain=c.perf_sustain,
        )

    def _build_grammar(self) -> Grammar:
        # S_k: k notes sound; V_k: a VELOCITY was just read (a NOTE_ON must follow).
        v, b = self.vocab, GrammarBuilder(self.vocab)
        on, off = v.range_ids("NOTE_ON"), v.range_ids("NOTE_OFF")
        for k in range(self.num_pitches + 1):
            b.allow(f"S_{k}", v.range_ids("TIME_SHIFT"), f"S_{k}")
            b.allow(f"S_{k}", v.range_ids("VELOCITY"), f"V_{k}")
            allow_eos(b, f"S_{k}")
            if k < self.num_pitches:
                b.allow(f"S_{k}", on, f"S_{k + 1}")
                b.allow(f"V_{k}", on, f"S_{k + 1}")
            if k > 0:
                b.allow(f"S_{k}", off, f"S_{k - 1}")
        press = np.full(v.size, -1, np.int32)
        release = np.full(v.size, -1, np.int32)
        press[on] = np.arange(self.num_pitches)
        release[off] = np.arange(self.num_pitches)
        return b.build("S_0", press=press, release=release)

    # --- encoding ----------------------------------------------------------------------------
    def _steps_to_beats(self, steps: np.ndarray) -> np.ndarray:
        return np.asarray(steps, np.float64) * (
            BEATS_PER_SECOND / self.config.perf_steps_per_second
        )

    def _check(self, piece: Piece) -> None:
        notes = piece.notes
        self.check_range(notes.pitch.astype(np.int64), where=piece.name)
        for label, values in (("start", notes.start), ("end", notes.end)):
            bad = ~np.isfinite(values) | (values < 0)
            if bad.any():
                raise EncodingError(
                    f"{piece.name}: note {label} {float(values[bad][0])!r} beats is not a finite "
                    "time >= 0"
                )
        velocity = notes.velocity.astype(np.int64)
        bad = (velocity < 1) | (velocity > 127)
        if bad.any():
            raise EncodingError(f"{piece.name}: velocity {int(velocity[bad][0])} is not in 1-127")
        for tempo in piece.tempos:
            if not (np.isfinite(tempo.qpm) and tempo.qpm > 0):
                raise EncodingError(
                    f"{piece.name}: tempo {tempo.qpm!r} qpm at beat {tempo.beat:g} is not > 0"
                )

    def _notes(self, piece: Piece) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
        """(pitch, onset step, offset step, velocity bin) of the canonical notes (see the module
        docstring), sorted by onset then pitch, and how many notes merged into others (one pitch
        struck twice in one step, or at one instant under the pedal)."""
        c = self.config
        self._check(piece)
        notes = apply_sustain(piece.notes, piece.sustain) if c.perf_sustain else piece.notes
        merged = len(piece.notes) - len(notes)
        if len(notes) == 0:
            return (*(np.zeros(0, np.int64),) * 4, merged)
        start = beats_to_seconds(notes.start, piece.tempos)
        end = beats_to_seconds(notes.end, piece.tempos)
        origin = start.min()
        on = np.floor((start - origin) * c.perf_steps_per_second + 0.5).astype(np.int64)
        off = np.floor((end - origin) * c.perf_steps_per_second + 0.5).astype(np.int64)
        off = np.maximum(off, on + 1)
        pitch = notes.pitch.astype(np.int64)
        vbin = notes.velocity.astype(np.int64) * c.perf_velocity_bins // 128
        order = np.lexsort((-vbin, -off, on, pitch))
        pitch, on, off, vbin = (x[order] for x in (pitch, on, off, vbin))
        keep = np.r_[True, (pitch[1:] != pitch[:-1]) | (on[1:] != on[:-1])]
        pitch, on, off, vbin = (x[keep] for x in (pitch, on, off, vbin))
        same_next = np.r_[pitch[1:] == pitch[:-1], False]  # the next note has this pitch
        next_on = np.r_[on[1:], 0]
        off = np.where(same_next, np.minimum(off, next_on), off)  # a re-strike ends the note
        order = np.lexsort((pitch, on))
        merged += int((~keep).sum())
        return pitch[order], on[order], off[order], vbin[order], merged

    def encode_counted(self, piece: Piece) -> tuple[np.ndarray, dict[str, int]]:
        c, v = self.config, self.vocab
        pitch, on, off, vbin, merged = self._notes(piece)
        index = pitch - c.pitch_min
        # Events sorted by (step, offs before ons, pitch).
        step = np.concatenate([off, on])
        kind = np.r_[np.zeros(off.size, np.int64), np.ones(on.size, np.int64)]
        key = np.concatenate([index, index])
        bins = np.concatenate([np.full(off.size, -1), vbin])
        order = np.lexsort((key, kind, step))
        tokens: list[int] = []
        now, velocity = 0, -1
        shift0, max_shift = v.offset("TIME_SHIFT"), c.perf_max_shift_steps
        on0, off0, vel0 = v.offset("NOTE_ON"), v.offset("NOTE_OFF"), v.offset("VELOCITY")
        for s, k, p, b in zip(
            step[order].tolist(), kind[order].tolist(), key[order].tolist(),
            bins[order].tolist(), strict=True,
        ):  # fmt: skip
            gap = s - now
            tokens.extend([shift0 + max_shift - 1] * (gap // max_shift))
            if gap % max_shift:
                tokens.append(shift0 + gap % max_shift - 1)
            now = s
            if k == 0:
                tokens.append(off0 + p)
                continue
            if b != velocity:
                tokens.append(vel0 + b)
                velocity = b
            tokens.append(on0 + p)
        return np.asarray(tokens, np.int32), {"merged_on_grid_notes": merged}

    def quantize(self, piece: Piece) -> Notes:
        pitch, on, off, vbin, _ = self._notes(piece)
        return Notes(
            pitch=pitch.astype(np.int16),
            start=self._steps_to_beats(on),
            end=self._steps_to_beats(off),
            velocity=velocity_centres(self.config.perf_velocity_bins)[vbin].astype(np.int16),
            program=np.zeros(pitch.size, np.int16),
            is_drum=np.zeros(pitch.size, bool),
        )

    # --- decoding ----------------------------------------------------------------------------
    def _decode_body(self, tokens: np.ndarray, accepted: np.ndarray) -> Decoded:
        c, v = self.config, self.vocab
        names = [name for name, _ in v.ranges]
        range_of, index_of = v.range_of(), v.index_of()
        centres = velocity_centres(c.perf_velocity_bins)
        now, velocity = 0, DEFAULT_VELOCITY
        sounding: dict[int, tuple[int, int]] = {}  # pitch index -> (onset step, velocity)
        rows: list[tuple[int, int, int, int]] = []
        for token in tokens[accepted].tolist():
            kind, index = names[range_of[token]], int(index_of[token])
            if kind == "TIME_SHIFT":
                now += index + 1
            elif kind == "VELOCITY":
                velocity = int(centres[index])
            elif kind == "NOTE_ON":  # the grammar's held-key rule: index is not sounding
                sounding[index] = (now, velocity)
            elif kind == "NOTE_OFF":  # ... and here it is; a note lasts >= 1 step, as encoded
                onset, vel = sounding.pop(index)
                rows.append((index, onset, max(now, onset + 1), vel))
        for index, (onset, vel) in sounding.items():  # closed at the end
            rows.append((index, onset, max(now, onset + 1), vel))
        arr = np.asarray(rows, np.int64).reshape(-1, 4)
        notes = Notes(
            pitch=(arr[:, 0] + c.pitch_min).astype(np.int16),
            start=self._steps_to_beats(arr[:, 1]),
            end=self._steps_to_beats(arr[:, 2]),
            velocity=arr[:, 3].astype(np.int16),
            program=np.zeros(len(arr), np.int16),
            is_drum=np.zeros(len(arr), bool),
        )
        last = int(arr[:, 2].max()) if len(arr) else 0
        return Decoded(notes.sorted(), 0, float(self._steps_to_beats(max(now, last))))

    # --- geometry: time in seconds; nominal bars of 4 beats at decoded_qpm (2 s) -------------
    time_unit = "second"
    keeps_note_count = True  # one NOTE_ON ... NOTE_OFF pair per note

    def bar_counter(self) -> BarCounter:
        """TIME_SHIFT(k) advances k steps (1/perf_steps_per_second s each) and leads out of its
        instant (not inclusive); a bar is DEFAULT_BAR_BEATS beats at decoded_qpm (2 s at 120
        qpm), the bars `bar_lines` and the key schedules count."""
        advance = np.zeros(self.vocab.size, np.float32)
        shifts = self.vocab.range_ids("TIME_SHIFT")
        advance[shifts] = np.arange(1, shifts.size + 1)
        seconds_per_bar = DEFAULT_BAR_BEATS / BEATS_PER_SECOND
        per_bar = seconds_per_bar * self.config.perf_steps_per_second
        note = f"no bars: {seconds_per_bar:g} s = 1 bar (4 beats at {self.decoded_qpm:g} qpm)"
        return BarCounter(advance, False, float(per_bar), 1, note)

    def token_beats(self, tokens: np.ndarray) -> np.ndarray:
        """Seconds of TIME_SHIFT before each token, as beats of decoded_qpm."""
        return self._steps_to_beats(self.bar_counter().units(tokens))

    def token_time(self, piece: Piece, beats: np.ndarray) -> np.ndarray:
        """The piece's beats -> seconds (its tempo map) from the first onset, as the encoder
        clocks them, in beats of decoded_qpm."""
        notes = piece.notes  # the pedal moves no onset
        seconds = beats_to_seconds(np.asarray(beats, np.float64), piece.tempos)
        origin = beats_to_seconds(notes.start, piece.tempos).min() if len(notes) else 0.0
        return (seconds - origin) * BEATS_PER_SECOND

    def pitch_class_table(self) -> np.ndarray:
        """NOTE_ON tokens sound their pitch's class; NOTE_OFF (only ends a note), TIME_SHIFT and
        VELOCITY none."""
        return pitch_range_classes(self, ("NOTE_ON",))

    def cut_points(self, tokens: np.ndarray) -> np.ndarray:
        """Where no note sounds (the grammar's start state): a primer cut there leaves no note
        without its NOTE_OFF and no NOTE_OFF without its NOTE_ON."""
        return self._grammar_starts(tokens)

    def bar_lines(self, tokens: np.ndarray) -> np.ndarray:
        """Nominal bars of 2 s (4 beats at decoded_qpm) through the end of the music."""
        return nominal_bar_lines(self.decode(tokens).beats)

    def meters(self, tokens: np.ndarray) -> tuple[TimeSignature, ...]:
        """Performance tokens hold no meter."""
        return ()

    def meter_tokens(self) -> dict[tuple[int, int], int]:
        """Performance tokens state no meter: none."""
        return {}

    def voice_tables(self) -> None:
        """Performance tokens carry no voices: None."""
        return None

    def _shift_token(self, name: str, index: int, shift: int) -> tuple[str, int] | None:
        if name in ("NOTE_ON", "NOTE_OFF"):
            moved = shift_pitch_index(index, shift, self.num_pitches)
            return None if moved is None else (name, moved)
        return name, index
