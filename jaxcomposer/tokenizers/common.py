"""Helpers shared by the tokenizers: the onset/offset grid, checks and pitch shifting."""

from __future__ import annotations

import numpy as np

from jaxcomposer.music.notes import DEFAULT_VELOCITY, Notes, Piece, grid_round
from jaxcomposer.tokenizers.base import EncodingError, Tokenizer


def grid_steps(notes: Notes, steps_per_beat: int) -> tuple[np.ndarray, np.ndarray]:
    """(q_start, q_end) int64 grid steps; a note covers [q_start, q_end), at least one step."""
    q_start = grid_round(notes.start, steps_per_beat)
    q_end = np.maximum(grid_round(notes.end, steps_per_beat), q_start + 1)
    return q_start, q_end


def checked_grid(tokenizer: Tokenizer, piece: Piece) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pitch int64, q_start, q_end) after the checks every tokenizer makes (pitch range, onset
    not before beat 0); raises EncodingError naming the piece and the value."""
    notes = piece.notes
    pitch = notes.pitch.astype(np.int64)
    tokenizer.check_range(pitch, where=piece.name)
    q_start, q_end = grid_steps(notes, tokenizer.config.steps_per_beat)
    if q_start.size and q_start.min() < 0:
        first = int(np.argmin(q_start))
        raise EncodingError(
            f"{piece.name}: {int((q_start < 0).sum())} note(s) start before beat 0, "
            f"e.g. pitch {int(pitch[first])} at beat {float(notes.start[first]):g}"
        )
    return pitch, q_start, q_end


def same_onset_repeats(pitch: np.ndarray, q_start: np.ndarray) -> int:
    """Notes beyond the first of each (pitch, grid onset): what one note per onset must drop."""
    keys = q_start.astype(np.int64) * 128 + pitch  # pitch < 128 after the range check
    return int(keys.size - np.unique(keys).size)


def notes_from_steps(
    pitch: np.ndarray,
    start_steps: np.ndarray,
    end_steps: np.ndarray,
    steps_per_beat: int,
    velocity: np.ndarray | None = None,
) -> Notes:
    """Notes on the grid (times = steps / steps_per_beat); program 0, default velocity."""
    pitch = np.asarray(pitch, np.int16).reshape(-1)
    if velocity is None:
        velocity = np.full(pitch.shape, DEFAULT_VELOCITY, np.int16)
    return Notes(
        pitch=pitch,
        start=np.asarray(start_steps, np.float64).reshape(-1) / steps_per_beat,
        end=np.asarray(end_steps, np.float64).reshape(-1) / steps_per_beat,
        velocity=np.asarray(velocity, np.int16).reshape(-1),
        program=np.zeros(pitch.shape, np.int16),
        is_drum=np.zeros(pitch.shape, bool),
    )


def shift_pitch_index(index: int, shift: int, num_pitches: int) -> int | None:
    """Index within a pitch range after a shift, or None when it leaves the range."""
    moved = index + shift
    return moved if 0 <= moved < num_pitches else None


def pitch_range_classes(tokenizer: Tokenizer, names) -> np.ndarray:
    """bool (V, 12): for each range in `names` whose index i is pitch pitch_min + i, that
    pitch's class; every other token none."""
    v = tokenizer.vocab
    pcs = np.zeros((v.size, 12), bool)
    for name in names:
        ids = v.range_ids(name)
        pcs[ids, (tokenizer.config.pitch_min + np.arange(ids.size)) % 12] = True
    return pcs
