"""`--mode=train`: the resumable training loop over the jitted step in train_step.py.

Batches are a pure function of (seed, step) (batching.py) and dropout keys fold in the step, so a
run that stops and resumes from a checkpoint reproduces an uninterrupted run bit for bit.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import nullcontext

import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxcomposer import workdir_lib
from jaxcomposer.config_lib import Config
from jaxcomposer.core import atomic
from jaxcomposer.core.errors import Failure
from jaxcomposer.data import dataset
from jaxcomposer.model import build_model, checkpoints
from jaxcomposer.model.conditioning import Spec
from jaxcomposer.tokenizers import Tokenizer, get_tokenizer
from jaxcomposer.train import batching, budget, constraint_masks, distributed, reporting
from jaxcomposer.train.optimizer import make_optimizer
from jaxcomposer.train.train_step import (
    TrainState,
    compiled_steps,
    dropout_key,
    make_mesh,
    run_key,
    shard_batch,
    validation_metrics,
)


class TrainingDivergedError(Failure, RuntimeError):
    """The loss or gradient norm became NaN or infinite."""


# --- the loop ---------------------------------------------------------------------------------
def train(config: Config, workdir: str, *, progress: bool | None = None) -> dict:
    """Trains (or resumes) on the prepared splits in `workdir`; returns the summary.

    A workdir that was never prepared is prepared first from the config's data section (a MIDI
    folder or the embedded corpus), as `--mode=prepare` would, and the log says so. Raises
    workdir_lib.WorkdirBusyError when another live process is training this workdir.
    """
    workdir = os.path.abspath(workdir)
    if config.model.constraint_encoder_size:  # before any prepare: a refusal leaves nothing
        constraint_masks.Masker.for_tokenizer(get_tokenizer(config.tokenizer),
                                              config.train.constraint_mix)  # fmt: skip
    # One process trains a workdir at a time; in a multi-host run only process 0 writes it.
    lock = workdir_lib.train_lock(workdir) if jax.process_index() == 0 else nullcontext()
    with lock:
        return _train(config, workdir, progress=progress)


def _train(config: Config, workdir: str, *, progress: bool | None) -> dict:
    show = sys.stderr.isatty() if progress is None else progress
    if distributed.is_primary() and not workdir_lib.is_prepared(workdir):
        source = config.data.midi_dir or "the embedded Bach chorales"
        print(f"{workdir} was never prepared: preparing {source} first", flush=True)
        print(dataset.summarize(dataset.prepare(config, workdir, progress=show)), flush=True)
    distributed.barrier("prepared")  # multi-host: the others read what process 0 prepared
    tokenizer = get_tokenizer(config.tokenizer)
    spec = workdir_lib.cond_spec(workdir, config)
    train_split, valid_split = (dataset.load_split(workdir, s) for s in ("train", "valid"))
    if len(valid_split) == 0:
        raise dataset.DatasetError(
            f"{workdir_lib.data_dir(workdir)} holds no piece for validation ({len(train_split)} "
            "training piece(s)): add MIDI files, or set data.valid_dir, and prepare again"
        )
    return fit(
        config, workdir, train_split, valid_split,
        tokenizer=tokenizer, model=build_model(config.model, tokenizer.vocab.size, spec.dim),
        progress=progress, spec=spec,
    )  # fmt: skip


def fit(
    config: Config,
    workdir: str,
    train_split,
    valid_split,
    *,
    tokenizer: Tokenizer | None = None,
    model=None,
    progress: bool | None = None,
    spec: Spec | None = None,
) -> dict:
    """Trains (or resumes) on splits with `.tokens` / `.offsets` (and `.labels` for conditioned
    models); returns the summary.

    `tokenizer`, `model` and the conditioning `spec` default to the ones the config describes
    (pass them when built; the spec's style names come from the prepared data).
    Multi-host (distributed.py): every process calls this; process 0 alone writes the run files.
    """
    tcfg = config.train
    tokenizer = tokenizer or get_tokenizer(config.tokenizer)
    spec = spec or Spec(config.model.condition)
    model = model or build_model(config.model, tokenizer.vocab.size, spec.dim)
    manager = checkpoints.make_manager(workdir_lib.checkpoint_dir(workdir), tcfg.keep_best)
    run = None
    try:
        latest = manager.latest_step()
        config, plan = _budget_plan(config, workdir, resuming=latest is not None)
        tcfg = config.train
        # Every process checks (the same files, the same verdict); process 0 alone writes.
        workdir_lib.write_run_files(
            workdir, config, tokenizer.vocab, resuming=latest is not None,
            write=distributed.is_primary(),
        )  # fmt: skip
        distributed.barrier("run_files")
        mesh = make_mesh(tcfg.batch_size)
        optimizer, schedule = make_optimizer(tcfg)
        grammar = tokenizer.grammar.next_state if tcfg.grammar_mask_loss else None
        init, train_step, eval_step = compiled_steps(
            config, mesh, model, optimizer, schedule, grammar
        )
        meta: dict = {}
        if latest is None:
            state = init(run_key(config))
        else:
            replicated = NamedSharding(mesh, P())
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                jax.eval_shape(init, run_key(config)).to_tree(),
            )
            latest, (tree, meta) = checkpoints.restore_readable(
                manager, latest, lambda step: checkpoints.restore(manager, step, abstract),
                quarantine=distributed.is_primary(),
            )  # fmt: skip
            state = TrainState(**tree)
            logging.info("resumed from %s at step %d", manager.directory, latest)
        run = _Run(config, workdir, mesh, manager, train_split, valid_split, tokenizer, meta, spec)
        run.train_step, run.eval_step = train_step, eval_step
        if plan == "measure":  # budget_minutes: time the steps, choose num_steps, compile again
            config = run.measure_budget(init)
            tcfg = config.train
            optimizer, schedule = make_optimizer(tcfg)
            _, run.train_step, run.eval_step = compiled_steps(
                config, mesh, model, optimizer, schedule, grammar
            )
            workdir_lib.write_run_files(
                workdir, config, tokenizer.vocab, resuming=False, write=distributed.is_primary()
            )
        summary = run.loop(state, progress=sys.stderr.isatty() if progress is None else progress)
    finally:
        checkpoints.close_manager(manager)  # waits for asynchronous saves
        if run is not None and run.tensorboard is not None:
            run.tensorboard.close()  # flushes the event file, also after an error
    if not distributed.is_primary():
        return summary
    reporting.plot_learning_curve(
        workdir_lib.metrics_path(workdir), os.path.join(workdir, "learning_curve.png")
    )
    atomic.write_json(os.path.join(workdir, "train_summary.json"), summary)
    print(reporting.summary_text(summary), flush=True)
    return summary


class _Run:
    """Loop bookkeeping: batches, evals, early stopping, checkpoints, progress lines."""

    def __init__(
        self, config, workdir, mesh, manager, train_split, valid_split, tokenizer, meta, spec=None
    ):
        tcfg = self.tcfg = config.train
        # Conditioned models read [X; M] built from the splits' label tracks.
        self.spec, self.train_labels = spec, getattr(train_split, "labels", None)
        self.config, self.workdir, self.mesh, self.manager = config, workdir, mesh, manager
        self.metrics_path = workdir_lib.metrics_path(workdir)
        self.primary = distributed.is_primary()  # the one process that writes metrics.jsonl
        self.tensorboard = None  # event files beside metrics.jsonl (train.tensorboard)
        if tcfg.tensorboard and self.primary:
            self.tensorboard = reporting.TensorBoardLog.open(workdir)
        self.train_tokens = np.asarray(train_split.tokens)
        self.train_offsets = np.asarray(train_split.offsets, np.int64)
        grammar = tokenizer.grammar if tcfg.grammar_mask_loss else None
        k = tcfg.transpose_semitones
        self.tables = tokenizer.transposition_tables(k) if k > 0 else None
        # A constraint-encoder model trains on random constraint rows; drawing them needs each
        # target's grammar state (its voice), whether or not the loss is masked by the grammar.
        self.masker = None
        if config.model.constraint_encoder_size:
            self.masker = constraint_masks.Masker.for_tokenizer(tokenizer, tcfg.constraint_mix)
            grammar = tokenizer.grammar
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
        valid_rng = np.random.default_rng([config.seed, 7])  # the same rows at every pass
        self.valid_batches = [
            shard_batch(self.constrained(b, valid_rng), mesh)
            for b in batching.validation_batches(
                valid_tokens, valid_offsets, batch_size=tcfg.batch_size, seq_len=tcfg.seq_len,
                num_batches=tcfg.eval_batches, loss_on_last_only=tcfg.loss_on_last_only,
                states=valid_states, labels=getattr(valid_split, "labels", None), spec=spec,
            )
        ]  # fmt: skip
        self.wall_before = float(meta.get("wall_seconds") or 0.0)
        self.best = {
            "val_loss": meta.get("best_val_loss"),
            "step": meta.get("best_step"),
            "wall_seconds": meta.get("best_wall_seconds"),
        }
        self.bad_evals = int(meta.get("evals_without_improvement") or 0)
        self.stopping = budget.Stopping(self.best["val_loss"], self.best["step"], self.bad_evals)
        self.last_val = meta.get("val_loss")
        self.rng = dropout_key(config)
        self.seeds = (config.seed, tcfg.seed)  # batches fold in the root and the train seed

    def constrained(self, batch: dict, rng: np.random.Generator) -> dict:
        """The batch with random constraint rows (constraint-encoder models), else as it is;
        grammar states stay only where the loss is masked by the grammar."""
        if self.masker is not None:
            batch = self.masker(batch, rng)
        if not self.tcfg.grammar_mask_loss:
            batch.pop("states_BxL", None)
        return batch

    def batch(self, step: int) -> dict:
        tcfg = self.tcfg
        windows = batching.sample_windows(
            self.train_tokens, self.train_offsets, seed=self.seeds, step=step,
            batch_size=tcfg.batch_size, seq_len=tcfg.seq_len, transpose_tables=self.tables,
            loss_on_last_only=tcfg.loss_on_last_only, states=self.train_states,
            labels=self.train_labels, spec=self.spec,
        )  # fmt: skip
        # a pure function of (seeds, step), as the windows are: a resumed run draws the same rows
        rng = np.random.default_rng([*self.seeds, step, 11])
        return shard_batch(self.constrained(windows, rng), self.mesh)

    def wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.started

    def loop(self, state: TrainState, *, progress: bool) -> dict:
        tcfg = self.tcfg
        step = start = int(jax.device_get(state.step))
        self.started = time.perf_counter()
        self.log({"kind": "start", "step": step, "devices": self.mesh.size})
        window = reporting.Window(step)
        saved_at, evaluated_at, pending = None, None, None
        stop = "num_steps"
        if tcfg.early_stop_patience and self.bad_evals >= tcfg.early_stop_patience:
            stop = "early_stopping"
        bar = reporting.progress_bar(start, tcfg.num_steps, enabled=progress and self.primary)
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
            if tcfg.max_wall_seconds > 0:  # process 0's clock decides for all: same last step
                out_of_time = distributed.agree(out_of_time)
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
                self.log(line.record)
                if self.primary:
                    bar.write(line.text)
        bar.close()
        if stop == "early_stopping" and self.primary:
            reason = self.stopping.reason(tcfg.early_stop_patience)
            self.log({"kind": "stop", "step": step, "reason": reason})
            print(reason, flush=True)
        if step > start and evaluated_at != step:
            if pending is not None:
                _checked(*pending)
            self.validate(state, step)
            evaluated_at = step
        if step > start and saved_at != step:
            self.save(state, step, self.last_val)
        return self.summary(step, stop)

    def measure_budget(self, init) -> Config:
        """Times this machine's steps (budget.measure), chooses num_steps for
        train.budget_minutes, records it (budget.json, metrics.jsonl, the log) and returns the
        config with it. Every process measures (the steps are collective); process 0's record
        decides for all."""
        import tempfile

        def save_once(s):
            with tempfile.TemporaryDirectory(prefix="budget_save.") as tmp:
                manager = checkpoints.make_manager(tmp, 0)
                try:
                    checkpoints.save(manager, 0, s.to_tree(), {"step": 0}, None)
                finally:
                    manager.close()  # waits for the asynchronous save

        measured = budget.measure(
            self.train_step, lambda s: validation_metrics(self.eval_step, s, self.valid_batches),
            save_once, lambda: init(run_key(self.config)), self.batch, self.rng,
        )  # fmt: skip
        config, record = budget.choose(self.config, measured)
        if self.primary:
            budget.write_record(self.workdir, record)
        distributed.barrier("budget")
        config = budget.apply(self.config, budget.recorded(self.workdir, self.config))
        self.config, self.tcfg = config, config.train
        self.log({"kind": "budget", **record})
        if self.primary:
            print(budget.describe(record, resumed=False), flush=True)
        return config

    def validate(self, state: TrainState, step: int) -> dict:
        val = validation_metrics(self.eval_step, state, self.valid_batches)
        self.last_val = val["loss"]
        if not np.isfinite(val["loss"]):
            raise TrainingDivergedError(f"validation loss is {val['loss']} at step {step}")
        self.stopping = self.stopping.update(step, val["loss"])
        if self.stopping.best_step == step:
            self.best = {"val_loss": val["loss"], "step": step, "wall_seconds": self.wall()}
        self.bad_evals = self.stopping.bad_evals
        record = {"kind": "valid", "step": step, **val, "wall_seconds": self.wall()}
        self.log({**record, "best_val_loss": self.best["val_loss"]})
        return val

    def log(self, record: dict) -> None:
        if self.primary:
            reporting.append_metrics(self.metrics_path, record)
        if self.tensorboard is not None:
            self.tensorboard.write(record)

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


def _budget_plan(config: Config, workdir: str, *, resuming: bool) -> tuple[Config, str]:
    """(config, plan) for train.budget_minutes: "off" without a budget; "recorded" when
    budget.json holds this budget's steps (applied to the config: never measured again);
    "measure" for a fresh run. A run resumed without a record is refused: its steps are unknown."""
    if config.train.budget_minutes <= 0:
        return config, "off"
    record = budget.recorded(workdir, config)
    if record is not None:
        if distributed.is_primary():
            print(budget.describe(record, resumed=True), flush=True)
        return budget.apply(config, record), "recorded"
    if resuming:
        raise budget.BudgetError(
            f"{budget.record_path(workdir)}: missing or made for another budget, but {workdir} "
            "holds checkpoints: resume with the budget_minutes it was started with, or with "
            "--config.train.budget_minutes=0 and the num_steps in its config.json"
        )
    return config, "measure"


def _checked(step: int, metrics: dict) -> tuple[int, dict]:
    """Host copies of one step's metrics; raises TrainingDivergedError if not finite."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not all(np.isfinite(values[k]) for k in ("loss", "grad_norm", "param_norm")):
        raise TrainingDivergedError(
            f"training diverged at step {step}: loss {values['loss']}, gradient norm "
            f"{values['grad_norm']}; checkpoints saved before it are kept (try a lower "
            f"train.learning_rate or train.grad_clip_norm > 0)"
        )
    return step, values
