"""The classifier two-sample test (evaluation/two_sample.py)."""

import numpy as np
import pytest

from jaxcomposer.evaluation import two_sample as ts
from jaxcomposer.music.notes import make_notes


def newton_logistic(x, y, weight, l2, iterations=50):
    """float64 reference: Newton's method on the same objective (numpy only)."""
    x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    params = np.zeros(x1.shape[1])
    penalty = np.full(x1.shape[1], l2)
    penalty[-1] = 0.0
    s = 2 * y - 1
    for _ in range(iterations):
        z = x1 @ params
        p = 1 / (1 + np.exp(s * z))  # sigmoid(-s z)
        grad = -(x1.T @ (weight * s * p)) + penalty * params
        hess = (x1 * (weight * p * (1 - p))[:, None]).T @ x1 + np.diag(penalty)
        params -= np.linalg.solve(hess, grad)
    return params


def test_fit_agrees_with_float64_newton():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    y = (x @ [1.0, -2.0, 0.5, 0.0] + rng.normal(size=30) > 0.3).astype(np.float64)
    weight = rng.uniform(0.5, 1.5, 30)
    weight /= weight.sum()
    reference = newton_logistic(x, y, weight, 0.05)
    got = np.asarray(ts.fit_logistic(x.astype(np.float32), y.astype(np.float32),
                                     weight.astype(np.float32), 0.05, 3000))  # fmt: skip
    np.testing.assert_allclose(got, reference, atol=2e-4)


def test_one_distribution_scores_chance_within_its_spread():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 12)), rng.normal(size=(40, 12))
    result = ts.classifier_two_sample_test(a, b, permutations=20)
    assert abs(result["accuracy"] - 0.5) <= max(2 * result["accuracy_std"], 0.1)
    assert result["permutation_p"] > 0.05


def test_clearly_different_distributions_score_near_one():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(40, 12)), rng.normal(size=(40, 12)) + np.r_[6.0, np.zeros(11)]
    result = ts.classifier_two_sample_test(a, b, permutations=20)
    assert result["accuracy"] > 0.95
    assert result["binomial_p"] < 1e-6 and result["permutation_p"] == pytest.approx(1 / 21)
    unequal = ts.classifier_two_sample_test(a, b[:25])
    assert unequal["accuracy"] > 0.95 and np.isnan(unequal["binomial_p"])  # chance is not 1/2


def test_folds_are_stratified_and_each_piece_tested_once():
    labels = np.r_[np.ones(13), np.zeros(7)]
    folds = ts.stratified_folds(labels, 5, 3, seed=0)
    assert folds.shape == (3, 20)
    for row in folds:
        for f in range(5):
            in_fold = row == f
            assert labels[in_fold].sum() in (2, 3) and (1 - labels[in_fold]).sum() in (1, 2)


def test_too_few_pieces_gives_nan_with_a_reason():
    result = ts.classifier_two_sample_test(np.zeros((1, 3)), np.zeros((5, 3)))
    assert np.isnan(result["accuracy"]) and "2 pieces" in result["reason"]


def test_features_are_transposition_invariant_and_finite():
    pitch = [60, 64, 67, 72, 62, 65, 69, 74, 59, 62, 67, 74, 60, 64, 67, 72]
    start = [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    piece = make_notes(pitch, start, np.asarray(start) + 1.0)
    up = make_notes(np.asarray(pitch) + 5, start, np.asarray(start) + 1.0)
    f, g = ts.piece_features(piece), ts.piece_features(up)
    assert f.shape == (len(ts.FEATURE_NAMES),) and np.all(np.isfinite(f))
    np.testing.assert_allclose(f, g)
    assert np.all(np.isfinite(ts.piece_features(make_notes([], [], []))))


def test_groups_stay_in_one_fold_and_leakage_is_caught():
    # 6 "pieces" of real music, 8 excerpts each, every piece with its own offset in feature
    # space; the "samples" are drawn from the same mixture of offsets but from other pieces.
    rng = np.random.default_rng(3)
    centres = rng.normal(0.0, 3.0, size=(12, 16))
    b = np.concatenate([centres[g] + 0.1 * rng.normal(size=(8, 16)) for g in range(6)])
    a = np.concatenate([centres[g] + 0.1 * rng.normal(size=(8, 16)) for g in range(6, 12)])
    groups_a, groups_b = np.repeat(np.arange(6), 8), np.repeat(np.arange(6), 8)
    folds = ts.stratified_folds(np.r_[np.ones(48), np.zeros(48)], 3, 4, seed=1,
                                groups_N=np.r_[groups_a, 6 + groups_b])  # fmt: skip
    for row in folds:  # every piece's excerpts share one fold
        assert all(len(set(row[g * 8 : g * 8 + 8])) == 1 for g in range(12))
    with pytest.raises(ValueError, match="both classes"):
        ts.stratified_folds(np.r_[1, 0], 2, 1, seed=0, groups_N=np.r_[0, 0])
    grouped = ts.classifier_two_sample_test(a, b, groups_a=groups_a, groups_b=groups_b,
                                            folds=3, permutations=19, seed=0)  # fmt: skip
    assert grouped["groups_b"] == 6 and grouped["folds"] == 3 and np.isnan(grouped["binomial_p"])
    # split by excerpt, the classifier learns each piece's centre from its other excerpts
    # (accuracy near 1); split by piece it cannot tell two draws of one mixture apart as well
    leaky = ts.classifier_two_sample_test(a, b, folds=3, seed=0)
    assert leaky["accuracy"] > 0.9
    assert grouped["accuracy"] < leaky["accuracy"] - 0.2
