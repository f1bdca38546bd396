"""Training and validation windows cut from a token split, as pure numpy functions.

A split is one int32 stream `tokens` holding every piece as [BOS, ..., EOS] and `offsets` (P+1,)
marking where each piece starts. A window is `seq_len + 1` consecutive tokens of ONE piece:
inputs are the first `seq_len`, targets the last `seq_len` (shifted by one).

Training windows are a pure function of (seed, step): every window start inside a piece is equally
likely (a piece is drawn with probability proportional to its number of window starts, then a start
inside it), a window never crosses into the next piece, and a piece shorter than a window fills one
window padded with PAD (weight 0). Validation windows are seed-independent: each piece is tiled
from its BOS in non-overlapping windows, and `eval_batches * batch_size` tiles evenly spread over
the whole split are kept, so validation losses compare across steps, runs and configs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from jaxcomposer.model import conditioning
from jaxcomposer.music.keys import transpose_key
from jaxcomposer.tokenizers.grammar import START_STATE, Grammar
from jaxcomposer.tokenizers.vocab import PAD

Batch = dict[str, np.ndarray]


def _piece_lengths(offsets: np.ndarray) -> np.ndarray:
    lengths = np.diff(np.asarray(offsets, np.int64))
    if lengths.size == 0 or (lengths < 2).any():
        raise ValueError("a split needs at least one piece, and every piece at least [BOS, EOS]")
    return lengths


def window_counts(offsets: np.ndarray, seq_len: int) -> np.ndarray:
    """Number of distinct training windows (starts) in each piece; at least 1 (padded)."""
    return np.maximum(_piece_lengths(offsets) - seq_len, 1)


def grammar_states(
    tokens: np.ndarray, offsets: np.ndarray, grammar: Grammar, tables_RxV: np.ndarray | None = None
) -> np.ndarray:
    """int32 (R, T): the grammar state before each token, walking each piece from its BOS, for
    each row of `tables_RxV` (each transposition; R = 1 without tables).

    Computed once per split because a window's states depend on the whole piece before it, and
    per shift because states may track pitch (the frame grammar's AFTER_j). Matches
    `Grammar.walk` (a forbidden or untransposable token leaves the state unchanged). Vectorized
    over pieces and shifts: one numpy step per position within a piece.
    """
    tokens = np.asarray(tokens, np.int64)
    offsets = np.asarray(offsets, np.int64)
    vocab_size = grammar.next_state.shape[1]
    tables = np.arange(vocab_size)[None] if tables_RxV is None else np.asarray(tables_RxV)
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")  # longest first: live pieces are a prefix
    starts, lengths = offsets[:-1][order], lengths[order]
    out = np.zeros((len(tables), len(tokens)), np.int32)
    state_RxP = np.full((len(tables), len(starts)), START_STATE, np.int64)
    for k in range(int(lengths.max(initial=0))):
        live = int(np.searchsorted(-lengths, -k, side="left"))  # pieces longer than k
        index = starts[:live] + k
        state = state_RxP[:, :live]
        out[:, index] = state
        moved = tables[:, tokens[index]]
        nxt = np.where(moved >= 0, grammar.next_state[state, np.maximum(moved, 0)], -1)
        state_RxP[:, :live] = np.where(nxt >= 0, nxt, state)
    return out


def _window_index(
    offsets: np.ndarray, pieces_B: np.ndarray, starts_B: np.ndarray, seq_len: int, left_pad: bool
) -> tuple[np.ndarray, np.ndarray]:
    """(index_BxW into the stream, real_BxW) for windows of W = seq_len + 1 tokens of one piece;
    positions past the piece's end (or before its start, with left padding) are not real."""
    lengths = np.diff(offsets)[pieces_B]
    available_B = np.minimum(lengths - starts_B, seq_len + 1)
    # With left padding the real tokens sit at the end, so the last target is a real token.
    shift_B = (seq_len + 1 - available_B) if left_pad else np.zeros_like(available_B)
    rel_BxW = np.arange(seq_len + 1)[None, :] - shift_B[:, None]
    real_BxW = (rel_BxW >= 0) & (rel_BxW < available_B[:, None])
    index_BxW = offsets[pieces_B][:, None] + starts_B[:, None] + np.where(real_BxW, rel_BxW, 0)
    return index_BxW, real_BxW


def _choose_shifts(
    window_BxW: np.ndarray, tables_RxV: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Per window, a uniform row among those that keep all of its tokens in the vocabulary."""
    valid_BxR = (tables_RxV[:, window_BxW] >= 0).all(axis=2).T
    if not valid_BxR.any(axis=1).all():
        raise ValueError("transposition tables: no shift (not even 0) keeps some window valid")
    choice_B = np.floor(rng.random(len(window_BxW)) * valid_BxR.sum(axis=1)).astype(np.int64)
    return np.argmax(np.cumsum(valid_BxR, axis=1) > choice_B[:, None], axis=1)  # choice-th valid


def _assemble(
    tokens: np.ndarray,
    index_BxW: np.ndarray,
    real_BxW: np.ndarray,
    *,
    loss_on_last_only: bool,
    tables_RxV: np.ndarray | None = None,
    rng: np.random.Generator | None = None,
    states_RxT: np.ndarray | None = None,
    labels: dict[str, np.ndarray] | None = None,
    spec: conditioning.Spec | None = None,
) -> Batch:
    window_BxW = np.where(real_BxW, tokens[index_BxW], PAD).astype(np.int32)
    row_B = np.zeros(len(window_BxW), np.int64)
    if tables_RxV is not None:
        row_B = _choose_shifts(window_BxW, tables_RxV, rng)
        window_BxW = tables_RxV[row_B[:, None], window_BxW].astype(np.int32)
    weights_BxL = (real_BxW[:, 1:] & real_BxW[:, :-1]).astype(np.float32)
    if loss_on_last_only:
        weights_BxL[:, :-1] = 0.0
    batch = {
        "inputs_BxL": window_BxW[:, :-1],
        "targets_BxL": window_BxW[:, 1:],
        "weights_BxL": weights_BxL,
    }
    if states_RxT is not None:
        states_RxT = np.asarray(states_RxT).reshape(-1, len(tokens))
        rows = 1 if tables_RxV is None else len(tables_RxV)
        if len(states_RxT) != rows:
            raise ValueError(f"states have {len(states_RxT)} rows; expected {rows} (one per shift)")
        states_BxW = np.where(real_BxW, states_RxT[row_B[:, None], index_BxW], START_STATE)
        # The state before each target is the state after reading every input up to it.
        batch["states_BxL"] = states_BxW[:, 1:].astype(np.int32)
    if spec is not None and spec.dim:
        batch["cond_BxLxC"] = _cond(labels or {}, spec, index_BxW, real_BxW, row_B, tables_RxV)
    return batch


def _cond(labels, spec, index_BxW, real_BxW, row_B, tables_RxV) -> np.ndarray:
    """float32 (B, L, C): the [X; M] vector of each input token; the key label moves with the
    window's transposition (row r of the tables shifts by r - (R-1)/2 semitones)."""
    if "keys" not in labels:
        raise ValueError(
            "the model is conditioned (model.condition) but the dataset has no key labels "
            "(prepared before labels existed): run --mode=prepare again"
        )
    track = lambda name: np.where(real_BxW, labels[name][index_BxW], -1)[:, :-1]
    keys_BxL = track("keys").astype(np.int64)
    if tables_RxV is not None:
        shift_B = row_B - (len(tables_RxV) - 1) // 2
        keys_BxL = transpose_key(keys_BxL, shift_B[:, None])
    styles_BxL = track("styles") if "styles" in labels else None
    return conditioning.vector(spec, keys_BxL, styles_BxL)


def sample_windows(
    tokens: np.ndarray,
    offsets: np.ndarray,
    *,
    seed: int | Sequence[int],
    step: int,
    batch_size: int,
    seq_len: int,
    transpose_tables: np.ndarray | None = None,
    loss_on_last_only: bool = False,
    states: np.ndarray | None = None,
    labels: dict[str, np.ndarray] | None = None,
    spec: conditioning.Spec | None = None,
) -> Batch:
    """The training batch of `step`: a pure function of (seed, step) and the split.

    Returns inputs_BxL / targets_BxL (int32), weights_BxL (float32: 1 where the target is a real
    token of the piece) and, when `states` (from `grammar_states`, with the same tables) is
    given, states_BxL: the grammar state before each target. `transpose_tables` (R, V) from
    `tokenizer.transposition_tables(k)` shifts each window by a random valid amount.
    `loss_on_last_only` keeps weight only on the last target (short pieces are then left-padded
    so that the last target is real). With a conditioning `spec` (dim > 0) and the split's
    `labels` ({'keys': int (T,), 'styles': int (T,)}), cond_BxLxC (float32) holds each input's
    [X; M] vector, its key transposed with the window.
    """
    offsets = np.asarray(offsets, np.int64)
    counts = window_counts(offsets, seq_len)
    seeds = [int(s) for s in np.atleast_1d(seed)]
    rng = np.random.default_rng([*seeds, int(step)])
    draws_B = rng.integers(0, int(counts.sum()), size=batch_size)
    cum = np.cumsum(counts)
    pieces_B = np.searchsorted(cum, draws_B, side="right")
    starts_B = draws_B - (cum[pieces_B] - counts[pieces_B])
    index_BxW, real_BxW = _window_index(offsets, pieces_B, starts_B, seq_len, loss_on_last_only)
    tables = None if transpose_tables is None else np.asarray(transpose_tables)
    return _assemble(
        tokens, index_BxW, real_BxW, loss_on_last_only=loss_on_last_only, tables_RxV=tables,
        rng=rng, states_RxT=states, labels=labels, spec=spec,
    )  # fmt: skip


def validation_tiles(offsets: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(pieces, starts) of the non-overlapping windows that tile each piece from its BOS."""
    lengths = _piece_lengths(offsets)
    per_piece = (lengths - 2) // seq_len + 1  # every target position lies in exactly one tile
    pieces = np.repeat(np.arange(len(lengths)), per_piece)
    first = np.cumsum(per_piece) - per_piece
    starts = (np.arange(len(pieces)) - first[pieces]) * seq_len
    return pieces, starts


def validation_batches(
    tokens: np.ndarray,
    offsets: np.ndarray,
    *,
    batch_size: int,
    seq_len: int,
    num_batches: int,
    loss_on_last_only: bool = False,
    states: np.ndarray | None = None,
    labels: dict[str, np.ndarray] | None = None,
    spec: conditioning.Spec | None = None,
) -> list[Batch]:
    """Fixed, seed-independent validation batches: `num_batches * batch_size` tiles evenly spread
    over the split (all tiles, padded with weight-0 windows, if the split has fewer)."""
    offsets = np.asarray(offsets, np.int64)
    pieces, starts = validation_tiles(offsets, seq_len)
    wanted = num_batches * batch_size
    if len(pieces) > wanted:
        keep = np.linspace(0, len(pieces) - 1, wanted).round().astype(np.int64)
        pieces, starts = pieces[keep], starts[keep]
    index_BxW, real_BxW = _window_index(offsets, pieces, starts, seq_len, loss_on_last_only)
    batch = _assemble(
        np.asarray(tokens),
        index_BxW,
        real_BxW,
        loss_on_last_only=loss_on_last_only,
        states_RxT=states,
        labels=labels,
        spec=spec,
    )
    missing = wanted - len(pieces)
    if missing:
        batch = {
            k: np.concatenate([v, np.zeros((missing, *v.shape[1:]), v.dtype)])
            for k, v in batch.items()
        }
    return [
        {k: v[i * batch_size : (i + 1) * batch_size] for k, v in batch.items()}
        for i in range(num_batches)
    ]
