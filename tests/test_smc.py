"""Sequential Monte Carlo under constraints (sample/smc.py) against the exact posterior.

A bigram model over a 5-token vocabulary with a 2-state grammar; a row of T = 10 tokens after
a one-token primer with token 3 forced at position 5 and token 1 at position 8. The exact
posterior (marginals and log Z) comes from enumerating all 5^8 rows in float64 numpy; K
independent SMC runs (64 particles each, systematic resampling at ESS < 0.5 N) must match it
within 4 Monte Carlo standard errors over the K runs (plus, for the self-normalised
marginals, their O(1/N) bias bound stated below).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomposer.sample import smc

V, T = 5, 10
FORCED = {5: 3, 8: 1}


def _bigram_table():
    rng = np.random.default_rng(3)
    return (1.5 * rng.standard_normal((V, V))).astype(np.float32)


def _grammar():
    """State 0: tokens 1-4 (4 -> state 1); state 1: tokens 0-3 (-> state 0), 4 forbidden."""
    table = np.full((2, V), -1, np.int32)
    table[0, 1:] = 0
    table[0, 4] = 1
    table[1, :4] = 0
    return table


def bigram_step(variables, tokens_BxL, carry):
    """A bigram model with the step function's signature: logits of the next token from the
    last one; the carry holds nothing the logits need (a dummy (B, 1) leaf to gather)."""
    logits = variables["table"][tokens_BxL]
    return logits, (tokens_BxL[:, -1:].astype(jnp.float32),)


def _exact(table, grammar, primer_token):
    """float64 marginals (T, V) and log Z of the target by enumerating every free row."""
    logp = table - np.log(np.exp(table.astype(np.float64)).sum(-1, keepdims=True))
    free_pos = [t for t in range(T) if t not in FORCED]
    rows = np.array(list(itertools.product(range(V), repeat=len(free_pos))), np.int64)
    x = np.empty((rows.shape[0], T), np.int64)
    x[:, free_pos] = rows
    for t, v in FORCED.items():
        x[:, t] = v
    prev = np.concatenate([np.full((x.shape[0], 1), primer_token), x[:, :-1]], axis=1)
    logw = logp[prev, x].sum(axis=1)
    state = np.zeros(x.shape[0], np.int64)
    ok = np.ones(x.shape[0], bool)
    for t in range(T):
        nxt = grammar[state, x[:, t]]
        ok &= nxt >= 0
        state = np.where(nxt >= 0, nxt, state)
    logw = np.where(ok, logw, -np.inf)
    log_z = np.logaddexp.reduce(logw)
    post = np.exp(logw - log_z)
    marg = np.stack([np.bincount(x[:, t], weights=post, minlength=V) for t in range(T)])
    return marg, log_z


def test_smc_matches_exact_posterior():
    table, grammar = _bigram_table(), _grammar()
    primer_token = 2
    program = smc.Program.from_forced(np.array([FORCED.get(t, -1) for t in range(T)]))
    k, n = 400, 64
    settings = smc.SMCSettings(num_particles=n, ess_threshold=0.5, allow_eos=True)
    result = smc.run_smc(
        {"table": jnp.asarray(table)},
        jnp.full((k, 1), primer_token, jnp.int32),
        jnp.zeros(k, jnp.int32),
        jnp.asarray(grammar),
        jnp.zeros(V, jnp.float32),
        jnp.zeros(k, jnp.float32),
        program.arrays(),
        jax.random.key(0),
        step_fn=bigram_step,
        num_steps=T,
        settings=settings,
    )
    marg, log_z = _exact(table, grammar, primer_token)
    tokens = np.asarray(result.tokens_GxNxT)
    lw = np.asarray(result.log_weights_GxN, np.float64)
    assert np.asarray(result.resampled_GxT).any(), "the test must exercise resampling"
    assert np.asarray(result.finished_GxN).all()
    for t, v in FORCED.items():
        assert (tokens[:, :, t] == v).all()

    # Z: each run's estimate exp(log Z_k) is unbiased for Z; compare the ratio's mean with 1.
    ratio = np.exp(np.asarray(result.log_evidence_G, np.float64) - log_z)
    se = ratio.std(ddof=1) / np.sqrt(k)
    assert abs(ratio.mean() - 1.0) < 4 * se, (ratio.mean(), se)

    # Marginals: per run the self-normalised weighted estimate; their mean over runs against the
    # exact marginal. The estimate carries an O(1/N) bias (bounded here by 1/N = 0.016 per
    # cell, generous for these weights), so the tolerance is 4 SE + 1/N.
    w = np.exp(lw - lw.max(axis=1, keepdims=True))
    w /= w.sum(axis=1, keepdims=True)
    est = np.stack(
        [(w[:, :, None] * (tokens[:, :, t, None] == np.arange(V))).sum(1) for t in range(T)], axis=1
    )  # fmt: skip  (K, T, V)
    mean, se = est.mean(0), est.std(0, ddof=1) / np.sqrt(k)
    err = np.abs(mean - marg)
    assert (err <= 4 * se + 1.0 / n).all(), (err.max(), se.max())


def test_systematic_resampling_keeps_expected_counts():
    lw = jnp.log(jnp.array([[0.1, 0.2, 0.3, 0.4], [1.0, 0.0, 0.0, 0.0]]))
    idx = np.asarray(smc.systematic_resample(jax.random.key(1), lw))
    counts = np.stack([np.bincount(row, minlength=4) for row in idx])
    # systematic resampling gives each particle floor or ceil of N * w copies
    expected = 4 * np.array([[0.1, 0.2, 0.3, 0.4], [1.0, 0, 0, 0]])
    assert (np.abs(counts - expected) < 1).all()


@pytest.mark.parametrize("skip", [0, 1])
def test_program_need_counts_steps(skip):
    ops = smc.free(2) + smc.free_until(4.0, skip) + smc.forced([5, 6, 7])
    program = smc.Program.build(ops)
    assert program.min_steps == 2 + 1 + 3 - skip
    assert program.op_K[-1] == smc.END


def test_close_on_token_with_a_token_set_and_a_budget_matches_enumeration():
    """FREE_UNTIL that closes on token 3 (the marker, skip 1), drawing from a token set without
    token 2, at most 4 tokens, then FORCE(1): the target's Z enumerated exactly (every free
    prefix of 0-3 tokens from {0, 1, 4} the grammar allows, then 3, then 1) against K runs'
    unbiased estimates; every finished particle meets the program."""
    table, grammar = _bigram_table(), _grammar()
    primer_token, marker, budget, steps = 2, 3, 4, 6
    allow = np.ones((2, V), bool)
    allow[1, 2] = False
    ops = smc.free_until(-1.0, skip=1, mask=1, budget=budget) + smc.forced([marker, 1])
    program = smc.Program.build(ops, allow)
    k, n = 400, 16
    result = smc.run_smc(
        {"table": jnp.asarray(table)}, jnp.full((k, 1), primer_token, jnp.int32),
        jnp.zeros(k, jnp.int32), jnp.asarray(grammar), jnp.zeros(V, jnp.float32),
        jnp.zeros(k, jnp.float32), program.arrays(), jax.random.key(4),
        step_fn=bigram_step, num_steps=steps,
        settings=smc.SMCSettings(num_particles=n, allow_eos=True),
    )  # fmt: skip
    logp = table - np.log(np.exp(table.astype(np.float64)).sum(-1, keepdims=True))
    z = 0.0
    for length in range(budget):  # the marker is the (length+1)-th token, within the budget
        for prefix in itertools.product([0, 1, 4], repeat=length):
            state, prev, logw = 0, primer_token, 0.0
            for x in (*prefix, marker, 1):
                if grammar[state, x] < 0:
                    break
                logw += logp[prev, x]
                state, prev = grammar[state, x], x
            else:
                z += np.exp(logw)
    ratio = np.exp(np.asarray(result.log_evidence_G, np.float64) - np.log(z))
    se = ratio.std(ddof=1) / np.sqrt(k)
    assert abs(ratio.mean() - 1.0) < 4 * se, (ratio.mean(), se)
    tokens = np.asarray(result.tokens_GxNxT)
    finished = np.asarray(result.finished_GxN) & np.isfinite(np.asarray(result.log_weights_GxN))
    assert finished.any()
    for row in tokens[finished]:
        at = int(np.argmax(row == marker))
        assert row[at] == marker and at < budget and row[at + 1] == 1
        assert not np.isin(row[:at], [2, marker]).any()
