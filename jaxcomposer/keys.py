"""Key estimation (Krumhansl-Schmuckler) and key names in pretty_midi's numbering."""

from __future__ import annotations

import numpy as np

from jaxcomposer.notes import Notes

# Krumhansl-Kessler key profiles (probe-tone ratings), index 0 = tonic.
_MAJOR_PROFILE = np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88])
_MINOR_PROFILE = np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17])
# Tonic spellings with the fewer accidentals in the key signature (ASCII: b = flat).
_MAJOR_TONICS = ("C", "Db", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
_MINOR_TONICS = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "G#", "A", "Bb", "B")


def key_name(key_number: int) -> str:
    """pretty_midi key number (0-11 major C..B, 12-23 minor c..b) -> e.g. "Eb major"."""
    if not 0 <= key_number < 24:
        raise ValueError(f"key number must be in 0..23, got {key_number}")
    if key_number < 12:
        return f"{_MAJOR_TONICS[key_number]} major"
    return f"{_MINOR_TONICS[key_number - 12]} minor"


def pitch_class_weights(notes: Notes) -> np.ndarray:
    """float64[12]: total duration (beats) of each pitch class; drums ignored."""
    keep = ~notes.is_drum
    durations = np.clip(notes.end[keep] - notes.start[keep], 0.0, None)
    return np.bincount(notes.pitch[keep].astype(np.int64) % 12, durations, minlength=12)


def estimate_key(notes: Notes) -> tuple[int, str]:
    """Krumhansl-Schmuckler: the key whose profile correlates best with the duration-weighted
    pitch classes. Returns (pretty_midi key number, name); C major when there is nothing to
    correlate (no notes, or every pitch class equally weighted)."""
    weights = pitch_class_weights(notes)
    if np.ptp(weights) == 0:
        return 0, key_name(0)
    # profiles_24x12[k]: key k's profile rotated so that its tonic rating sits at pitch class k%12.
    profiles_24x12 = np.stack(
        [np.roll(_MAJOR_PROFILE, t) for t in range(12)]
        + [np.roll(_MINOR_PROFILE, t) for t in range(12)]
    )
    centred_p = profiles_24x12 - profiles_24x12.mean(axis=1, keepdims=True)
    centred_w = weights - weights.mean()
    correlation_24 = (centred_p @ centred_w) / (
        np.linalg.norm(centred_p, axis=1) * np.linalg.norm(centred_w)
    )
    best = int(np.argmax(correlation_24))
    return best, key_name(best)
