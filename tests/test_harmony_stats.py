"""Harmony statistics (evaluation/musicstats.py) on small pieces worked out by hand."""

import math

import numpy as np
import pytest

from jaxcomposer.evaluation import musicstats as ms
from jaxcomposer.music.notes import make_notes


def test_vertical_classes_of_a_held_bass_under_a_moving_line():
    # bass C3 held 0-2; upper line C4 (0-1) then D4 (1-2); and at beat 2 a lone E4.
    notes = make_notes([48, 60, 62, 64], [0, 0, 1, 2], [2, 1, 2, 3])
    counts = ms.vertical_interval_counts(notes)
    # onset 0: {48, 60} -> 12 semitones = class 0; onset 1: {48, 62}, 62 new -> 14 = class 2;
    # onset 2: one pitch, no pair.
    assert counts.tolist() == [1, 0, 1, 0, 0, 0, 0]
    # struck together only: the octave at beat 0; D4 over the held bass drops out
    assert ms.vertical_interval_counts(notes, both_start=True).tolist() == [1, 0, 0, 0, 0, 0, 0]


def test_vertical_pairs_held_unchanged_are_counted_once_and_folding():
    # C4 and G4 held 0-4 (class 5), B4 struck at 0 and at 1 (B-C = 11 -> 1, B-G = 4 -> 4)
    notes = make_notes([60, 67, 71, 71], [0, 0, 0, 1], [4, 4, 1, 2])
    counts = ms.vertical_interval_counts(notes)
    # onset 0: C-G, C-B, G-B all new; onset 1: C-B and G-B again (B restruck), C-G held: not counted
    assert counts.tolist() == [0, 2, 0, 0, 2, 1, 0]
    assert ms.harmony_stats(notes)["vertical_seconds_share"] == pytest.approx(2 / 5)
    assert ms.harmony_stats(notes)["vertical_thirds_sixths_share"] == pytest.approx(2 / 5)


def test_parallel_fifths_and_octaves_between_outer_voices():
    # onsets: (C3, G3) -> (D3, A3) parallel fifth up; -> (E3, E4) octave: not from a fifth;
    # -> (F3, F4) parallel octave up; -> (E3, G4) contrary; -> (D3, A4) contrary.
    chords = [(48, 55), (50, 57), (52, 64), (53, 65), (52, 67), (50, 69)]
    pitch = [p for c in chords for p in c]
    start = [i for i, c in enumerate(chords) for _ in c]
    notes = make_notes(pitch, start, np.asarray(start) + 1)
    assert ms.parallel_perfect_rate(notes) == pytest.approx(2 / 5)
    # an inner voice does not count: (C3, G3, C5) -> (D3, A3, D5) outer voices are octaves
    # two octaves apart moving in parallel: counted; the inner fifth changes nothing.
    inner = make_notes([48, 55, 72, 50, 57, 74], [0, 0, 0, 1, 1, 1], [1, 1, 1, 2, 2, 2])
    assert ms.parallel_perfect_rate(inner) == 1.0
    # repeated bass (oblique motion) is no parallel; a lone note breaks the transition
    oblique = make_notes([48, 55, 48, 62, 60, 50, 57], [0, 0, 1, 1, 2, 3, 3], [1, 1, 2, 2, 3, 4, 4])
    assert ms.parallel_perfect_rate(oblique) == 0.0
    assert math.isnan(ms.parallel_perfect_rate(make_notes([60], [0], [1])))


def test_chord_share_counts_triads_sevenths_inversions_and_named_subsets():
    sonorities = [
        (64, 67, 72),  # C major, first inversion: chord
        (59, 62, 65, 67),  # G7 in third inversion... G B D F: chord
        (60, 64, 70),  # C7 without its fifth: chord
        (60, 62),  # major second: not a subset of any triad
        (60, 62, 64),  # cluster C D E: no
        (57, 60, 63, 66),  # diminished seventh: chord
        (60, 67),  # open fifth: subset of a triad
        (60, 61, 65, 68),  # Db major 7 (Db F Ab C): chord
    ]
    pitch = [p for c in sonorities for p in c]
    start = [i for i, c in enumerate(sonorities) for _ in c]
    notes = make_notes(pitch, start, np.asarray(start) + 1)
    assert ms.chord_share(notes) == pytest.approx(6 / 8)


def test_chord_share_uses_what_is_held_over_the_onset():
    # C3 held under E4 then F#4: {C, E} is a third (chord), {C, F#} a tritone (dim triad part)
    # and at beat 2 D4 over the held C3 -> {C, D}: not a chord.
    notes = make_notes([48, 64, 66, 62], [0, 0, 1, 2], [3, 1, 2, 3])
    assert ms.chord_share(notes) == pytest.approx(2 / 3)


@pytest.mark.parametrize("struck", [False, True])
def test_vertical_counts_match_a_pair_loop_on_random_pieces(struck):
    rng = np.random.default_rng(3)
    for _ in range(10):
        n = 30
        start = rng.integers(0, 20, n) / 2
        notes = make_notes(rng.integers(50, 75, n), start, start + rng.integers(1, 6, n) / 2)
        expected = np.zeros(7, np.int64)
        s, e = ms._grid_intervals(notes, 4)
        for t in np.unique(s):
            on = (s <= t) & (t < e)
            sounding = set(notes.pitch[on].tolist())
            new = set(notes.pitch[s == t].tolist())
            for a in sounding:
                for b in sounding:
                    if a < b and (a in new or b in new):
                        if struck and not (a in new and b in new):
                            continue
                        d = (b - a) % 12
                        expected[min(d, 12 - d)] += 1
        got = ms.vertical_interval_counts(notes, both_start=struck)
        assert got.tolist() == expected.tolist()


def test_empty_piece_harmony_is_nan():
    s = ms.harmony_stats(make_notes([], [], []))
    assert all(math.isnan(v) for v in s.values())
    assert ms.vertical_interval_counts(make_notes([], [], [])).tolist() == [0] * 7
