"""Classifier two-sample test: can a small classifier tell generated pieces from real ones?

Lopez-Paz & Oquab 2017 ("Revisiting classifier two-sample tests", ICLR): train a classifier to
separate two samples and score it on pieces it was not trained on; held-out accuracy near 0.5
means the two sets are indistinguishable to it, near 1.0 means they differ. Here:

- each piece becomes a vector of key-invariant features (`piece_features`, FEATURE_NAMES) taken
  from its first bars, so the classifier sees harmony, melody, rhythm and texture, never the key
  or the register a piece happens to be in;
- the classifier is L2-regularised logistic regression written in JAX, fitted full-batch by
  Nesterov's accelerated gradient with adaptive restart (O'Donoghue & Candes 2015) at step 1/L,
  L the loss's exact gradient Lipschitz bound; features are standardised with the mean and std
  of the training fold only;
- repeated stratified k-fold: in each repeat every piece is tested exactly once, by a model that
  did not see it, so no piece is ever in both folds of a fit; the score of a repeat is its
  balanced accuracy (mean of the two per-class accuracies, so chance is 0.5 whatever the class
  sizes), the loss weights the two classes equally;
- the p-value is a permutation test (labels shuffled, the whole repeated k-fold rerun) when
  `permutations` > 0, and, for two sets of equal size, a one-sided binomial test of the first
  repeat's correct count against Binomial(n, 1/2) (Lopez-Paz & Oquab's test, approximate
  since k-fold scores share training data).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomposer.evaluation import musicstats
from jaxcomposer.music import keys
from jaxcomposer.music.notes import Notes

MELODIC_BIN_EDGES = (0, 1, 2, 3, 4, 5, 6, 8, 13)  # |semitones| bins [e_i, e_i+1), last open
MELODIC_BIN_LABELS = ("0", "1", "2", "3", "4", "5", "6-7", "8-12", "13+")
FEATURE_NAMES = (
    *(f"vertical_{label}" for label in musicstats.VERTICAL_CLASS_LABELS),
    *(f"top_voice_step_{label}" for label in MELODIC_BIN_LABELS),
    *(f"pc_above_tonic_{d}" for d in range(12)),
    "minor_mode",
    *(f"note_length_{label}" for label in musicstats.NOTE_LENGTH_BIN_LABELS),
    "polyphony",
    "onsets_per_beat",
    "mean_note_length",
    "pitch_range",
    "pitch_class_entropy",
    "scale_consistency",
    "empty_beat_rate",
    "parallel_perfect_rate",
    "chord_share",
)


def _shares(counts: np.ndarray) -> np.ndarray:
    counts = np.asarray(counts, np.float64)
    return counts / counts.sum() if counts.sum() else np.zeros_like(counts)


def piece_features(notes: Notes, *, steps_per_beat: int = 4) -> np.ndarray:
    """float64[len(FEATURE_NAMES)] key-invariant features of one piece (drums ignored):

    vertical interval-class shares (musicstats.vertical_interval_counts); the top voice's
    melodic steps (|semitones| between the highest sounding pitches of consecutive onsets, in
    MELODIC_BIN_LABELS bins, as shares); the duration-weighted pitch-class shares rotated so that
    index 0 is the tonic of keys.estimate_key, with a 0/1 minor flag; note-length bin shares;
    polyphony, onsets per beat, mean note length, pitch range and the other piece_stats pitch
    figures; the parallel fifth/octave rate and the chord share. Undefined values (NaN, e.g. no
    vertical pair) are 0, so every piece gives a finite vector. Transposing a piece leaves the
    vector unchanged (up to the key estimate's choice)."""
    notes = notes[~notes.is_drum]
    vertical = _shares(musicstats.vertical_interval_counts(notes, steps_per_beat))
    sounding, _ = musicstats.onset_sonorities(notes, steps_per_beat)
    top = 127 - np.argmax(sounding[:, ::-1], axis=1) if len(sounding) else np.zeros(0, np.int64)
    steps = np.abs(np.diff(top))
    melodic = _shares(np.bincount(np.searchsorted(MELODIC_BIN_EDGES, steps, side="right") - 1,
                                  minlength=len(MELODIC_BIN_LABELS)))  # fmt: skip
    key, _ = keys.estimate_key(notes)
    pcs = np.roll(_shares(keys.pitch_class_weights(notes)), -(key % 12))
    lengths = _shares(musicstats.note_length_histogram(notes)[0])
    stats = musicstats.piece_stats(notes, steps_per_beat=steps_per_beat)
    span = float(notes.end.max() - notes.start.min()) if len(notes) else 0.0
    scalars = [
        stats["polyphony"],
        len(sounding) / span if span > 0 else 0.0,
        stats["mean_note_length"],
        stats["pitch_range"],
        stats["pitch_class_entropy"],
        stats["scale_consistency"],
        stats["empty_beat_rate"],
        musicstats.parallel_perfect_rate(notes, steps_per_beat),
        musicstats.chord_share(notes, steps_per_beat),
    ]
    out = np.concatenate([vertical, melodic, pcs, [float(key >= 12)], lengths, scalars])
    return np.nan_to_num(out.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def stratified_folds(
    labels_N: np.ndarray, folds: int, repeats: int, seed: int, groups_N: np.ndarray | None = None
) -> np.ndarray:
    """int64[repeats, N]: the test fold of each piece in each repeat. Within each class the
    pieces are shuffled (numpy PCG64 seeded by `seed`) and dealt round-robin to the folds, so
    every fold holds floor or ceil of each class's share (of its groups, when groups are
    given). With `groups_N` (int[N], e.g. the
    piece each excerpt was cut from; one class per group) whole groups are dealt instead, so no
    group is split between a training and a test fold (GroupKFold in scikit-learn's terms).
    Raises ValueError when a group holds both classes."""
    rng = np.random.default_rng(seed)
    labels_N = np.asarray(labels_N)
    groups_N = np.arange(len(labels_N)) if groups_N is None else np.asarray(groups_N)
    names, group_of = np.unique(groups_N, return_inverse=True)
    group_label = np.zeros(len(names), labels_N.dtype)
    group_label[group_of] = labels_N
    if np.any(group_label[group_of] != labels_N):
        raise ValueError("a group holds pieces of both classes")
    out = np.zeros((repeats, len(labels_N)), np.int64)
    for r in range(repeats):
        offset, fold_of_group = 0, np.zeros(len(names), np.int64)
        for c in np.unique(group_label):
            members = rng.permutation(np.flatnonzero(group_label == c))
            fold_of_group[members] = (np.arange(len(members)) + offset) % folds
            offset += len(members)  # the next class continues the deal: folds stay even
        out[r] = fold_of_group[group_of]
    return out


def _standardise(x_NxF, train_N):
    w = train_N / train_N.sum()
    mean = w @ x_NxF
    std = jnp.sqrt(w @ (x_NxF - mean) ** 2)
    return (x_NxF - mean) / jnp.where(std > 1e-9, std, 1.0)


def _class_weights(y_N, train_N):
    """Per-piece loss weights: each class's training pieces sum to 1/2 (balanced loss)."""
    pos = (y_N * train_N).sum()
    neg = ((1 - y_N) * train_N).sum()
    return train_N * jnp.where(y_N > 0, 0.5 / jnp.maximum(pos, 1), 0.5 / jnp.maximum(neg, 1))


def logistic_objective(params, x_NxF, y_N, weight_N, l2):
    """sum_i weight_i * log(1 + exp(-s_i z_i)) + l2/2 |w|^2, z = x w + b, s = 2y - 1 (bias not
    penalised). weight sums to 1."""
    w, b = params[:-1], params[-1]
    z = x_NxF @ w + b
    return jnp.sum(weight_N * jax.nn.softplus(-(2 * y_N - 1) * z)) + 0.5 * l2 * jnp.sum(w * w)


def fit_logistic(x_NxF, y_N, weight_N, l2: float, steps: int):
    """float32[F + 1] (weights then bias) minimising `logistic_objective`, by Nesterov's
    accelerated gradient with gradient-based adaptive restart, step 1/L where L = l2 + the top
    eigenvalue of X1' diag(weight) X1 / 4 (X1 = x with a column of ones), which bounds the
    objective's Hessian. jit/vmap-able."""
    x1 = jnp.concatenate([x_NxF, jnp.ones((x_NxF.shape[0], 1), x_NxF.dtype)], axis=1)
    lipschitz = 0.25 * jnp.linalg.eigvalsh((x1 * weight_N[:, None]).T @ x1)[-1] + l2
    grad = jax.grad(logistic_objective)

    def step(_, state):
        x, x_prev, k = state
        y = x + (k - 1.0) / (k + 2.0) * (x - x_prev)
        g = grad(y, x_NxF, y_N, weight_N, l2)
        x_new = y - g / lipschitz
        restart = jnp.dot(g, x_new - x) > 0  # momentum points uphill: drop it
        return x_new, x, jnp.where(restart, 1.0, k + 1.0)

    start = jnp.zeros(x_NxF.shape[1] + 1, x_NxF.dtype)
    params, _, _ = jax.lax.fori_loop(0, steps, step, (start, start, jnp.asarray(1.0)))
    return params


def _fold_scores(x_NxF, y_N, test_N, l2, steps):
    """(correct positives, correct negatives) on the test pieces of one fold."""
    train_N = 1.0 - test_N
    xs = _standardise(x_NxF, train_N)
    params = fit_logistic(xs, y_N, _class_weights(y_N, train_N), l2, steps)
    correct = ((xs @ params[:-1] + params[-1] > 0) == (y_N > 0)) * test_N
    return jnp.sum(correct * y_N), jnp.sum(correct * (1 - y_N))


_all_fold_scores = jax.jit(
    jax.vmap(_fold_scores, in_axes=(None, 0, 0, None, None)), static_argnums=(4,)
)


def _balanced_accuracies(x_NxF, labels_PxN, folds_PxRxN, n_folds, l2, steps) -> np.ndarray:
    """float64[P, R]: balanced accuracy of each repeat, for P label vectors (P - 1 permuted)."""
    p, r, n = folds_PxRxN.shape
    tests = (folds_PxRxN[:, :, None, :] == np.arange(n_folds)[None, None, :, None])
    ys = np.broadcast_to(labels_PxN[:, None, None, :], tests.shape)
    pos, neg = jax.device_get(
        _all_fold_scores(
            jnp.asarray(x_NxF, jnp.float32), jnp.asarray(ys.reshape(-1, n), jnp.float32),
            jnp.asarray(tests.reshape(-1, n), jnp.float32), l2, steps,
        )
    )  # fmt: skip
    n_pos = labels_PxN.sum(axis=1)[:, None]
    n_neg = n - n_pos
    pos = np.asarray(pos, np.float64).reshape(p, r, n_folds).sum(axis=2)
    neg = np.asarray(neg, np.float64).reshape(p, r, n_folds).sum(axis=2)
    return 0.5 * (pos / n_pos + neg / n_neg), pos + neg


def binomial_p_value(correct: int, n: int) -> float:
    """P(X >= correct) for X ~ Binomial(n, 1/2), exactly."""
    return float(sum(math.comb(n, k) for k in range(int(correct), n + 1)) / 2**n)


def classifier_two_sample_test(
    features_a_AxF: np.ndarray,
    features_b_BxF: np.ndarray,
    *,
    folds: int = 5,
    repeats: int = 10,
    l2: float = 0.1,
    steps: int = 400,
    permutations: int = 0,
    seed: int = 0,
    groups_a: np.ndarray | None = None,
    groups_b: np.ndarray | None = None,
) -> dict:
    """Repeated stratified k-fold logistic-regression two-sample test of set A against set B
    (rows = pieces, float features, e.g. `piece_features`). `groups_a`/`groups_b` (int per row;
    default: every row its own group) name rows that must share a fold, such as excerpts of
    one piece: folds and the permutation null then move whole groups, and the fold count is
    capped by the groups of the smaller set. Returns a dict: accuracy (mean
    balanced held-out accuracy over repeats), accuracy_std (std over repeats), accuracy_min/max,
    binomial_p (first repeat; NaN unless the sets have equal sizes and every row is its own
    group), permutation_p (None unless permutations > 0: (1 + #null >= obs) /
    (1 + permutations); with groups the null is only approximate when group sizes differ
    much), n_a, n_b, groups_a, groups_b, folds, repeats, l2, features. With fewer than 2 groups
    in a set the accuracy is NaN and `reason` says why. Folds are min(folds, groups of A,
    groups of B).
    Raises ValueError when the two sets have different feature counts."""
    a, b = np.asarray(features_a_AxF, np.float64), np.asarray(features_b_BxF, np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"feature arrays must be (pieces, F) with one F, got {a.shape}, {b.shape}")
    out = dict(n_a=len(a), n_b=len(b), repeats=repeats, l2=l2, features=a.shape[1])
    ga = np.arange(len(a)) if groups_a is None else np.unique(groups_a, return_inverse=True)[1]
    gb = np.arange(len(b)) if groups_b is None else np.unique(groups_b, return_inverse=True)[1]
    if len(ga) != len(a) or len(gb) != len(b):
        raise ValueError("groups_a/groups_b need one group per row")
    n_ga, n_gb = int(ga.max(initial=-1)) + 1, int(gb.max(initial=-1)) + 1
    groups = np.concatenate([ga, n_ga + gb])  # the two sets never share a group
    out.update(groups_a=n_ga, groups_b=n_gb)
    k = min(folds, n_ga, n_gb)
    out["folds"] = k
    nan = float("nan")
    if k < 2:
        return {**out, "accuracy": nan, "accuracy_std": nan, "accuracy_min": nan,
                "accuracy_max": nan, "binomial_p": nan, "permutation_p": None,
                "reason": "each set needs at least 2 pieces (groups)"}  # fmt: skip
    x = np.concatenate([a, b])
    labels = np.concatenate([np.ones(len(a)), np.zeros(len(b))])
    group_labels = np.concatenate([np.ones(n_ga), np.zeros(n_gb)])
    rng = np.random.default_rng(seed)
    # the null moves whole groups between the classes, as the folds do
    all_labels = np.stack([labels] + [rng.permutation(group_labels)[groups]
                                      for _ in range(permutations)])  # fmt: skip
    all_folds = np.stack(
        [stratified_folds(y, k, repeats, seed + 1 + i, groups) for i, y in enumerate(all_labels)]
    )
    balanced, correct = _balanced_accuracies(x, all_labels, all_folds, k, l2, steps)
    observed = balanced[0]
    # against Binomial(n, 1/2) only when the classes are equal (else chance is not 1/2) and
    # every row is its own group (excerpts of one piece are not independent trials)
    independent = len(a) == len(b) and n_ga + n_gb == len(x)
    binomial = binomial_p_value(int(round(correct[0, 0])), len(x)) if independent else nan
    out.update(
        accuracy=float(observed.mean()),
        accuracy_std=float(observed.std()),
        accuracy_min=float(observed.min()),
        accuracy_max=float(observed.max()),
        binomial_p=binomial,
        permutation_p=None,
    )
    if permutations:
        null = balanced[1:].mean(axis=1)
        as_large = int(np.sum(null >= observed.mean() - 1e-12))
        out["permutation_p"] = float((1 + as_large) / (1 + len(null)))
    return out


def first_bars(notes: Notes, time_signatures, bars: int) -> Notes:
    """The notes of the first `bars` bars (from beat 0, each bar as long as the time signature
    in force, 4/4 where none is given; tokenizers.geometry.bar_lines_of), each note ended at the
    cut."""
    from jaxcomposer.sample.bars import MAX_BAR_BEATS, cut_at_beat
    from jaxcomposer.tokenizers.geometry import bar_lines_of

    meters = tuple(sorted(time_signatures, key=lambda ts: ts.beat))
    end = float(bar_lines_of(meters, bars * MAX_BAR_BEATS)[bars])
    return cut_at_beat(notes, end)


def generated_vs_real(
    generated: list[Notes],
    held_out: list[Notes],
    other_real: list[Notes],
    *,
    steps_per_beat: int = 4,
    permutations: int = 100,
    seed: int = 0,
) -> dict:
    """The report's test: generated pieces against held-out real pieces, and the control: the
    held-out pieces pooled with `other_real` (e.g. training pieces, as many as there are
    generated ones where available) and split at random into two halves, tested the same way.
    All pieces already cut to the same length. Returns {"test": ..., "control": ...,
    "feature_names": FEATURE_NAMES} with classifier_two_sample_test dicts."""
    feats = [np.stack([piece_features(n, steps_per_beat=steps_per_beat) for n in pieces])
             if pieces else np.zeros((0, len(FEATURE_NAMES))) for pieces in
             (generated, held_out, other_real)]  # fmt: skip
    test = classifier_two_sample_test(feats[0], feats[1], permutations=permutations, seed=seed)
    pool = np.concatenate([feats[1], feats[2]])
    order = np.random.default_rng(seed + 7).permutation(len(pool))
    half = len(pool) // 2
    control = classifier_two_sample_test(
        pool[order[:half]], pool[order[half : 2 * half]], permutations=permutations, seed=seed
    )
    return {"test": test, "control": control, "feature_names": list(FEATURE_NAMES)}


def describe(result: dict) -> str:
    """One line: accuracy ± std (p-values) of one classifier_two_sample_test result."""
    if not math.isfinite(result["accuracy"]):
        return f"n/a ({result.get('reason', '')})"
    perm, binomial = result["permutation_p"], result["binomial_p"]
    return (
        f"{result['accuracy']:.3f} ± {result['accuracy_std']:.3f} "
        f"({result['n_a']} vs {result['n_b']} pieces, {result['folds']}-fold x "
        f"{result['repeats']}"
        + (f"; binomial p {binomial:.2g}" if math.isfinite(binomial) else "")
        + (f", permutation p {perm:.2g}" if perm is not None else "")
        + ")"
    )
