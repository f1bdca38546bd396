"""Rewards for feedback fine-tuning: a declared table of pure numpy functions on decoded notes.

Every reward has the signature `reward(notes, key, context) -> float` and lies in [0, 1]
(higher is better; an empty piece scores 0 on each). `notes` are the decoded notes of one piece
(times in quarter-note beats, drums ignored); `key` is a pretty_midi key number (0-11 major
C..B, 12-23 minor c..b): the key a key-conditioned model was asked for, or the one
Krumhansl-Schmuckler estimates from the notes (`score` does that when given None);
`context` holds the rewards' parameters (`RewardContext`). `score` combines the rewards with the
config's weights (finetune.weights) into one number in reward units.

Rhythm and groups use the same grid and onset groups as evaluation/musicstats.py. The melody is
the top voice: at each onset, the highest note then sounding, held notes included (the soprano
of a chorale, also where it holds while the inner voices move).

A user reward is any function with the same signature, named in the config as
`finetune.user_reward = "package.module:function"` or `"path/to/file.py:function"`
(launch/example_reward.py is one).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import math
import os
import traceback
from collections.abc import Callable, Mapping

import numpy as np

from jaxcomposer.core.errors import UsageError
from jaxcomposer.evaluation import compare, musicstats
from jaxcomposer.music import keys
from jaxcomposer.music.notes import Notes, grid_round

OCTAVE = 12  # semitones
STEP = 2  # semitones: a melodic step (a leap is anything wider)
SUPPORT_FLOOR = 1e-4  # log_density_ratio: data density, relative to its peak, below which a
# value lies outside the data (about 4.3 bandwidths from the nearest of few real values)


@dataclasses.dataclass(frozen=True)
class RewardContext:
    """Parameters of the rewards (from config.finetune, and the data for `range_band`)."""

    steps_per_beat: int = 4  # grid steps per quarter-note beat (onset groups, rhythm)
    max_run: int = 4  # no_stuck_runs: repeats of one onset group allowed before they cost
    motif_length: int = 3  # motif_return: melodic intervals per motif
    motif_gap: int = 4  # motif_return: melody notes between a motif's end and its return
    phrase_beats: float = 8.0  # tonic_ending, pitch_range: phrase length (quarter-note beats)
    range_band: tuple[float, float] = (12.0, 36.0)  # pitch_range: [low, high] semitones
    length_band: tuple[float, float] = (0.5, 1.5)  # note_length: [low, high] beats
    polyphony_band: tuple[float, float] = (3.0, 4.0)  # polyphony: [low, high] sounding pitches
    # Batch rewards (`match_rewards`): real excerpts' values of each matched statistic
    # (musicstats.piece_stats names), and the clip of the log density ratio (nats).
    match_reference: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
    match_clip: float = 3.0


RewardFn = Callable[[Notes, int, RewardContext], float]


# --- helpers ----------------------------------------------------------------------------------
# The in_key reward's scales (keys.SCALE_STEPS): major, and for minor keys natural minor plus the
# raised 7th (the harmonic minor's leading tone, used at nearly every minor-key cadence).
IN_KEY_MINOR_FORM = "minor_leading_tone"


def key_scale(key: int) -> np.ndarray:
    """bool[12]: the pitch classes of `key`'s scale, keys.scale_pitch_classes with
    IN_KEY_MINOR_FORM. Raises ValueError for a key number outside 0..23."""
    return keys.scale_pitch_classes(key, IN_KEY_MINOR_FORM)


def _voiced(notes: Notes) -> Notes:
    return notes[~notes.is_drum]


def melody(notes: Notes, steps_per_beat: int) -> tuple[np.ndarray, np.ndarray]:
    """(onset steps int64[M], pitch int64[M]): the melody's notes, each once, in time order.

    At every onset (grid step where some note starts) the melody note is the highest note
    sounding there: starting at it, or started earlier and still held (grid start <= step <
    grid end). Taking the top of the onset group instead would drop to an inner voice whenever
    the soprano holds while the others move. A held note that stays on top over several onsets
    counts once, at the onset where it became the top (normally its own start); of equal
    pitches the latest struck wins (a re-struck note is a new note)."""
    notes = _voiced(notes)
    if len(notes) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    start = grid_round(notes.start, steps_per_beat).astype(np.int64)
    end = np.maximum(grid_round(notes.end, steps_per_beat).astype(np.int64), start + 1)
    pitch = notes.pitch.astype(np.int64)
    # Rank by (pitch, start): the argmax over sounding notes is the highest, latest struck.
    order = np.lexsort((start, pitch))
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    onsets = np.unique(start)
    chosen = np.empty(len(onsets), np.int64)
    for lo in range(0, len(onsets), 512):  # chunks bound the (onsets x notes) table
        at = onsets[lo : lo + 512, None]
        sounding = (start[None] <= at) & (at < end[None])
        chosen[lo : lo + 512] = np.argmax(np.where(sounding, rank[None], -1), axis=1)
    keep = np.concatenate([[True], chosen[1:] != chosen[:-1]])
    # The onset where each entry became the top: its own start, unless it surfaced later (a
    # higher voice ended), which keeps the onsets increasing.
    return onsets[keep], pitch[chosen[keep]]


# --- the rewards ------------------------------------------------------------------------------
def in_key(notes: Notes, key: int, context: RewardContext) -> float:
    """Share of notes (each note counts once) whose pitch class is in `key`'s scale."""
    notes = _voiced(notes)
    if len(notes) == 0:
        return 0.0
    return float(np.mean(key_scale(key)[notes.pitch.astype(np.int64) % 12]))


def no_stuck_runs(notes: Notes, key: int, context: RewardContext) -> float:
    """1 - (onset groups beyond the `max_run`-th of a run of identical groups) / (groups).

    The original project's failure, one note or chord repeated for ever, scores near 0; a run
    of up to `max_run` identical groups costs nothing."""
    _, masks_Gx2 = musicstats.onset_group_masks(_voiced(notes), context.steps_per_beat)
    if len(masks_Gx2) == 0:
        return 0.0
    same = np.all(masks_Gx2[1:] == masks_Gx2[:-1], axis=1)
    breaks = np.flatnonzero(np.concatenate([[True], ~same, [True]]))
    runs = np.diff(breaks)
    excess = np.maximum(runs - context.max_run, 0).sum()
    return float(1.0 - excess / len(masks_Gx2))


def motif_return(notes: Notes, key: int, context: RewardContext) -> float:
    """Share of the melody's motifs that come back later or earlier in the piece.

    A motif at melody note i is the `motif_length` consecutive (pitch interval, inter-onset
    interval in grid steps) pairs from i, so a transposed return counts. It comes back if the
    same motif starts at j with at least `motif_gap` melody notes between the end of one and the
    start of the other. Motifs of repeated notes only (every interval 0) are not counted: they
    are the stuck-note failure, not a theme. 0 when no motif can be counted."""
    onsets, top = melody(notes, context.steps_per_beat)
    n = context.motif_length
    if len(top) < n + 1:
        return 0.0
    pairs_Gx2 = np.stack([np.diff(top), np.diff(onsets)], axis=1)
    windows_Mx2xN = np.lib.stride_tricks.sliding_window_view(pairs_Gx2, n, axis=0)
    counted = np.any(windows_Mx2xN[:, 0] != 0, axis=1)  # row 0: the pitch intervals
    grams_MxN2 = windows_Mx2xN.reshape(len(windows_Mx2xN), -1)
    if not counted.any():
        return 0.0
    index = np.flatnonzero(counted)
    grams = grams_MxN2[index]
    equal_MxM = np.all(grams[:, None, :] == grams[None, :, :], axis=2)
    far_MxM = np.abs(index[:, None] - index[None, :]) >= n + context.motif_gap
    return float(np.mean(np.any(equal_MxM & far_MxM, axis=1)))


def tonic_ending(notes: Notes, key: int, context: RewardContext) -> float:
    """Share of phrase endings whose lowest note is the tonic (a cadence resolving home).

    Phrases are consecutive spans of `phrase_beats` beats from beat 0; a phrase's ending is its
    last onset group; phrases without onsets are skipped."""
    notes = _voiced(notes)
    if len(notes) == 0:
        return 0.0
    spb = context.steps_per_beat
    steps = grid_round(notes.start, spb)
    phrase = np.floor(steps / (context.phrase_beats * spb)).astype(np.int64)
    endings = 0
    resolved = 0
    for p in np.unique(phrase):
        in_phrase = phrase == p
        last_step = steps[in_phrase].max()
        group = in_phrase & (steps == last_step)
        endings += 1
        resolved += int(notes.pitch[group].min()) % 12 == key % 12
    return float(resolved / endings)


def leap_recovery(notes: Notes, key: int, context: RewardContext) -> float:
    """1 - (melodic leaps wider than an octave not followed by a step back) / (melodic intervals).

    A leap of more than 12 semitones in the melody must be followed by a step (1-2 semitones) in
    the opposite direction (gap-fill, the counterpoint rule). A leap on the melody's last
    interval is not judged (what follows was never written). 1 with fewer than two notes."""
    _, top = melody(notes, context.steps_per_beat)
    if len(top) == 0:
        return 0.0
    d = np.diff(top)
    if len(d) == 0:
        return 1.0
    leap = np.abs(d[:-1]) > OCTAVE
    after = d[1:]
    recovered = (
        (np.abs(after) >= 1) & (np.abs(after) <= STEP) & (np.sign(after) == -np.sign(d[:-1]))
    )
    return float(1.0 - np.sum(leap & ~recovered) / len(d))


def phrase_range(notes: Notes, phrase_beats: float) -> float:
    """Mean pitch range (highest - lowest pitch, semitones) of the notes starting in each
    `phrase_beats` span from beat 0 that has notes; nan without notes. Per phrase, so a sample
    cannot narrow its range by covering fewer beats (more, shorter notes in the same tokens)."""
    notes = _voiced(notes)
    if len(notes) == 0:
        return float("nan")
    span = np.floor(notes.start / phrase_beats).astype(np.int64)
    span -= span.min()
    pitch = notes.pitch.astype(np.int64)
    high = np.full(span.max() + 1, -1)
    low = np.full(span.max() + 1, 128)
    np.maximum.at(high, span, pitch)
    np.minimum.at(low, span, pitch)
    used = high >= 0
    return float(np.mean(high[used] - low[used]))


def pitch_range(notes: Notes, key: int, context: RewardContext) -> float:
    """1 when the piece's pitch range per phrase (`phrase_range` over `phrase_beats` spans)
    lies inside `range_band` (the band of real excerpts' ranges, see `range_band`), falling
    linearly to 0 an octave outside it."""
    value = phrase_range(notes, context.phrase_beats)
    if np.isnan(value):
        return 0.0
    low, high = context.range_band
    outside = max(low - value, value - high, 0.0)
    return float(max(0.0, 1.0 - outside / OCTAVE))


def _log2_band(value: float, band: tuple[float, float]) -> float:
    """1 inside [low, high], falling linearly in log2 to 0 a factor of 2 outside."""
    low, high = band
    if not value > 0.0:
        return 0.0
    outside = max(np.log2(low / value), np.log2(value / high), 0.0)
    return float(max(0.0, 1.0 - outside))


def note_length(notes: Notes, key: int, context: RewardContext) -> float:
    """1 when the piece's mean note length (beats, `end - start`, the statistic
    evaluation/musicstats.py compares) lies inside `length_band` (the band of real excerpts'
    means, see `texture_band`), falling linearly in log2 to 0 a factor of 2 outside it: rhythm
    the pitch rewards would otherwise trade away (shorter notes buy more pitch choices)."""
    notes = _voiced(notes)
    if len(notes) == 0:
        return 0.0
    return _log2_band(musicstats.mean_note_length(notes), context.length_band)


def polyphony(notes: Notes, key: int, context: RewardContext) -> float:
    """1 when the piece's polyphony (mean distinct sounding pitches over the grid steps where
    something sounds, musicstats.polyphony) lies inside `polyphony_band`, falling linearly in
    log2 to 0 a factor of 2 outside it: the texture, which the pitch-range reward would
    otherwise thin out (dropping the outer voices narrows the range)."""
    notes = _voiced(notes)
    if len(notes) == 0:
        return 0.0
    return _log2_band(musicstats.polyphony(notes, context.steps_per_beat), context.polyphony_band)


@dataclasses.dataclass(frozen=True)
class Reward:
    fn: RewardFn
    measures: str  # what it measures, for reports


REWARDS: dict[str, Reward] = {
    "in_key": Reward(in_key, "share of notes in the key's scale"),
    "no_stuck_runs": Reward(no_stuck_runs, "1 - share of onset groups stuck beyond max_run"),
    "motif_return": Reward(motif_return, "share of melodic motifs that come back"),
    "tonic_ending": Reward(tonic_ending, "share of phrase endings with the tonic in the bass"),
    "leap_recovery": Reward(leap_recovery, "1 - share of octave+ leaps not stepped back"),
    "pitch_range": Reward(pitch_range, "pitch range per phrase inside the data's band"),
    "note_length": Reward(note_length, "mean note length inside the data's band"),
    "polyphony": Reward(polyphony, "sounding pitches per step inside the data's band"),
}


# --- batch rewards: match the data's distribution of a statistic -------------------------------
def log_density_ratio(values_B: np.ndarray, reference_N: np.ndarray, clip: float) -> np.ndarray:
    """float64 (B,) nats: log p_data(v_i) - log q_batch(v_i) for each sample's statistic v_i,
    clipped to [-clip, clip]; -clip for a NaN value (a piece without notes).

    p_data is the Gaussian KDE of `reference_N` (real excerpts' values; Scott's bandwidth h, as
    the overlapped-area metric of evaluation/compare.py uses); q_batch the KDE, with the same h,
    of the OTHER samples of the batch (leave-one-out, so a sample's own kernel does not count
    as evidence that its value is common). As a reward its policy gradient is the ascent
    direction of -KL(q || p_data) between the statistic's distribution under the policy and in
    the data: d/dθ KL(q_θ || p) = E_y[d/dθ log π_θ(y) · (log q(s(y)) - log p(s(y)))], the
    other term being E[d/dθ log π_θ] = 0 (the score-function identity). Unlike a band, it pays
    for values the batch lacks and charges for values it over-produces, so it keeps the spread
    of the data, not only its middle. Values where p_data is below SUPPORT_FLOOR of its peak
    score -clip. Raises ValueError with fewer than 2 finite reference
    values or 2 samples."""
    values = np.asarray(values_B, np.float64)
    reference = np.asarray(reference_N, np.float64)
    reference = reference[np.isfinite(reference)]
    if len(reference) < 2 or len(values) < 2:
        raise ValueError(
            f"a distribution reward needs 2+ real values and 2+ samples, got {len(reference)} "
            f"and {len(values)}"
        )
    h = compare.scott_bandwidth(reference)
    if h <= 0.0:  # every real value equal: read it at a resolution of 1% of its size
        h = 0.01 * max(abs(float(reference[0])), 1.0)
    out = np.full(len(values), -clip)
    finite = np.isfinite(values)
    if not finite.any():
        return out
    x = values[finite]
    p_data = compare.kde_pdf(reference, h, x)
    z_BxB = (x[:, None] - x[None, :]) / h
    kernels = np.exp(-0.5 * z_BxB**2) / (h * math.sqrt(2.0 * math.pi))
    np.fill_diagonal(kernels, 0.0)
    q_batch = kernels.sum(axis=1) / (len(values) - 1)  # NaN samples count as elsewhere
    tiny = np.finfo(np.float64).tiny
    ratio = np.clip(np.log(p_data + tiny) - np.log(q_batch + tiny), -clip, clip)
    # Far from every real value both densities are Gaussian tails whose ratio means nothing
    # (a lone outlier can look "rarer in the batch than in the data"): outside the data's
    # support it is the clip.
    peak = compare.kde_pdf(reference, h, reference).max()
    out[finite] = np.where(p_data < SUPPORT_FLOOR * peak, -clip, ratio)
    return out


def match_rewards(
    pieces: list[Notes], weights: Mapping[str, float], context: RewardContext
) -> dict[str, np.ndarray]:
    """For each statistic with a nonzero weight (musicstats.piece_stats names) that
    `context.match_reference` holds, the per-sample `log_density_ratio` of the batch `pieces`
    against it: {name: float64 (B,) nats}. A weighted statistic the context lacks (too few real
    values to match: `match_reference` leaves it out and says so) is not scored. Raises KeyError
    for a name piece_stats does not compute."""
    unknown = sorted(set(weights) - set(musicstats.STAT_DESCRIPTIONS))
    if unknown:
        raise KeyError(f"unknown statistics {unknown}; piece_stats has "
                       f"{sorted(musicstats.STAT_DESCRIPTIONS)}")  # fmt: skip
    names = [n for n, w in weights.items() if w and n in context.match_reference]
    if not names:
        return {}
    stats = [musicstats.piece_stats(_voiced(n), steps_per_beat=context.steps_per_beat)
             for n in pieces]  # fmt: skip
    return {
        name: log_density_ratio(
            np.array([s[name] for s in stats]), context.match_reference[name], context.match_clip
        )
        for name in names
    }


def match_reference(
    pieces: list[Notes], names, steps_per_beat: int
) -> tuple[dict[str, np.ndarray], list[str]]:
    """({name: float64 values of that musicstats.piece_stats statistic over real `pieces`},
    [names left out]): a statistic with fewer than 2 finite values (e.g. inter-onset intervals
    of openings with one onset) has no distribution to match and is left out."""
    stats = [musicstats.piece_stats(_voiced(n), steps_per_beat=steps_per_beat) for n in pieces]
    out, left_out = {}, []
    for name in names:
        values = np.array([s[name] for s in stats], np.float64)
        if np.isfinite(values).sum() >= 2:
            out[name] = values
        else:
            left_out.append(name)
    return out, left_out


# --- combining --------------------------------------------------------------------------------
def _quantile_band(values: list[float], low_quantile: float, high_quantile: float, what: str):
    if not values:
        raise ValueError(f"no real piece with notes to measure {what} on")
    low, high = np.quantile(values, [low_quantile, high_quantile])
    return float(low), float(high)


def range_band(
    pieces: list[Notes], low_quantile: float, high_quantile: float, phrase_beats: float = 8.0
) -> tuple[float, float]:
    """(low, high) semitones: quantiles of the per-phrase pitch ranges (`phrase_range`) of
    real pieces (or excerpts of the length the fine-tuning samples have)."""
    spans = [phrase_range(n, phrase_beats) for n in pieces if len(_voiced(n))]
    return _quantile_band(spans, low_quantile, high_quantile, "the pitch range")


def texture_band(
    pieces: list[Notes],
    statistic: str,
    low_quantile: float,
    high_quantile: float,
    steps_per_beat: int = 4,
) -> tuple[float, float]:
    """(low, high): quantiles of a texture statistic of real pieces (or excerpts):
    'note_length' (musicstats.mean_note_length, beats) or 'polyphony' (musicstats.polyphony)."""
    measure = {
        "note_length": musicstats.mean_note_length,
        "polyphony": lambda n: musicstats.polyphony(n, steps_per_beat),
    }[statistic]
    values = [measure(n) for n in map(_voiced, pieces) if len(n)]
    return _quantile_band(values, low_quantile, high_quantile, statistic)


def load_user_reward(spec: str) -> RewardFn:
    """'package.module:function' or 'path/to/file.py:function' -> the function.

    Raises errors.UsageError (a ValueError; one line, naming `spec`) when it cannot be found
    or is not callable."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"config finetune.user_reward {spec!r}: expected 'module:function'")
    try:
        if module_name.endswith(".py"):
            path = os.path.abspath(module_name)
            loader_spec = importlib.util.spec_from_file_location("_user_reward", path)
            if loader_spec is None or not os.path.isfile(path):
                raise FileNotFoundError(f"no file {path}")
            module = importlib.util.module_from_spec(loader_spec)
            loader_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
        fn = getattr(module, attr)
    except (ImportError, FileNotFoundError, AttributeError, SyntaxError) as e:
        raise UsageError(f"config finetune.user_reward {spec!r}: {e}") from None
    if not callable(fn):
        raise UsageError(f"config finetune.user_reward {spec!r}: not a function")
    return fn


def call_user_reward(fn: RewardFn, notes: Notes, key: int, context: RewardContext) -> float:
    """fn(notes, key, context) as a finite float. Raises errors.UsageError (one line, naming the
    function and, when it raised, the exception and the line of the user's code it came from)
    when it raises or returns something that is not a finite number."""
    code = getattr(fn, "__code__", None)
    name = getattr(fn, "__qualname__", repr(fn))
    name = f"{name} ({os.path.basename(code.co_filename)})" if code else name
    try:
        value = fn(notes, key, context)
    except Exception as e:  # noqa: BLE001 - any fault of the user's code becomes one line
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise UsageError(
            f"user reward {name} raised {type(e).__name__}: {e} "
            f"(at {where.filename}:{where.lineno}) on a piece of {len(notes)} notes"
        ) from None
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"user reward {name} returned {value!r}, not a number") from None
    if not math.isfinite(value):
        raise UsageError(f"user reward {name} returned {value}, not a finite number")
    return value


def score(
    notes: Notes,
    weights: Mapping[str, float],
    context: RewardContext,
    *,
    key: int | None = None,
    user: tuple[RewardFn, float] | None = None,
) -> dict[str, float]:
    """Every reward of the table (and the user's, as 'user'), plus 'total' = the weighted sum
    (reward units) and 'key' (the key used). `weights` maps table names to weights; a reward
    with weight 0 is still computed, for reports. `key` None = estimated from the notes."""
    unknown = set(weights) - set(REWARDS)
    if unknown:
        raise KeyError(f"unknown rewards {sorted(unknown)}; the table has {sorted(REWARDS)}")
    key = keys.estimate_key(notes)[0] if key is None else int(key)
    out = {name: float(r.fn(notes, key, context)) for name, r in REWARDS.items()}
    total = sum(float(weights.get(name, 0.0)) * value for name, value in out.items())
    if user is not None:
        fn, weight = user
        out["user"] = call_user_reward(fn, notes, key, context)
        total += weight * out["user"]
    out["total"] = float(total)
    out["key"] = float(key)
    return out
