"""`ComposerLM`: token embedding -> stacked scan LSTM -> logits over the vocabulary.

Calling convention, shared by every token model and by the sampler's step function:

    logits_BxLxV, new_carry = model.apply(variables, tokens_BxL, carry, train=False,
                                          cond_BxLxC=None)

Feeding L=1 tokens one at a time with the returned carry gives the same logits as the whole
sequence at once. `cond_BxLxC` is the paper's music-theory vector M, concatenated to every
step's input ([X; M], section 8.3): a model built with `cond_dim` C > 0 reads it (zeros when
not given, e.g. at init), one built with C = 0 ignores any it is given. With
`config.condition_logits` M also adds a learned bias M @ W to each step's logits. Dropout and
recurrent-dropout masks come from the 'dropout' rng stream (only when train=True).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcomposer.config_lib import ModelConfig
from jaxcomposer.model import stack
from jaxcomposer.model.lstm import TokenInputs


class ComposerLM(nn.Module):
    """Embedding -> N x LSTM (-> dropout, optional LayerNorm) -> logits at every position."""

    config: ModelConfig
    vocab_size: int
    cond_dim: int = 0  # width of the conditioning vector M (conditioning.Spec.dim)

    def initial_carry(self, batch_size: int) -> stack.Carry:
        return stack.initial_carry(self.config, batch_size)

    @nn.compact
    def __call__(
        self,
        tokens_BxL: jax.Array,
        carry: stack.Carry | None = None,
        *,
        train: bool = False,
        cond_BxLxC: jax.Array | None = None,
    ) -> tuple[jax.Array, stack.Carry]:
        config = self.config
        dtype = stack.compute_dtype(config)
        if config.tie_embeddings and config.embed_dim != config.hidden_size:
            raise ValueError(
                "model.tie_embeddings needs model.embed_dim == model.hidden_size, got "
                f"embed_dim={config.embed_dim}, hidden_size={config.hidden_size}"
            )
        batch = tokens_BxL.shape[0]
        carry = stack.checked_carry(carry, config, batch)
        embed = nn.Embed(self.vocab_size, config.embed_dim, dtype=dtype, name="embed")
        if self.cond_dim == 0:
            cond_BxLxC = None  # an unconditioned model: the vector is not an input
        elif cond_BxLxC is None:
            cond_BxLxC = jnp.zeros((*tokens_BxL.shape, self.cond_dim), jnp.float32)
        elif cond_BxLxC.shape[-1] != self.cond_dim:
            raise ValueError(
                f"cond_BxLxC has {cond_BxLxC.shape[-1]} features, the model reads {self.cond_dim}"
            )
        stack.check_cond(tokens_BxL, cond_BxLxC)
        # The first layer gets lookups, so it can project the (V, E) table instead of B*L rows.
        x_LxBxD = TokenInputs(
            embed.embedding,
            tokens_BxL.T,
            None if cond_BxLxC is None else jnp.swapaxes(cond_BxLxC, 0, 1),
        )

        def between(layer, y):
            y = nn.Dropout(config.dropout, deterministic=not train)(y)
            if config.layer_norm:
                y = nn.LayerNorm(dtype=dtype, name=f"norm_{layer}")(y)
            return y

        y_LxBxH, new_carry = stack.lstm_stack(self, x_LxBxD, carry, train, between)
        if config.tie_embeddings:
            bias = self.param("out_bias", nn.initializers.zeros, (self.vocab_size,))
            logits_LxBxV = embed.attend(y_LxBxH) + bias.astype(dtype)
        else:
            logits_LxBxV = nn.Dense(self.vocab_size, dtype=dtype, name="out")(y_LxBxH)
        logits_BxLxV = jnp.swapaxes(logits_LxBxV, 0, 1).astype(jnp.float32)
        if cond_BxLxC is not None and config.condition_logits:
            # Zero at init: training starts from the plain [X; M] model.
            logits_BxLxV = logits_BxLxV + nn.Dense(
                self.vocab_size, use_bias=False, kernel_init=nn.initializers.zeros,
                name="cond_logits",
            )(cond_BxLxC.astype(jnp.float32))  # fmt: skip
        return logits_BxLxV, new_carry
