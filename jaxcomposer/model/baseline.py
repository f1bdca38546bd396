"""The baseline: the original Classical-Piano-Composer Keras model, layer for layer.

Config kind "seed_replica" (the name users type) builds it. Scalar input token / V,
3 x LSTM(512), then BatchNorm / Dropout / Dense(256) / ReLU / BatchNorm / Dropout / Dense(V):
logits for the last position only.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcomposer.config_lib import ModelConfig
from jaxcomposer.model import stack


class KerasBaseline(nn.Module):
    """The original Keras model: scalar input token/V, 3 x LSTM(512), BN/Dropout/Dense head.

    Logits only for the last position, shape (B, 1, V). With train=True BatchNorm uses batch
    statistics and updates 'batch_stats' (apply with mutable=['batch_stats']); otherwise it uses
    the running averages (Keras momentum 0.99, epsilon 1e-3).
    """

    config: ModelConfig
    vocab_size: int

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
        batch = tokens_BxL.shape[0]
        carry = stack.checked_carry(carry, config, batch)
        scalar_BxLx1 = (tokens_BxL.astype(jnp.float32) / self.vocab_size)[..., None]
        x_LxBxD = stack.inputs_time_major(tokens_BxL, scalar_BxLx1, cond_BxLxC, dtype)
        y_LxBxH, new_carry = stack.lstm_stack(self, x_LxBxD, carry, train)
        norm = lambda name: nn.BatchNorm(
            use_running_average=not train, momentum=0.99, epsilon=1e-3, dtype=dtype, name=name
        )
        x = norm("norm_0")(y_LxBxH[-1])
        x = nn.Dropout(config.dropout, deterministic=not train)(x)
        x = nn.relu(nn.Dense(config.dense_size, dtype=dtype, name="dense")(x))
        x = norm("norm_1")(x)
        x = nn.Dropout(config.dropout, deterministic=not train)(x)
        logits_BxV = nn.Dense(self.vocab_size, dtype=dtype, name="out")(x)
        return logits_BxV[:, None, :].astype(jnp.float32), new_carry
