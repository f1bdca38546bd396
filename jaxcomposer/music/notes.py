"""Notes as parallel numpy arrays, in quarter-note beats, and a piece = notes + score events.

Everything downstream of the MIDI reader (tokenizers, statistics, rendering) works on these.
Times are in beats (quarter notes) so that tokens are score-like and tempo-free.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_VELOCITY = 80  # MIDI velocity given to notes whose tokens carry no dynamics


@dataclasses.dataclass(frozen=True, eq=False)
class Notes:
    """N notes. Arrays all have shape (N,); `start < end` for every note of a valid piece."""

    pitch: np.ndarray  # int16, MIDI pitch 0-127
    start: np.ndarray  # float64, beats
    end: np.ndarray  # float64, beats
    velocity: np.ndarray  # int16, 1-127
    program: np.ndarray  # int16, GM program 0-127
    is_drum: np.ndarray  # bool
    # int8 voice index (0 = top voice: soprano; 1 alto, 2 tenor, 3 bass in four-part music), or -1
    # where the source names no voices. Readers fill it from score parts or MIDI tracks that are
    # voices; everything that does not know about voices keeps it as it is.
    voice: np.ndarray | None = None

    def __post_init__(self):
        if self.voice is None:
            object.__setattr__(self, "voice", np.full(self.pitch.shape[0], -1, np.int8))

    def __len__(self) -> int:
        return int(self.pitch.shape[0])

    def __getitem__(self, index) -> Notes:
        return Notes(*(getattr(self, f.name)[index] for f in dataclasses.fields(self)))

    @staticmethod
    def empty() -> Notes:
        return make_notes([], [], [])

    def sorted(self) -> Notes:
        """Canonical order: by start, then pitch, then end."""
        return self[np.lexsort((self.end, self.pitch, self.start))]

    def as_tuples(self) -> list[tuple[int, float, float, int]]:
        """(pitch, start, end, velocity) per note in canonical order; handy in tests."""
        s = self.sorted()
        return [
            (int(p), float(a), float(b), int(v))
            for p, a, b, v in zip(s.pitch, s.start, s.end, s.velocity, strict=True)
        ]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Notes):
            return NotImplemented
        return self.as_tuples() == other.as_tuples()


def make_notes(pitch, start, end, velocity=None, program=None, is_drum=None, voice=None) -> Notes:
    """Builds `Notes` from sequences, filling velocity/program/drum/voice defaults."""
    pitch = np.asarray(pitch, np.int16).reshape(-1)
    n = pitch.shape[0]
    return Notes(
        pitch=pitch,
        start=np.asarray(start, np.float64).reshape(-1),
        end=np.asarray(end, np.float64).reshape(-1),
        velocity=np.full(n, DEFAULT_VELOCITY, np.int16)
        if velocity is None
        else np.asarray(velocity, np.int16).reshape(-1),
        program=np.zeros(n, np.int16) if program is None else np.asarray(program, np.int16),
        is_drum=np.zeros(n, bool) if is_drum is None else np.asarray(is_drum, bool),
        voice=None if voice is None else np.asarray(voice, np.int8).reshape(-1),
    )


def concat(parts: list[Notes]) -> Notes:
    if not parts:
        return Notes.empty()
    return Notes(
        *(np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Notes))
    )


@dataclasses.dataclass(frozen=True)
class TimeSignature:
    beat: float  # quarter-note beats from the start
    numerator: int
    denominator: int

    @property
    def bar_beats(self) -> float:
        return self.numerator * 4.0 / self.denominator


@dataclasses.dataclass(frozen=True)
class KeySignature:
    beat: float
    key_number: int  # pretty_midi convention: 0-11 major C..B, 12-23 minor c..b


@dataclasses.dataclass(frozen=True)
class Tempo:
    beat: float
    qpm: float  # quarter notes per minute


@dataclasses.dataclass(frozen=True)
class Piece:
    """One piece of music: the merged, drum-free notes plus score events, all in beats."""

    name: str  # file name relative to the corpus root (the key used in manifests and reports)
    notes: Notes
    tempos: tuple[Tempo, ...] = ()
    time_signatures: tuple[TimeSignature, ...] = ()
    key_signatures: tuple[KeySignature, ...] = ()
    # Sustain pedal (CC64 >= 64) held intervals (down beat, up beat), sorted, disjoint, merged
    # over channels; only the `performance` tokenizer uses them (it lengthens notes as a piano's
    # dampers would). A pedal never released is up at the file's last event.
    sustain: tuple[tuple[float, float], ...] = ()

    @property
    def initial_qpm(self) -> float:
        return self.tempos[0].qpm if self.tempos else 120.0


def grid_round(beats: np.ndarray, steps_per_beat: int) -> np.ndarray:
    """Beats -> nearest grid step (int64); halves round up so that 0.5 steps is never ambiguous."""
    return np.floor(np.asarray(beats, np.float64) * steps_per_beat + 0.5).astype(np.int64)


def beats_to_seconds(beats: np.ndarray, tempos: tuple[Tempo, ...]) -> np.ndarray:
    """float64 beats -> seconds through a tempo map (piecewise constant qpm from each Tempo's beat;
    120 qpm before the first one, the MIDI default). Same shape as `beats`."""
    beats = np.asarray(beats, np.float64)
    changes = sorted(tempos, key=lambda t: t.beat)
    if not changes or changes[0].beat > 0:
        changes = [Tempo(0.0, 120.0), *changes]
    at = np.array([t.beat for t in changes])
    spb = np.array([60.0 / t.qpm for t in changes])  # seconds per beat in each stretch
    seconds_at = np.concatenate([[0.0], np.cumsum(np.diff(at) * spb[:-1])])
    k = np.clip(np.searchsorted(at, beats, side="right") - 1, 0, None)
    return seconds_at[k] + (beats - at[k]) * spb[k]


def piece_seconds(piece: Piece) -> float:
    """Seconds of music in the piece: from the first onset to the last note's end, through its
    tempo map (leading silence, e.g. in files cut from a longer recording, does not count)."""
    if len(piece.notes) == 0:
        return 0.0
    span = np.array([piece.notes.start.min(), piece.notes.end.max()])
    first, last = beats_to_seconds(span, piece.tempos)
    return float(last - first)
