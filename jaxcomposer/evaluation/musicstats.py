"""Musical statistics of one piece, computed from its notes (numpy only).

`--mode=evaluate` computes these on generated and on real pieces and compares the two sets
(compare.py). Times are in quarter-note beats; whatever needs a grid (onset groups, polyphony,
empty beats, inter-onset intervals) first rounds onsets and ends to `steps_per_beat` steps with
`notes.grid_round`. A value that is undefined for a piece (an empty piece, a piece with fewer
onset groups than an n-gram) is NaN, and aggregation skips NaN. Drum notes are ignored.

An onset group is the set of pitches starting at one grid step, held exactly as a 128-bit pitch
mask (two uint64 words). The repetition measures and the copy index work on these, because the
failure they must catch (argmax stuck on one note or chord) repeats whole onset groups.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxcomposer.music import keys
from jaxcomposer.music.notes import Notes, grid_round

# scale_consistency scores the best of the 12 major and 12 natural-minor scales (keys.SCALE_STEPS;
# a harmonic minor's leading tone counts as outside).
SCALE_MINOR_FORM = "natural_minor"

# Note-length bins on a log2 scale, centred on 1/16, 1/8, ..., 4 beats, with edges halfway
# (geometrically) between centres; the last bin holds everything from 2**2.5 ~ 5.7 beats up.
NOTE_LENGTH_BIN_EDGES = np.concatenate([[0.0], 2.0 ** (np.arange(-4, 3) + 0.5), [np.inf]])
NOTE_LENGTH_BIN_LABELS = ("1/16", "1/8", "1/4", "1/2", "1", "2", "4", "8+")

STAT_DESCRIPTIONS = {
    "pitch_class_entropy": "pitch-class entropy, count-weighted (bits)",
    "scale_consistency": "share of notes in the best major/natural-minor scale",
    "pitch_range": "pitch range (semitones)",
    "distinct_pitches": "number of distinct pitches",
    "polyphony": "mean sounding pitches per non-empty grid step",
    "empty_beat_rate": "share of beats in which nothing sounds",
    "mean_ioi": "mean inter-onset interval (beats)",
    "mean_note_length": "mean note length (beats)",
    "longest_repeat_run": "longest run of one identical onset group (groups)",
    "distinct_4gram_share": "distinct / total 4-grams of onset groups",
    "distinct_8gram_share": "distinct / total 8-grams of onset groups",
}


# (24, 12) bool: rows 0-11 major scales on C..B, rows 12-23 natural minor scales on c..b.
SCALE_MASKS_24x12 = keys.scale_table(SCALE_MINOR_FORM)


def piece_stats(notes: Notes, *, steps_per_beat: int = 4) -> dict[str, float]:
    """All scalar statistics of one piece (keys and meanings in `STAT_DESCRIPTIONS`)."""
    notes = notes[~notes.is_drum]
    onset_steps, masks_Gx2 = onset_group_masks(notes, steps_per_beat)
    return {
        **pitch_stats(notes),
        "polyphony": polyphony(notes, steps_per_beat),
        "empty_beat_rate": empty_beat_rate(notes, steps_per_beat),
        "mean_ioi": _mean_ioi(onset_steps, steps_per_beat),
        "mean_note_length": mean_note_length(notes),
        "longest_repeat_run": longest_repeat_run(masks_Gx2),
        "distinct_4gram_share": distinct_ngram_share(masks_Gx2, 4),
        "distinct_8gram_share": distinct_ngram_share(masks_Gx2, 8),
    }


def pitch_stats(notes: Notes) -> dict[str, float]:
    """Pitch-class entropy (count-weighted, so every note counts once whatever its length),
    scale consistency (count-weighted), pitch range and number of distinct pitches."""
    if len(notes) == 0:
        nan = float("nan")
        return dict(
            pitch_class_entropy=nan, scale_consistency=nan, pitch_range=nan, distinct_pitches=0.0
        )
    pitch = notes.pitch.astype(np.int64)
    class_counts = np.bincount(pitch % 12, minlength=12).astype(np.float64)
    share = class_counts[class_counts > 0] / len(pitch)
    in_scale_counts = SCALE_MASKS_24x12 @ class_counts
    return dict(
        pitch_class_entropy=float(-np.sum(share * np.log2(share))) + 0.0,
        scale_consistency=float(in_scale_counts.max() / len(pitch)),
        pitch_range=float(pitch.max() - pitch.min()),
        distinct_pitches=float(len(np.unique(pitch))),
    )


def note_length_histogram(notes: Notes) -> tuple[np.ndarray, np.ndarray]:
    """(counts int64[8], bin edges float64[9]) of note lengths in beats; see NOTE_LENGTH_BIN_*."""
    lengths = np.asarray(notes.end - notes.start, np.float64)
    bins = np.searchsorted(NOTE_LENGTH_BIN_EDGES, lengths, side="right") - 1
    bins = np.clip(bins, 0, len(NOTE_LENGTH_BIN_LABELS) - 1)
    counts = np.bincount(bins, minlength=len(NOTE_LENGTH_BIN_LABELS)).astype(np.int64)
    return counts, NOTE_LENGTH_BIN_EDGES.copy()


def _grid_intervals(notes: Notes, steps_per_beat: int) -> tuple[np.ndarray, np.ndarray]:
    """Start/end grid steps; a note shorter than half a step still sounds for one step."""
    start = np.maximum(grid_round(notes.start, steps_per_beat), 0)
    end = np.maximum(grid_round(notes.end, steps_per_beat), start + 1)
    return start, end


def _merge_per_pitch(pitch, start, end) -> tuple[np.ndarray, np.ndarray]:
    """Union of the [start, end) intervals of each pitch, so a pitch sounding twice counts once.

    Offsetting each pitch's times by pitch * span lets one running maximum serve all pitches.
    """
    order = np.lexsort((start, pitch))
    span = int(end.max()) + 1
    offset = pitch[order].astype(np.int64) * span
    start_off, end_off = start[order] + offset, end[order] + offset
    running_end = np.maximum.accumulate(end_off)
    opens = np.ones(len(order), bool)
    opens[1:] = start_off[1:] > running_end[:-1]
    first = np.flatnonzero(opens)
    last = np.append(first[1:] - 1, len(order) - 1)
    return start[order][first], running_end[last] - offset[last]


def mean_note_length(notes: Notes) -> float:
    """Mean note length (beats, end - start); nan without notes."""
    return float(np.mean(notes.end - notes.start)) if len(notes) else float("nan")


def polyphony(notes: Notes, steps_per_beat: int = 4) -> float:
    """Mean number of distinct sounding pitches over the grid steps where something sounds."""
    if len(notes) == 0:
        return float("nan")
    start, end = _merge_per_pitch(notes.pitch, *_grid_intervals(notes, steps_per_beat))
    times = np.concatenate([start, end])
    order = np.argsort(times, kind="stable")
    level = np.cumsum(np.concatenate([np.ones_like(start), -np.ones_like(end)])[order])
    duration = np.diff(times[order], append=times[order][-1])  # level holds until next event
    return float(np.sum(level * duration) / np.sum(duration[level > 0]))


def empty_beat_rate(notes: Notes, steps_per_beat: int = 4) -> float:
    """Share of beats [b, b+1), from beat 0 to the end of the last note, where nothing sounds."""
    if len(notes) == 0:
        return float("nan")
    start, end = _grid_intervals(notes, steps_per_beat)
    n_beats = -(-int(end.max()) // steps_per_beat)
    cover = np.zeros(n_beats + 1, np.int64)
    np.add.at(cover, start // steps_per_beat, 1)
    np.add.at(cover, (end - 1) // steps_per_beat + 1, -1)
    return float(np.mean(np.cumsum(cover)[:n_beats] == 0))


def onset_group_masks(notes: Notes, steps_per_beat: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(onset steps int64[G], pitch masks uint64[G, 2]) of the onset groups in time order."""
    steps = grid_round(notes.start, steps_per_beat)
    onset_steps, group_of_note = np.unique(steps, return_inverse=True)
    masks_Gx2 = np.zeros((len(onset_steps), 2), np.uint64)
    pitch = notes.pitch.astype(np.int64)
    bits = np.left_shift(np.uint64(1), (pitch % 64).astype(np.uint64))
    np.bitwise_or.at(masks_Gx2, (group_of_note, pitch // 64), bits)
    return onset_steps, masks_Gx2


def onset_groups(notes: Notes, steps_per_beat: int = 4) -> list[tuple[int, ...]]:
    """Sorted tuple of the distinct pitches starting at each grid onset, in time order."""
    return masks_to_groups(onset_group_masks(notes[~notes.is_drum], steps_per_beat)[1])


def masks_to_groups(masks_Gx2: np.ndarray) -> list[tuple[int, ...]]:
    bits_Gx128 = np.unpackbits(masks_Gx2.astype("<u8").view(np.uint8), axis=1, bitorder="little")
    return [tuple(int(p) for p in np.flatnonzero(row)) for row in bits_Gx128]


def groups_to_masks(groups: Sequence[Sequence[int]]) -> np.ndarray:
    bits_Gx128 = np.zeros((len(groups), 128), np.uint8)
    for i, group in enumerate(groups):
        bits_Gx128[i, list(group)] = 1
    packed = np.packbits(bits_Gx128, axis=1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64).reshape(len(groups), 2)


def _mean_ioi(onset_steps: np.ndarray, steps_per_beat: int) -> float:
    """Mean interval between consecutive distinct grid onsets, in beats."""
    if len(onset_steps) < 2:
        return float("nan")
    return float((onset_steps[-1] - onset_steps[0]) / (len(onset_steps) - 1) / steps_per_beat)


def longest_repeat_run(masks_Gx2: np.ndarray) -> float:
    """Length of the longest run of consecutive identical onset groups (NaN for no groups)."""
    if len(masks_Gx2) == 0:
        return float("nan")
    same = np.all(masks_Gx2[1:] == masks_Gx2[:-1], axis=1)
    breaks = np.flatnonzero(np.concatenate([[True], ~same, [True]]))
    return float(np.max(np.diff(breaks)))


def distinct_ngram_share(masks_Gx2: np.ndarray, n: int) -> float:
    """Distinct / total n-grams of onset groups (exact); 1.0 if none repeats, NaN if < n groups."""
    total = len(masks_Gx2) - n + 1
    if total < 1:
        return float("nan")
    windows = np.lib.stride_tricks.sliding_window_view(masks_Gx2.reshape(-1), 2 * n)[::2]
    return float(len(np.unique(windows, axis=0)) / total)


# ---- Copy detection: longest stretch of a sample's onset groups found verbatim in training ----
#
# Each onset group gets a mixed 64-bit code; a window of n codes gets a polynomial hash mod 2**64,
# made position-independent so any window's hash is two array lookups: with
# prefix[k] = sum_{j<k} code[j] * B**-(j+1) and powers[k] = B**k,
# hash(i, n) = (prefix[i+n] - prefix[i]) * powers[i+n] = sum_j code[i+j] * B**(n-1-j).
# The index keeps, for n = 1, 2, 4, ..., every training window's hash sorted with its position.
# A sample's longest copy L has 2**k <= L < 2**(k+1) for the largest k whose windows hit the
# index; the hits at that level give (sample, training) start pairs, which are compared group by
# group (exactly, on the pitch masks, so a hash collision cannot lengthen a copy) to get L.

_HASH_BASE = 0x9E3779B97F4A7C15  # odd, so invertible mod 2**64
_HASH_BASE_INV = pow(_HASH_BASE, -1, 2**64)


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (array arithmetic wraps mod 2**64)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _power_table(base: int, n: int) -> np.ndarray:
    """[base**0, ..., base**n] mod 2**64."""
    factors = np.full(n + 1, base, np.uint64)
    factors[0] = 1
    return np.cumprod(factors, dtype=np.uint64)


def _window_hasher(masks_Gx2: np.ndarray):
    """Returns hash(starts, n) of the n-group windows starting at `starts`."""
    codes = _mix64(masks_Gx2[:, 0] ^ _mix64(masks_Gx2[:, 1] + np.uint64(0x632BE59BD9B4E019)))
    weighted = codes * _power_table(_HASH_BASE_INV, len(codes))[1:]
    prefix = np.concatenate([[np.uint64(0)], np.cumsum(weighted, dtype=np.uint64)])
    powers = _power_table(_HASH_BASE, len(codes))
    return lambda starts, n: (prefix[starts + n] - prefix[starts]) * powers[starts + n]


def _as_masks(groups) -> np.ndarray:
    """Onset groups as pitch tuples, or already as `onset_group_masks` output -> uint64[G, 2]."""
    if isinstance(groups, np.ndarray) and groups.dtype == np.uint64 and groups.ndim == 2:
        return groups
    return groups_to_masks(groups)


class CopyIndex:
    """Every training window of 2**k onset groups (none crossing a piece boundary), built once."""

    def __init__(self, train_groups: Sequence):
        masks = [_as_masks(g) for g in train_groups]
        lengths = np.array([len(m) for m in masks], np.int64)
        self.masks_Tx2 = np.concatenate(masks) if masks else np.zeros((0, 2), np.uint64)
        self.piece_end = np.repeat(np.cumsum(lengths), lengths)  # exclusive end per position
        self.max_piece_len = int(lengths.max()) if len(lengths) else 0
        hasher = _window_hasher(self.masks_Tx2)
        self.levels = []  # [k] = (sorted window hashes, their start positions)
        for k in range(self.max_piece_len.bit_length()):
            starts = np.flatnonzero(np.arange(len(self.piece_end)) + (1 << k) <= self.piece_end)
            hashes = hasher(starts, 1 << k)
            order = np.argsort(hashes)
            self.levels.append((hashes[order], starts[order].astype(np.int32)))

    def hits(self, k: int, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(query index, training start) of every level-k window whose hash equals a query's."""
        sorted_hashes, starts = self.levels[k]
        lo = np.searchsorted(sorted_hashes, hashes, side="left")
        counts = np.searchsorted(sorted_hashes, hashes, side="right") - lo
        query = np.repeat(np.arange(len(hashes)), counts)
        rank = np.arange(len(query)) - np.repeat(np.cumsum(counts) - counts, counts)
        return query, starts[np.repeat(lo, counts) + rank].astype(np.int64)


def build_copy_index(train_groups: Sequence) -> CopyIndex:
    """Index over training pieces, each as `onset_groups(..)` or `onset_group_masks(..)[1]`."""
    return CopyIndex(train_groups)


def _match_lengths(masks_Gx2, index: CopyIndex, q: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Exact number of equal consecutive groups from sample start q and training start p."""
    lengths = np.zeros(len(q), np.int64)
    alive, d = np.arange(len(q)), 0
    while len(alive):
        qa, pa = q[alive] + d, p[alive] + d
        inside = (qa < len(masks_Gx2)) & (pa < index.piece_end[p[alive]])
        qa, pa = np.minimum(qa, len(masks_Gx2) - 1), np.minimum(pa, len(index.piece_end) - 1)
        equal = inside & np.all(masks_Gx2[qa] == index.masks_Tx2[pa], axis=1)
        lengths[alive[~equal]] = d
        alive, d = alive[equal], d + 1
    return lengths


def longest_copy(sample_groups: Sequence, train_index: CopyIndex) -> int:
    """Longest run of consecutive onset groups of the sample that occurs verbatim in training."""
    masks = _as_masks(sample_groups)
    hasher = _window_hasher(masks)
    index = train_index

    def level_hits(k: int) -> tuple[np.ndarray, np.ndarray]:
        return index.hits(k, hasher(np.arange(len(masks) - (1 << k) + 1), 1 << k))

    top = min(len(masks), index.max_piece_len).bit_length()
    k = 0  # hash hits are monotone in k (a hit at 2n contains hits at n): climb while they last
    while k < top and len(level_hits(k)[0]):
        k += 1
    for level in range(k - 1, -1, -1):  # verify; a level with only hash collisions falls through
        q, p = level_hits(level)
        continues_left = (q > 0) & (p > 0) & (index.piece_end[p - 1] > p)  # p - 1 in the same piece
        continues_left[continues_left] = np.all(
            masks[q[continues_left] - 1] == index.masks_Tx2[p[continues_left] - 1], axis=1
        )  # such a pair is inside a longer match found from its left end: skip it
        lengths = _match_lengths(masks, index, q[~continues_left], p[~continues_left])
        if len(lengths) and lengths.max() >= (1 << level):
            return int(lengths.max())
    return 0


# ---- Harmony: the vertical sound at each onset, outer-voice parallels, chord vocabulary ----
#
# Everything here works on the grid (notes rounded by `_grid_intervals`). An onset is a grid step
# where at least one (non-drum) note starts. The sonority at an onset is the set of distinct
# pitches sounding there: notes with start <= step < end, i.e. the notes starting there plus the
# notes held over it. A pitch sounding in two notes at once counts once.

VERTICAL_CLASS_LABELS = ("P1/P8", "m2/M7", "M2/m7", "m3/M6", "M3/m6", "P4/P5", "TT")
HARMONY_STAT_DESCRIPTIONS = {
    "vertical_seconds_share": "share of vertical interval classes that are seconds (m2/M7, M2/m7)",
    "vertical_thirds_sixths_share": "share of vertical interval classes that are thirds/sixths",
    "parallel_perfect_rate": "outer-voice parallel fifths/octaves per onset-to-onset transition",
    "chord_share": "share of onsets whose pitch-class set is a triad/seventh chord (or part)",
}


def _chord_class_masks() -> frozenset[int]:
    """12-bit pitch-class masks (bit c = class c) of the sonorities `chord_share` counts: every
    non-empty subset of a major, minor, diminished or augmented triad (so single classes and the
    dyads of ic 3, 4, 5, 6); every dominant, minor, major, half-diminished and diminished seventh
    chord; and each of those seventh chords without its fifth (root, third, seventh: the usual
    incomplete seventh chord of four-part writing). All 12 roots; inversions are the same set."""
    triads = ((0, 4, 7), (0, 3, 7), (0, 3, 6), (0, 4, 8))
    sevenths = ((0, 4, 7, 10), (0, 3, 7, 10), (0, 4, 7, 11), (0, 3, 6, 10), (0, 3, 6, 9))
    masks = set()
    for root in range(12):
        for triad in triads:
            classes = [(root + c) % 12 for c in triad]
            for subset in range(1, 8):
                masks.add(sum(1 << classes[i] for i in range(3) if subset >> i & 1))
        for seventh in sevenths:
            classes = [(root + c) % 12 for c in seventh]
            masks.add(sum(1 << c for c in classes))
            masks.add(sum(1 << c for c in (classes[0], classes[1], classes[3])))
    return frozenset(masks)


CHORD_CLASS_MASKS = _chord_class_masks()


def onset_sonorities(notes: Notes, steps_per_beat: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(sounding bool[G, 128], starting bool[G, 128]) at the G onsets in time order: which pitches
    sound at each onset step (start <= step < end on the grid) and which of them start there.
    Drums ignored. Chunked over onsets so memory stays O(chunk x notes)."""
    notes = notes[~notes.is_drum]
    if len(notes) == 0:
        return np.zeros((0, 128), bool), np.zeros((0, 128), bool)
    start, end = _grid_intervals(notes, steps_per_beat)
    onsets = np.unique(start)
    pitch = notes.pitch.astype(np.int64)
    sounding = np.zeros((len(onsets), 128), bool)
    starting = np.zeros((len(onsets), 128), bool)
    chunk = max(1, 2_000_000 // len(notes))
    for lo in range(0, len(onsets), chunk):
        t = onsets[lo : lo + chunk, None]
        g, n = np.nonzero((start[None, :] <= t) & (t < end[None, :]))
        sounding[lo + g, pitch[n]] = True
        g, n = np.nonzero(start[None, :] == t)
        starting[lo + g, pitch[n]] = True
    return sounding, starting


def vertical_interval_counts(
    notes: Notes, steps_per_beat: int = 4, *, both_start: bool = False
) -> np.ndarray:
    """int64[7]: counts of vertical interval classes 0-6 (semitones mod 12, folded: class
    min(d % 12, 12 - d % 12), labels VERTICAL_CLASS_LABELS) over every pair of distinct pitches
    sounding together at an onset of which at least one starts at that onset, summed over the
    onsets. A pair held unchanged across onsets is counted once, where it begins; two pitches an
    octave apart are class 0. `both_start`: only pairs whose two pitches both start at the onset
    (struck together; suspensions and passing notes against held notes drop out). Drums
    ignored."""
    sounding, starting = onset_sonorities(notes, steps_per_beat)
    by_semitones = np.zeros(128, np.int64)
    for d in range(1, 128):
        lower, upper = sounding[:, :-d], sounding[:, d:]
        if both_start:
            new = starting[:, :-d] & starting[:, d:]
        else:
            new = starting[:, :-d] | starting[:, d:]
        by_semitones[d] = int(np.count_nonzero(lower & upper & new))
    d = np.arange(128) % 12
    return np.bincount(np.minimum(d, 12 - d)[1:], by_semitones[1:], minlength=7).astype(np.int64)


def parallel_perfect_rate(notes: Notes, steps_per_beat: int = 4) -> float:
    """Parallel fifths and octaves between the outer voices, per transition.

    The outer voices at an onset are the highest and lowest sounding pitches (onsets with at
    least two distinct sounding pitches only). A transition is a pair of consecutive onsets that
    both have two; it is a parallel when the top and the bass both move (neither repeats) in the
    same direction and their interval, in semitones mod 12, is 7 (P5, compound included) at both
    onsets or 0 (P8, compound) at both. Returns parallels / transitions; NaN with none."""
    sounding, _ = onset_sonorities(notes, steps_per_beat)
    two = sounding.sum(axis=1) >= 2
    sounding = sounding[two]
    if len(sounding) < 2:
        return float("nan")
    top = 127 - np.argmax(sounding[:, ::-1], axis=1)
    bass = np.argmax(sounding, axis=1)
    # consecutive among the onsets that have two voices: an onset with one voice breaks the pair
    index = np.flatnonzero(two)
    adjacent = np.diff(index) == 1
    interval = (top - bass) % 12
    move_top, move_bass = np.sign(np.diff(top)), np.sign(np.diff(bass))
    parallel = (
        (move_top != 0)
        & (move_top == move_bass)
        & (interval[1:] == interval[:-1])
        & np.isin(interval[1:], (0, 7))
    )
    transitions = int(adjacent.sum())
    return float((parallel & adjacent).sum() / transitions) if transitions else float("nan")


def chord_share(notes: Notes, steps_per_beat: int = 4) -> float:
    """Share of onsets whose sonority's pitch-class set is in CHORD_CLASS_MASKS (a triad or
    seventh chord in any inversion, or one of the subsets `_chord_class_masks` names); NaN
    without onsets."""
    sounding, _ = onset_sonorities(notes, steps_per_beat)
    if len(sounding) == 0:
        return float("nan")
    classes = np.zeros((len(sounding), 12), bool)
    for c in range(12):
        classes[:, c] = sounding[:, c::12].any(axis=1)
    masks = classes.astype(np.int64) @ (1 << np.arange(12))
    return float(np.mean([int(m) in CHORD_CLASS_MASKS for m in masks]))


def harmony_stats(notes: Notes, *, steps_per_beat: int = 4) -> dict[str, float]:
    """The scalar harmony statistics of one piece (keys and meanings in
    HARMONY_STAT_DESCRIPTIONS); shares of vertical classes are NaN without any vertical pair.
    Kept apart from `piece_stats`, whose names are the fine-tuning match rewards."""
    counts = vertical_interval_counts(notes, steps_per_beat)
    total = counts.sum()
    share = counts / total if total else np.full(7, np.nan)
    return {
        "vertical_seconds_share": float(share[1] + share[2]),
        "vertical_thirds_sixths_share": float(share[3] + share[4]),
        "parallel_perfect_rate": parallel_perfect_rate(notes, steps_per_beat),
        "chord_share": chord_share(notes, steps_per_beat),
    }
