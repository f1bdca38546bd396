"""Token language models: `ComposerLM` (embedding -> stacked LSTM -> vocabulary) and `SeedReplica`.

Both share one calling convention, which is also the sampler's step function:

    logits, new_carry = model.apply(variables, tokens_BxL, carry, train=False, cond_BxLxC=None)

`carry` is a tuple with one `LSTMCarry` per layer (None = zeros); feeding L=1 tokens one at a time
with the returned carry gives the same logits as the whole sequence at once. Dropout and
recurrent-dropout masks come from the 'dropout' rng stream (only when train=True).
Internally everything runs time-major (L, B, ...) so no layer transposes its activations.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcomposer.config_lib import ModelConfig
from jaxcomposer.model.lstm import LSTMCarry, LSTMLayer, TokenInputs

Carry = tuple[LSTMCarry, ...]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(config: ModelConfig) -> jnp.dtype:
    if config.dtype not in _DTYPES:
        raise ValueError(f"model.dtype must be one of {sorted(_DTYPES)}, got {config.dtype!r}")
    return _DTYPES[config.dtype]


def initial_carry(config: ModelConfig, batch_size: int) -> Carry:
    """Zero state for every layer: a tuple of LSTMCarry with float32 (B, H) arrays."""
    zeros = jnp.zeros((batch_size, config.hidden_size), jnp.float32)
    return tuple(LSTMCarry(zeros, zeros) for _ in range(config.num_layers))


def _as_carry(carry) -> Carry:
    """Accepts any sequence of (h, c) pairs, e.g. a carry restored as plain lists or tuples."""
    return tuple(LSTMCarry(*state) for state in carry)


def _check_carry(carry: Carry, config: ModelConfig, batch_size: int) -> None:
    if len(carry) != config.num_layers:
        raise ValueError(f"carry has {len(carry)} layers, the model has {config.num_layers}")
    want = (batch_size, config.hidden_size)
    for layer, state in enumerate(carry):
        if state.h.shape != want or state.c.shape != want:
            raise ValueError(
                f"carry of layer {layer}: h {state.h.shape}, c {state.c.shape}, expected {want}"
            )


def _lstm_stack(module: nn.Module, x_LxBxD, carry: Carry, train: bool, between=None):
    """Runs config.num_layers LSTMLayers (time-major); `between(layer, y)` post-processes each."""
    config = module.config
    new_carry = []
    for layer in range(config.num_layers):
        x_LxBxD, state = LSTMLayer(
            hidden_size=config.hidden_size,
            hoist_input_projection=config.hoist_input_projection,
            recurrent_dropout=config.recurrent_dropout,
            dtype=compute_dtype(config),
            time_major=True,
            name=f"lstm_{layer}",
        )(x_LxBxD, carry[layer], deterministic=not train)
        new_carry.append(state)
        if between is not None:
            x_LxBxD = between(layer, x_LxBxD)
    return x_LxBxD, tuple(new_carry)


def _check_cond(tokens_BxL, cond_BxLxC) -> None:
    if cond_BxLxC is not None and cond_BxLxC.shape[:2] != tokens_BxL.shape[:2]:
        raise ValueError(
            f"cond_BxLxC has leading shape {cond_BxLxC.shape[:2]}, the tokens {tokens_BxL.shape}"
        )


def _inputs_time_major(tokens_BxL, features_BxLxF, cond_BxLxC, dtype):
    """[X; M]: the per-step conditioning vector concatenated to the per-step features."""
    _check_cond(tokens_BxL, cond_BxLxC)
    if cond_BxLxC is not None:
        features_BxLxF = jnp.concatenate(
            [features_BxLxF.astype(dtype), cond_BxLxC.astype(dtype)], axis=-1
        )
    return jnp.swapaxes(features_BxLxF.astype(dtype), 0, 1)


class ComposerLM(nn.Module):
    """Embedding -> N x LSTM (-> dropout, optional LayerNorm) -> logits at every position."""

    config: ModelConfig
    vocab_size: int

    def initial_carry(self, batch_size: int) -> Carry:
        return initial_carry(self.config, batch_size)

    @nn.compact
    def __call__(
        self,
        tokens_BxL: jax.Array,
        carry: Carry | None = None,
        *,
        train: bool = False,
        cond_BxLxC: jax.Array | None = None,
    ) -> tuple[jax.Array, Carry]:
        config = self.config
        dtype = compute_dtype(config)
        if config.tie_embeddings and config.embed_dim != config.hidden_size:
            raise ValueError(
                "model.tie_embeddings needs model.embed_dim == model.hidden_size, got "
                f"embed_dim={config.embed_dim}, hidden_size={config.hidden_size}"
            )
        batch = tokens_BxL.shape[0]
        carry = initial_carry(config, batch) if carry is None else _as_carry(carry)
        _check_carry(carry, config, batch)
        embed = nn.Embed(self.vocab_size, config.embed_dim, dtype=dtype, name="embed")
        _check_cond(tokens_BxL, cond_BxLxC)
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

        y_LxBxH, new_carry = _lstm_stack(self, x_LxBxD, carry, train, between)
        if config.tie_embeddings:
            bias = self.param("out_bias", nn.initializers.zeros, (self.vocab_size,))
            logits_LxBxV = embed.attend(y_LxBxH) + bias.astype(dtype)
        else:
            logits_LxBxV = nn.Dense(self.vocab_size, dtype=dtype, name="out")(y_LxBxH)
        return jnp.swapaxes(logits_LxBxV, 0, 1).astype(jnp.float32), new_carry


class SeedReplica(nn.Module):
    """The original Keras model: scalar input token/V, 3 x LSTM(512), BN/Dropout/Dense head.

    Logits only for the last position, shape (B, 1, V). With train=True BatchNorm uses batch
    statistics and updates 'batch_stats' (apply with mutable=['batch_stats']); otherwise it uses
    the running averages (Keras momentum 0.99, epsilon 1e-3).
    """

    config: ModelConfig
    vocab_size: int

    def initial_carry(self, batch_size: int) -> Carry:
        return initial_carry(self.config, batch_size)

    @nn.compact
    def __call__(
        self,
        tokens_BxL: jax.Array,
        carry: Carry | None = None,
        *,
        train: bool = False,
        cond_BxLxC: jax.Array | None = None,
    ) -> tuple[jax.Array, Carry]:
        config = self.config
        dtype = compute_dtype(config)
        batch = tokens_BxL.shape[0]
        carry = initial_carry(config, batch) if carry is None else _as_carry(carry)
        _check_carry(carry, config, batch)
        scalar_BxLx1 = (tokens_BxL.astype(jnp.float32) / self.vocab_size)[..., None]
        x_LxBxD = _inputs_time_major(tokens_BxL, scalar_BxLx1, cond_BxLxC, dtype)
        y_LxBxH, new_carry = _lstm_stack(self, x_LxBxD, carry, train)
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


def build_model(config: ModelConfig, vocab_size: int) -> nn.Module:
    """The model named by config.kind ("lstm" | "seed_replica")."""
    compute_dtype(config)  # validates config.dtype early, with a clear message
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    if config.kind == "lstm":
        return ComposerLM(config, vocab_size)
    if config.kind == "seed_replica":
        return SeedReplica(config, vocab_size)
    raise ValueError(f"model.kind must be 'lstm' or 'seed_replica', got {config.kind!r}")
