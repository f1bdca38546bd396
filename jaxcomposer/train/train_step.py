"""The pure training step: optimizer, loss, device mesh, sharded batches and the jitted steps.

The step is one jitted function (compiled once per process and config) over a `TrainState`;
dropout keys fold in the step, so a resumed run reproduces an uninterrupted one bit for bit.
Every local device takes a slice of the batch (`Mesh(devices, ('data',))`); one device is the
same code path. The loop that drives these lives in train.py.
"""

from __future__ import annotations

import collections
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcomposer.config_lib import Config, TrainConfig
from jaxcomposer.tokenizers import get_tokenizer

MASKED_LOGIT = -1e9  # finite, so weight-0 positions stay 0 * loss = 0 (never nan)
TRACE_COUNTS: collections.Counter = collections.Counter()  # trace-time counters (tests)


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # 0-d int32: optimizer steps taken
    params: Any
    opt_state: Any
    batch_stats: Any  # {} for models without batch norm

    def to_tree(self) -> dict:
        return {k: getattr(self, k) for k in ("step", "params", "opt_state", "batch_stats")}


# --- optimizer ------------------------------------------------------------------------------
def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        main = optax.constant_schedule(peak)
    elif cfg.lr_schedule == "cosine":
        main = optax.cosine_decay_schedule(peak, decay_steps=max(cfg.num_steps - warmup, 1))
    else:
        raise ValueError(
            f"train.lr_schedule must be 'cosine' or 'constant', got {cfg.lr_schedule!r}"
        )
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def _matrices_only(params: Any) -> Any:
    # Weight decay on matrices only: decaying biases and norm scales just fights the data.
    return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg: TrainConfig) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(cfg)
    if cfg.optimizer == "adamw":
        opt = optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=_matrices_only)
    elif cfg.optimizer == "rmsprop":
        # Keras RMSprop: v = rho v + (1 - rho) g^2, step = lr g / (sqrt(v) + eps), v0 = 0.
        parts = [optax.scale_by_rms(decay=0.9, eps=1e-7, eps_in_sqrt=False)]
        if cfg.weight_decay > 0:
            parts.append(optax.add_decayed_weights(cfg.weight_decay, mask=_matrices_only))
        opt = optax.chain(*parts, optax.scale_by_learning_rate(schedule))
    else:
        raise ValueError(f"train.optimizer must be 'adamw' or 'rmsprop', got {cfg.optimizer!r}")
    if cfg.grad_clip_norm > 0:
        opt = optax.chain(optax.clip_by_global_norm(cfg.grad_clip_norm), opt)
    return opt, schedule


# --- loss -----------------------------------------------------------------------------------
def token_loss_sums(logits_BxLxV, targets_BxL, weights_BxL, states_BxL=None, next_state_SxV=None):
    """(sum of weighted cross-entropy in nats, weighted correct argmax, sum of weights).

    Models that return fewer positions than the targets (SeedReplica: the last one) are scored
    on the last positions. With a grammar table, tokens the grammar forbids in the state before
    each target get MASKED_LOGIT (the target itself always stays, so data the grammar rejects
    costs a finite loss).
    """
    logits = logits_BxLxV.astype(jnp.float32)
    n = logits.shape[1]
    targets, weights = targets_BxL[:, -n:], weights_BxL[:, -n:].astype(jnp.float32)
    if next_state_SxV is not None:
        allowed = jnp.asarray(next_state_SxV)[states_BxL[:, -n:]] >= 0
        allowed |= jax.nn.one_hot(targets, logits.shape[-1], dtype=bool)
        logits = jnp.where(allowed, logits, MASKED_LOGIT)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32)
    return (ce * weights).sum(), (correct * weights).sum(), weights.sum()


# --- devices ----------------------------------------------------------------------------------
def make_mesh(batch_size: int) -> Mesh:
    devices = jax.devices()
    if batch_size % len(devices):
        raise ValueError(
            f"train.batch_size={batch_size} must be divisible by the number of devices "
            f"({len(devices)}: {devices[0].platform}); each device takes an equal slice"
        )
    return Mesh(np.asarray(devices), ("data",))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """The global batch -> arrays split over the 'data' axis; each process feeds its own rows."""
    sharding = NamedSharding(mesh, P("data"))
    count, index = jax.process_count(), jax.process_index()

    def put(x: np.ndarray) -> jax.Array:
        local = np.split(x, count)[index]
        return jax.make_array_from_process_local_data(sharding, local, x.shape)

    return {k: put(v) for k, v in batch.items()}


# --- state and steps --------------------------------------------------------------------------
def _variables(params, batch_stats) -> dict:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def run_key(config: Config) -> jax.Array:
    """The run's root key: the root seed with the train seed folded in."""
    return jax.random.fold_in(jax.random.key(config.seed), config.train.seed)


def make_init(model, optimizer, seq_len: int):
    """`init(key) -> TrainState` at step 0; jit it for values or eval_shape it for shapes."""
    tokens = jnp.zeros((1, seq_len), jnp.int32)

    def init(key: jax.Array) -> TrainState:
        rngs = {"params": jax.random.fold_in(key, 0), "dropout": jax.random.fold_in(key, 1)}
        variables = model.init(rngs, tokens, train=False)
        params = variables["params"]
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=optimizer.init(params),
            batch_stats=variables.get("batch_stats", {}),
        )

    return init


def dropout_key(config: Config) -> jax.Array:
    """The base key of the dropout stream; train_step folds the step in."""
    return jax.random.fold_in(run_key(config), 2)


def make_train_step(model, optimizer, schedule, mesh: Mesh, next_state_SxV=None):
    """The jitted `train_step(state, batch, rng) -> (state, metrics)`; `state` is donated."""
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def train_step(state: TrainState, batch: dict, rng: jax.Array):
        TRACE_COUNTS["train_step"] += 1
        rng = jax.random.fold_in(rng, state.step)
        mutable = ["batch_stats"] if state.batch_stats else False

        def loss_fn(params):
            out = model.apply(
                _variables(params, state.batch_stats), batch["inputs_BxL"], train=True,
                rngs={"dropout": rng}, mutable=mutable,
            )  # fmt: skip
            (logits, _), updates = out if mutable else (out, {})
            sums = token_loss_sums(
                logits, batch["targets_BxL"], batch["weights_BxL"], batch.get("states_BxL"),
                next_state_SxV,
            )  # fmt: skip
            return sums[0] / jnp.maximum(sums[2], 1.0), (sums, updates)

        (loss, (sums, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        step_updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, step_updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            batch_stats=updates.get("batch_stats", state.batch_stats),
        )
        metrics = {
            "loss": loss,
            "accuracy": sums[1] / jnp.maximum(sums[2], 1.0),
            "tokens": sums[2],
            "grad_norm": optax.global_norm(grads),
            "param_norm": optax.global_norm(params),  # non-finite = bad params before any save
            "learning_rate": jnp.asarray(schedule(state.step), jnp.float32),
        }
        return new_state, metrics

    return jax.jit(
        train_step,
        in_shardings=(replicated, data, replicated),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def make_eval_step(model, mesh: Mesh, next_state_SxV=None):
    """The jitted `eval_step(params, batch_stats, batch) -> {loss_sum, correct_sum, tokens}`."""
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def eval_step(params, batch_stats, batch):
        TRACE_COUNTS["eval_step"] += 1
        logits, _ = model.apply(_variables(params, batch_stats), batch["inputs_BxL"], train=False)
        loss_sum, correct_sum, tokens = token_loss_sums(
            logits,
            batch["targets_BxL"],
            batch["weights_BxL"],
            batch.get("states_BxL"),
            next_state_SxV,
        )
        return {"loss_sum": loss_sum, "correct_sum": correct_sum, "tokens": tokens}

    return jax.jit(eval_step, in_shardings=(replicated, replicated, data), out_shardings=replicated)


_STEP_CACHE: dict = {}


def compiled_steps(config: Config, mesh: Mesh, model, optimizer, schedule):
    """(init, train_step, eval_step), jitted once per process and config: a second run in the
    same process (tests, notebooks) reuses the compiled functions."""
    tcfg = config.train
    recipe = {k: getattr(tcfg, k) for k in _STEP_FIELDS}
    if tcfg.lr_schedule == "constant":
        recipe.pop("num_steps")  # only the cosine schedule depends on the run length
    # The tokenizer fixes the vocabulary size (and the grammar table).
    devices = tuple(mesh.device_ids.flat)
    key = (config.model, config.tokenizer, tuple(sorted(recipe.items())), devices)
    if key not in _STEP_CACHE:
        grammar = None
        if tcfg.grammar_mask_loss:
            grammar = get_tokenizer(config.tokenizer).grammar.next_state
        init = make_init(model, optimizer, tcfg.seq_len)
        _STEP_CACHE[key] = (
            jax.jit(init, out_shardings=NamedSharding(mesh, P())),
            make_train_step(model, optimizer, schedule, mesh, grammar),
            make_eval_step(model, mesh, grammar),
        )
    return _STEP_CACHE[key]


_STEP_FIELDS = (
    "optimizer", "learning_rate", "warmup_steps", "lr_schedule", "weight_decay", "grad_clip_norm",
    "num_steps", "batch_size", "seq_len", "grammar_mask_loss",
)  # fmt: skip


def validation_metrics(eval_step, state: TrainState, batches: list[dict]) -> dict:
    sums = jax.device_get([eval_step(state.params, state.batch_stats, b) for b in batches])
    tokens = sum(float(s["tokens"]) for s in sums)
    if tokens <= 0:
        raise ValueError("the validation batches hold no target tokens")
    loss = sum(float(s["loss_sum"]) for s in sums) / tokens
    return {
        "loss": loss,
        "accuracy": sum(float(s["correct_sum"]) for s in sums) / tokens,
        "tokens": tokens,
    }
