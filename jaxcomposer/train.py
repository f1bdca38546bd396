"""`--mode=train`: the pure jitted train step, data parallelism, and the resumable training loop.

The step is one jitted function (compiled once per run) over a `TrainState`; batches are a pure
function of (seed, step) (batching.py) and dropout keys fold in the step, so a run that stops and
resumes from a checkpoint reproduces an uninterrupted run bit for bit. Every local device takes a
slice of the batch (`Mesh(devices, ('data',))`); one device is the same code path.
"""

from __future__ import annotations

import collections
import os
import sys
import time
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcomposer import atomic, batching, checkpoints, plots
from jaxcomposer.config_lib import Config, TrainConfig
from jaxcomposer.tokenizers import get_tokenizer

MASKED_LOGIT = -1e9  # finite, so weight-0 positions stay 0 * loss = 0 (never nan)
TRACE_COUNTS: collections.Counter = collections.Counter()  # trace-time counters (tests)


class TrainingDivergedError(RuntimeError):
    """The loss or gradient norm became NaN or infinite."""


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


# --- the loop ---------------------------------------------------------------------------------
def train(config: Config, workdir: str, *, progress: bool | None = None) -> dict:
    """Trains (or resumes) on the prepared splits in `workdir`; returns the summary."""
    from jaxcomposer import dataset

    workdir = os.path.abspath(workdir)
    return fit(
        config, workdir, dataset.load_split(workdir, "train"), dataset.load_split(workdir, "valid"),
        progress=progress,
    )  # fmt: skip


def fit(
    config: Config, workdir: str, train_split, valid_split, *, progress: bool | None = None
) -> dict:
    """Trains (or resumes) on splits with `.tokens` / `.offsets`; returns the summary."""
    from jaxcomposer.model import build_model

    tcfg = config.train
    tokenizer = get_tokenizer(config.tokenizer)
    manager = checkpoints.make_manager(workdir, tcfg.keep_best)
    try:
        latest = manager.latest_step()
        checkpoints.write_run_files(workdir, config, tokenizer.vocab, resuming=latest is not None)
        mesh = make_mesh(tcfg.batch_size)
        model = build_model(config.model, tokenizer.vocab.size)
        optimizer, schedule = make_optimizer(tcfg)
        init, train_step, eval_step = compiled_steps(config, mesh, model, optimizer, schedule)
        meta: dict = {}
        if latest is None:
            state = init(run_key(config))
        else:
            replicated = NamedSharding(mesh, P())
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                jax.eval_shape(init, run_key(config)).to_tree(),
            )
            tree, meta = checkpoints.restore(manager, latest, abstract)
            state = TrainState(**tree)
            logging.info("resumed from %s at step %d", manager.directory, latest)
        run = _Run(config, workdir, mesh, manager, train_split, valid_split, tokenizer, meta)
        run.train_step, run.eval_step = train_step, eval_step
        summary = run.loop(state, progress=sys.stderr.isatty() if progress is None else progress)
    finally:
        manager.close()  # waits for asynchronous saves
    plots.plot_learning_curve(
        plots.metrics_path(workdir), os.path.join(workdir, "learning_curve.png")
    )
    atomic.write_json(os.path.join(workdir, "train_summary.json"), summary)
    print(plots.summary_text(summary), flush=True)
    return summary


class _Run:
    """Loop bookkeeping: batches, evals, early stopping, checkpoints, progress lines."""

    def __init__(self, config, workdir, mesh, manager, train_split, valid_split, tokenizer, meta):
        tcfg = self.tcfg = config.train
        self.config, self.workdir, self.mesh, self.manager = config, workdir, mesh, manager
        self.metrics_path = plots.metrics_path(workdir)
        self.train_tokens = np.asarray(train_split.tokens)
        self.train_offsets = np.asarray(train_split.offsets, np.int64)
        grammar = tokenizer.grammar if tcfg.grammar_mask_loss else None
        k = tcfg.transpose_semitones
        self.tables = tokenizer.transposition_tables(k) if k > 0 else None
        self.train_states = None
        if grammar is not None:
            self.train_states = batching.grammar_states(
                self.train_tokens, self.train_offsets, grammar, self.tables
            )
        valid_tokens = np.asarray(valid_split.tokens)
        valid_offsets = np.asarray(valid_split.offsets, np.int64)
        valid_states = None
        if grammar is not None:
            valid_states = batching.grammar_states(valid_tokens, valid_offsets, grammar)
        self.valid_batches = [
            shard_batch(b, mesh)
            for b in batching.validation_batches(
                valid_tokens, valid_offsets, batch_size=tcfg.batch_size, seq_len=tcfg.seq_len,
                num_batches=tcfg.eval_batches, loss_on_last_only=tcfg.loss_on_last_only,
                states=valid_states,
            )
        ]  # fmt: skip
        self.wall_before = float(meta.get("wall_seconds") or 0.0)
        self.best = {
            "val_loss": meta.get("best_val_loss"),
            "step": meta.get("best_step"),
            "wall_seconds": meta.get("best_wall_seconds"),
        }
        self.bad_evals = int(meta.get("evals_without_improvement") or 0)
        self.last_val = meta.get("val_loss")
        self.rng = dropout_key(config)
        self.seeds = (config.seed, tcfg.seed)  # batches fold in the root and the train seed

    def batch(self, step: int) -> dict:
        tcfg = self.tcfg
        return shard_batch(
            batching.sample_windows(
                self.train_tokens, self.train_offsets, seed=self.seeds, step=step,
                batch_size=tcfg.batch_size, seq_len=tcfg.seq_len, transpose_tables=self.tables,
                loss_on_last_only=tcfg.loss_on_last_only, states=self.train_states,
            ),
            self.mesh,
        )  # fmt: skip

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def loop(self, state: TrainState, *, progress: bool) -> dict:
        tcfg = self.tcfg
        step = start = int(jax.device_get(state.step))
        self.started = time.perf_counter()
        plots.append_metrics(
            self.metrics_path, {"kind": "start", "step": step, "devices": self.mesh.size}
        )
        window = plots.Window(step)
        saved_at, evaluated_at, pending = None, None, None
        stop = "num_steps"
        if tcfg.early_stop_patience and self.bad_evals >= tcfg.early_stop_patience:
            stop = "early_stopping"
        bar = plots.progress_bar(start, tcfg.num_steps, enabled=progress)
        while step < tcfg.num_steps and stop == "num_steps":
            state, metrics = self.train_step(state, self.batch(step), self.rng)
            step += 1
            if pending is not None:
                window.add(*_checked(*pending))  # the previous step: keeps one step in flight
            pending = (step, metrics)
            if step == start + 1:  # wait for the compile, then time the steps that follow
                window.add(*_checked(*pending))
                window.restart_clock(step)
                pending = None
            bar.update(1)
            is_eval = step % tcfg.eval_every == 0 or step == tcfg.num_steps
            is_log = step % tcfg.log_every == 0
            is_save = is_eval or step % tcfg.checkpoint_every == 0
            out_of_time = 0 < tcfg.max_wall_seconds <= time.perf_counter() - self.started
            if not (is_eval or is_log or is_save or out_of_time):
                continue
            if pending is not None:
                window.add(*_checked(*pending))
            pending = None
            if out_of_time:
                stop = "max_wall_seconds"  # validated and saved below
                is_eval = is_save = False
            if is_eval:
                self.validate(state, step)
                evaluated_at = step
                if tcfg.early_stop_patience and self.bad_evals >= tcfg.early_stop_patience:
                    stop = "early_stopping"
            if is_save:
                self.save(state, step, self.last_val if evaluated_at == step else None)
                saved_at = step
            if is_log or is_eval:
                line = window.flush(step, tcfg.num_steps, self.last_val, self.best, self.wall())
                plots.append_metrics(self.metrics_path, line.record)
                bar.write(line.text)
        bar.close()
        if step > start and evaluated_at != step:
            if pending is not None:
                _checked(*pending)
            self.validate(state, step)
            evaluated_at = step
        if step > start and saved_at != step:
            self.save(state, step, self.last_val)
        return self.summary(step, stop)

    def validate(self, state: TrainState, step: int) -> dict:
        val = validation_metrics(self.eval_step, state, self.valid_batches)
        self.last_val = val["loss"]
        if not np.isfinite(val["loss"]):
            raise TrainingDivergedError(f"validation loss is {val['loss']} at step {step}")
        if self.best["val_loss"] is None or val["loss"] < self.best["val_loss"]:
            self.best = {"val_loss": val["loss"], "step": step, "wall_seconds": self.wall()}
            self.bad_evals = 0
        else:
            self.bad_evals += 1
        record = {"kind": "valid", "step": step, **val, "wall_seconds": self.wall()}
        plots.append_metrics(self.metrics_path, {**record, "best_val_loss": self.best["val_loss"]})
        return val

    def save(self, state: TrainState, step: int, val_loss: float | None) -> None:
        meta = {
            "step": step,
            "val_loss": val_loss,
            "wall_seconds": self.wall(),
            "best_val_loss": self.best["val_loss"],
            "best_step": self.best["step"],
            "best_wall_seconds": self.best["wall_seconds"],
            "evals_without_improvement": self.bad_evals,
        }
        checkpoints.save(self.manager, step, state.to_tree(), meta, val_loss)

    def summary(self, step: int, stop: str) -> dict:
        return {
            "step": step,
            "stop_reason": stop,
            "best_val_loss": self.best["val_loss"],
            "best_step": self.best["step"],
            "seconds_to_best": self.best["wall_seconds"],
            "final_val_loss": self.last_val,
            "train_seconds": self.wall(),
            "devices": int(self.mesh.size),
        }


def _checked(step: int, metrics: dict) -> tuple[int, dict]:
    """Host copies of one step's metrics; raises TrainingDivergedError if not finite."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not all(np.isfinite(values[k]) for k in ("loss", "grad_norm", "param_norm")):
        raise TrainingDivergedError(
            f"training diverged at step {step}: loss {values['loss']}, gradient norm "
            f"{values['grad_norm']}; the last good checkpoint is kept (try a lower "
            f"train.learning_rate or train.grad_clip_norm > 0)"
        )
    return step, values
