"""Numerical tests of the LSTM cell and scan layer against independent computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcomposer.model.lstm import (
    LSTMCarry,
    LSTMLayer,
    TokenInputs,
    lstm_cell,
    lstm_scan,
    recurrent_dropout_mask,
)

B, L, D, H = 3, 6, 4, 5


def _params(rng: np.random.Generator, dtype=np.float32, d=D, h=H):
    return (
        rng.normal(0, 0.5, (d, 4 * h)).astype(dtype),  # w_ih
        rng.normal(0, 0.3, (4 * h)).astype(dtype),  # b
        rng.normal(0, 0.5, (h, 4 * h)).astype(dtype),  # w_hh
    )


def _numpy_paper_cell(h_prev, c_prev, x, w_ih, b, w_hh):
    """The paper's equations in float64: separate W_f, W_i, W_C, W_o acting on [h_{t-1}, x_t]."""
    sigma = lambda z: 1.0 / (1.0 + np.exp(-z))
    hx = np.concatenate([h_prev, x], axis=-1).astype(np.float64)
    hidden = h_prev.shape[-1]

    def gate(k):  # rows of W act on h then x (row-vector convention: [h, x] @ W_k)
        cols = slice(k * hidden, (k + 1) * hidden)
        w_k = np.concatenate([w_hh[:, cols], w_ih[:, cols]], axis=0).astype(np.float64)
        return hx @ w_k + b[cols].astype(np.float64)

    i_t, f_t, c_tilde, o_t = sigma(gate(0)), sigma(gate(1)), np.tanh(gate(2)), sigma(gate(3))
    c_t = f_t * c_prev + i_t * c_tilde
    return o_t * np.tanh(c_t), c_t


def _python_loop(x_BxLxD, w_ih, b, w_hh, carry, mask=None):
    ys = []
    for t in range(x_BxLxD.shape[1]):
        h_in = carry.h if mask is None else carry.h * mask
        carry = lstm_cell(LSTMCarry(h_in, carry.c), x_BxLxD[:, t] @ w_ih + b, w_hh)
        ys.append(carry.h)
    return jnp.stack(ys, axis=1), carry


@pytest.fixture(scope="module")
def layer_apply():
    """Jitted LSTMLayer.apply per (hoisted, batched_weight_grads); shared by the tests below."""

    def make(hoisted, batched):
        layer = LSTMLayer(H, hoist_input_projection=hoisted, batched_weight_grads=batched)

        @jax.jit
        def apply(w_ih, b, w_hh, x, h0, c0, mask):
            params = {"w_ih": w_ih, "b": b, "w_hh": w_hh}
            return layer.apply({"params": params}, x, LSTMCarry(h0, c0), h_mask_BxH=mask)

        return apply

    return {(h, g): make(h, g) for h in (True, False) for g in (True, False)}


def _inputs(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(B, L, D)).astype(np.float32)
    h0, c0 = (rng.normal(size=(B, H)).astype(np.float32) for _ in range(2))
    mask = np.asarray(recurrent_dropout_mask(jax.random.key(seed), 0.4, (B, H), jnp.float32))
    return rng, x, h0, c0, mask


def test_cell_matches_float64_numpy_paper_equations():
    rng = np.random.default_rng(0)
    w_ih, b, w_hh = _params(rng)
    x = rng.normal(size=(B, D)).astype(np.float32)
    h, c = (rng.normal(size=(B, H)).astype(np.float32) for _ in range(2))
    got = lstm_cell(LSTMCarry(jnp.asarray(h), jnp.asarray(c)), x @ w_ih + b, jnp.asarray(w_hh))
    want_h, want_c = _numpy_paper_cell(h, c, x, w_ih, b, w_hh)
    np.testing.assert_allclose(got.h, want_h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.c, want_c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("hoisted", [True, False])
def test_scan_layer_matches_python_loop(layer_apply, hoisted, use_mask):
    rng, x, h0, c0, mask = _inputs(1 + hoisted + 2 * use_mask)
    w_ih, b, w_hh = _params(rng)
    mask = mask if use_mask else None
    y, carry = layer_apply[(hoisted, True)](w_ih, b, w_hh, x, h0, c0, mask)
    want_y, want_carry = _python_loop(x, w_ih, b, w_hh, LSTMCarry(h0, c0), mask)
    assert y.shape == (B, L, H)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry.h, want_carry.h, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry.c, want_carry.c, rtol=1e-5, atol=1e-6)
    if use_mask:  # the mask really acts (a zero mask entry is not a no-op)
        unmasked, _ = _python_loop(x, w_ih, b, w_hh, LSTMCarry(h0, c0))
        assert not np.allclose(y, unmasked, atol=1e-3)


def _loss_fn(apply):
    def loss(w_ih, b, w_hh, x, h0, c0, mask, r_y, r_h, r_c):
        y, carry = apply(w_ih, b, w_hh, x, h0, c0, mask)
        return jnp.sum(y * r_y) + jnp.sum(carry.h * r_h) + jnp.sum(carry.c * r_c)

    return loss


@pytest.mark.parametrize("use_mask", [False, True])
def test_hoisted_equals_in_loop_and_custom_vjp_equals_loop_autodiff(layer_apply, use_mask):
    rng, x, h0, c0, mask = _inputs(7 + use_mask)
    w_ih, b, w_hh = _params(rng)
    mask = mask if use_mask else None
    cot = [rng.normal(size=s).astype(np.float32) for s in [(B, L, H), (B, H), (B, H)]]
    argnums = (0, 1, 2, 3, 4, 5)
    loop = lambda w_ih, b, w_hh, x, h0, c0, m: _python_loop(x, w_ih, b, w_hh, LSTMCarry(h0, c0), m)
    want = jax.jit(jax.grad(_loss_fn(loop), argnums))(w_ih, b, w_hh, x, h0, c0, mask, *cot)
    for key, apply in layer_apply.items():
        got = jax.grad(_loss_fn(apply), argnums)(w_ih, b, w_hh, x, h0, c0, mask, *cot)
        for name, g, w in zip(["w_ih", "b", "w_hh", "x", "h0", "c0"], got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-5, err_msg=f"{key} d{name}")
    y_hoisted, _ = layer_apply[(True, True)](w_ih, b, w_hh, x, h0, c0, mask)
    y_in_loop, _ = layer_apply[(False, True)](w_ih, b, w_hh, x, h0, c0, mask)
    np.testing.assert_allclose(y_hoisted, y_in_loop, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("hoisted", [True, False])
def test_custom_vjp_gradients_match_central_finite_differences_float64(hoisted):
    with jax.enable_x64(True):
        rng = np.random.default_rng(11)
        d, h, b_, steps = 2, 3, 2, 4
        w_ih, b, w_hh = (jnp.asarray(a) for a in _params(rng, np.float64, d, h))
        x = jnp.asarray(rng.normal(size=(steps, b_, d)))
        h0, c0 = (jnp.asarray(rng.normal(size=(b_, h))) for _ in range(2))
        mask = jnp.asarray([[2.0, 0.0, 2.0], [0.0, 2.0, 2.0]])  # inverted dropout, rate 0.5
        r_y, r_h, r_c = (
            jnp.asarray(rng.normal(size=s)) for s in [(steps, b_, h), (b_, h), (b_, h)]
        )
        leaves = [x, w_ih, b, w_hh, h0, c0]
        sizes = [a.size for a in leaves]
        flat0 = jnp.concatenate([a.ravel() for a in leaves])

        def f(flat):
            parts = jnp.split(flat, np.cumsum(sizes)[:-1])
            x_, w_ih_, b__, w_hh_, h0_, c0_ = (
                p.reshape(a.shape) for p, a in zip(parts, leaves, strict=True)
            )
            y, carry = lstm_scan(x_, w_ih_, b__, w_hh_, LSTMCarry(h0_, c0_), mask, hoisted=hoisted)
            return jnp.sum(y * r_y) + jnp.sum(carry.h * r_h) + jnp.sum(carry.c * r_c)

        grad = jax.jit(jax.grad(f))(flat0)
        eps = 1e-6
        basis = jnp.eye(flat0.size) * eps
        fd = jax.jit(jax.vmap(lambda e: (f(flat0 + e) - f(flat0 - e)) / (2 * eps)))(basis)
        assert grad.dtype == jnp.float64
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)
        assert np.count_nonzero(np.asarray(grad)) > flat0.size // 2


def test_recurrent_dropout_mask_is_per_sequence_and_scaled():
    mask = np.asarray(recurrent_dropout_mask(jax.random.key(3), 0.25, (64, 32), jnp.float32))
    assert mask.shape == (64, 32)
    assert set(np.unique(mask)) <= {0.0, np.float32(1.0 / 0.75)}
    assert 0.15 < np.mean(mask == 0) < 0.35
    # different sequences get different masks
    assert len({row.tobytes() for row in mask}) > 60


def test_forget_gate_bias_starts_at_one():
    params = LSTMLayer(H).init(
        jax.random.key(0), jnp.zeros((1, 2, D)), LSTMCarry(*[jnp.zeros((1, H))] * 2)
    )
    bias = np.asarray(params["params"]["b"])
    np.testing.assert_array_equal(bias[H : 2 * H], 1.0)
    np.testing.assert_array_equal(np.delete(bias, np.s_[H : 2 * H]), 0.0)


def test_token_table_projection_equals_projecting_looked_up_rows():
    rng = np.random.default_rng(5)
    vocab, embed, extra_dim = 9, 3, 2
    table = jnp.asarray(rng.normal(size=(vocab, embed)), jnp.float32)
    tokens = jnp.asarray(rng.integers(0, vocab, (B, L)))
    extra = jnp.asarray(rng.normal(size=(B, L, extra_dim)), jnp.float32)
    carry = LSTMCarry(*(jnp.asarray(rng.normal(size=(B, H)), jnp.float32) for _ in range(2)))
    r = jnp.asarray(rng.normal(size=(B, L, H)), jnp.float32)
    fast, plain = LSTMLayer(H), LSTMLayer(H, token_table=False)
    params = fast.init(jax.random.key(0), TokenInputs(table, tokens, extra), carry)["params"]
    assert params["w_ih"].shape == (embed + extra_dim, 4 * H)

    def loss(layer, p, table, extra):
        y, last = layer.apply({"params": p}, TokenInputs(table, tokens, extra), carry)
        return jnp.sum(y * r) + jnp.sum(last.c)

    grads = jax.jit(lambda p, t, e: [jax.grad(loss, (1, 2, 3))(m, p, t, e) for m in (fast, plain)])
    got, want = grads(params, table, extra)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    y_fast, _ = fast.apply({"params": params}, TokenInputs(table, tokens, extra), carry)
    y_plain, _ = plain.apply({"params": params}, jnp.concatenate([table[tokens], extra], -1), carry)
    np.testing.assert_allclose(y_fast, y_plain, rtol=1e-5, atol=1e-6)
