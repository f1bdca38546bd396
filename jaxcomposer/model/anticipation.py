"""The constraint encoder of Anticipation-RNN: a backward LSTM that tells the forward model what
lies ahead.

Hadjeres & Nielsen 2018, "Anticipation-RNN: enforcing unary constraints in sequence generation,
with application to interactive music generation" (Neural Computing and Applications), section
3: a constraint row c (the given token at each position, a "free" symbol elsewhere) is read from
its end by an LSTM; its output at position t, which has seen c_t, c_{t+1}, ..., c_L, is appended
to the forward model's input at t. The forward model then knows, while it writes position t,
which tokens later positions must have, and learns to lead into them.

Alignment. Row c is aligned with the *targets*: the input at position t predicts target t, so
c_t says whether target t is given (and which token). Host code writes free positions as
`FREE` (-1); the encoder maps them to an extra embedding row.

A row with no given token at all is "no constraint": the encoder's output is zeros there, which
is exactly what a model call without `constraints_BxL` / `ahead_BxLxE` reads. So one trained
model samples unconstrained (every sampler, evaluation's likelihood) and under constraints.

`AnticipationLM` = `ConstraintEncoder` + `ComposerLM` whose [X; M] vector is the key/style
vector (cond_dim C, possibly 0) followed by the encoder's E features:

    logits_BxLxV, carry = model.apply(variables, tokens_BxL, carry, cond_BxLxC=...,
                                      constraints_BxL=...)   # teacher forcing, training
    ahead_BxLxE = model.apply(variables, constraints_BxL, method="encode")   # once per request
    logits_BxLxV, carry = model.apply(variables, tokens_BxL, carry, cond_BxLxC=...,
                                      ahead_BxLxE=ahead[:, t:t+L])           # while sampling
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcomposer.config_lib import ModelConfig
from jaxcomposer.model import stack
from jaxcomposer.model.lm import ComposerLM
from jaxcomposer.model.lstm import LSTMCarry, LSTMLayer, TokenInputs

FREE = -1  # a position whose token is not given


class ConstraintEncoder(nn.Module):
    """Backward LSTM over a constraint row: int (B, L) token ids, FREE where not given ->
    float32 (B, L, hidden_size), position t summarising c_t..c_L (zeros on rows that give
    nothing)."""

    vocab_size: int
    embed_dim: int
    hidden_size: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, constraints_BxL: jax.Array) -> jax.Array:
        constraints_BxL = jnp.asarray(constraints_BxL, jnp.int32)
        if constraints_BxL.ndim != 2:
            raise ValueError(f"constraints_BxL must be (B, L), got {constraints_BxL.shape}")
        given_BxL = constraints_BxL >= 0
        symbols_BxL = jnp.where(given_BxL, constraints_BxL, self.vocab_size)  # FREE -> row V
        table = self.param(
            "embed", nn.initializers.normal(1.0), (self.vocab_size + 1, self.embed_dim)
        )
        batch = constraints_BxL.shape[0]
        zeros = jnp.zeros((batch, self.hidden_size), jnp.float32)
        # Reverse time, run forward, reverse back: output t has read c_L, ..., c_t.
        y_LxBxH, _ = LSTMLayer(
            hidden_size=self.hidden_size, dtype=self.dtype, time_major=True, name="lstm"
        )(TokenInputs(table, symbols_BxL.T[::-1]), LSTMCarry(zeros, zeros))
        ahead_BxLxH = jnp.swapaxes(y_LxBxH[::-1], 0, 1).astype(jnp.float32)
        constrained_B = given_BxL.any(axis=1)
        return ahead_BxLxH * constrained_B[:, None, None]


class AnticipationLM(nn.Module):
    """ComposerLM reading [key/style; constraint encoder output] at every step (module
    docstring). `cond_dim` is the key/style width C; the encoder adds
    config.constraint_encoder_size features."""

    config: ModelConfig
    vocab_size: int
    cond_dim: int = 0

    @property
    def ahead_dim(self) -> int:
        return self.config.constraint_encoder_size

    def setup(self):
        config = self.config
        self.encoder = ConstraintEncoder(
            self.vocab_size, config.embed_dim, self.ahead_dim, stack.compute_dtype(config)
        )
        self.lm = ComposerLM(config, self.vocab_size, self.cond_dim + self.ahead_dim)

    def initial_carry(self, batch_size: int) -> stack.Carry:
        return stack.initial_carry(self.config, batch_size)

    def encode(self, constraints_BxL: jax.Array) -> jax.Array:
        """float32 (B, L, E): what the forward model reads of the row (module docstring)."""
        return self.encoder(constraints_BxL)

    def __call__(
        self,
        tokens_BxL: jax.Array,
        carry: stack.Carry | None = None,
        *,
        train: bool = False,
        cond_BxLxC: jax.Array | None = None,
        constraints_BxL: jax.Array | None = None,
        ahead_BxLxE: jax.Array | None = None,
    ) -> tuple[jax.Array, stack.Carry]:
        """As ComposerLM.__call__; `constraints_BxL` (int, FREE where free) is encoded here,
        `ahead_BxLxE` (float32) is an encoding already made; neither = no constraint."""
        if constraints_BxL is not None and ahead_BxLxE is not None:
            raise ValueError("give constraints_BxL or ahead_BxLxE, not both")
        if constraints_BxL is not None:
            if constraints_BxL.shape != tokens_BxL.shape:
                raise ValueError(
                    f"constraints_BxL {constraints_BxL.shape} must match tokens {tokens_BxL.shape}"
                )
            ahead_BxLxE = self.encoder(constraints_BxL)
        elif ahead_BxLxE is None:
            if self.is_initializing():  # create the encoder's parameters
                self.encoder(jnp.full(tokens_BxL.shape, FREE, jnp.int32))
            ahead_BxLxE = jnp.zeros((*tokens_BxL.shape, self.ahead_dim), jnp.float32)
        if ahead_BxLxE.shape != (*tokens_BxL.shape, self.ahead_dim):
            raise ValueError(
                f"ahead_BxLxE has shape {ahead_BxLxE.shape}, expected "
                f"{(*tokens_BxL.shape, self.ahead_dim)}"
            )
        parts = [ahead_BxLxE.astype(jnp.float32)]
        if self.cond_dim:
            if cond_BxLxC is None:
                cond_BxLxC = jnp.zeros((*tokens_BxL.shape, self.cond_dim), jnp.float32)
            parts.insert(0, cond_BxLxC.astype(jnp.float32))
        return self.lm(
            tokens_BxL, carry, train=train, cond_BxLxC=jnp.concatenate(parts, axis=-1)
        )
