"""ComposerLM / KerasBaseline: step function, causality, dropout masks, parameter count, errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import seed_replica, tiny
from jaxcomposer import config_lib
from jaxcomposer.model import ComposerLM, KerasBaseline, build_model, initial_carry
from jaxcomposer.model.lstm import LSTMCarry, lstm_scan

V, B, L, C = 23, 2, 7, 3


def _model_config(**changes) -> config_lib.ModelConfig:
    base = config_lib.freeze(tiny.get_config()).model
    return dataclasses.replace(base, **{"embed_dim": 8, "hidden_size": 8, **changes})


def _tokens(seed, batch=B, length=L):
    return jax.random.randint(jax.random.key(seed), (batch, length), 0, V)


@pytest.fixture(scope="module")
def lm():
    config = _model_config(layer_norm=True, tie_embeddings=True, dropout=0.3)
    model = build_model(config, V, cond_dim=C)  # reads a C-wide [X; M] vector
    cond = jnp.zeros((B, L, C))
    params = jax.jit(model.init)(jax.random.key(0), _tokens(0), cond_BxLxC=cond)["params"]
    apply = jax.jit(lambda p, t, carry, cond: model.apply({"params": p}, t, carry, cond_BxLxC=cond))
    return model, params, apply


def test_step_function_token_by_token_equals_full_sequence(lm):
    model, params, apply = lm
    tokens = _tokens(1)
    cond = jax.random.normal(jax.random.key(2), (B, L, C))
    full, full_carry = apply(params, tokens, None, cond)
    assert full.shape == (B, L, V) and full.dtype == jnp.float32
    carry = model.initial_carry(B)
    steps = []
    for t in range(L):
        logits, carry = apply(params, tokens[:, t : t + 1], carry, cond[:, t : t + 1])
        steps.append(logits[:, 0])
    np.testing.assert_allclose(np.stack(steps, axis=1), full, rtol=1e-5, atol=1e-5)
    for got, want in zip(carry, full_carry, strict=True):
        np.testing.assert_allclose(got.h, want.h, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got.c, want.c, rtol=1e-5, atol=1e-6)


def test_causality_loss_at_t_has_no_gradient_from_later_inputs(lm):
    _, params, _ = lm
    model = lm[0]
    tokens = _tokens(3)
    cond = jax.random.normal(jax.random.key(4), (B, L, C))

    def loss_per_position(cond_):
        logits, _ = model.apply({"params": params}, tokens, cond_BxLxC=cond_)
        targets = jnp.roll(tokens, -1, axis=1)
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum(axis=0)

    jac_LxBxLxC = jax.jit(jax.jacrev(loss_per_position))(cond)
    influence_LxL = np.abs(np.asarray(jac_LxBxLxC)).sum(axis=(1, 3))  # [loss position, input pos]
    future = np.triu(np.ones((L, L), bool), k=1)
    assert np.all(influence_LxL[future] == 0.0)
    assert np.all(influence_LxL[~future] > 0.0)


def test_dropout_only_in_training_and_driven_by_the_dropout_rng(lm):
    model, params, apply = lm
    tokens = _tokens(5)
    cond = jnp.zeros((B, L, C))
    eval_logits, _ = apply(params, tokens, None, cond)
    train = jax.jit(
        lambda key: model.apply(
            {"params": params}, tokens, train=True, cond_BxLxC=cond, rngs={"dropout": key}
        )[0]
    )
    a, a_again, b = train(jax.random.key(1)), train(jax.random.key(1)), train(jax.random.key(2))
    np.testing.assert_array_equal(a, a_again)
    assert not np.allclose(a, b)
    assert not np.allclose(a, eval_logits)


def test_recurrent_dropout_mask_is_constant_over_time_and_off_at_eval():
    rate, hidden, length = 0.5, 16, 6
    config = _model_config(num_layers=1, hidden_size=hidden, recurrent_dropout=rate, dropout=0.0)
    model = ComposerLM(config, V)
    tokens = _tokens(6, batch=1, length=length)
    params = jax.jit(model.init)(jax.random.key(0), tokens)["params"]
    key = jax.random.key(9)

    def train_out(p):
        return model.apply({"params": p}, tokens, train=True, rngs={"dropout": key})[0]

    r = jax.random.normal(jax.random.key(1), (1, length, V))
    out_and_grad = jax.jit(lambda p: (lambda out, vjp: (out, vjp(r)[0]))(*jax.vjp(train_out, p)))
    out, d_params = out_and_grad(params)
    d_w_hh = d_params["lstm_0"]["w_hh"]
    # h_{t-1, j} enters the recurrence only through mask_j * W_hh[j]: a unit dropped at every
    # step has an exactly zero gradient row. With a fresh mask per step (p = 0.5 ** 6) almost
    # no row would vanish; with one mask per sequence about half do.
    kept = np.abs(np.asarray(d_w_hh)).sum(axis=1) > 0
    assert 3 <= np.sum(~kept) <= hidden - 3
    # ... and the training output is exactly the scan with that one mask at every step.
    mask = jnp.asarray(kept, jnp.float32)[None] / (1 - rate)

    @jax.jit
    def by_hand(p):
        x = p["embed"]["embedding"][tokens].swapaxes(0, 1)
        w = p["lstm_0"]
        y, _ = lstm_scan(x, w["w_ih"], w["b"], w["w_hh"], initial_carry(config, 1)[0], mask)
        return (y @ p["out"]["kernel"] + p["out"]["bias"]).swapaxes(0, 1)

    np.testing.assert_allclose(out, by_hand(params), rtol=1e-5, atol=1e-5)
    # at eval the rate does not matter: same logits as a model without recurrent dropout
    off = ComposerLM(dataclasses.replace(config, recurrent_dropout=0.0), V)
    both = jax.jit(lambda v: (model.apply(v, tokens)[0], off.apply(v, tokens)[0]))
    np.testing.assert_array_equal(*both({"params": params}))


def _keras_param_count(vocab, hidden=512, layers=3, dense=256):
    lstm = sum(
        4 * ((1 if i == 0 else hidden) * hidden + hidden * hidden + hidden) for i in range(layers)
    )
    batch_norm = 4 * hidden + 4 * dense  # gamma, beta, moving mean, moving variance
    return lstm + batch_norm + (hidden * dense + dense) + (dense * vocab + vocab)


def test_seed_replica_matches_keras_parameter_count_and_shapes():
    config = config_lib.freeze(seed_replica.get_config()).model
    model = build_model(config, 329)
    assert isinstance(model, KerasBaseline)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((2, 100), jnp.int32))
    count = sum(leaf.size for leaf in jax.tree.leaves(variables))
    assert count == _keras_param_count(329) == 5_470_025
    assert set(variables) == {"params", "batch_stats"}
    logits, carry = jax.eval_shape(model.apply, variables, jnp.zeros((2, 100), jnp.int32))
    assert logits.shape == (2, 1, 329)
    assert len(carry) == 3 and carry[0].h.shape == (2, 512)


def test_seed_replica_small_train_and_eval_and_step():
    config = _model_config(kind="seed_replica", num_layers=3, recurrent_dropout=0.3, dense_size=6)
    model = build_model(config, V)
    tokens = _tokens(8)
    variables = jax.jit(model.init)(jax.random.key(0), tokens)
    apply = jax.jit(model.apply)
    (logits, _), updates = jax.jit(model.apply, static_argnames=("mutable", "train"))(
        variables, tokens, train=True, rngs={"dropout": jax.random.key(1)}, mutable=("batch_stats",)
    )
    assert logits.shape == (B, 1, V) and np.all(np.isfinite(logits))
    moved = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)), updates["batch_stats"], variables["batch_stats"]
    )
    assert all(jax.tree.leaves(moved))
    full, _ = apply(variables, tokens)  # eval: BatchNorm uses the running averages
    carry = model.initial_carry(B)
    for t in range(L):
        step, carry = apply(variables, tokens[:, t : t + 1], carry)
    np.testing.assert_allclose(step, full, rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_close_logits():
    config = _model_config()
    tokens = _tokens(10)
    model32, model16 = (
        ComposerLM(config, V),
        ComposerLM(dataclasses.replace(config, dtype="bfloat16"), V),
    )
    params = jax.jit(model16.init)(jax.random.key(0), tokens)["params"]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    logits16, carry16 = jax.jit(model16.apply)({"params": params}, tokens)
    logits32, _ = jax.jit(model32.apply)({"params": params}, tokens)
    assert carry16[0].h.dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits32, atol=0.05)


def test_errors_are_specific():
    tokens = _tokens(0)
    with pytest.raises(ValueError, match="tie_embeddings needs model.embed_dim == model.hidden"):
        model = ComposerLM(_model_config(tie_embeddings=True, embed_dim=4), V)
        jax.eval_shape(model.init, jax.random.key(0), tokens)
    with pytest.raises(ValueError, match="model.kind"):
        build_model(_model_config(kind="transformer"), V)
    with pytest.raises(ValueError, match="model.dtype"):
        build_model(_model_config(dtype="float16"), V)
    model = ComposerLM(_model_config(), V)
    params = jax.eval_shape(model.init, jax.random.key(0), tokens)
    bad = (LSTMCarry(jnp.zeros((B, 8)), jnp.zeros((B, 8))),)
    with pytest.raises(ValueError, match="carry has 1 layers"):
        model.apply(params, tokens, bad)
