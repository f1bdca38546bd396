"""Each fine-tuning reward on hand-made pieces, against values worked out by hand."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from jaxcomposer import config_lib
from jaxcomposer.finetune import rewards
from jaxcomposer.music.notes import make_notes

CTX = rewards.RewardContext(steps_per_beat=4, max_run=4, motif_length=2, motif_gap=1,
                            phrase_beats=4.0, range_band=(12.0, 24.0))  # fmt: skip
EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "launch" / "example_reward.py"


def line(pitches, beats=None):
    """A melody, one note per beat (or at the given beats), each one beat long."""
    starts = np.arange(len(pitches), dtype=float) if beats is None else np.asarray(beats, float)
    return make_notes(pitches, starts, starts + 1.0)


def test_table_matches_config_weights():
    assert set(rewards.REWARDS) == set(config_lib.RewardWeights.__dataclass_fields__)


def test_every_reward_is_zero_on_an_empty_piece():
    empty = make_notes([], [], [])
    assert all(r.fn(empty, 0, CTX) == 0.0 for r in rewards.REWARDS.values())


def test_in_key_major_and_minor_with_leading_tone():
    assert rewards.in_key(line([60, 62, 64, 66]), 0, CTX) == 0.75  # F# outside C major
    # A minor (21): natural minor plus G#; F# is outside.
    assert rewards.in_key(line([69, 68, 66, 72]), 21, CTX) == 0.75
    assert rewards.in_key(line([60, 64, 67, 72]), 0, CTX) == 1.0


def test_no_stuck_runs_counts_groups_beyond_max_run():
    # 6 identical groups then one other: 2 groups beyond the 4th of the run, out of 7.
    assert rewards.no_stuck_runs(line([60] * 6 + [62]), 0, CTX) == pytest.approx(5 / 7)
    assert rewards.no_stuck_runs(line([60] * 4 + [62] * 4), 0, CTX) == 1.0
    chord = make_notes([60, 64] * 5, np.repeat(np.arange(5.0), 2), np.repeat(np.arange(5.0), 2) + 1)
    assert rewards.no_stuck_runs(chord, 0, CTX) == pytest.approx(1 - 1 / 5)


def test_motif_return_finds_a_transposed_return_with_its_rhythm():
    # intervals 2, 2, -14, 17, 2, 2 (all one beat apart): 2-grams (2,2) at 0 and 4 return
    # (4 >= motif_length 2 + gap 1); the other three are unique: 2 of 5.
    pitches = [60, 62, 64, 50, 67, 69, 71]
    assert rewards.motif_return(line(pitches), 0, CTX) == pytest.approx(2 / 5)
    # the same pitches, the last note a beat later: its rhythm differs, nothing returns.
    beats = [0, 1, 2, 3, 4, 5, 7]
    assert rewards.motif_return(line(pitches, beats), 0, CTX) == 0.0
    # a repeated note is the stuck failure, not a motif
    assert rewards.motif_return(line([60] * 10), 0, CTX) == 0.0


def test_the_melody_is_the_highest_sounding_note_so_a_held_soprano_stays_the_melody():
    # soprano C5 (2 beats) D5 E5 C5 (2 beats) D5 E5 over an alto moving every beat.
    soprano = [(72, 0, 2), (74, 2, 3), (76, 3, 4), (72, 4, 6), (74, 6, 7), (76, 7, 8)]
    alto = [(p, b, b + 1) for b, p in enumerate([60, 62, 64, 65, 67, 65, 64, 62])]
    pitch, start, end = zip(*(soprano + alto), strict=True)
    chorale = make_notes(pitch, start, end)
    onsets, top = rewards.melody(chorale, 4)
    # beats 1 and 5 hear the held C5 above the alto: no new melody note there
    np.testing.assert_array_equal(onsets, [0, 8, 12, 16, 24, 28])
    np.testing.assert_array_equal(top, [72, 74, 76, 72, 74, 76])
    # (interval, steps) pairs (2,8) (2,4) (-4,4) (2,8) (2,4): of the four 2-grams the first and
    # the last are equal, 3 apart (>= motif_length 2 + gap 1): 2 of 4. The top of each onset
    # group (the alto's 62 and 65 at beats 1 and 5) would make every 2-gram unique: 0.
    assert rewards.motif_return(chorale, 0, CTX) == pytest.approx(2 / 4)
    # a higher voice that ends hands the melody to the note below at the next onset
    crossing = make_notes([72, 79, 60, 62], [0, 1, 2, 3], [4, 2, 3, 4])
    onsets, top = rewards.melody(crossing, 4)
    np.testing.assert_array_equal(onsets, [0, 4, 8])
    np.testing.assert_array_equal(top, [72, 79, 72])


def test_tonic_ending_checks_the_bass_of_each_phrase_ending():
    # phrases of 4 beats: [0,4) ends on {C3, E4} (bass C: yes); [4,8) ends on {G2, D4} (no);
    # [8,12) is empty (skipped); [12,16) ends on C5 alone (yes): 2 of 3.
    pitch = [60, 48, 64, 62, 43, 74, 72]
    start = [0, 3, 3, 4, 7, 7, 12]
    notes = make_notes(pitch, start, np.asarray(start, float) + 1)
    assert rewards.tonic_ending(notes, 0, CTX) == pytest.approx(2 / 3)
    assert rewards.tonic_ending(notes, 12, CTX) == pytest.approx(2 / 3)  # c minor: tonic C too
    assert rewards.tonic_ending(notes, 7, CTX) == pytest.approx(1 / 3)  # G major


def test_leap_recovery_wants_a_step_back_after_a_leap_beyond_an_octave():
    # moves 16, -2 | -15, 2 | 14, 2 (same direction: not recovered) | -27 (last: not judged)
    pitches = [60, 76, 74, 59, 61, 75, 77, 50]
    assert rewards.leap_recovery(line(pitches), 0, CTX) == pytest.approx(1 - 1 / 7)
    assert rewards.leap_recovery(line([60, 72, 60, 72]), 0, CTX) == 1.0  # an octave is no leap
    assert rewards.leap_recovery(line([60]), 0, CTX) == 1.0


def test_pitch_range_inside_the_band_or_falling_off_over_an_octave():
    assert rewards.pitch_range(line([60, 80]), 0, CTX) == 1.0  # 20 in [12, 24]
    assert rewards.pitch_range(line([50, 80]), 0, CTX) == 0.5  # 30: 6 above
    assert rewards.pitch_range(line([60, 62]), 0, CTX) == pytest.approx(1 - 10 / 12)
    assert rewards.pitch_range(line([40, 80]), 0, CTX) == 0.0
    # Per phrase (4 beats in CTX): beats 0-3 span 8, beats 4-7 span 6 -> 7, 5 below the band,
    # although the whole piece spans 20, inside it.
    two_phrases = line([60, 68, 60, 68, 74, 80, 74, 80])
    assert rewards.phrase_range(two_phrases, 4.0) == 7.0
    assert rewards.pitch_range(two_phrases, 0, CTX) == pytest.approx(1 - 5 / 12)
    # Twice the notes in half the time: the same phrases, so the same per-phrase range.
    compressed = line([60, 68, 60, 68, 74, 80, 74, 80], beats=np.arange(8) * 0.5)
    assert rewards.phrase_range(compressed, 2.0) == rewards.phrase_range(two_phrases, 4.0)


def test_range_band_is_quantiles_of_real_spans():
    pieces = [line([60, 60 + s]) for s in (10, 20, 30)]
    assert rewards.range_band(pieces, 0.0, 1.0) == (10.0, 30.0)
    assert rewards.range_band(pieces, 0.5, 0.5) == (20.0, 20.0)


def test_note_length_inside_the_band_or_falling_off_over_a_factor_of_two():
    ctx = rewards.RewardContext(length_band=(0.5, 1.0))
    assert rewards.note_length(line([60, 62]), 0, ctx) == 1.0  # every note 1 beat
    halves = make_notes([60, 62], [0.0, 0.5], [0.25, 0.75])  # mean 0.25: a factor 2 below
    assert rewards.note_length(halves, 0, ctx) == 0.0
    mixed = make_notes([60, 62], [0.0, 1.0], [0.25, 1.5])  # mean 0.375: log2(4/3) below
    assert rewards.note_length(mixed, 0, ctx) == pytest.approx(1 - np.log2(0.5 / 0.375))
    long = make_notes([60, 64], [0.0, 0.0], [1.0, 2.0])  # mean 1.5: log2(1.5) above the band
    assert rewards.note_length(long, 0, ctx) == pytest.approx(1 - np.log2(1.5))
    band = rewards.texture_band([line([60]), long], "note_length", 0.0, 1.0)
    assert band == (1.0, 1.5)


def test_polyphony_inside_the_band_or_falling_off_over_a_factor_of_two():
    ctx = rewards.RewardContext(steps_per_beat=4, polyphony_band=(3.0, 4.0))
    # Four voices for 2 beats, then two for 2 beats: (4*2 + 2*2) / 4 = 3 sounding pitches.
    chorale = make_notes([48, 55, 64, 72, 60, 67], [0, 0, 0, 0, 2, 2], [2, 2, 2, 2, 4, 4])
    assert rewards.polyphony(chorale, 0, ctx) == 1.0
    duet = make_notes([60, 67], [0, 0], [4, 4])  # 2: log2(3/2) below the band
    assert rewards.polyphony(duet, 0, ctx) == pytest.approx(1 - np.log2(1.5))
    assert rewards.polyphony(line([60, 62]), 0, ctx) == 0.0  # 1: a factor 3 below
    band = rewards.texture_band([chorale, duet], "polyphony", 0.0, 1.0, steps_per_beat=4)
    assert band == (2.0, 3.0)


def test_score_is_the_weighted_sum_with_a_user_reward_and_an_estimated_key():
    notes = line([60, 62, 64, 65, 67, 65, 64, 62, 60])
    user = rewards.load_user_reward(f"{EXAMPLE}:stepwise_motion")
    weights = {"in_key": 2.0, "pitch_range": 0.5}
    out = rewards.score(notes, weights, CTX, user=(user, 3.0))
    assert out["key"] == 0.0  # estimated: C major
    assert out["user"] == 1.0  # every move is a step
    by_hand = 2.0 * out["in_key"] + 0.5 * out["pitch_range"] + 3.0 * out["user"]
    assert out["total"] == pytest.approx(by_hand)
    # Phrases of 4 beats span 5, 5 and 0 semitones: 10/3, below the band [12, 24].
    assert out["in_key"] == 1.0 and out["pitch_range"] == pytest.approx(1 - (12 - 10 / 3) / 12)
    requested = rewards.score(notes, weights, CTX, key=6)  # F# major: only F and B are in it
    assert requested["key"] == 6.0 and requested["in_key"] == pytest.approx(2 / 9)
    with pytest.raises(KeyError, match="unknown rewards"):
        rewards.score(notes, {"nope": 1.0}, CTX)


def test_user_reward_errors_are_one_line(tmp_path):
    for spec in ("nothing", "no_such_module_xyz:f", f"{tmp_path}/missing.py:f",
                 f"{EXAMPLE}:no_such_function"):  # fmt: skip
        with pytest.raises(ValueError, match="finetune.user_reward") as info:
            rewards.load_user_reward(spec)
        assert "\n" not in str(info.value)
    assert rewards.load_user_reward("jaxcomposer.finetune.rewards:in_key") is rewards.in_key


def test_a_user_reward_that_raises_or_returns_nonsense_is_one_line(tmp_path):
    source = tmp_path / "mine.py"
    source.write_text(
        "def broken(notes, key, context):\n"
        "    return 1 / 0\n"
        "def nothing(notes, key, context):\n"
        "    return None\n"
        "def infinite(notes, key, context):\n"
        "    return float('inf')\n"
    )
    notes = line([60, 62])
    expected = {
        "broken": r"broken \(mine\.py\) raised ZeroDivisionError: .* \(at .*mine\.py:2\)",
        "nothing": r"nothing \(mine\.py\) returned None, not a number",
        "infinite": r"infinite \(mine\.py\) returned inf, not a finite number",
    }
    for name, message in expected.items():
        fn = rewards.load_user_reward(f"{source}:{name}")
        with pytest.raises(ValueError, match=message) as info:
            rewards.score(notes, {}, CTX, key=0, user=(fn, 1.0))
        assert "\n" not in str(info.value)


def test_match_statistics_are_the_config_fields_and_piece_stats_names():
    from jaxcomposer.evaluation import musicstats

    fields = set(config_lib.MatchWeights.__dataclass_fields__)
    assert fields == set(musicstats.piece_stats(line([60, 62, 64])))


def test_log_density_ratio_approaches_the_gaussian_log_ratio():
    """KDEs of many N(mu, 1) draws with bandwidth h estimate N(mu, 1 + h^2): the reward of a
    batch drawn from N(0, 1) against data from N(1, 1) is the analytic log ratio of the two."""
    rng = np.random.default_rng(0)
    reference = rng.normal(1.0, 1.0, 20_000)
    batch = np.r_[rng.normal(0.0, 1.0, 4_000), -4.0, -5.0]  # two beyond the data's support
    ratio = rewards.log_density_ratio(batch, reference, clip=50.0)
    h = np.std(reference, ddof=1) * len(reference) ** -0.2
    var = 1.0 + h**2
    analytic = (-((batch - 1.0) ** 2) + batch**2) / (2 * var)  # log N(v;1,var) - log N(v;0,var)
    error = np.abs(ratio - analytic)[np.abs(batch) < 1.0]  # where both sides have samples
    # The batch KDE's own noise: relative sd ~ (n h p sqrt(4 pi))^-1/2 ~ 0.04 at 0, so the
    # largest of ~2,700 errors stays within 4 sd (measured 0.06-0.09 over three seeds).
    assert np.median(error) < 0.03 and error.max() < 0.15
    # Averaged over the batch (inside the data's support) it estimates -KL(N(0,1) || N(1,1)).
    inside = batch > 1.0 - 4.0
    assert ratio[inside].mean() == pytest.approx(analytic[inside].mean(), abs=0.02)
    assert ratio[-2] == ratio[-1] == -50.0  # beyond the support: the clip


def test_log_density_ratio_by_hand_leave_one_out_and_clip():
    reference = np.array([0.0, 2.0])  # Scott: std(ddof=1) * 2^-0.2
    h = np.sqrt(2.0) * 2**-0.2
    batch = np.array([0.0, 0.0, 2.0, np.nan])
    out = rewards.log_density_ratio(batch, reference, clip=3.0)

    def phi(z):
        return np.exp(-0.5 * (z / h) ** 2) / (h * np.sqrt(2 * np.pi))

    p0, p2 = (phi(0) + phi(2)) / 2, (phi(2) + phi(0)) / 2
    q0 = (phi(0) + phi(2)) / 3  # the other 0 and the 2 (the NaN sample counts as elsewhere)
    q2 = (phi(2) + phi(2)) / 3  # the two 0s
    np.testing.assert_allclose(out[:3], np.log([p0 / q0, p0 / q0, p2 / q2]))
    assert out[3] == -3.0  # no notes: the clip
    assert out[2] > out[0]  # the value the batch lacks is worth more than the repeated one
    # 40 is nowhere near the data: the clip, although its lone Gaussian tail from the batch is
    # even thinner than the data's (the raw ratio would be +51 nats).
    far = rewards.log_density_ratio(np.array([0.0, 40.0]), reference, clip=3.0)
    assert far[1] == -3.0 and far[0] == 3.0  # 0 is where the data is and the batch is not
    with pytest.raises(ValueError, match="2\\+ real values"):
        rewards.log_density_ratio(batch, np.array([1.0]), clip=3.0)


def test_match_rewards_name_each_weighted_statistic():
    ctx = rewards.RewardContext(
        match_reference={"mean_note_length": np.array([0.5, 1.0, 1.0, 2.0])}
    )
    pieces = [line([60, 62]), make_notes([60], [0.0], [0.25]), line([64])]
    out = rewards.match_rewards(pieces, {"mean_note_length": 1.0, "polyphony": 0.0}, ctx)
    assert list(out) == ["mean_note_length"]
    lengths = np.array([1.0, 0.25, 1.0])
    np.testing.assert_allclose(
        out["mean_note_length"],
        rewards.log_density_ratio(lengths, ctx.match_reference["mean_note_length"], 3.0),
    )
    assert rewards.match_rewards(pieces, {"polyphony": 1.0}, ctx) == {}  # no real values
    with pytest.raises(KeyError, match="unknown statistics"):
        rewards.match_rewards(pieces, {"loudness": 1.0}, ctx)
    reference, left_out = rewards.match_reference(
        [line([60, 62]), line([64]), make_notes([], [], [])], ["mean_note_length", "mean_ioi"], 4
    )
    assert left_out == ["mean_ioi"]  # one piece with two onsets: a single interval
    np.testing.assert_allclose(reference["mean_note_length"][:2], [1.0, 1.0])


def test_score_tokens_adds_the_batch_rewards_to_each_total():
    import types

    from jaxcomposer.finetune import loop as finetune

    pieces = [line([60, 62]), make_notes([60], [0.0], [0.25]), line([64, 65, 67])]
    stub = types.SimpleNamespace(  # row i decodes to pieces[i]
        decode=lambda tokens: types.SimpleNamespace(notes=pieces[int(tokens[1])])
    )
    reference = {"mean_note_length": np.array([0.5, 1.0, 1.0, 2.0])}
    ctx = rewards.RewardContext(match_reference=reference, match_clip=2.0)
    weights = {"in_key": 1.0}
    rows = np.arange(3)[:, None]
    plain = finetune.score_tokens(stub, rows, weights, ctx, key=0)
    matched = finetune.score_tokens(stub, rows, weights, ctx, key=0,
                                    match={"mean_note_length": 0.5, "polyphony": 0.0})  # fmt: skip
    ratio = rewards.log_density_ratio(
        np.array([1.0, 0.25, 1.0]), reference["mean_note_length"], 2.0
    )
    for a, b, r in zip(plain, matched, ratio, strict=True):
        assert b["match_mean_note_length"] == pytest.approx(r)
        assert b["total"] == pytest.approx(a["total"] + 0.5 * r)
        assert "match_polyphony" not in b
