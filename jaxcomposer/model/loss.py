"""The one masked cross-entropy, used by training, validation and `--mode=evaluate` alike.

With a grammar table `next_state[S, V]` (a negative entry = token V is forbidden in state S),
the logits of forbidden tokens are set to MASKED_LOGIT before the softmax, so the model's
probabilities sum to one over the tokens the grammar allows: the loss is then the NLL of a
grammar-constrained model, the quantity the piano-roll benchmarks report for masked models
(Walder 2016, section 4).

Policy for a target the grammar forbids (data the tokenizer's own grammar rejects, which
`encode` never produces but a hand-made or foreign token file may hold): its own logit is kept,
so it costs a finite loss and never turns a batch's loss into ~1e9; `masked_token_nll` also
says which targets were forbidden, for callers that report them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# The one masked-logit value: the loss, the sampler (sample/sampler.py) and the policy gradient
# (finetune/policy_gradient.py) all mask with it. Finite: an all-masked row still has a defined
# (uniform) softmax and 0 * loss = 0. (sample/smc.py masks log-probabilities with -inf instead,
# so a forced token the grammar forbids gives its particle a weight of exactly zero.)
MASKED_LOGIT = -1e9


def allowed_tokens(next_state_SxV: jax.Array, states_BxL: jax.Array) -> jax.Array:
    """bool (B, L, V): the tokens the grammar allows after each position's state."""
    return jnp.asarray(next_state_SxV)[states_BxL] >= 0


def masked_token_nll(
    logits_BxLxV: jax.Array,
    targets_BxL: jax.Array,
    allowed_BxLxV: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-position (nll, correct, forbidden): float32 nats, bool argmax hit, bool target-forbidden.

    `allowed_BxLxV` (None = no mask) marks the tokens the grammar allows; the target itself
    always stays allowed (see the module docstring). Logits are upcast to float32 first.
    """
    log_probs, forbidden = masked_log_probs(logits_BxLxV, targets_BxL, allowed_BxLxV)
    nll = -jnp.take_along_axis(log_probs, targets_BxL[..., None], axis=-1)[..., 0]
    correct = jnp.argmax(log_probs, axis=-1) == targets_BxL
    return nll, correct, forbidden


def masked_log_probs(
    logits_BxLxV: jax.Array,
    targets_BxL: jax.Array,
    allowed_BxLxV: jax.Array | None = None,
    *,
    keep_target: bool = True,
) -> tuple[jax.Array, jax.Array]:
    """(log_probs_BxLxV float32 nats, forbidden_BxL bool): the masked model's whole next-token
    distribution at each position, each row summing to one over the allowed tokens and (with
    `keep_target`, as `masked_token_nll` scores) the target. Without `keep_target` the rows
    depend on the grammar state alone, never on the target: evaluate's ensembles mix these."""
    logits = logits_BxLxV.astype(jnp.float32)
    forbidden = jnp.zeros(targets_BxL.shape, bool)
    if allowed_BxLxV is not None:
        target_mask = jax.nn.one_hot(targets_BxL, logits.shape[-1], dtype=bool)
        forbidden = ~jnp.any(allowed_BxLxV & target_mask, axis=-1)
        keep = allowed_BxLxV | target_mask if keep_target else allowed_BxLxV
        logits = jnp.where(keep, logits, MASKED_LOGIT)
    return jax.nn.log_softmax(logits, axis=-1), forbidden


def token_loss_sums(logits_BxLxV, targets_BxL, weights_BxL, states_BxL=None, next_state_SxV=None):
    """(weighted NLL sum in nats, weighted correct-argmax sum, sum of weights), float32 scalars.

    Models that return fewer positions than the targets (the Keras baseline: only the last) are
    scored on the last positions. `states_BxL` are the grammar states before each target; with
    `next_state_SxV` the loss is masked as `masked_token_nll` describes.
    """
    n = logits_BxLxV.shape[1]
    targets, weights = targets_BxL[:, -n:], weights_BxL[:, -n:].astype(jnp.float32)
    allowed = None
    if next_state_SxV is not None:
        allowed = allowed_tokens(next_state_SxV, states_BxL[:, -n:])
    nll, correct, _ = masked_token_nll(logits_BxLxV, targets, allowed)
    return (nll * weights).sum(), (correct.astype(jnp.float32) * weights).sum(), weights.sum()
