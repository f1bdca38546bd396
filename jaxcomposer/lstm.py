"""The LSTM cell and a scan layer over time, written as plain jnp maths (no Flax inside the loop).

Gate order in every fused 4H axis (weights, biases, pre-activations): (i, f, g, o) = input gate,
forget gate, candidate cell C~, output gate -- the order of PyTorch and Keras, so weights can be
compared or copied without reshuffling.

Two implementations of the same recurrence:
- `_recurrence_autodiff`: one `lax.scan`, differentiated by JAX (per-step weight-gradient
  accumulation inside the backward loop).
- `_recurrence` (default): the same forward scan under a `custom_vjp` whose backward scan only
  carries (dh, dc) and emits the per-step gate gradients; the weight and input gradients are then
  single large matmuls over all time steps (see bench notes in `LSTMLayer`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp


STORE_PRE = False


class LSTMCarry(NamedTuple):
    h: jax.Array  # (B, H) hidden state h_t
    c: jax.Array  # (B, H) cell state C_t


def lstm_cell(carry: LSTMCarry, x_proj_Bx4H: jax.Array, w_hh_Hx4H: jax.Array) -> LSTMCarry:
    """One LSTM step (Hochreiter & Schmidhuber; the notation of Olah's 'Understanding LSTMs').

        f_t  = sigma(W_f [h_{t-1}, x_t] + b_f)
        i_t  = sigma(W_i [h_{t-1}, x_t] + b_i)
        C~_t = tanh(W_C [h_{t-1}, x_t] + b_C)
        C_t  = f_t * C_{t-1} + i_t * C~_t
        o_t  = sigma(W_o [h_{t-1}, x_t] + b_o)
        h_t  = o_t * tanh(C_t)

    The four W_* [h, x] products are fused: `x_proj_Bx4H` already holds x_t W_x + b for all gates
    and `w_hh_Hx4H` stacks the recurrent blocks, gate order (i, f, g=C~, o) along the 4H axis.
    """
    gates = x_proj_Bx4H + carry.h @ w_hh_Hx4H
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(f) * carry.c + jax.nn.sigmoid(i) * jnp.tanh(g)
    h = jax.nn.sigmoid(o) * jnp.tanh(c)
    return LSTMCarry(h, c)


def _project(x_LxBxD: jax.Array, w_ih: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum("lbd,dg->lbg", x_LxBxD, w_ih) + b


def _recurrence_autodiff(hoisted, x_LxBxD, w_ih, b, w_hh, h0, c0, mask_BxH, unroll=1):
    """Reference scan: h_LxBxH and the final carry; gradients by plain JAX autodiff."""

    def step(carry, x_t):
        proj = x_t if hoisted else x_t @ w_ih + b
        h_in = carry.h if mask_BxH is None else carry.h * mask_BxH
        new = lstm_cell(LSTMCarry(h_in, carry.c), proj, w_hh)
        return new, new.h

    xs = _project(x_LxBxD, w_ih, b) if hoisted is True else x_LxBxD
    carry, h_LxBxH = jax.lax.scan(step, LSTMCarry(h0, c0), xs, unroll=unroll)
    return h_LxBxH, carry


def _forward(hoisted, x_LxBxD, w_ih, b, w_hh, h0, c0, mask_BxH, unroll):
    """Forward scan that also returns the activated gates (i, f, g, o) and C_t for the backward."""

    def step(carry, x_t):
        h, c = carry
        proj = x_t if hoisted else x_t @ w_ih + b
        h_in = h if mask_BxH is None else h * mask_BxH
        z = proj + h_in @ w_hh
        i, f, g, o = jnp.split(z, 4, axis=-1)
        i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        c = f * c + i * g
        h = o * jnp.tanh(c)
        if STORE_PRE:
            return (h, c), (h, c, z)
        return (h, c), (h, c, jnp.concatenate([i, f, g, o], axis=-1))

    xs = _project(x_LxBxD, w_ih, b) if hoisted is True else x_LxBxD
    (h, c), (h_LxBxH, c_LxBxH, acts_LxBx4H) = jax.lax.scan(step, (h0, c0), xs, unroll=unroll)
    return (h_LxBxH, LSTMCarry(h, c)), (h_LxBxH, c_LxBxH, acts_LxBx4H)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 8))
def _recurrence(hoisted, x_LxBxD, w_ih, b, w_hh, h0, c0, mask_BxH, unroll=1):
    """Same values as `_recurrence_autodiff`; the backward batches the weight gradients."""
    return _forward(hoisted, x_LxBxD, w_ih, b, w_hh, h0, c0, mask_BxH, unroll)[0]


def _recurrence_fwd(hoisted, x_LxBxD, w_ih, b, w_hh, h0, c0, mask_BxH, unroll):
    out, (h_LxBxH, c_LxBxH, acts) = _forward(
        hoisted, x_LxBxD, w_ih, b, w_hh, h0, c0, mask_BxH, unroll
    )
    return out, (x_LxBxD, w_ih, w_hh, h0, c0, mask_BxH, h_LxBxH, c_LxBxH, acts)


def _recurrence_bwd(hoisted, unroll, residuals, cotangents):
    x, w_ih, w_hh, h0, c0, mask, h_LxBxH, c_LxBxH, acts = residuals
    dh_LxBxH, (dh_last, dc_last) = cotangents
    c_prev = jnp.concatenate([c0[None], c_LxBxH[:-1]], axis=0)
    w_hh_T = w_hh.T

    def step(carry, inputs):
        dh, dc = carry
        dy, act, c, cp = inputs
        i, f, g, o = jnp.split(act, 4, axis=-1)
        if STORE_PRE:
            i, f, g, o = jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o)
        dh = dh + dy
        tanh_c = jnp.tanh(c)
        dc = dc + dh * o * (1 - tanh_c * tanh_c)
        d_gates = jnp.concatenate(
            [
                dc * g * i * (1 - i),
                dc * cp * f * (1 - f),
                dc * i * (1 - g * g),
                dh * tanh_c * o * (1 - o),
            ],
            axis=-1,
        )
        dh_prev = d_gates @ w_hh_T
        if mask is not None:
            dh_prev = dh_prev * mask
        return (dh_prev, dc * f), d_gates

    (dh0, dc0), d_gates_LxBx4H = jax.lax.scan(
        step, (dh_last, dc_last), (dh_LxBxH, acts, c_LxBxH, c_prev), reverse=True, unroll=unroll
    )
    # The weight and input gradients as single matmuls over all L*B rows (the point of this vjp).
    h_prev = jnp.concatenate([h0[None], h_LxBxH[:-1]], axis=0)
    if mask is not None:
        h_prev = h_prev * mask
    d_w_hh = jnp.einsum("lbh,lbg->hg", h_prev, d_gates_LxBx4H)
    if hoisted == "pre":
        return d_gates_LxBx4H, jnp.zeros_like(w_ih), jnp.zeros(w_ih.shape[1], w_ih.dtype), d_w_hh, dh0, dc0, (None if mask is None else jnp.zeros_like(mask))
    d_w_ih = jnp.einsum("lbd,lbg->dg", x, d_gates_LxBx4H)
    d_x = jnp.einsum("lbg,dg->lbd", d_gates_LxBx4H, w_ih)
    d_b = d_gates_LxBx4H.sum(axis=(0, 1))
    d_mask = None if mask is None else jnp.zeros_like(mask)
    return d_x, d_w_ih, d_b, d_w_hh, dh0, dc0, d_mask


_recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)


def lstm_scan(
    x_LxBxD: jax.Array,
    w_ih: jax.Array,
    b: jax.Array,
    w_hh: jax.Array,
    carry: LSTMCarry,
    mask_BxH: jax.Array | None = None,
    *,
    hoisted: bool = True,
    batched_weight_grads: bool = True,
    unroll: int = 1,
) -> tuple[jax.Array, LSTMCarry]:
    """Time-major LSTM over a sequence: (h_LxBxH, final carry). Pure function of its arguments."""
    fn = _recurrence if batched_weight_grads else _recurrence_autodiff
    return fn(hoisted, x_LxBxD, w_ih, b, w_hh, carry.h, carry.c, mask_BxH, unroll)


def recurrent_dropout_mask(rng: jax.Array, rate: float, shape: tuple[int, int], dtype) -> jax.Array:
    """Inverted-dropout mask on h, one per sequence (the same for all its time steps)."""
    keep = jax.random.bernoulli(rng, 1.0 - rate, shape)
    return keep.astype(dtype) / jnp.asarray(1.0 - rate, dtype)


def _forget_bias_init(key, shape, dtype=jnp.float32):
    del key
    hidden = shape[0] // 4
    return jnp.zeros(shape, dtype).at[hidden : 2 * hidden].set(1.0)


class LSTMLayer(nn.Module):
    """One LSTM layer over a (B, L, D) sequence; returns (y_BxLxH, final carry).

    Measured on the 2-core AVX-512 dev CPU, 3x512 LSTM, embed 512, seq 100, batch 64 (train step
    tokens/s, medians): see launch/bench_train.py and the numbers recorded next to the defaults.
    """

    hidden_size: int
    hoist_input_projection: bool = True
    recurrent_dropout: float = 0.0
    batched_weight_grads: bool = True
    unroll: int = 1
    dtype: jnp.dtype = jnp.float32  # compute dtype; params stay float32
    time_major: bool = False  # True: x is (L, B, D) and y is (L, B, H)

    @nn.compact
    def __call__(
        self,
        x_BxLxD: jax.Array,
        carry: LSTMCarry,
        *,
        h_mask_BxH: jax.Array | None = None,
        deterministic: bool = True,
    ) -> tuple[jax.Array, LSTMCarry]:
        hidden = self.hidden_size
        in_dim = x_BxLxD.shape[-1]
        w_ih = self.param("w_ih", nn.initializers.xavier_uniform(), (in_dim, 4 * hidden))
        w_hh = self.param("w_hh", nn.initializers.orthogonal(), (hidden, 4 * hidden))
        b = self.param("b", _forget_bias_init, (4 * hidden,))
        if h_mask_BxH is None and not deterministic and self.recurrent_dropout > 0:
            batch = x_BxLxD.shape[1 if self.time_major else 0]
            rng = self.make_rng("dropout")
            h_mask_BxH = recurrent_dropout_mask(
                rng, self.recurrent_dropout, (batch, hidden), self.dtype
            )
        cast = lambda a: None if a is None else jnp.asarray(a, self.dtype)
        x_LxBxD = x_BxLxD if self.time_major else jnp.swapaxes(x_BxLxD, 0, 1)
        y_LxBxH, new = lstm_scan(
            cast(x_LxBxD),
            cast(w_ih),
            cast(b),
            cast(w_hh),
            LSTMCarry(cast(carry.h), cast(carry.c)),
            cast(h_mask_BxH),
            hoisted=self.hoist_input_projection,
            batched_weight_grads=self.batched_weight_grads,
            unroll=self.unroll,
        )
        # The carry keeps the caller's dtype so a sampler's scan sees a fixed carry type.
        new = LSTMCarry(new.h.astype(carry.h.dtype), new.c.astype(carry.c.dtype))
        return (y_LxBxH if self.time_major else jnp.swapaxes(y_LxBxH, 0, 1)), new
