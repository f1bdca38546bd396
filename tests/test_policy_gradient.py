"""The policy-gradient surrogate against the exact gradient, by enumerating every sequence.

Toy policy: vocabulary 3, length 3, one free logit vector per prefix (13 prefixes x 3 tokens),
with a grammar-like mask (token 2 may not follow token 2). The exact objective
J = sum_y pi(y) R(y) - beta/T * sum_y pi(y) (log pi(y) - log pi_0(y)) is computed over all
allowed sequences (the sequence-level KL, not the per-step sum the surrogate uses) and
differentiated with jax.grad; the surrogate's gradient is averaged over M independent batches of
sequences drawn from pi. Tolerance: the Monte Carlo mean of each of the 39 components must lie
within 5 standard errors (sample std / sqrt(M)) of the exact value; for an unbiased estimator
a 5-sigma miss has probability ~6e-7 per component (< 3e-5 for all 39, by the union bound).
The same test rejects the naive estimator that leaves out the KL-to-come score term, so it has
the power to see a bias of that size.
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from conftest import tiny_config

from jaxcomposer.finetune import policy_gradient as pg
from jaxcomposer.tokenizers import EOS, get_tokenizer

V, T, B, M = 3, 3, 4, 40_000
BETA = 0.8
SEQUENCES = np.array(list(itertools.product(range(V), repeat=T)), np.int32)  # (27, 3)


def prefix_index(tokens_NxT: np.ndarray) -> np.ndarray:
    """(N, T): the row of the logit table used at each step (0: empty, 1-3: y0, 4-12: y0 y1)."""
    y = np.asarray(tokens_NxT)
    return np.stack([np.zeros(len(y), int), 1 + y[:, 0], 4 + 3 * y[:, 0] + y[:, 1]], axis=1)


def allowed_mask(tokens_NxT: np.ndarray) -> np.ndarray:
    """bool (N, T, V): token 2 is forbidden right after token 2."""
    allowed = np.ones((len(tokens_NxT), T, V), bool)
    allowed[:, 1:, 2] = tokens_NxT[:, :-1] != 2
    return allowed


def setup():
    rng = np.random.default_rng(0)
    theta = jnp.asarray(rng.normal(size=(13, V)), jnp.float32)
    theta0 = jnp.asarray(rng.normal(size=(13, V)), jnp.float32)
    reward_table = rng.uniform(0, 2, size=len(SEQUENCES)).astype(np.float32)
    return theta, theta0, reward_table


def exact_objective(theta, theta0, reward_table):
    valid = allowed_mask(SEQUENCES)[np.arange(len(SEQUENCES))[:, None], np.arange(T), SEQUENCES]
    keep = valid.all(axis=1)  # sequences the mask allows at every step
    seqs, rewards = SEQUENCES[keep], jnp.asarray(reward_table[keep])
    index, allowed = prefix_index(seqs), jnp.asarray(allowed_mask(seqs))

    def log_prob(table):
        logits = jnp.where(allowed, table[index], -jnp.inf)
        logp = jax.nn.log_softmax(logits, axis=-1)
        return jnp.take_along_axis(logp, seqs[..., None], axis=-1)[..., 0].sum(axis=1)

    logp, logp0 = log_prob(theta), log_prob(theta0)
    p = jnp.exp(logp)
    return jnp.sum(p * rewards) - BETA / T * jnp.sum(p * (logp - logp0)), p, seqs, rewards


def draw(p, seqs, rewards):
    rng = np.random.default_rng(1)
    p = np.asarray(p, np.float64)
    pick = rng.choice(len(seqs), size=(M, B), p=p / p.sum())
    return seqs[pick], rewards[pick]  # (M, B, T), (M, B)


def surrogate_grads(fn, theta, theta0, tokens_MxBxT, rewards_MxB):
    index = prefix_index(tokens_MxBxT.reshape(-1, T)).reshape(M, B, T)
    allowed = allowed_mask(tokens_MxBxT.reshape(-1, T)).reshape(M, B, T, V)

    def one(index_BxT, allowed_BxTxV, tokens_BxT, rewards_B):
        return jax.grad(
            lambda th: fn(th[index_BxT], theta0[index_BxT], tokens_BxT, allowed_BxTxV, rewards_B)
        )(theta)

    return np.asarray(
        jax.jit(jax.vmap(one))(index, allowed, jnp.asarray(tokens_MxBxT), rewards_MxB)
    ).reshape(M, -1)


def naive(logits, ref_logits, tokens, allowed, rewards):
    """Reward term with the same baseline, plus only the pathwise KL gradient (biased)."""
    logp = pg.masked_log_probs(logits, allowed)
    ref = jax.lax.stop_gradient(pg.masked_log_probs(ref_logits, allowed))
    logp_y = jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0].sum(axis=1)
    advantage = rewards - pg.leave_one_out_baseline(rewards)
    kl = pg.step_kl(logp, ref).sum(axis=1)
    return jnp.mean(jax.lax.stop_gradient(advantage) * logp_y - BETA / T * kl)


def z_scores(grads_MxP, exact_P):
    se = grads_MxP.std(axis=0, ddof=1) / np.sqrt(len(grads_MxP))
    return np.abs(grads_MxP.mean(axis=0) - exact_P) / np.maximum(se, 1e-7)


def test_expected_surrogate_gradient_equals_exact_gradient():
    theta, theta0, reward_table = setup()
    exact = np.asarray(
        jax.grad(lambda th: exact_objective(th, theta0, reward_table)[0])(theta)
    ).reshape(-1)
    _, p, seqs, rewards = exact_objective(theta, theta0, reward_table)
    tokens, batch_rewards = draw(p, seqs, np.asarray(rewards))

    def ours(*args):
        return pg.surrogate(*args, BETA)[0]

    grads = surrogate_grads(ours, theta, theta0, tokens, batch_rewards)
    z = z_scores(grads, exact)
    # Forbidden entries (token 2 after 2) get no gradient in either computation.
    assert np.all(z < 5.0), (z.max(), grads.mean(axis=0), exact)
    assert np.abs(exact).max() > 0.05  # the gradient being checked is not trivially 0
    z_naive = z_scores(surrogate_grads(naive, theta, theta0, tokens, batch_rewards), exact)
    assert z_naive.max() > 5.0  # the test sees the bias of leaving out the KL to come


def test_kl_and_its_gradient_vanish_at_the_pretrained_model():
    theta, _, _ = setup()
    rng = np.random.default_rng(2)
    tokens = rng.integers(0, 2, size=(B, T)).astype(np.int32)
    index, allowed = prefix_index(tokens), jnp.asarray(allowed_mask(tokens))
    rewards = jnp.full((B,), 1.5)  # equal rewards: advantages 0, so only the KL term is left

    def objective(th):
        return pg.surrogate(th[index], theta[index], tokens, allowed, rewards, BETA)

    (value, metrics), grad = jax.value_and_grad(objective, has_aux=True)(theta)
    assert float(metrics["kl"]) == 0.0
    assert float(value) == 0.0
    np.testing.assert_allclose(np.asarray(grad), 0.0, atol=1e-7)
    # ... and away from it the same KL term has a gradient.
    _, grad_away = jax.value_and_grad(
        lambda th: pg.surrogate(th[index], 0.5 * theta[index], tokens, allowed, rewards, BETA),
        has_aux=True,
    )(theta)
    assert np.abs(np.asarray(grad_away)).max() > 1e-3


def test_walk_states_matches_the_grammar_walk():
    tokenizer = get_tokenizer(tiny_config().tokenizer)
    rng = np.random.default_rng(3)
    tokens = rng.integers(0, tokenizer.vocab.size, size=(3, 40)).astype(np.int32)
    grammar = tokenizer.grammar
    got = pg.walk_states(
        jnp.asarray(tokens), jnp.full((3,), grammar.bos_state), jnp.asarray(grammar.next_state)
    )
    want = np.stack([grammar.walk(row)[0] for row in tokens])
    np.testing.assert_array_equal(np.asarray(got), want)


def grammar_walk_with_allowed(grammar, row):
    """(states, allowed_TxV): Grammar.walk's states and, token by token, what the table and the
    held-key rule allow (kept by hand from walk's accepted tokens, not from grammar.held_allows)."""
    states, accepted = grammar.walk(row)
    held = np.zeros(grammar.num_keys, bool)
    allowed = []
    for state, token, ok in zip(states, row.tolist(), accepted, strict=True):
        table_ok = grammar.next_state[state] >= 0
        release_ok = (grammar.release < 0) | held[np.maximum(grammar.release, 0)]
        press_ok = (grammar.press < 0) | ~held[np.maximum(grammar.press, 0)]
        allowed.append(table_ok & release_ok & press_ok)
        if ok and grammar.release[token] >= 0:
            held[grammar.release[token]] = False
        elif ok and grammar.press[token] >= 0:
            held[grammar.press[token]] = True
    return states, np.asarray(allowed)


def test_held_key_walk_and_mask_match_the_grammar_walk():
    """Performance tokens (a held-key rule): the jax walk skips what Grammar.walk skips, and the
    policy's mask is what the sampler allowed (table, held keys, no EOS) at every step."""
    from jaxcomposer.tokenizers.grammar import walk_batch

    tokenizer = get_tokenizer(tiny_config(tokenizer={"name": "performance"}).tokenizer)
    grammar = tokenizer.grammar
    assert grammar.press is not None
    rng = np.random.default_rng(5)
    # random tokens with many presses and releases of a few keys, so the rule bites
    v = tokenizer.vocab
    keyed = [v.token(name, i) for name in ("NOTE_ON", "NOTE_OFF") for i in range(3)]
    pool = np.r_[keyed * 6, rng.integers(3, v.size, 30)]
    tokens = rng.choice(pool, size=(4, 60)).astype(np.int32)
    held0 = (jnp.asarray(grammar.press), jnp.asarray(grammar.release),
             jnp.zeros((4, grammar.num_keys), bool))  # fmt: skip
    start = jnp.full((4,), grammar.bos_state)
    states, held_ok = walk_batch(grammar.next_state, jnp.asarray(tokens), start, held0)
    mask = pg.sampler_mask(jnp.asarray(grammar.next_state), states, held_ok)
    bites = 0
    for b, row in enumerate(tokens):
        want_states, want_allowed = grammar_walk_with_allowed(grammar, row)
        want_allowed[:, EOS] = False
        np.testing.assert_array_equal(np.asarray(states[b]), want_states)
        np.testing.assert_array_equal(np.asarray(mask[b]), want_allowed)
        table_only = np.asarray(pg.sampler_mask(jnp.asarray(grammar.next_state), states[b]))
        bites += int((table_only & ~want_allowed).sum())
    assert bites > 0  # the held-key rule forbids tokens the table allows here
