"""Per-token negative log-likelihood of whole pieces, with the LSTM state carried across windows.

A long piece is one sequence: it is cut into windows of the training length only to bound
memory, and the carry of one window starts the next, so the result equals one long scan.
Pieces are batched by length; padding has weight 0. The grammar mask is applied exactly as in
training (`config.train.grammar_mask_loss`): both use model/loss.py's masked_token_nll.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxcomposer.model.loss import allowed_tokens, masked_log_probs, masked_token_nll
from jaxcomposer.tokenizers.grammar import Grammar
from jaxcomposer.tokenizers.vocab import PAD


@functools.partial(jax.jit, static_argnames=("step_fn", "with_log_probs"))
def _window(
    variables, carry, inputs_BxL, targets_BxL, states_BxL, next_state_SxV, cond_BxLxC=None, *,
    step_fn, with_log_probs=False,
):  # fmt: skip
    extra = () if cond_BxLxC is None else (cond_BxLxC,)  # step functions without M take 3
    logits, carry = step_fn(variables, inputs_BxL, carry, *extra)
    allowed = None if next_state_SxV is None else allowed_tokens(next_state_SxV, states_BxL)
    nll, correct, _ = masked_token_nll(logits, targets_BxL, allowed)
    if not with_log_probs:
        return carry, nll, correct, None
    # For mixtures: the grammar's mask alone, so the distribution never depends on the target.
    return carry, nll, correct, masked_log_probs(logits, targets_BxL, allowed, keep_target=False)[0]


def _batches(pieces: list[np.ndarray], batch_size: int) -> Iterator[list[int]]:
    order = np.argsort([-p.size for p in pieces], kind="stable")  # similar lengths together
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size].tolist()


def piece_token_nll(
    variables,
    step_fn: Callable,
    pieces: list[np.ndarray],
    *,
    window: int,
    batch_size: int,
    grammar: Grammar | None = None,
    progress: Callable[[int], None] | None = None,
    conds: list[np.ndarray] | None = None,
    log_probs: bool = False,
) -> list[tuple[np.ndarray, ...]]:
    """For each piece ([BOS, ..., EOS]) the NLL (nats, float64) and correctness (bool) of each
    of its targets tokens[1:], predicted from all tokens before it; with `log_probs` also the
    whole next-token distribution at each target under the grammar's mask alone (a target the
    grammar forbids is not kept, see model/loss.py), float32 (len - 1, V) nats.
    `conds[i]` float32 (len - 1, C): the [X; M] vector of each input token of piece i, for
    conditioned models."""
    next_state = None if grammar is None else jnp.asarray(grammar.next_state)
    results: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(pieces)
    for ids in _batches(pieces, batch_size):
        longest = max(pieces[i].size for i in ids) - 1
        length = -(-longest // window) * window
        inputs = np.full((batch_size, length), PAD, np.int32)
        targets = np.full((batch_size, length), PAD, np.int32)
        states = np.zeros((batch_size, length), np.int32)
        cond = None
        if conds is not None:
            cond = np.zeros((batch_size, length, conds[0].shape[-1]), np.float32)
        for row, i in enumerate(ids):
            if cond is not None:
                cond[row, : pieces[i].size - 1] = conds[i]
            body = pieces[i]
            inputs[row, : body.size - 1] = body[:-1]
            targets[row, : body.size - 1] = body[1:]
            if grammar is not None:
                states[row, : body.size - 1] = grammar.walk(body[1:])[0]
        carry, nll_parts, correct_parts, dist_parts = None, [], [], []
        for start in range(0, length, window):
            cut = slice(start, start + window)
            carry, nll, correct, dist = _window(
                variables,
                carry,
                inputs[:, cut],
                targets[:, cut],
                states[:, cut],
                next_state,
                None if cond is None else cond[:, cut],
                step_fn=step_fn,
                with_log_probs=log_probs,
            )
            nll_parts.append(np.asarray(nll))
            correct_parts.append(np.asarray(correct))
            if log_probs:
                dist_parts.append(np.asarray(dist))
        nll_all = np.concatenate(nll_parts, axis=1)
        correct_all = np.concatenate(correct_parts, axis=1)
        dist_all = np.concatenate(dist_parts, axis=1) if log_probs else None
        for row, i in enumerate(ids):
            n = pieces[i].size - 1
            results[i] = (nll_all[row, :n].astype(np.float64), correct_all[row, :n])
            if dist_all is not None:
                results[i] += (dist_all[row, :n],)
        if progress:
            progress(len(ids))
    return results  # type: ignore[return-value]


def sliding_window_nll(
    variables,
    step_fn: Callable,
    pieces: list[np.ndarray],
    *,
    window: int,
    batch_size: int,
    progress: Callable[[int], None] | None = None,
    log_probs: bool = False,
) -> list[tuple[np.ndarray, ...]]:
    """For models that predict only the token after a fixed window (the original's): each target
    is predicted from the `window` tokens before it, left-padded with PAD at a piece's start.
    Returns what `piece_token_nll` returns."""
    results = []
    for body in pieces:
        padded = np.concatenate([np.full(window - 1, PAD, np.int32), body.astype(np.int32)])
        index = np.arange(body.size - 1)[:, None] + np.arange(window)[None, :]
        windows, targets = padded[index], body[1:]
        nll_parts, correct_parts, dist_parts = [], [], []
        for start in range(0, windows.shape[0], batch_size):
            chunk = windows[start : start + batch_size]
            pad_rows = batch_size - chunk.shape[0]  # keep one shape: one compile
            chunk = np.pad(chunk, ((0, pad_rows), (0, 0)))
            goal = np.pad(targets[start : start + batch_size], (0, pad_rows))[:, None]
            _, nll, correct, dist = _window(
                variables, None, chunk, goal, goal * 0, None, step_fn=step_fn,
                with_log_probs=log_probs,
            )  # fmt: skip
            keep = batch_size - pad_rows
            nll_parts.append(np.asarray(nll)[:keep, -1])
            correct_parts.append(np.asarray(correct)[:keep, -1])
            if log_probs:
                dist_parts.append(np.asarray(dist)[:keep, -1])
        result = (np.concatenate(nll_parts).astype(np.float64), np.concatenate(correct_parts))
        results.append(result + ((np.concatenate(dist_parts),) if log_probs else ()))
        if progress:
            progress(1)
    return results
