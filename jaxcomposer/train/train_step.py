"""The pure training step: device mesh, sharded batches, the train state and the jitted steps.

The step is one jitted function (compiled once per process and config) over a `TrainState`;
dropout keys fold in the step, so a resumed run reproduces an uninterrupted one bit for bit.
Every device of every process takes a slice of the batch (`Mesh(jax.devices(), ('data',))`: the
global device list; multi-host runs are distributed.py's); one device is the same code path.
The loss is model/loss.py's; the optimizer optimizer.py's; the loop that drives these lives in
loop.py.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcomposer.config_lib import Config, ConfigError
from jaxcomposer.model.loss import token_loss_sums


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # 0-d int32: optimizer steps taken
    params: Any
    opt_state: Any
    batch_stats: Any  # {} for models without batch norm

    def to_tree(self) -> dict:
        return {k: getattr(self, k) for k in ("step", "params", "opt_state", "batch_stats")}


# --- devices ----------------------------------------------------------------------------------
def make_mesh(batch_size: int) -> Mesh:
    devices = jax.devices()
    if batch_size % len(devices):
        raise ConfigError(
            f"train.batch_size={batch_size} must be divisible by the number of devices "
            f"({len(devices)}: {devices[0].platform}); each device takes an equal slice"
        )
    return Mesh(np.asarray(devices), ("data",))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """The global batch (the same on every process) -> arrays split over the 'data' axis.

    Each process transfers only the rows of its own devices: the callback is asked for exactly
    the slices the sharding puts on this process's devices, so the rows land where the global
    batch has them whatever order the mesh lists the hosts' devices in (a plain split by
    process index would assume each host's devices are one contiguous block of the mesh).
    """
    sharding = NamedSharding(mesh, P("data"))
    return {
        k: jax.make_array_from_callback(v.shape, sharding, lambda index, v=v: v[index])
        for k, v in batch.items()
    }


# --- state and steps --------------------------------------------------------------------------
def _variables(params, batch_stats) -> dict:
    return {"params": params, "batch_stats": batch_stats} if batch_stats else {"params": params}


def _constraints(batch: dict) -> dict:
    """The constraint rows of a constraint-encoder model's batch (train/constraint_masks.py)."""
    return {"constraints_BxL": batch["constraints_BxL"]} if "constraints_BxL" in batch else {}


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
        rng = jax.random.fold_in(rng, state.step)
        mutable = ["batch_stats"] if state.batch_stats else False

        def loss_fn(params):
            out = model.apply(
                _variables(params, state.batch_stats), batch["inputs_BxL"], train=True,
                rngs={"dropout": rng}, mutable=mutable, cond_BxLxC=batch.get("cond_BxLxC"),
                **_constraints(batch),
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
        logits, _ = model.apply(
            _variables(params, batch_stats), batch["inputs_BxL"], train=False,
            cond_BxLxC=batch.get("cond_BxLxC"), **_constraints(batch),
        )  # fmt: skip
        loss_sum, correct_sum, tokens = token_loss_sums(
            logits,
            batch["targets_BxL"],
            batch["weights_BxL"],
            batch.get("states_BxL"),
            next_state_SxV,
        )
        return {"loss_sum": loss_sum, "correct_sum": correct_sum, "tokens": tokens}

    return jax.jit(eval_step, in_shardings=(replicated, replicated, data), out_shardings=replicated)


def compiled_steps(config: Config, mesh: Mesh, model, optimizer, schedule, next_state_SxV=None):
    """(init, train_step, eval_step), each jitted once for this run. `next_state_SxV` is the
    tokenizer's grammar table when `train.grammar_mask_loss` is on, else None."""
    init = make_init(model, optimizer, config.train.seq_len)
    return (
        jax.jit(init, out_shardings=NamedSharding(mesh, P())),
        make_train_step(model, optimizer, schedule, mesh, next_state_SxV),
        make_eval_step(model, mesh, next_state_SxV),
    )


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
