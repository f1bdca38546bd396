"""Overlap areas against a loop-based float64 KDE, degenerate sets, and the written report."""

import json
import math
import os
import statistics

import numpy as np
import pytest
from matplotlib import image

from jaxcomposer.evaluation import compare
from jaxcomposer.evaluation import musicstats as ms
from jaxcomposer.music.notes import make_notes


def reference_pdf(values, bandwidth, x):
    total = sum(math.exp(-0.5 * ((x - v) / bandwidth) ** 2) for v in values)
    return total / (len(values) * bandwidth * math.sqrt(2 * math.pi))


def reference_bandwidth(values):
    return statistics.stdev(values) * len(values) ** (-1 / 5) if len(set(values)) > 1 else 0.0


def reference_overlap(a, b, n_points=6000):
    """Riemann sum of min(p, q) of loop-evaluated KDEs on a fine grid far into the tails."""
    ha, hb = reference_bandwidth(a), reference_bandwidth(b)
    ha, hb = ha or hb, hb or ha
    lo, hi = min(a + b) - 10 * max(ha, hb), max(a + b) + 10 * max(ha, hb)
    dx = (hi - lo) / n_points
    grid = (lo + (i + 0.5) * dx for i in range(n_points))
    return sum(min(reference_pdf(a, ha, x), reference_pdf(b, hb, x)) for x in grid) * dx


def test_bandwidth_and_pdf_match_loops():
    rng = np.random.default_rng(0)
    values = rng.normal(2.0, 3.0, 25)
    h = compare.scott_bandwidth(values)
    assert h == pytest.approx(reference_bandwidth(values.tolist()), rel=1e-12)
    x = np.linspace(-10, 15, 41)
    expected = [reference_pdf(values.tolist(), h, float(xi)) for xi in x]
    np.testing.assert_allclose(compare.kde_pdf(values, h, x), expected, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("shift", [0.0, 0.7, 2.5])
def test_overlap_area_matches_brute_force_integration(shift):
    rng = np.random.default_rng(1)
    a = rng.normal(0.0, 1.0, 30).tolist()
    b = rng.gamma(2.0, 0.8, 17) + shift
    b = b.tolist()
    expected = reference_overlap(a, b)
    assert compare.overlap_area(a, b) == pytest.approx(expected, abs=1e-4)
    assert compare.overlap_area(b, a) == pytest.approx(expected, abs=1e-4)


def test_overlap_area_of_a_constant_set_borrows_the_other_bandwidth():
    a = [5.0, 5.0, 5.0]
    b = np.random.default_rng(2).normal(5.5, 1.0, 20).tolist()
    oa = compare.overlap_area(a, b)
    assert 0.1 < oa < 0.99
    assert oa == pytest.approx(reference_overlap(a, b), abs=1e-4)


def test_overlap_area_extremes_and_degenerate_sets():
    rng = np.random.default_rng(3)
    a = rng.normal(0, 1, 40)
    assert compare.overlap_area(a, a) == pytest.approx(1.0, abs=1e-4)
    assert compare.overlap_area(a, a + 100) < 1e-6
    assert compare.overlap_area([2.0], [2.0, 2.0]) == 1.0
    assert compare.overlap_area([2.0], [3.0]) == 0.0
    assert math.isnan(compare.overlap_area([], a))
    assert math.isnan(compare.overlap_area([np.nan], a))
    assert compare.overlap_area([np.nan, *a], a) == pytest.approx(1.0, abs=1e-4)  # NaN skipped


def test_intra_inter_distances():
    d = compare.intra_inter([0.0, 1.0, 3.0], [1.0, 2.0])
    assert d["intra_generated"]["mean"] == pytest.approx(2.0)  # |0-1|, |0-3|, |1-3|
    assert d["intra_real"]["mean"] == pytest.approx(1.0)
    assert d["inter"]["mean"] == pytest.approx((1 + 2 + 0 + 1 + 2 + 1) / 6)
    big = np.random.default_rng(4).normal(0, 1, 200)
    sub = compare.intra_inter(big, big, max_pairs=500, seed=7)
    assert sub["intra_generated"]["n"] == 500 and sub["inter"]["n"] == 500
    assert sub == compare.intra_inter(big, big, max_pairs=500, seed=7)  # seeded
    assert sub["oa_intra_generated_vs_inter"] > 0.8


def test_compare_histograms():
    h = compare.compare_histograms(
        [np.array([2, 0]), np.array([2, 0])],
        [np.array([1, 1])],
        np.array([0.0, 1.0, np.inf]),
        ["a", "b"],
    )
    assert h["generated_share"] == [1.0, 0.0] and h["real_share"] == [0.5, 0.5]
    assert h["overlap"] == pytest.approx(0.5)


def stuck_piece(i):
    chord = (60 + i % 5, 64 + i % 5, 67 + i % 5)
    return make_notes(
        chord * 32, np.repeat(np.arange(32), 3) / 2, np.repeat(np.arange(32), 3) / 2 + 0.5
    )


def varied_piece(rng):
    start = np.sort(rng.integers(0, 64, 48)) / 2
    return make_notes(rng.integers(48, 84, 48), start, start + rng.integers(1, 4, 48) / 2)


@pytest.fixture(scope="module")
def stuck_vs_varied():
    rng = np.random.default_rng(5)
    stuck = [stuck_piece(i) for i in range(12)]
    varied = [varied_piece(rng) for _ in range(15)]
    generated, real = [ms.piece_stats(n) for n in stuck], [ms.piece_stats(n) for n in varied]
    real[0] = {k: v for k, v in real[0].items() if k != "mean_ioi"}  # a missing key is NaN
    generated[0]["polyphony"] = float("nan")
    note_lengths = (
        [ms.note_length_histogram(n)[0] for n in stuck],
        [ms.note_length_histogram(n)[0] for n in varied],
    )
    return generated, real, compare.compare_sets(generated, real, note_lengths=note_lengths)


def test_compare_sets_summaries(stuck_vs_varied):
    generated, real, comparison = stuck_vs_varied
    assert comparison["n_generated"] == 12 and comparison["n_real"] == 15
    assert set(comparison["statistics"]) == set(ms.STAT_DESCRIPTIONS)
    entropy = comparison["statistics"]["pitch_class_entropy"]
    values = [s["pitch_class_entropy"] for s in real]
    assert entropy["real"]["mean"] == pytest.approx(np.mean(values))
    assert entropy["real"]["std"] == pytest.approx(np.std(values))
    assert comparison["statistics"]["polyphony"]["generated"]["n_nan"] == 1
    assert comparison["statistics"]["polyphony"]["generated"]["n"] == 11
    assert comparison["statistics"]["mean_ioi"]["real"]["n_nan"] == 1
    # the stuck-argmax failure is caught: its repetition statistics overlap real music little
    stats = comparison["statistics"]
    assert stats["distinct_4gram_share"]["overlap_area"] < 0.05
    assert stats["longest_repeat_run"]["overlap_area"] < 0.05
    assert stats["longest_repeat_run"]["generated"]["mean"] == 32
    assert comparison["note_length_histogram"]["overlap"] < 0.6


def test_write_report(tmp_path, stuck_vs_varied):
    _, _, comparison = stuck_vs_varied
    out_dir = tmp_path / "report"
    written = compare.write_report(
        str(out_dir),
        comparison,
        title="Stuck vs varied",
        generated_name="stuck",
        real_name="varied",
    )
    names = set(ms.STAT_DESCRIPTIONS)
    expected = {"report.json", "report.md", "plots/note_length_histogram.png"}
    assert set(written) == expected | {f"plots/{n}.png" for n in names}
    assert all(os.path.isfile(p) for p in written.values())
    leftovers = [f for _, _, files in os.walk(out_dir) for f in files if f.startswith(".")]
    assert not leftovers  # atomic writes leave no temporary files behind

    def no_nan(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    report = json.loads((out_dir / "report.json").read_text(), parse_constant=no_nan)
    assert report["title"] == "Stuck vs varied"
    assert report["statistics"]["polyphony"]["generated"]["n"] == 11

    markdown = (out_dir / "report.md").read_text()
    assert "| statistic | stuck mean ± std | varied mean ± std | overlap area |" in markdown
    for name in names:
        oa = comparison["statistics"][name]["overlap_area"]
        assert any(
            line.startswith(f"| {name} |") and line.endswith(f"| {oa:.3f} |")
            for line in markdown.splitlines()
        )
        assert f"(plots/{name}.png)" in markdown

    for rel in written:
        if rel.endswith(".png"):
            pixels = image.imread(written[rel])
            assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
            assert pixels[..., :3].std() > 0.05  # not blank
            coloured = np.ptp(pixels[..., :3], axis=-1) > 0.3  # orange/blue curves or bars
            assert coloured.mean() > 0.001
