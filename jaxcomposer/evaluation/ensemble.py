"""Ensembles: mixtures of next-token distributions, token by token, over several models and
over transposed views of each piece.

A view is one model reading the piece transposed by `shift` semitones. Its next-token
distribution, mapped back to the piece's own tokens (token v gets the probability of its
transposition T(v); a token whose transposition leaves the pitch range gets 0), predicts the
piece's next token. The ensemble predicts each token with
    q(v | x_<t) = sum_views p_view(T(v) | T(x_<t)) / sum_v' sum_views p_view(T(v') | T(x_<t)),
the mean over the views valid at t (a view is valid while every token it has read so far could be
transposed), renormalized over the vocabulary. Every term depends on the history alone, tokens
the grammar forbids keep probability 0 (each view applies its training mask), and each q sums to
one: the product of these conditionals is a proper sequence model and its NLL an honest
likelihood. This is the usual per-step averaging of language-model ensembles (equal fixed
weights, members may differ in width or depth), plus test-time averaging over transpositions,
which makes the mixture closer to transposition-equivariant than each model alone.
"""

from __future__ import annotations

import numpy as np


def transposed_piece(tokens: np.ndarray, table_V: np.ndarray, fill: int) -> tuple[np.ndarray, int]:
    """(moved tokens int32, k): the piece with every token mapped through `table_V` (a
    tokenizer's transpose_table; -1 = impossible), tokens from the first impossible one on
    replaced by `fill`; k = that index (len(tokens) when all move). The view predicts
    targets tokens[1:] at positions t < k only (its inputs tokens[:t + 1] all moved)."""
    moved = np.asarray(table_V)[np.asarray(tokens, np.int64)]
    bad = np.flatnonzero(moved < 0)
    k = int(bad[0]) if bad.size else len(tokens)
    moved = moved.astype(np.int32)
    moved[k:] = fill
    return moved, k


def map_back(log_probs_LxV: np.ndarray, table_V: np.ndarray) -> np.ndarray:
    """float64 (L, V) probabilities of the piece's own tokens from a view's log-probabilities
    over transposed tokens: out[:, v] = exp(log_probs[:, table[v]]), 0 where table[v] < 0."""
    table = np.asarray(table_V, np.int64)
    probs = np.exp(np.asarray(log_probs_LxV, np.float64)[:, np.maximum(table, 0)])
    probs[:, table < 0] = 0.0
    return probs


class Mixture:
    """Accumulates views of one piece and scores its targets under their mean, renormalized.

    `add(probs_LxV, valid_L)`: one view's probabilities (float64 (L, V), `map_back`) and which
    positions it predicts (bool (L,)). `scores(tokens)` -> (nll float64 (L,) nats, correct bool
    (L,)). Raises ValueError when some position has no valid view."""

    def __init__(self, length: int, vocab_size: int):
        self.total_LxV = np.zeros((length, vocab_size), np.float64)
        self.count_L = np.zeros(length, np.int64)

    def add(self, probs_LxV: np.ndarray, valid_L: np.ndarray | None = None) -> None:
        valid = np.ones(len(probs_LxV), bool) if valid_L is None else np.asarray(valid_L, bool)
        self.total_LxV += np.where(valid[:, None], probs_LxV, 0.0)
        self.count_L += valid

    def log_probs(self) -> np.ndarray:
        """float64 (L, V): log q, each row normalized over the vocabulary."""
        if np.any(self.count_L == 0):
            raise ValueError("a position no view of the ensemble predicts")
        mass = self.total_LxV.sum(axis=1, keepdims=True)  # the mean's 1/count cancels here
        with np.errstate(divide="ignore"):
            return np.log(self.total_LxV) - np.log(mass)

    def scores(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mixed = self.log_probs()
        targets = np.asarray(tokens[1:], np.int64)
        nll = -mixed[np.arange(targets.size), targets]
        return nll, mixed.argmax(axis=-1) == targets
