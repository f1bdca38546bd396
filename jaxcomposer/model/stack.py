"""What the token models share: the per-layer carry and the stack of scan LSTM layers.

`carry` is a tuple with one `LSTMCarry` per layer (None = zeros). Everything runs time-major
(L, B, ...) so no layer transposes its activations.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxcomposer.config_lib import ModelConfig
from jaxcomposer.model.lstm import LSTMCarry, LSTMLayer

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


def as_carry(carry) -> Carry:
    """Accepts any sequence of (h, c) pairs, e.g. a carry restored as plain lists or tuples."""
    return tuple(LSTMCarry(*state) for state in carry)


def check_carry(carry: Carry, config: ModelConfig, batch_size: int) -> None:
    if len(carry) != config.num_layers:
        raise ValueError(f"carry has {len(carry)} layers, the model has {config.num_layers}")
    want = (batch_size, config.hidden_size)
    for layer, state in enumerate(carry):
        if state.h.shape != want or state.c.shape != want:
            raise ValueError(
                f"carry of layer {layer}: h {state.h.shape}, c {state.c.shape}, expected {want}"
            )


def checked_carry(carry, config: ModelConfig, batch_size: int) -> Carry:
    """The carry a model call starts from: zeros for None, else `carry` as LSTMCarry tuples,
    checked against the config (ValueError naming the layer and shapes otherwise)."""
    carry = initial_carry(config, batch_size) if carry is None else as_carry(carry)
    check_carry(carry, config, batch_size)
    return carry


def lstm_stack(module: nn.Module, x_LxBxD, carry: Carry, train: bool, between=None):
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


def check_cond(tokens_BxL, cond_BxLxC) -> None:
    if cond_BxLxC is not None and cond_BxLxC.shape[:2] != tokens_BxL.shape[:2]:
        raise ValueError(
            f"cond_BxLxC has leading shape {cond_BxLxC.shape[:2]}, the tokens {tokens_BxL.shape}"
        )


def inputs_time_major(tokens_BxL, features_BxLxF, cond_BxLxC, dtype):
    """[X; M]: the per-step conditioning vector concatenated to the per-step features."""
    check_cond(tokens_BxL, cond_BxLxC)
    if cond_BxLxC is not None:
        features_BxLxF = jnp.concatenate(
            [features_BxLxF.astype(dtype), cond_BxLxC.astype(dtype)], axis=-1
        )
    return jnp.swapaxes(features_BxLxF.astype(dtype), 0, 1)
