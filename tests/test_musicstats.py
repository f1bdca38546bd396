"""Musical statistics on hand-made pieces with known answers, and against brute-force loops."""

import math

import numpy as np
import pytest

from jaxcomposer.evaluation import musicstats as ms
from jaxcomposer.music import keys
from jaxcomposer.music.notes import make_notes

C_MAJOR = [60, 62, 64, 65, 67, 69, 71]


def sequence(pitches, step=1.0, length=None):
    """One note per pitch, back to back (or `length` long each)."""
    start = np.arange(len(pitches)) * step
    return make_notes(pitches, start, start + (length or step))


def chords(chord_list, step=1.0):
    pitch, start = [], []
    for i, chord in enumerate(chord_list):
        pitch += list(chord)
        start += [i * step] * len(chord)
    return make_notes(pitch, start, np.asarray(start) + step)


def random_piece(rng, n_notes=60, pitch_range=(55, 67)):
    """Random notes on a coarse grid, so chords, overlaps, same-pitch overlaps and gaps occur."""
    start = rng.integers(0, 40, n_notes) / 2
    length = rng.integers(1, 8, n_notes) / 4
    return make_notes(rng.integers(*pitch_range, n_notes), start, start + length)


def test_c_major_scale():
    s = ms.piece_stats(sequence(C_MAJOR))
    assert s["pitch_class_entropy"] == pytest.approx(math.log2(7))
    assert s["scale_consistency"] == 1.0
    assert s["pitch_range"] == 11 and s["distinct_pitches"] == 7
    assert s["polyphony"] == 1.0 and s["empty_beat_rate"] == 0.0
    assert s["mean_ioi"] == 1.0 and s["mean_note_length"] == 1.0
    assert s["longest_repeat_run"] == 1 and s["distinct_4gram_share"] == 1.0
    assert math.isnan(s["distinct_8gram_share"])  # 7 onset groups: no 8-gram


def test_chromatic_scale_and_harmonic_minor():
    chromatic = ms.piece_stats(sequence(range(60, 72)))
    assert chromatic["pitch_class_entropy"] == pytest.approx(math.log2(12))
    assert chromatic["scale_consistency"] == pytest.approx(7 / 12)
    a_natural_minor = ms.piece_stats(sequence([57, 59, 60, 62, 64, 65, 67, 69]))
    assert a_natural_minor["scale_consistency"] == 1.0
    # A harmonic minor: only G# is outside the best scale (A minor = C major)
    a_harmonic_minor = ms.piece_stats(sequence([57, 59, 60, 62, 64, 65, 68, 69]))
    assert a_harmonic_minor["scale_consistency"] == pytest.approx(7 / 8)


def test_scale_consistency_matches_set_loop():
    rng = np.random.default_rng(1)
    major, minor = set(keys.SCALE_STEPS["major"]), set(keys.SCALE_STEPS["natural_minor"])
    for _ in range(20):
        notes = random_piece(rng, n_notes=int(rng.integers(1, 30)), pitch_range=(40, 90))
        scales = [{(t + s) % 12 for s in steps} for t in range(12) for steps in (major, minor)]
        best = max(sum(int(p) % 12 in scale for p in notes.pitch) for scale in scales)
        assert ms.piece_stats(notes)["scale_consistency"] == pytest.approx(best / len(notes))


def test_repeated_chord_is_one_long_run():
    s = ms.piece_stats(chords([(60, 64, 67)] * 40))
    assert s["longest_repeat_run"] == 40
    assert s["distinct_4gram_share"] == pytest.approx(1 / 37)
    assert s["distinct_8gram_share"] == pytest.approx(1 / 33)
    assert s["polyphony"] == 3.0
    assert s["pitch_class_entropy"] == pytest.approx(math.log2(3))


def test_held_triad_and_same_pitch_overlap():
    held = ms.piece_stats(make_notes([60, 64, 67], [0, 0, 0], [8, 8, 8]))
    assert held["polyphony"] == 3.0 and held["empty_beat_rate"] == 0.0
    assert math.isnan(held["mean_ioi"])  # a single onset
    # the same pitch sounding twice at once is one sounding pitch
    assert ms.polyphony(make_notes([60, 60], [0, 1], [2, 3])) == 1.0


def test_polyphony_and_empty_beats_with_a_gap():
    # 60 over beats 0-4, 64 over beat 1, nothing over beats 4-6, 67 over beat 6
    notes = make_notes([60, 64, 67], [0, 1, 6], [4, 2, 7])
    assert ms.polyphony(notes) == pytest.approx((12 * 1 + 4 * 2 + 4 * 1) / 20)
    assert ms.empty_beat_rate(notes) == pytest.approx(2 / 7)
    assert ms.empty_beat_rate(make_notes([60], [2], [3])) == pytest.approx(2 / 3)  # leading rest
    assert ms.empty_beat_rate(make_notes([60], [0.5], [0.75])) == 0.0  # part of a beat sounds


def piano_roll(notes, steps_per_beat):
    """Explicit-loop reference: sounding[step][pitch]."""
    start = [max(int(math.floor(s * steps_per_beat + 0.5)), 0) for s in notes.start]
    end = [
        max(int(math.floor(e * steps_per_beat + 0.5)), s + 1)
        for s, e in zip(start, notes.end, strict=True)
    ]
    roll = [[False] * 128 for _ in range(max(end))]
    for p, s, e in zip(notes.pitch, start, end, strict=True):
        for t in range(s, e):
            roll[t][int(p)] = True
    return roll


@pytest.mark.parametrize("steps_per_beat", [4, 3])
def test_polyphony_and_empty_beats_match_piano_roll_loop(steps_per_beat):
    rng = np.random.default_rng(steps_per_beat)
    for _ in range(20):
        notes = random_piece(rng, n_notes=int(rng.integers(1, 40)))
        roll = piano_roll(notes, steps_per_beat)
        counts = [sum(row) for row in roll]
        sounding = [c for c in counts if c]
        assert ms.polyphony(notes, steps_per_beat) == pytest.approx(sum(sounding) / len(sounding))
        n_beats = -(-len(roll) // steps_per_beat)
        beats = [counts[b * steps_per_beat : (b + 1) * steps_per_beat] for b in range(n_beats)]
        empty = sum(not any(beat) for beat in beats) / n_beats
        assert ms.empty_beat_rate(notes, steps_per_beat) == pytest.approx(empty)


def test_inter_onset_interval_uses_distinct_grid_onsets():
    notes = make_notes([60, 64, 67, 72, 60], [0, 0.5, 0.5, 0.49, 2], [1, 1, 1, 1, 3])
    assert ms.piece_stats(notes)["mean_ioi"] == pytest.approx(1.0)  # onsets 0, 0.5, 2
    assert ms.onset_groups(notes) == [(60,), (64, 67, 72), (60,)]


def test_note_length_histogram_bins():
    lengths = [1 / 16, 1 / 8, 1 / 4, 0.3, 1 / 2, 1, 1.5, 2, 4, 8, 100]
    counts, edges = ms.note_length_histogram(make_notes([60] * 11, [0] * 11, lengths))
    # 0.3 is nearer 1/4 than 1/2 on a log scale, 1.5 nearer 2 than 1
    assert counts.tolist() == [1, 1, 2, 1, 1, 2, 1, 2]
    assert edges.shape == (9,) and edges[0] == 0 and edges[-1] == np.inf
    assert np.all(np.diff(edges) > 0)


def test_ngram_share_and_run_match_python_loops():
    rng = np.random.default_rng(2)
    for _ in range(30):
        groups = [
            tuple(sorted(set(rng.integers(60, 63, rng.integers(1, 3)).tolist())))
            for _ in range(int(rng.integers(1, 40)))
        ]
        masks = ms.groups_to_masks(groups)
        assert ms.masks_to_groups(masks) == groups
        for n in (4, 8):
            grams = [tuple(groups[i : i + n]) for i in range(len(groups) - n + 1)]
            expected = len(set(grams)) / len(grams) if grams else None
            got = ms.distinct_ngram_share(masks, n)
            assert math.isnan(got) if expected is None else got == pytest.approx(expected)
        runs, run = [], 1
        for a, b in zip(groups[:-1], groups[1:], strict=True):
            run = run + 1 if a == b else 1
            runs.append(run)
        assert ms.longest_repeat_run(masks) == max([1, *runs])


def test_empty_piece_and_drums():
    s = ms.piece_stats(make_notes([], [], []))
    assert s["distinct_pitches"] == 0
    assert all(math.isnan(v) for k, v in s.items() if k != "distinct_pitches")
    drums = make_notes([36, 60], [0, 0], [1, 1], is_drum=[True, False])
    assert ms.piece_stats(drums)["distinct_pitches"] == 1
    assert ms.onset_groups(drums) == [(60,)]


def random_groups(rng, n, pitch_range=(60, 64)):
    return [
        tuple(sorted(set(rng.integers(*pitch_range, rng.integers(1, 3)).tolist())))
        for _ in range(n)
    ]


def longest_common_run(sample, train_pieces):
    """Dynamic-programming reference: longest common substring against each piece."""
    best = 0
    for piece in train_pieces:
        previous = [0] * (len(piece) + 1)
        for a in sample:
            current = [0] * (len(piece) + 1)
            for j, b in enumerate(piece):
                if a == b:
                    current[j + 1] = previous[j] + 1
                    best = max(best, current[j + 1])
            previous = current
    return best


@pytest.fixture(scope="module")
def train_pieces():
    rng = np.random.default_rng(3)
    return [random_groups(rng, int(rng.integers(5, 200)), (40, 80)) for _ in range(60)]


def test_longest_copy_finds_planted_copy(train_pieces):
    index = ms.build_copy_index(train_pieces)
    rng = np.random.default_rng(4)
    sample = random_groups(rng, 300, (90, 100))  # pitches never used in training
    source = max(train_pieces, key=len)
    sample[120:143] = source[37:60]
    assert ms.longest_copy(sample, index) == 23
    assert ms.longest_copy(random_groups(rng, 300, (90, 100)), index) == 0
    # unrelated material from the training pitch range matches only by chance, and briefly
    assert ms.longest_copy(random_groups(rng, 300, (40, 80)), index) <= 2
    assert ms.longest_copy(source, index) == len(source)
    masks = ms.groups_to_masks(sample)
    assert ms.longest_copy(masks, index) == 23  # masks are accepted as well as tuples


def test_longest_copy_does_not_join_adjacent_pieces():
    a, b, c, d, e, f = [(60 + i,) for i in range(6)]
    index = ms.build_copy_index([[a, b, c], [d, e, f]])
    assert ms.longest_copy([b, c, d, e], index) == 2
    # the group before the copy equals the last training group, which does not precede piece 0
    assert ms.longest_copy([f, a, b, c], index) == 3
    assert ms.longest_copy([], index) == 0
    assert ms.longest_copy([a], ms.build_copy_index([])) == 0


def test_longest_copy_matches_dynamic_programming():
    rng = np.random.default_rng(5)
    for _ in range(15):  # tiny alphabet: many partial matches, long repeated stretches
        train = [random_groups(rng, int(rng.integers(1, 60)), (60, 62)) for _ in range(4)]
        index = ms.build_copy_index(train)
        for _ in range(3):
            sample = random_groups(rng, int(rng.integers(1, 50)), (60, 62))
            assert ms.longest_copy(sample, index) == longest_common_run(sample, train)


def test_longest_copy_of_a_stuck_sample():
    index = ms.build_copy_index([[(60,)] * 300, [(62,), (60,)] * 50])
    assert ms.longest_copy([(60,)] * 120, index) == 120
    assert ms.longest_copy([(60,)] * 400, index) == 300
    assert ms.longest_copy([(60,), (62,)] * 80, index) == 100


def test_longest_copy_is_exact_even_when_every_hash_collides(monkeypatch):
    """Hashes only propose candidates; group-by-group comparison decides the length."""
    monkeypatch.setattr(ms, "_window_hasher", lambda masks: lambda starts, n: 0 * starts)
    rng = np.random.default_rng(6)
    for _ in range(10):
        train = [random_groups(rng, int(rng.integers(1, 30)), (60, 62)) for _ in range(3)]
        index = ms.build_copy_index(train)
        for _ in range(3):
            sample = random_groups(rng, int(rng.integers(1, 30)), (60, 62))
            assert ms.longest_copy(sample, index) == longest_common_run(sample, train)
    unrelated = ms.build_copy_index([[(40,)] * 8])
    assert ms.longest_copy([(41,)] * 8, unrelated) == 0
