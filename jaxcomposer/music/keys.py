"""Key estimation (profile correlation, Krumhansl-Schmuckler style) and key names in pretty_midi's
numbering."""

from __future__ import annotations

import re

import numpy as np

from jaxcomposer.core.errors import UsageError
from jaxcomposer.music.notes import Notes

# Key profiles, (major, minor), index 0 = the tonic. Krumhansl-Kessler: probe-tone ratings
# (Krumhansl 1990); Aarden-Essen: pitch-class frequencies of the Essen folksong collection
# (Aarden 2003), the values music21's analysis.discrete.AardenEssen uses.
PROFILES = {
    "krumhansl_kessler": (
        np.array([6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88]),
        np.array([6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17]),
    ),
    "aarden_essen": (
        np.array([17.7661, 0.145624, 14.9265, 0.160186, 19.8049, 11.3587, 0.291248, 22.062,
                  0.145624, 8.15494, 0.232998, 4.95122]),
        np.array([18.2648, 0.737619, 14.0499, 16.8599, 0.702494, 14.4362, 0.702494, 18.6161,
                  4.56621, 1.93186, 7.37619, 1.75623]),
    ),
}  # fmt: skip


def _unit_profiles(major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """(24, 12): each key's profile (pretty_midi order), centred and scaled to unit norm, so a
    correlation is one dot product (labels.py correlates every 8-beat window)."""
    rows = np.stack([np.roll(major, t) for t in range(12)] + [np.roll(minor, t) for t in range(12)])
    rows = rows - rows.mean(axis=1, keepdims=True)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


_UNIT_PROFILES_24x12 = {name: _unit_profiles(*pair) for name, pair in PROFILES.items()}
# estimate_key's bonus (in correlation units) for keys whose tonic is the opening bass note.
# Chosen on the 309 embedded training chorales' 8-bar openings against their score keys:
# agreement 0.60 (Krumhansl-Kessler alone), 0.74 (Aarden-Essen), 0.80 (Aarden-Essen + 0.2);
# on the 40 validation chorales 0.60, 0.70, 0.725 (README, "Key conditioning").
OPENING_BASS_BONUS = 0.2
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
    """The key of a passage: the Krumhansl-Schmuckler method (correlate the duration-weighted
    pitch classes with each key's profile) with Aarden-Essen profiles, plus OPENING_BASS_BONUS
    for keys whose tonic is the pitch class of the lowest note of the first onset (tonal pieces
    open on the tonic). Returns (pretty_midi key number, name); C major when there is nothing
    to correlate (no notes, or every pitch class equally weighted)."""
    notes = notes[~notes.is_drum]
    weights = pitch_class_weights(notes)
    if np.ptp(weights) == 0:
        return 0, key_name(0)
    score_24 = key_correlations(weights, "aarden_essen")
    first = notes.start == notes.start.min()
    bass = int(notes.pitch[first].min()) % 12
    score_24 = score_24 + OPENING_BASS_BONUS * (np.arange(NUM_KEYS) % 12 == bass)
    best = int(np.argmax(score_24))
    return best, key_name(best)


# --- names people write --------------------------------------------------------------------
_LETTERS = {"c": 0, "d": 2, "e": 4, "f": 5, "g": 7, "a": 9, "b": 11}
_MODE_WORDS = {
    "major": 0, "maj": 0, "ma": 0, "dur": 0, "": None,
    "minor": 1, "min": 1, "mi": 1, "m": 1, "moll": 1,
}  # fmt: skip
ACCEPTED_FORMS = (
    'accepted forms: "D minor", "F# major", "Bb minor", "Eb", "Dm", "D min", "d" (lower case '
    "letter alone = minor), sharps as # and flats as b or -, with major/maj/minor/min/m; German "
    '"d-moll", "D-Dur", "fis-moll", "Es-Dur", "h-moll", "B-Dur" (h = B, b = Bb, -is sharp, '
    "-es/-s flat)"
)
# German names: a letter (h = B, b = B flat), sharps "is", flats "es" (or "s" after a vowel, as in
# "Es", "As"), then an optional "-Dur"/"-moll". Read as German only when the text is unmistakably
# German (a mode word dur/moll, the letter h, or an is/es suffix): "B" alone stays English B major.
_GERMAN = re.compile(r"^([a-h])((?:is)+|(?:es|s)+)?(?:-?(dur|moll))?$", re.IGNORECASE)
_GERMAN_LETTERS = {**_LETTERS, "b": 10, "h": 11}
NUM_KEYS = 24
# --- scale variants: the one table ------------------------------------------------------------
# Pitch classes above the tonic. Every user names the variant it uses: the sampler's scale mask
# and the key-agreement label (data/labels.py) take "all_minor_forms" for minor keys, the
# scale_consistency statistic (evaluation/musicstats.py) "natural_minor", the in_key reward
# (finetune/rewards.py) "minor_leading_tone". Major keys always use "major".
SCALE_STEPS = {
    "major": (0, 2, 4, 5, 7, 9, 11),
    "natural_minor": (0, 2, 3, 5, 7, 8, 10),
    "harmonic_minor": (0, 2, 3, 5, 7, 8, 11),
    # natural minor plus the raised 7th (the harmonic minor's leading tone, which tonal
    # minor-key music, Bach's above all, uses at nearly every cadence)
    "minor_leading_tone": (0, 2, 3, 5, 7, 8, 10, 11),
    # natural, harmonic and melodic forms together (b6/6, b7/7): 9 of the 12 classes
    "all_minor_forms": (0, 2, 3, 5, 7, 8, 9, 10, 11),
}
MINOR_FORMS = tuple(name for name in SCALE_STEPS if name != "major")


class KeyNameError(UsageError):
    """A key name or schedule that cannot be read (the message lists the accepted forms)."""


def parse_key(text: str) -> int:
    """A key name as people write it -> pretty_midi key number (0-11 major, 12-23 minor).

    "D minor", "d minor", "Dm", "D min", "F# major", "Bb minor", "Eb" (major), "d" (a lower-case
    letter alone means minor, the German/Baroque convention). Raises KeyNameError (one line,
    listing the accepted forms) for anything else."""
    raw = str(text).strip()
    compact = raw.replace(" ", "")
    german = _german_key(compact)
    if german is not None:
        return german
    if not compact or compact[0].lower() not in _LETTERS:
        raise KeyNameError(f"unknown key {raw!r}; {ACCEPTED_FORMS}")
    letter, rest = compact[0], compact[1:]
    tonic = _LETTERS[letter.lower()]
    while rest[:1] in ("#", "b", "-", "♯", "♭"):
        tonic += 1 if rest[0] in "#♯" else -1
        rest = rest[1:]
    mode_word = rest.lower() if rest != "M" else "major"
    if mode_word not in _MODE_WORDS:
        raise KeyNameError(f"unknown key {raw!r}; {ACCEPTED_FORMS}")
    mode = _MODE_WORDS[mode_word]
    if mode is None:
        mode = 1 if letter.islower() else 0
    return tonic % 12 + 12 * mode


def _german_key(compact: str) -> int | None:
    """The key number of an unmistakably German key name ("fis-moll", "Es-Dur", "h"), else None.

    Capital letter = major, lower case = minor, unless "-Dur"/"-moll" says otherwise."""
    match = _GERMAN.match(compact)
    if match is None:
        return None
    letter, suffix, mode_word = match.group(1), match.group(2) or "", match.group(3)
    if mode_word is None and letter.lower() != "h" and not suffix:
        return None  # "B", "d": the English reading (B major; lower case alone = minor)
    if suffix.lower().startswith("s") and letter.lower() not in "ae":
        return None  # a bare "s" flattens only a vowel (As, Es); "Ds" is no German name
    tonic = _GERMAN_LETTERS[letter.lower()]
    lowered = suffix.lower()
    tonic += lowered.count("is") - (lowered.count("es") + (lowered.startswith("s")))
    if mode_word is None:
        minor = letter.islower()
    else:
        minor = mode_word.lower() == "moll"
    return tonic % 12 + 12 * int(minor)


def parse_key_schedule(text: str) -> list[tuple[int, int]]:
    """'D minor' or '1:D minor,9:F major' -> [(first bar, key number)], sorted, first bar 1.

    Bars count from 1. A single key without a bar number holds from bar 1. Raises KeyNameError
    naming the bad part."""
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    if not parts:
        raise KeyNameError(f"empty key schedule {text!r}; give e.g. 'D minor' or '1:D minor,9:F'")
    schedule = []
    for part in parts:
        bar_text, sep, name = part.partition(":")
        if not sep:
            bar_text, name = "1", part
        if not bar_text.strip().isdigit() or int(bar_text) < 1:
            raise KeyNameError(f"key schedule {text!r}: bar {bar_text!r} is not a number >= 1")
        schedule.append((int(bar_text), parse_key(name)))
    schedule.sort()
    bars = [b for b, _ in schedule]
    if len(set(bars)) != len(bars):
        raise KeyNameError(f"key schedule {text!r}: a bar is given twice")
    if bars[0] != 1:
        schedule.insert(0, (1, schedule[0][1]))  # the first key also holds before its bar
    return schedule


def scale_pitch_classes(key_number: int, minor_form: str = "all_minor_forms") -> np.ndarray:
    """bool[12]: the pitch classes of the key's scale: SCALE_STEPS["major"] for a major key
    (0-11), SCALE_STEPS[minor_form] for a minor key (12-23). Raises ValueError for a key number
    outside 0..23 or a minor_form not in MINOR_FORMS."""
    if not 0 <= key_number < NUM_KEYS:
        raise ValueError(f"key number must be in 0..23, got {key_number}")
    if minor_form not in MINOR_FORMS:
        raise ValueError(f"minor_form must be one of {MINOR_FORMS}, got {minor_form!r}")
    tonic, minor = key_number % 12, key_number >= 12
    out = np.zeros(12, bool)
    out[(tonic + np.asarray(SCALE_STEPS[minor_form if minor else "major"])) % 12] = True
    return out


def scale_table(minor_form: str = "all_minor_forms") -> np.ndarray:
    """bool (24, 12): scale_pitch_classes of every key, pretty_midi order."""
    return np.stack([scale_pitch_classes(k, minor_form) for k in range(NUM_KEYS)])


def key_correlations(weights_12: np.ndarray, profile: str = "krumhansl_kessler") -> np.ndarray:
    """float64[24]: Pearson correlation of pitch-class weights with each key's profile
    (pretty_midi numbering; `profile` a PROFILES name); zeros when the weights are flat."""
    weights = np.asarray(weights_12, np.float64)
    if np.ptp(weights) == 0:
        return np.zeros(24)
    centred_w = weights - weights.mean()
    return _UNIT_PROFILES_24x12[profile] @ centred_w / np.linalg.norm(centred_w)


def transpose_key(key_number, shift):
    """Key number(s) moved by `shift` semitones (mode kept); negative labels (none) stay."""
    key_number = np.asarray(key_number)
    moved = (key_number % 12 + shift) % 12 + 12 * (key_number >= 12)
    return np.where(key_number < 0, key_number, moved).astype(key_number.dtype)
