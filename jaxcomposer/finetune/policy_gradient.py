"""The pure policy-gradient loss of feedback fine-tuning, with an exact per-step KL penalty.

Objective (maximised), for sequences y = y_1..y_T sampled from the policy pi_theta:

    J(theta) = E_y[R(y)] - beta * E_y[ sum_t KL_t(y_<t) ] / T,
    KL_t(y_<t) = KL( pi(.|y_<t) || pi_0(.|y_<t) ), summed exactly over the vocabulary,

where pi_0 is the frozen pretrained model and both distributions are renormalised over the
tokens the grammar (and the sampler's EOS rule) allows at step t, i.e. exactly the distribution
the sampler draws from. E_y[sum_t KL_t] is the sequence-level KL(pi || pi_0). This is the
KL-regularised reward fine-tuning of Jaques et al. 2017 (Sequence Tutor / RL Tuner), whose
pretrained-model term is the paper's "alpha Delta W" anchor (section 8.2); here it is a KL
to the pretrained model instead of a Q-learning reward.

Gradient (score function with causality): for one sampled y,

    g = (R - b) * sum_s grad log pi(y_s|y_<s)
        - (beta/T) * sum_s C_s * grad log pi(y_s|y_<s)      C_s = sum_{t>s} KL_t (KL to come)
        - (beta/T) * sum_t grad KL_t                         (the exact KL's own gradient)

is an unbiased estimate of grad J when the baseline b does not depend on y. The batch baseline
is the leave-one-out mean of the other sequences' rewards (Kool et al. 2019), which keeps it
unbiased (the plain batch mean including y would shrink the reward term by 1 - 1/B).
`surrogate` returns a scalar whose gradient is the batch mean of g; tests/test_finetune.py checks
its expectation against the exact gradient of J by enumerating every sequence of a toy model.
At theta = theta_0 every KL_t is 0 and so is its gradient (KL is minimal there).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxcomposer.model.loss import MASKED_LOGIT, allowed_tokens
from jaxcomposer.tokenizers.grammar import walk_batch
from jaxcomposer.tokenizers.vocab import EOS


def walk_states(tokens_BxT: jax.Array, start_B: jax.Array, next_state_SxV: jax.Array) -> jax.Array:
    """int32 (B, T): the grammar state before each token (a forbidden token leaves the state
    unchanged, as in `Grammar.walk` and the sampler): tokenizers/grammar.walk_batch's table walk."""
    return walk_batch(next_state_SxV, tokens_BxT, start_B)[0]


def sampler_mask(
    next_state_SxV: jax.Array, states_BxT: jax.Array, held_ok_BxTxV: jax.Array | None = None
) -> jax.Array:
    """bool (B, T, V): what the sampler may draw at each step (grammar on, EOS masked, and where
    the grammar has a held-key rule, `held_ok_BxTxV` from grammar.walk_batch)."""
    allowed = allowed_tokens(next_state_SxV, states_BxT)
    if held_ok_BxTxV is not None:
        allowed = allowed & held_ok_BxTxV
    return allowed.at[..., EOS].set(False)


def masked_log_probs(logits_BxTxV: jax.Array, allowed_BxTxV: jax.Array | None) -> jax.Array:
    """float32 (B, T, V): log-softmax over the allowed tokens (forbidden ones ~ MASKED_LOGIT)."""
    logits = logits_BxTxV.astype(jnp.float32)
    if allowed_BxTxV is not None:
        logits = jnp.where(allowed_BxTxV, logits, MASKED_LOGIT)
    return jax.nn.log_softmax(logits, axis=-1)


def step_kl(logp_BxTxV: jax.Array, ref_logp_BxTxV: jax.Array) -> jax.Array:
    """float32 (B, T): KL(pi || pi_0) in nats at each step, exactly over the vocabulary.
    Forbidden tokens have probability exp(MASKED_LOGIT) = 0 under both, so they add nothing."""
    return jnp.sum(jnp.exp(logp_BxTxV) * (logp_BxTxV - ref_logp_BxTxV), axis=-1)


def leave_one_out_baseline(rewards_B: jax.Array) -> jax.Array:
    """(B,): the mean reward of the other sequences of the batch (0 for a batch of one)."""
    count = rewards_B.shape[0]
    if count < 2:
        return jnp.zeros_like(rewards_B)
    return (jnp.sum(rewards_B) - rewards_B) / (count - 1)


def surrogate(
    logits_BxTxV: jax.Array,
    ref_logits_BxTxV: jax.Array,
    tokens_BxT: jax.Array,
    allowed_BxTxV: jax.Array | None,
    rewards_B: jax.Array,
    beta: float,
) -> tuple[jax.Array, dict]:
    """(S, metrics): grad S is the batch mean of the unbiased estimate of grad J (module doc).

    `logits_BxTxV[:, t]` is the policy's prediction of `tokens_BxT[:, t]` (so the inputs were
    [start, y_1 .. y_{T-1}]); `ref_logits_BxTxV` the pretrained model's (no gradient flows into
    it); `allowed_BxTxV` the sampler's mask (None = every token); `rewards_B` the sequences'
    rewards (reward units); `beta` reward units per nat/token of KL. Metrics (float32 scalars):
    reward, kl (nats/token, the estimate of KL(pi||pi_0)/T), logp (nats/token of the samples).
    """
    steps = tokens_BxT.shape[1]
    logp = masked_log_probs(logits_BxTxV, allowed_BxTxV)
    ref_logp = jax.lax.stop_gradient(masked_log_probs(ref_logits_BxTxV, allowed_BxTxV))
    logp_y_BxT = jnp.take_along_axis(logp, tokens_BxT[..., None], axis=-1)[..., 0]
    kl_BxT = step_kl(logp, ref_logp)
    # KL still to come after choosing token s: the KL of steps t > s (they depend on y_s).
    to_come_BxT = jnp.cumsum(kl_BxT[:, ::-1], axis=1)[:, ::-1] - kl_BxT
    rewards_B = jnp.asarray(rewards_B, jnp.float32)
    advantage_B = rewards_B - leave_one_out_baseline(rewards_B)
    coefficient_BxT = jax.lax.stop_gradient(advantage_B[:, None] - (beta / steps) * to_come_BxT)
    per_sequence = jnp.sum(coefficient_BxT * logp_y_BxT, axis=1) - (beta / steps) * jnp.sum(
        kl_BxT, axis=1
    )
    metrics = {
        "reward": jnp.mean(rewards_B),
        "kl": jnp.mean(kl_BxT),
        "logp": jnp.mean(logp_y_BxT),
    }
    return jnp.mean(per_sequence), metrics
